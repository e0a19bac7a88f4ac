-- What an invitee sees of a room on another server before joining: the stripped state the
-- inviting server sent with the invite (JSON array), shown in /sync's invite section.
CREATE TABLE remote_invite_state (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    state_json TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
