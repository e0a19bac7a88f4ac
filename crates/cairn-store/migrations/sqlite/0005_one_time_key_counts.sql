-- Unclaimed one-time keys per device and algorithm, so that uploads and /sync read a row instead
-- of counting thousands of index entries. Uploads add what they inserted (one statement, where a
-- row trigger would run an upsert per key); the trigger below takes away every deleted key.
CREATE TABLE one_time_key_counts (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    n         BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Rebuilt without AUTOINCREMENT: a plain rowid alias is still assigned above every existing
-- row, which is all claim order needs, and skips the sqlite_sequence update on every insert.
CREATE TABLE one_time_keys_new (
    seq       INTEGER PRIMARY KEY,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
INSERT INTO one_time_keys_new SELECT seq, user_id, device_id, algorithm, key_id, key_json
    FROM one_time_keys;
DROP TABLE one_time_keys;
ALTER TABLE one_time_keys_new RENAME TO one_time_keys;
CREATE INDEX one_time_keys_claim_order ON one_time_keys (user_id, device_id, algorithm, seq);

INSERT INTO one_time_key_counts (user_id, device_id, algorithm, n)
    SELECT user_id, device_id, algorithm, COUNT(*) FROM one_time_keys
    GROUP BY user_id, device_id, algorithm;

CREATE TRIGGER one_time_key_removed AFTER DELETE ON one_time_keys BEGIN
    UPDATE one_time_key_counts SET n = n - 1
        WHERE user_id = OLD.user_id AND device_id = OLD.device_id AND algorithm = OLD.algorithm;
END;
