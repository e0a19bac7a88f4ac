-- MSC4081 decision 19: remote users whose cached fallback keys answered a claim while their
-- server could not. Once that server is out of backoff their lists are fetched again and local
-- users sharing a room are told they changed, so their clients query again.
ALTER TABLE remote_device_lists ADD COLUMN recheck BIGINT NOT NULL DEFAULT 0;
