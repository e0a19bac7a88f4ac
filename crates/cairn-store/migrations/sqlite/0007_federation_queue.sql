-- The outbound federation queue: items for each destination, sent in seq order and deleted
-- once delivered. Written in the same transaction as the change that caused them.
CREATE TABLE federation_queue (
    seq         INTEGER PRIMARY KEY,
    destination TEXT NOT NULL,
    -- 'pdu' or 'edu'.
    kind        TEXT NOT NULL,
    item_json   TEXT NOT NULL,
    queued_ms   BIGINT NOT NULL
);
CREATE INDEX federation_queue_by_destination ON federation_queue (destination, seq);

-- Per destination: its backoff, and which process holds the sending lease until when.
CREATE TABLE federation_destinations (
    destination    TEXT PRIMARY KEY,
    retry_after_ms BIGINT NOT NULL DEFAULT 0,
    interval_ms    BIGINT NOT NULL DEFAULT 0,
    leased_by      TEXT NOT NULL DEFAULT '',
    leased_until_ms BIGINT NOT NULL DEFAULT 0
);

-- Inbound transactions already answered, so that a retransmission gets the same answer.
CREATE TABLE federation_inbound_transactions (
    origin      TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    response    TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
