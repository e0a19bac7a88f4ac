-- MSC4081: when each cached list was last fetched whole (`fetched_ms`), so that lists holding
-- shared fallback keys are fetched again once a day and their keys stay confirmed; and the
-- users whose cached fallback keys answered a claim while their server could not (`recheck`,
-- decision 19): once that server is out of backoff their lists are fetched again and local
-- users sharing a room are told they changed, so their clients query again.
ALTER TABLE remote_device_lists ADD COLUMN recheck BIGINT NOT NULL DEFAULT 0;
ALTER TABLE remote_device_lists ADD COLUMN fetched_ms BIGINT NOT NULL DEFAULT 0;
