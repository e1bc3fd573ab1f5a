//! The store test suite: every `Store` operation, run against SQLite and against PostgreSQL
//! (a fresh database per test, from `CADENCE_TEST_POSTGRES_URL`; skipped and said so when it is
//! unset, a failure when `CI=true`). Both backends must give the same answers; where they may
//! differ by design (PostgreSQL leases webhook deliveries to one replica) the test says so.
//!
//! The concurrency tests open two `Store`s on one database, as two verifier processes would,
//! and check that nothing is stored twice and no scoring-state update is lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use cadence_verifier::store::{
    AlertKind, DeliveryOutcome, Effect, HeartbeatUpdate, NewAlert, NewDevice, NewRecord, Outcome,
    ScoreRow, ScoringUpdate, Store, StoredPopulation,
};
use cadence_wire::records::{ConsentRecord, Decision, GapRecord, MonitoringState};
use cadence_wire::{DeviceId, DeviceSigningKey, Kind, VerifierKeyPair};
use common::db::TestDb;

/// A store on `db` with a data directory of its own (for SQLite's file).
struct Opened {
    store: Store,
    _dir: tempfile::TempDir,
    db: TestDb,
}

impl Opened {
    async fn new(db: TestDb) -> Opened {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&db.database(dir.path())).await.unwrap();
        Opened {
            store,
            _dir: dir,
            db,
        }
    }

    /// A second, independent store on the same database: another verifier process.
    async fn another(&self) -> Store {
        Store::open(&self.db.database(self._dir.path()))
            .await
            .unwrap()
    }
}

/// Runs `case` once per backend; a failure names the backend.
macro_rules! each_backend {
    ($name:literal, $case:ident) => {
        for db in TestDb::all($name).await {
            let label = db.label();
            eprintln!("{}: {label}", $name);
            let opened = Opened::new(db).await;
            $case(&opened).await;
            opened.store.close().await;
        }
    };
}

async fn enroll(store: &Store, user: &str) -> DeviceId {
    let key = DeviceSigningKey::generate().unwrap();
    let device = NewDevice {
        public_key: key.public_key(),
        os_user: user,
        hostname: "host-1",
    };
    store
        .enroll(&device, DeviceId::random().unwrap(), 5_000)
        .await
        .unwrap()
}

fn record(seq: u64, payload: &str, hash_byte: u8) -> NewRecord {
    NewRecord {
        seq,
        kind: Kind::Features,
        created_ms: 10_000 + seq % 1_000_000,
        payload: payload.to_owned(),
        envelope_sha256: [hash_byte; 32],
        effect: Effect::None,
    }
}

fn window(seq: u64) -> NewRecord {
    record(seq, &format!("{{\"w\":{seq}}}"), seq as u8)
}

fn consent(seq: u64, decision: Decision, created_ms: u64) -> NewRecord {
    let c = ConsentRecord {
        decision,
        notice_sha256: "ab".repeat(32),
        at_ms: created_ms,
        os_user: "alice".to_owned(),
        until_ms: None,
    };
    NewRecord {
        seq,
        kind: Kind::Consent,
        created_ms,
        payload: serde_json::to_string(&c).unwrap(),
        envelope_sha256: [200 + seq as u8; 32],
        effect: Effect::Consent(c),
    }
}

#[tokio::test]
async fn tokens_are_kept_by_hash_once() {
    async fn case(o: &Opened) {
        let s = &o.store;
        assert_eq!(s.token_count().await.unwrap(), 0);
        s.add_token(&[1; 32], 5).await.unwrap();
        s.add_token(&[1; 32], 6).await.unwrap();
        s.add_token(&[2; 32], 7).await.unwrap();
        assert_eq!(s.token_count().await.unwrap(), 2);
        assert!(s.token_known(&[1; 32]).await.unwrap());
        assert!(!s.token_known(&[3; 32]).await.unwrap());
    }
    each_backend!("tokens_are_kept_by_hash_once", case);
}

#[tokio::test]
async fn enrolling_a_key_twice_gives_the_same_device() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let key = DeviceSigningKey::generate().unwrap();
        let device = NewDevice {
            public_key: key.public_key(),
            os_user: "alice",
            hostname: "laptop-1",
        };
        let first = DeviceId::random().unwrap();
        assert_eq!(s.enroll(&device, first, 1_000).await.unwrap(), first);
        let again = s
            .enroll(&device, DeviceId::random().unwrap(), 2_000)
            .await
            .unwrap();
        assert_eq!(again, first);
        assert_eq!(s.device_key(first).await.unwrap(), Some(key.public_key()));
        assert_eq!(
            s.device_key(DeviceId::random().unwrap()).await.unwrap(),
            None
        );
        let bob = enroll(s, "bob").await;
        let devices = s.devices().await.unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].device_id, first);
        assert_eq!(devices[0].enrolled_ms, 1_000);
        assert_eq!(devices[0].os_user, "alice");
        assert_eq!(devices[0].hostname, "laptop-1");
        assert_eq!(devices[0].last_seen_ms, None);
        assert_eq!(devices[0].state, None);
        assert_eq!(s.find_devices("bob").await.unwrap()[0].device_id, bob);
        assert_eq!(
            s.find_devices(&first.to_string()).await.unwrap()[0].device_id,
            first
        );
        assert!(s.find_devices("carol").await.unwrap().is_empty());
    }
    each_backend!("enrolling_a_key_twice_gives_the_same_device", case);
}

#[tokio::test]
async fn one_device_and_its_last_windows_are_read_without_the_rest() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        let quiet = enroll(s, "bob").await;
        let mut records: Vec<NewRecord> = (1..=10).map(window).collect();
        records.push(consent(11, Decision::Granted, 20_000));
        records.push(window(12));
        s.commit(d, 7_000, &records, &[]).await.unwrap();

        let one = s.device(d).await.unwrap().unwrap();
        let listed = s.devices().await.unwrap();
        let listed = listed.iter().find(|x| x.device_id == d).unwrap();
        assert_eq!(&one, listed, "the same summary as the list's");
        assert_eq!((one.os_user.as_str(), one.records), ("alice", 12));
        assert_eq!(s.device(quiet).await.unwrap().unwrap().records, 0);
        assert_eq!(s.device(DeviceId::random().unwrap()).await.unwrap(), None);

        let seqs = |t: Vec<cadence_verifier::store::TimelineEntry>| -> Vec<u64> {
            t.iter().map(|e| e.seq).collect()
        };
        // The last windows only (records of other kinds are not windows), oldest first.
        assert_eq!(seqs(s.timeline_tail(d, 3).await.unwrap()), [9, 10, 12]);
        assert_eq!(seqs(s.timeline_tail(d, 1).await.unwrap()), [12]);
        let all = seqs(s.timeline(d).await.unwrap());
        assert_eq!(all, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]);
        assert_eq!(seqs(s.timeline_tail(d, 5000).await.unwrap()), all);
        assert!(s.timeline_tail(quiet, 5).await.unwrap().is_empty());
    }
    each_backend!(
        "one_device_and_its_last_windows_are_read_without_the_rest",
        case
    );
}

/// Replicas starting together on a fresh PostgreSQL database: the advisory lock makes one
/// apply the migrations while the other waits, then finds them applied. Without it, both
/// would create the same tables at once and one would fail. Several fresh databases, so an
/// unlucky interleaving has more than one chance to show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_apply_each_migration_once() {
    use sqlx::Connection;
    let test = "replicas_starting_together_apply_each_migration_once";
    for round in 0..3 {
        let Some(db) = TestDb::postgres(test).await else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database = db.database(dir.path());
        let (a, b) = tokio::join!(Store::open(&database), Store::open(&database));
        let (a, b) = (
            a.unwrap_or_else(|e| panic!("round {round}, first replica: {e}")),
            b.unwrap_or_else(|e| panic!("round {round}, second replica: {e}")),
        );
        let TestDb::Postgres { url, .. } = &db else {
            unreachable!("TestDb::postgres gives PostgreSQL")
        };
        let mut conn = sqlx::PgConnection::connect(url.expose()).await.unwrap();
        let applied: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT version, COUNT(*) FROM cadence_schema GROUP BY version ORDER BY version",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        assert!(applied.len() >= 2, "round {round}: {applied:?}");
        for (i, (version, times)) in applied.iter().enumerate() {
            assert_eq!(*version, i as i64 + 1, "round {round}: {applied:?}");
            assert_eq!(
                *times, 1,
                "round {round}: version {version} recorded {times} times"
            );
        }
        // Both work on the one schema.
        let d = enroll(&a, "alice").await;
        b.commit(d, 1, &[window(1)], &[]).await.unwrap();
        assert_eq!(a.records(d, Kind::Features).await.unwrap().len(), 1);
        a.close().await;
        b.close().await;
    }
}

#[tokio::test]
async fn each_sequence_number_is_stored_once() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        let big = u64::MAX - 1;
        let first = [window(1), window(2), record(big, "{\"w\":0}", 9)];
        let out = s.commit(d, 50_000, &first, &[]).await.unwrap();
        assert_eq!(out, vec![Outcome::Stored; 3]);
        // A resend of the same envelope, and another envelope under a used number.
        let again = [window(2), record(1, "{\"w\":\"other\"}", 77), window(3)];
        let out = s.commit(d, 60_000, &again, &[]).await.unwrap();
        assert_eq!(
            out,
            vec![Outcome::Duplicate, Outcome::Reused, Outcome::Stored]
        );
        let mut hashes = s.stored_hashes(d, &[1, 2, 4, big]).await.unwrap();
        hashes.sort();
        assert_eq!(hashes, vec![(1, [1; 32]), (2, [2; 32]), (big, [9; 32])]);
        assert!(s.stored_hashes(d, &[]).await.unwrap().is_empty());

        let all = s.records(d, Kind::Features).await.unwrap();
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        // u64 above i64::MAX sort as negative numbers: stored as the i64 with the same bits.
        assert_eq!(seqs, vec![big, 1, 2, 3]);
        assert_eq!(all[1].payload, "{\"w\":1}");
        assert_eq!(all[1].created_ms, 10_001);
        assert_eq!(all[1].received_ms, 50_000);
        assert_eq!(all[3].received_ms, 60_000);
        let page = s.records_page(d, Kind::Features, Some(1), 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].seq, 2);
        assert!(s.records(d, Kind::Gap).await.unwrap().is_empty());

        let summary = &s.devices().await.unwrap()[0];
        assert_eq!(summary.records, 4);
        assert_eq!(summary.last_seen_ms, Some(60_000));
        // A batch of nothing new does not move last_seen.
        s.commit(d, 70_000, &[window(3)], &[]).await.unwrap();
        assert_eq!(s.devices().await.unwrap()[0].last_seen_ms, Some(60_000));
    }
    each_backend!("each_sequence_number_is_stored_once", case);
}

#[tokio::test]
async fn newest_heartbeat_or_consent_sets_the_state() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        let hb = |created_ms, state| HeartbeatUpdate {
            created_ms,
            state,
            queued: created_ms / 1000,
        };
        s.commit(d, 1, &[], &[hb(5_000, MonitoringState::Monitoring)])
            .await
            .unwrap();
        let state = |s: &Store| {
            let s = s.clone();
            async move { s.devices().await.unwrap()[0].state.clone() }
        };
        assert_eq!(state(s).await.as_deref(), Some("monitoring"));
        // An older heartbeat is a replay: nothing changes.
        s.commit(d, 2, &[], &[hb(4_000, MonitoringState::Error)])
            .await
            .unwrap();
        assert_eq!(state(s).await.as_deref(), Some("monitoring"));
        assert_eq!(s.devices().await.unwrap()[0].last_seen_ms, Some(2));
        // A newer consent record wins; an older one is kept but does not.
        let out = s
            .commit(d, 3, &[consent(1, Decision::Withdrawn, 6_000)], &[])
            .await
            .unwrap();
        assert_eq!(out, vec![Outcome::Stored]);
        assert_eq!(state(s).await.as_deref(), Some("withdrawn"));
        s.commit(d, 4, &[consent(2, Decision::Paused, 5_500)], &[])
            .await
            .unwrap();
        assert_eq!(state(s).await.as_deref(), Some("withdrawn"));
        s.commit(d, 5, &[consent(3, Decision::Granted, 7_000)], &[])
            .await
            .unwrap();
        assert_eq!(state(s).await.as_deref(), Some("monitoring"));
        s.commit(d, 6, &[], &[hb(8_000, MonitoringState::Paused)])
            .await
            .unwrap();
        assert_eq!(state(s).await.as_deref(), Some("paused"));

        let events = s.consent_events(Some(d), 10).await.unwrap();
        let decisions: Vec<&str> = events.iter().map(|e| e.decision.as_str()).collect();
        assert_eq!(decisions, vec!["granted", "withdrawn", "paused"]);
        assert_eq!(events[0].at_ms, 7_000);
        assert_eq!(s.consent_events(None, 1).await.unwrap().len(), 1);

        let other = enroll(s, "bob").await;
        assert!(s.consent_events(Some(other), 10).await.unwrap().is_empty());
        let counts = s.device_state_counts().await.unwrap();
        assert_eq!(counts, vec![(None, 1), (Some("paused".to_owned()), 1)]);
        s.ping().await.unwrap();
    }
    each_backend!("newest_heartbeat_or_consent_sets_the_state", case);
}

#[tokio::test]
async fn gaps_and_guard_alerts_are_stored_with_their_deliveries() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        let gap = GapRecord {
            first_seq: 3,
            last_seq: 9,
            count: 7,
            reason: "spool full".to_owned(),
        };
        let hooks = vec![
            "https://a.example/h".to_owned(),
            "http://b.example/h".to_owned(),
        ];
        let records = [
            NewRecord {
                seq: 10,
                kind: Kind::Gap,
                created_ms: 100,
                payload: serde_json::to_string(&gap).unwrap(),
                envelope_sha256: [10; 32],
                effect: Effect::Gap(gap.clone()),
            },
            NewRecord {
                seq: 11,
                kind: Kind::Alert,
                created_ms: 110,
                payload: "{\"injection\":true}".to_owned(),
                envelope_sha256: [11; 32],
                effect: Effect::Alert {
                    webhooks: hooks.clone(),
                },
            },
        ];
        let out = s.commit(d, 1_000, &records, &[]).await.unwrap();
        assert_eq!(out, vec![Outcome::Stored, Outcome::Stored]);
        assert_eq!(s.records(d, Kind::Gap).await.unwrap().len(), 1);
        // The alert's resend stores no second alert.
        s.commit(d, 1_001, &records[1..], &[]).await.unwrap();
        let alerts = s.alerts(Some(d)).await.unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!(a.kind, AlertKind::Injection);
        assert_eq!(a.seq, Some(11));
        assert_eq!(a.created_ms, 110);
        assert_eq!(a.raised_ms, 1_000);
        assert_eq!(a.evidence, "{\"injection\":true}");
        assert_eq!(a.os_user, "alice");
        let urls: Vec<&str> = a.deliveries.iter().map(|x| x.url.as_str()).collect();
        assert_eq!(urls, vec!["http://b.example/h", "https://a.example/h"]);
        assert!(a.deliveries.iter().all(|x| x.attempts == 0 && !x.failed));

        // Deliveries: due now, only for configured URLs.
        assert!(s.due_deliveries(999, &hooks, 10).await.unwrap().is_empty());
        assert!(
            s.due_deliveries(5_000, &["http://c.example/".to_owned()], 10)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.next_delivery_ms(&hooks).await.unwrap(), Some(1_000));
        let due = s.due_deliveries(5_000, &hooks, 10).await.unwrap();
        assert_eq!(due.len(), 2);
        // Another replica asking at once: PostgreSQL leased both rows to the first one.
        let other = o.another().await;
        let taken_again = other.due_deliveries(5_000, &hooks, 10).await.unwrap().len();
        match o.db {
            TestDb::Sqlite => assert_eq!(taken_again, 2, "one process, no lease"),
            TestDb::Postgres { .. } => assert_eq!(taken_again, 0, "leased to the first"),
        }
        other.close().await;
        assert_eq!(due[0].alert.id, a.id);
        assert_eq!(due[0].attempts, 0);
        let (first, second) = (due[0].url.clone(), due[1].url.clone());
        assert!(
            s.record_delivery(&due[0], &DeliveryOutcome::Delivered { at_ms: 5_001 })
                .await
                .unwrap()
        );
        assert!(
            s.record_delivery(
                &due[1],
                &DeliveryOutcome::Retry {
                    next_attempt_ms: 9_000,
                    error: "503".to_owned(),
                },
            )
            .await
            .unwrap()
        );
        assert_eq!(s.next_delivery_ms(&hooks).await.unwrap(), Some(9_000));
        assert!(
            s.due_deliveries(8_999, &hooks, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let due = s.due_deliveries(9_000, &hooks, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].url, second);
        assert_eq!(due[0].attempts, 1);
        s.record_delivery(
            &due[0],
            &DeliveryOutcome::GaveUp {
                error: "gone".to_owned(),
            },
        )
        .await
        .unwrap();
        assert_eq!(s.next_delivery_ms(&hooks).await.unwrap(), None);
        let a = &s.alerts(None).await.unwrap()[0];
        let by_url = |u: &str| a.deliveries.iter().find(|x| x.url == u).unwrap().clone();
        assert_eq!(by_url(&first).delivered_ms, Some(5_001));
        assert_eq!(by_url(&first).attempts, 1);
        assert!(by_url(&second).failed);
        assert_eq!(by_url(&second).attempts, 2);
        assert_eq!(by_url(&second).last_error.as_deref(), Some("gone"));
    }
    each_backend!(
        "gaps_and_guard_alerts_are_stored_with_their_deliveries",
        case
    );
}

#[tokio::test]
async fn a_delivery_is_recorded_only_by_the_attempt_that_holds_it() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        let hooks = vec!["https://a.example/h".to_owned()];
        let alert = NewRecord {
            seq: 1,
            kind: Kind::Alert,
            created_ms: 100,
            payload: "{\"injection\":true}".to_owned(),
            envelope_sha256: [1; 32],
            effect: Effect::Alert {
                webhooks: hooks.clone(),
            },
        };
        s.commit(d, 1_000, &[alert], &[]).await.unwrap();
        // This replica takes the delivery, then stalls past its lease; another one takes it
        // over (SQLite has no lease: one process, the same row again) and delivers it.
        let stale = s.due_deliveries(5_000, &hooks, 10).await.unwrap().remove(0);
        let other = o.another().await;
        let later = 5_000 + 3_600_000;
        let taken = other.due_deliveries(later, &hooks, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "due again once the lease ran out");
        let delivered = DeliveryOutcome::Delivered { at_ms: later + 1 };
        assert!(other.record_delivery(&taken[0], &delivered).await.unwrap());
        // The stalled attempt ends late: it must neither undo the delivery nor count again.
        let retry = DeliveryOutcome::Retry {
            next_attempt_ms: later + 2,
            error: "timed out".to_owned(),
        };
        assert!(!s.record_delivery(&stale, &retry).await.unwrap());
        assert!(!other.record_delivery(&taken[0], &delivered).await.unwrap());
        let gave_up = DeliveryOutcome::GaveUp {
            error: "late".to_owned(),
        };
        assert!(!s.record_delivery(&stale, &gave_up).await.unwrap());
        let row = s.alerts(Some(d)).await.unwrap()[0].deliveries[0].clone();
        assert_eq!(row.delivered_ms, Some(later + 1), "the delivery stands");
        assert_eq!(row.attempts, 1);
        assert!(!row.failed);
        assert_eq!(row.last_error, None);
        assert!(
            s.due_deliveries(u64::MAX, &hooks, 10)
                .await
                .unwrap()
                .is_empty()
        );
        other.close().await;
    }
    each_backend!(
        "a_delivery_is_recorded_only_by_the_attempt_that_holds_it",
        case
    );
}

fn score_row(seq: u64, trust: Option<f64>) -> ScoreRow {
    ScoreRow {
        seq,
        created_ms: 10_000 + seq,
        received_ms: 50_000,
        keyboard: Some(0.5),
        mouse: None,
        score: Some(0.25 * seq as f64),
        calibrated: trust.is_some(),
        trust,
        alert: false,
        enrolling: trust.is_none().then(|| "{\"keyboard\":1}".to_owned()),
        rejected: None,
    }
}

#[tokio::test]
async fn scoring_state_is_written_only_over_the_version_it_read() {
    async fn case(o: &Opened) {
        let s = &o.store;
        let d = enroll(s, "alice").await;
        s.commit(d, 50_000, &[window(1), window(2), window(3)], &[])
            .await
            .unwrap();
        assert_eq!(s.devices_with_unscored_windows().await.unwrap(), vec![d]);
        assert_eq!(s.unscored_windows(d, 2).await.unwrap().len(), 2);
        assert_eq!(s.profile(d).await.unwrap(), None);

        let hooks = vec!["https://a.example/h".to_owned()];
        let alert = NewAlert {
            seq: Some(2),
            created_ms: 10_002,
            kind: AlertKind::Trust,
            trust: Some(0.1),
            evidence: "{\"score\":0.5}".to_owned(),
        };
        let rows = [score_row(1, None), score_row(2, Some(0.1))];
        let update = ScoringUpdate {
            device: d,
            profile: "{\"v\":1}",
            expected_version: 0,
            scores: &rows,
            alerts: std::slice::from_ref(&alert),
            webhooks: &hooks,
            now_ms: 60_000,
        };
        let ids = s.save_scoring(&update).await.unwrap().unwrap();
        assert_eq!(ids.len(), 1);
        let p = s.profile(d).await.unwrap().unwrap();
        assert_eq!((p.json.as_str(), p.version), ("{\"v\":1}", 1));
        // A pass that read no profile, or an older version, writes nothing at all.
        let stale = ScoringUpdate {
            profile: "{\"v\":\"stale\"}",
            scores: &[score_row(3, Some(0.9))],
            alerts: &[],
            ..update.clone()
        };
        assert_eq!(s.save_scoring(&stale).await.unwrap(), None);
        assert_eq!(s.profile(d).await.unwrap().unwrap().version, 1);
        assert_eq!(s.unscored_windows(d, 10).await.unwrap().len(), 1);
        let next = ScoringUpdate {
            profile: "{\"v\":2}",
            expected_version: 1,
            scores: &[score_row(3, Some(0.3))],
            alerts: &[],
            ..update.clone()
        };
        assert_eq!(s.save_scoring(&next).await.unwrap(), Some(vec![]));
        assert!(s.devices_with_unscored_windows().await.unwrap().is_empty());
        // A pass that read its windows before another writer scored them, and the profile
        // after: the version matches but the rows exist, so it is stale and writes nothing.
        let late = ScoringUpdate {
            profile: "{\"v\":\"late\"}",
            expected_version: 2,
            scores: &[score_row(3, Some(0.99))],
            alerts: std::slice::from_ref(&alert),
            ..update.clone()
        };
        assert_eq!(s.save_scoring(&late).await.unwrap(), None);
        assert_eq!(s.profile(d).await.unwrap().unwrap().version, 2);

        let timeline = s.timeline(d).await.unwrap();
        assert_eq!(timeline.len(), 3);
        let row2 = timeline[1].score.clone().unwrap();
        assert_eq!(row2, score_row(2, Some(0.1)));
        assert_eq!(timeline[0].score.clone().unwrap(), score_row(1, None));
        let levels = s.trust_levels().await.unwrap();
        assert_eq!(levels.len(), 1);
        assert_eq!((levels[0].seq, levels[0].trust), (3, 0.3));

        let alerts = s.alerts(Some(d)).await.unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].id, ids[0]);
        assert_eq!(alerts[0].kind, AlertKind::Trust);
        assert_eq!(alerts[0].trust, Some(0.1));
        assert_eq!(alerts[0].raised_ms, 60_000);
        assert_eq!(alerts[0].deliveries.len(), 1);

        // A baseline reset from elsewhere is the same compare-and-swap.
        assert!(!s.save_profile(d, "{}", 1, 70_000).await.unwrap());
        assert!(s.save_profile(d, "{}", 2, 70_000).await.unwrap());
        let profiles = s.profiles().await.unwrap();
        assert_eq!(profiles.len(), 1);
        assert_eq!((profiles[0].0, profiles[0].1.version), (d, 3));
        let fresh = enroll(s, "bob").await;
        assert!(!s.save_profile(fresh, "{}", 4, 1).await.unwrap());
        assert!(s.save_profile(fresh, "{}", 0, 1).await.unwrap());
        assert!(!s.save_profile(fresh, "{}", 0, 1).await.unwrap());
    }
    each_backend!(
        "scoring_state_is_written_only_over_the_version_it_read",
        case
    );
}

#[tokio::test]
async fn the_population_is_one_row_replaced_whole() {
    async fn case(o: &Opened) {
        let s = &o.store;
        assert_eq!(s.population().await.unwrap(), None);
        assert_eq!(s.population_generation().await.unwrap(), None);
        let mut p = StoredPopulation {
            generation: 1,
            json: "{\"g\":1}".to_owned(),
            users: 3,
            keyboard_users: 2,
            mouse_users: 1,
            learned_ms: 99,
        };
        assert!(s.save_population(&p).await.unwrap());
        assert_eq!(s.population().await.unwrap(), Some(p.clone()));
        assert_eq!(s.population_generation().await.unwrap(), Some(1));
        p.generation = 2;
        p.json = "{\"g\":2}".to_owned();
        p.mouse_users = 0;
        assert!(s.save_population(&p).await.unwrap());
        assert_eq!(s.population().await.unwrap(), Some(p.clone()));
        // Another writer's generation 2 (learned at the same time) or an older one: kept out.
        let mut late = p.clone();
        late.json = "{\"g\":\"late\"}".to_owned();
        assert!(!s.save_population(&late).await.unwrap());
        late.generation = 1;
        assert!(!s.save_population(&late).await.unwrap());
        assert_eq!(s.population().await.unwrap(), Some(p));
        assert_eq!(s.population_generation().await.unwrap(), Some(2));
    }
    each_backend!("the_population_is_one_row_replaced_whole", case);
}

#[tokio::test]
async fn reopening_keeps_everything_and_read_only_open_needs_a_schema() {
    async fn case(o: &Opened) {
        let d = enroll(&o.store, "alice").await;
        o.store.commit(d, 1, &[window(1)], &[]).await.unwrap();
        let again = o.another().await;
        assert_eq!(again.records(d, Kind::Features).await.unwrap().len(), 1);
        again.close().await;
    }
    each_backend!(
        "reopening_keeps_everything_and_read_only_open_needs_a_schema",
        case
    );
    // Read-only commands on a database the verifier never served refuse, clearly.
    let dir = tempfile::tempdir().unwrap();
    let err = Store::open_existing(&TestDb::Sqlite.database(dir.path()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no verifier database"), "{err}");
    if let Some(pg) = TestDb::postgres("open_existing").await {
        let err = Store::open_existing(&pg.database(dir.path()))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no verifier schema"), "{err}");
        assert!(!err.to_string().contains("postgres@"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_store_each_record_once() {
    async fn case(o: &Opened) {
        let a = o.store.clone();
        let b = o.another().await;
        let d = enroll(&a, "alice").await;
        // Both "replicas" get every batch of the same agent (a retry through the other one),
        // in overlapping batches of 8, at the same time.
        let run = |s: Store, offset: u64| {
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                for start in (1..=200).step_by(4) {
                    let batch: Vec<NewRecord> =
                        (start + offset..start + offset + 8).map(window).collect();
                    outcomes.extend(s.commit(d, 1, &batch, &[]).await.unwrap());
                }
                outcomes
            })
        };
        let (x, y) = tokio::join!(run(a.clone(), 0), run(b.clone(), 2));
        let all: Vec<Outcome> = x.unwrap().into_iter().chain(y.unwrap()).collect();
        let stored = all.iter().filter(|o| **o == Outcome::Stored).count();
        assert!(!all.contains(&Outcome::Reused));
        let records = a.records(d, Kind::Features).await.unwrap();
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=206).collect::<Vec<u64>>());
        assert_eq!(stored, records.len(), "each record stored exactly once");
        b.close().await;
    }
    each_backend!("two_writers_store_each_record_once", case);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scoring_state_updates_are_never_lost() {
    async fn case(o: &Opened) {
        let a = o.store.clone();
        let b = o.another().await;
        let d = enroll(&a, "alice").await;
        const PER_WRITER: u64 = 40;
        let seqs_each = PER_WRITER;
        a.commit(
            d,
            1,
            &(1..=2 * seqs_each).map(window).collect::<Vec<_>>(),
            &[],
        )
        .await
        .unwrap();
        // Each writer scores the next unscored window and bumps a counter in the profile,
        // as a scorer pass would: read, compute, compare-and-swap, again on conflict.
        let writer = |s: Store| {
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                let mut done = 0;
                while done < PER_WRITER {
                    let (count, version) = match s.profile(d).await.unwrap() {
                        None => (0u64, 0),
                        Some(p) => (p.json.parse::<u64>().unwrap(), p.version),
                    };
                    let windows = s.unscored_windows(d, 1).await.unwrap();
                    let Some(w) = windows.first() else { break };
                    let json = (count + 1).to_string();
                    let rows = [score_row(w.seq, Some(count as f64))];
                    let u = ScoringUpdate {
                        device: d,
                        profile: &json,
                        expected_version: version,
                        scores: &rows,
                        alerts: &[],
                        webhooks: &[],
                        now_ms: 1,
                    };
                    match s.save_scoring(&u).await.unwrap() {
                        Some(_) => done += 1,
                        None => conflicts += 1,
                    }
                    tokio::task::yield_now().await;
                }
                (done, conflicts)
            })
        };
        let (x, y) = tokio::join!(writer(a.clone()), writer(b.clone()));
        let ((dx, cx), (dy, cy)) = (x.unwrap(), y.unwrap());
        eprintln!("  writes {dx} + {dy}, conflicts {cx} + {cy}");
        let p = a.profile(d).await.unwrap().unwrap();
        let scored = a
            .timeline(d)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.score.is_some())
            .count() as u64;
        assert_eq!(dx + dy, 2 * seqs_each);
        assert_eq!(p.json, (dx + dy).to_string(), "an update was lost");
        assert_eq!(p.version, dx + dy);
        assert_eq!(scored, dx + dy);
        // Each window's row was written by the pass that counted it: trusts are 0..n-1.
        let mut trusts: Vec<u64> = a
            .timeline(d)
            .await
            .unwrap()
            .iter()
            .map(|e| e.score.as_ref().unwrap().trust.unwrap() as u64)
            .collect();
        trusts.sort_unstable();
        assert_eq!(trusts, (0..2 * seqs_each).collect::<Vec<u64>>());
        b.close().await;
    }
    each_backend!("concurrent_scoring_state_updates_are_never_lost", case);
}

#[tokio::test]
async fn replicas_must_share_the_hpke_key() {
    async fn case(o: &Opened) {
        let first = VerifierKeyPair::generate().unwrap().public_key();
        let other = VerifierKeyPair::generate().unwrap().public_key();
        o.store.check_verifier_key(&first, 1).await.unwrap();
        let again = o.another().await;
        again.check_verifier_key(&first, 2).await.unwrap();
        let refused = again.check_verifier_key(&other, 3).await;
        match o.db {
            // One process per SQLite database: nothing to agree on.
            TestDb::Sqlite => refused.unwrap(),
            TestDb::Postgres { .. } => {
                let err = refused.unwrap_err().to_string();
                assert!(err.contains("copy hpke.key"), "{err}");
                assert!(err.contains(&first.to_string()), "{err}");
            }
        }
        again.close().await;
    }
    each_backend!("replicas_must_share_the_hpke_key", case);
}
