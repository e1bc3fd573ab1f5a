-- Cadence verifier schema, version 2 (SQLite): scoring state, scores, alerts, webhook outbox.
-- Same conventions as version 1: u64 sequence numbers as the i64 with the same bits, times in
-- milliseconds since the Unix epoch, device ids as lowercase hex. JSON columns hold the serde
-- forms documented in the scoring module.

-- One scoring profile per device (the scoring "user"): baselines, pending enrollment windows
-- and the trust level, as scoring::UserProfile JSON. `version` goes up by one on every write,
-- so a writer that read an older version (the scorer, against `baseline reset` run from
-- another process) notices and starts again instead of overwriting.
CREATE TABLE profiles (
    device_id   TEXT    NOT NULL PRIMARY KEY REFERENCES devices (device_id),
    profile     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);

-- The population parameters and normalization cohort (scoring::Population JSON), one row.
-- keyboard_users / mouse_users: devices with a baseline of that modality when it was learned;
-- a change of either is what makes the scorer learn it again.
CREATE TABLE population (
    id              INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    generation      INTEGER NOT NULL,
    data            TEXT    NOT NULL,
    users           INTEGER NOT NULL,
    keyboard_users  INTEGER NOT NULL,
    mouse_users     INTEGER NOT NULL,
    learned_ms      INTEGER NOT NULL
);

-- One row per features record once scored (a record without a row is still to be scored).
-- keyboard / mouse / score: per-modality and fused scores, NULL when not scored (enrolling,
-- rejected). calibrated: 1 when the scores were cohort-normalized (only then does trust move).
-- trust: the level after this window, NULL when trust did not move. alert: 1 when this window
-- raised a trust alert. enrolling: JSON object modality -> windows still needed, for the
-- modalities this window went into enrollment for (0: the baseline is complete). rejected:
-- why the window was refused instead of scored ("reason: detail"), never scored as zeros.
CREATE TABLE scores (
    device_id    TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    received_ms  INTEGER NOT NULL,
    scored_ms    INTEGER NOT NULL,
    keyboard     REAL,
    mouse        REAL,
    score        REAL,
    calibrated   INTEGER NOT NULL,
    trust        REAL,
    alert        INTEGER NOT NULL,
    enrolling    TEXT,
    rejected     TEXT,
    PRIMARY KEY (device_id, seq),
    FOREIGN KEY (device_id, seq) REFERENCES records (device_id, seq)
);

-- Alerts: kind 'trust' (the trust level fell below the lockout; seq is the window) or
-- 'injection' (the agent's guard; seq is the alert record). created_ms: when it happened
-- (device clock of the window or record); raised_ms: when the verifier stored it. trust: the
-- level that crossed the lockout (trust alerts). evidence: JSON object, scores or the guard's
-- aggregate timing, never a feature value.
CREATE TABLE alerts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id   TEXT    NOT NULL REFERENCES devices (device_id),
    seq         INTEGER,
    created_ms  INTEGER NOT NULL,
    raised_ms   INTEGER NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('trust', 'injection')),
    trust       REAL,
    evidence    TEXT    NOT NULL
);
CREATE INDEX alerts_by_device ON alerts (device_id, id);

-- One row per (alert, configured webhook URL), written in the transaction that stores the
-- alert. Pending: delivered_ms IS NULL AND failed = 0; due when next_attempt_ms has passed.
CREATE TABLE webhook_outbox (
    alert_id         INTEGER NOT NULL REFERENCES alerts (id),
    url              TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_ms  INTEGER NOT NULL,
    delivered_ms     INTEGER,
    failed           INTEGER NOT NULL,
    last_error       TEXT,
    PRIMARY KEY (alert_id, url)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_ms)
    WHERE delivered_ms IS NULL AND failed = 0;

PRAGMA user_version = 2;
