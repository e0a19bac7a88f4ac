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

INSERT INTO one_time_key_counts (user_id, device_id, algorithm, n)
    SELECT user_id, device_id, algorithm, COUNT(*) FROM one_time_keys
    GROUP BY user_id, device_id, algorithm;

CREATE FUNCTION one_time_key_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE one_time_key_counts SET n = n - 1
        WHERE user_id = OLD.user_id AND device_id = OLD.device_id AND algorithm = OLD.algorithm;
    RETURN NULL;
END
$$;

CREATE TRIGGER one_time_key_removed AFTER DELETE ON one_time_keys
    FOR EACH ROW EXECUTE FUNCTION one_time_key_removed();
