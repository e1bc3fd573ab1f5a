-- Cadence verifier schema, version 1 (PostgreSQL): everything SQLite's versions 1 and 2 hold.
-- Same conventions as the SQLite schema: u64 values (sequence numbers) are stored as the
-- BIGINT with the same bits; times are milliseconds since the Unix epoch (BIGINT); device ids
-- and public keys are lowercase hex; JSON columns hold the serde forms documented in the
-- scoring module, as TEXT (the verifier never queries inside them).
--
-- Applied by `postgres.rs` in one transaction under an advisory lock, so replicas starting
-- together apply it once; `cadence_schema` records the version.

CREATE TABLE cadence_schema (
    version     BIGINT NOT NULL PRIMARY KEY,
    applied_ms  BIGINT NOT NULL
);

-- Enrollment tokens, by SHA-256 of their text: the token itself is never stored.
CREATE TABLE tokens (
    sha256      BYTEA  NOT NULL PRIMARY KEY,
    created_ms  BIGINT NOT NULL
);

-- One row per enrolled (device, OS user): its Ed25519 key and what it last said about itself.
CREATE TABLE devices (
    device_id          TEXT   NOT NULL PRIMARY KEY,
    public_key         TEXT   NOT NULL UNIQUE,
    os_user            TEXT   NOT NULL,
    hostname           TEXT   NOT NULL,
    enrolled_ms        BIGINT NOT NULL,
    -- verifier time of the last envelope that opened under this device's key
    last_seen_ms       BIGINT,
    -- monitoring state from the newest heartbeat or consent record (by created_ms)
    last_state         TEXT,
    state_ms           BIGINT,
    -- created_ms of the newest heartbeat applied: an older one is a replay and changes nothing
    last_heartbeat_ms  BIGINT,
    queued             BIGINT
);

-- Every stored record, once: (device_id, seq) is unique, envelope_sha256 tells a resend of
-- the same envelope (acknowledged, not stored) from a reused sequence number (refused).
-- Two replicas inserting the same (device_id, seq) at once: the second waits for the first's
-- transaction and then finds the row (INSERT ... ON CONFLICT DO NOTHING).
CREATE TABLE records (
    device_id        TEXT   NOT NULL REFERENCES devices (device_id),
    seq              BIGINT NOT NULL,
    kind             TEXT   NOT NULL,
    created_ms       BIGINT NOT NULL,
    received_ms      BIGINT NOT NULL,
    payload          TEXT   NOT NULL,
    envelope_sha256  BYTEA  NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX records_by_kind ON records (device_id, kind, seq);

-- Consent decisions, also kept in records; here for queries by decision.
CREATE TABLE consent_events (
    device_id      TEXT   NOT NULL REFERENCES devices (device_id),
    seq            BIGINT NOT NULL,
    decision       TEXT   NOT NULL,
    notice_sha256  TEXT   NOT NULL,
    at_ms          BIGINT NOT NULL,
    os_user        TEXT   NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- Stretches of records an agent reported lost, also kept in records.
CREATE TABLE gaps (
    device_id  TEXT   NOT NULL REFERENCES devices (device_id),
    seq        BIGINT NOT NULL,
    first_seq  BIGINT NOT NULL,
    last_seq   BIGINT NOT NULL,
    count      BIGINT NOT NULL,
    reason     TEXT   NOT NULL,
    PRIMARY KEY (device_id, seq)
);

-- One scoring profile per device: scoring::UserProfile JSON. `version` goes up by one on every
-- write, and a write names the version it read (compare-and-swap): of two replicas scoring
-- the same device at once, the second finds the version moved, writes nothing and scores
-- again from the first one's profile, so no update is lost.
CREATE TABLE profiles (
    device_id   TEXT   NOT NULL PRIMARY KEY REFERENCES devices (device_id),
    profile     TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- The population parameters and normalization cohort (scoring::Population JSON), one row.
CREATE TABLE population (
    id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    generation      BIGINT  NOT NULL,
    data            TEXT    NOT NULL,
    users           BIGINT  NOT NULL,
    keyboard_users  BIGINT  NOT NULL,
    mouse_users     BIGINT  NOT NULL,
    learned_ms      BIGINT  NOT NULL
);

-- One row per features record once scored (a record without a row is still to be scored).
-- Columns as in the SQLite schema's version 2; calibrated and alert are booleans here.
CREATE TABLE scores (
    device_id    TEXT             NOT NULL,
    seq          BIGINT           NOT NULL,
    created_ms   BIGINT           NOT NULL,
    received_ms  BIGINT           NOT NULL,
    scored_ms    BIGINT           NOT NULL,
    keyboard     DOUBLE PRECISION,
    mouse        DOUBLE PRECISION,
    score        DOUBLE PRECISION,
    calibrated   BOOLEAN          NOT NULL,
    trust        DOUBLE PRECISION,
    alert        BOOLEAN          NOT NULL,
    enrolling    TEXT,
    rejected     TEXT,
    PRIMARY KEY (device_id, seq),
    FOREIGN KEY (device_id, seq) REFERENCES records (device_id, seq)
);

-- Alerts: kind 'trust' (seq is the window) or 'injection' (seq is the alert record).
CREATE TABLE alerts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   TEXT   NOT NULL REFERENCES devices (device_id),
    seq         BIGINT,
    created_ms  BIGINT NOT NULL,
    raised_ms   BIGINT NOT NULL,
    kind        TEXT   NOT NULL CHECK (kind IN ('trust', 'injection')),
    trust       DOUBLE PRECISION,
    evidence    TEXT   NOT NULL
);
CREATE INDEX alerts_by_device ON alerts (device_id, id);

-- One row per (alert, configured webhook URL), written in the transaction that stores the
-- alert. Pending: delivered_ms IS NULL AND NOT failed; due when next_attempt_ms has passed.
-- A replica taking due rows moves their next_attempt_ms a lease ahead in the same statement
-- (FOR UPDATE SKIP LOCKED), so two replicas never post the same delivery at once.
CREATE TABLE webhook_outbox (
    alert_id         BIGINT  NOT NULL REFERENCES alerts (id),
    url              TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL,
    next_attempt_ms  BIGINT  NOT NULL,
    delivered_ms     BIGINT,
    failed           BOOLEAN NOT NULL,
    last_error       TEXT,
    PRIMARY KEY (alert_id, url)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms)
    WHERE delivered_ms IS NULL AND NOT failed;
