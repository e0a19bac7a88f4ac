-- Rooms: events in stream order, current state, memberships, forward extremities, aliases.
CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL
);

-- Every event of every room, in the order this server appended it.
CREATE TABLE events (
    stream_pos BIGINT PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT,
    depth      BIGINT NOT NULL,
    json       TEXT NOT NULL
);
CREATE INDEX events_by_room ON events (room_id, stream_pos);

CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

-- Each user's latest membership per room (mirrors current_state's m.room.member events).
CREATE TABLE memberships (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id, membership);

CREATE TABLE forward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

CREATE TABLE event_transactions (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE room_aliases (
    alias   TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
