-- Cadence verifier schema, version 2 (PostgreSQL): the key every replica must share.
--
-- The HPKE public key agents seal their records to, as the first replica to start on this
-- database had it (lowercase hex). A replica starting with another key (an empty data
-- directory that made a fresh one) refuses to serve: the agents enrolled here could not
-- reach it, and it would answer their envelopes with decryption failures.
CREATE TABLE verifier_identity (
    id               INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    hpke_public_key  TEXT    NOT NULL,
    claimed_ms       BIGINT  NOT NULL
);
