-- Unclaimed one-time keys per device and algorithm, kept by a trigger so that uploads and /sync
-- read a row instead of counting thousands of index entries.
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

CREATE FUNCTION one_time_key_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO one_time_key_counts (user_id, device_id, algorithm, n)
            VALUES (NEW.user_id, NEW.device_id, NEW.algorithm, 1)
            ON CONFLICT (user_id, device_id, algorithm)
            DO UPDATE SET n = one_time_key_counts.n + 1;
    ELSE
        UPDATE one_time_key_counts SET n = n - 1
            WHERE user_id = OLD.user_id AND device_id = OLD.device_id AND algorithm = OLD.algorithm;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER one_time_key_count AFTER INSERT OR DELETE ON one_time_keys
    FOR EACH ROW EXECUTE FUNCTION one_time_key_count_change();
