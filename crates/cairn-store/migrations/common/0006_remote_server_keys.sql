-- Verify keys of other servers, cached after their key document was checked.
CREATE TABLE remote_server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_base64     TEXT NOT NULL,
    valid_until_ms BIGINT NOT NULL,
    -- Set for keys listed under old_verify_keys: they verify only events signed before then.
    expired_ms     BIGINT,
    PRIMARY KEY (server_name, key_id)
);
