-- Accounts, devices, access tokens, UIA sessions, per-user data and the server's signing key.
-- Times are milliseconds since the Unix epoch; JSON is stored as text, byte for byte.
CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    password_hash TEXT,
    displayname   TEXT,
    avatar_url    TEXT,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    last_seen_ms BIGINT,
    last_seen_ip TEXT,
    created_ms   BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Only the SHA-256 of each token is kept.
CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX access_tokens_by_device ON access_tokens (user_id, device_id);

CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    operation  TEXT NOT NULL,
    user_id    TEXT,
    completed  TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX uia_sessions_by_age ON uia_sessions (created_ms);

-- room_id is '' for global account data.
CREATE TABLE account_data (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content   TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);

CREATE TABLE filters (
    filter_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     TEXT NOT NULL,
    filter_json TEXT NOT NULL
);

-- Exactly one row (slot = 1): every process sharing the database signs with the same key.
CREATE TABLE server_signing_key (
    slot        INTEGER PRIMARY KEY CHECK (slot = 1),
    key_version TEXT NOT NULL,
    pkcs8       BLOB NOT NULL,
    created_ms  BIGINT NOT NULL
);
