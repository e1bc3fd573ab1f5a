-- Cadence verifier schema, version 1 (SQLite).
-- u64 values (sequence numbers) are stored as the i64 with the same bits; times are
-- milliseconds since the Unix epoch; device ids and public keys are lowercase hex.

-- Enrollment tokens, by SHA-256 of their text: the token itself is never stored.
CREATE TABLE tokens (
    sha256      BLOB    NOT NULL PRIMARY KEY,
    created_ms  INTEGER NOT NULL
);

-- One row per enrolled (device, OS user): its Ed25519 key and what it last said about itself.
CREATE TABLE devices (
    device_id          TEXT    NOT NULL PRIMARY KEY,
    public_key         TEXT    NOT NULL UNIQUE,
    os_user            TEXT    NOT NULL,
    hostname           TEXT    NOT NULL,
    enrolled_ms        INTEGER NOT NULL,
    -- verifier time of the last envelope that opened under this device's key
    last_seen_ms       INTEGER,
    -- monitoring state from the newest heartbeat or consent record (by created_ms)
    last_state         TEXT,
    state_ms           INTEGER,
    -- created_ms of the newest heartbeat applied: an older one is a replay and changes nothing
    last_heartbeat_ms  INTEGER,
    queued             INTEGER
);

-- Every stored record, once: (device_id, seq) is unique, envelope_sha256 tells a resend of
-- the same envelope (acknowledged, not stored) from a reused sequence number (refused).
CREATE TABLE records (
    device_id        TEXT    NOT NULL REFERENCES devices (device_id),
    seq              INTEGER NOT NULL,
    kind             TEXT    NOT NULL,
    created_ms       INTEGER NOT NULL,
    received_ms      INTEGER NOT NULL,
    payload          TEXT    NOT NULL,
    envelope_sha256  BLOB    NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX records_by_kind ON records (device_id, kind, seq);

-- Consent decisions, also kept in records; here for queries by decision.
CREATE TABLE consent_events (
    device_id      TEXT    NOT NULL REFERENCES devices (device_id),
    seq            INTEGER NOT NULL,
    decision       TEXT    NOT NULL,
    notice_sha256  TEXT    NOT NULL,
    at_ms          INTEGER NOT NULL,
    os_user        TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- Stretches of records an agent reported lost, also kept in records.
CREATE TABLE gaps (
    device_id  TEXT    NOT NULL REFERENCES devices (device_id),
    seq        INTEGER NOT NULL,
    first_seq  INTEGER NOT NULL,
    last_seq   INTEGER NOT NULL,
    count      INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    PRIMARY KEY (device_id, seq)
);

PRAGMA user_version = 1;
