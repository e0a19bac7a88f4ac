-- Events known without being part of the timeline this server saw: the state and auth chain a
-- resident server sends when a local user joins a room elsewhere. They never appear in /sync
-- timelines or /messages, but current state may point at them.
ALTER TABLE events ADD COLUMN outlier BIGINT NOT NULL DEFAULT 0;
