-- E2EE keys, to-device inboxes and the stream position that orders what /sync delivers.

-- One row: the newest stream position. Writers bump it inside their transaction, which holds
-- the row until commit, so positions become visible in order.
CREATE TABLE stream_position (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    pos BIGINT NOT NULL
);
INSERT INTO stream_position (id, pos) VALUES (1, 0);

ALTER TABLE account_data ADD COLUMN stream_pos BIGINT NOT NULL DEFAULT 0;
CREATE INDEX account_data_by_position ON account_data (user_id, stream_pos);

-- MSC4081 opt-in: NULL until an upload states it, then sticky (0 or 1; flags are BIGINT so that
-- both backends read them the same way).
ALTER TABLE devices ADD COLUMN eager_share_fallback_keys BIGINT;

CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- `seq` orders claims by upload (MSC4225).
CREATE TABLE one_time_keys (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id)
);
CREATE INDEX one_time_keys_claim_order ON one_time_keys (user_id, device_id, algorithm, seq);

CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

CREATE TABLE device_list_changes (
    stream_pos BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    PRIMARY KEY (stream_pos, user_id)
);
CREATE INDEX device_list_changes_by_user ON device_list_changes (user_id, stream_pos);

-- A device receives at most one message per stream position.
CREATE TABLE to_device_inbox (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_pos)
);

-- Client transaction IDs already handled, per sending device and endpoint.
CREATE TABLE client_transactions (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    scope      TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, scope, txn_id)
);
