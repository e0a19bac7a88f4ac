-- Cross-signing keys and uploaded key signatures.
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    usage    TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, usage)
);

-- target_key is a device ID or a cross-signing public key.
CREATE TABLE key_signatures (
    target_user   TEXT NOT NULL,
    target_key    TEXT NOT NULL,
    signer_user   TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature     TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key_id)
);
