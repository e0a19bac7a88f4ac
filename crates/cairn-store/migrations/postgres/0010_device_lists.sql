-- Device lists across servers: the outbox of announcements owed to other servers, what each
-- destination acknowledged, and the cache of other servers' users' device lists.

-- The server part of each member's user ID, so that "which servers share a room with this
-- user" is one indexed query.
ALTER TABLE memberships ADD COLUMN server_name TEXT NOT NULL DEFAULT '';
UPDATE memberships SET server_name = substr(user_id, strpos(user_id, ':') + 1);
CREATE INDEX memberships_by_room_server ON memberships (room_id, membership, server_name);

-- One row per (destination, user, device) owed an announcement; a newer change replaces the
-- row's stream_id, so a destination that was away gets each device's latest state once.
-- device_id '' stands for the user's cross-signing keys (m.signing_key_update).
CREATE TABLE device_list_outbox (
    destination TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    stream_id   BIGINT NOT NULL,
    PRIMARY KEY (destination, user_id, device_id)
);
CREATE INDEX device_list_outbox_order ON device_list_outbox (destination, stream_id);

-- The newest stream_id each destination acknowledged per user: the next announcement's prev_id.
CREATE TABLE device_list_sent (
    destination TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    stream_id   BIGINT NOT NULL,
    PRIMARY KEY (destination, user_id)
);

-- Other servers' users whose device lists are cached: the stream_id the cache is at, whether it
-- must be fetched again (a gap was seen or a fetch failed), and their published cross-signing keys.
CREATE TABLE remote_device_lists (
    user_id          TEXT PRIMARY KEY,
    stream_id        BIGINT NOT NULL,
    stale            BIGINT NOT NULL,
    master_key       TEXT,
    self_signing_key TEXT
);

-- Each cached device: the device object as its server sent it (device_id, keys, display name
-- and any further fields), byte for byte.
CREATE TABLE remote_devices (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    content   TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
