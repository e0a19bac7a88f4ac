-- The room state after each event, as groups of changes on a parent group. A group is numbered
-- by the stream position of the event that created it; a group with no parent holds the whole
-- state. chain_len counts the parents above a group, so reads stay short (see rooms/state.rs).
CREATE TABLE state_groups (
    state_group BIGINT PRIMARY KEY,
    room_id     TEXT NOT NULL,
    parent      BIGINT,
    chain_len   BIGINT NOT NULL,
    -- JSON array of [type, state_key, event_id]
    delta       TEXT NOT NULL
);

CREATE TABLE event_states (
    event_id    TEXT PRIMARY KEY,
    state_group BIGINT NOT NULL
);
