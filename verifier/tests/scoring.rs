//! Scoring, trust, alerts and webhooks against an in-process verifier on 127.0.0.1:0, and the
//! operator's commands (`alerts`, `timeline`, `baseline reset`, `eval`) as the binary runs
//! them, beside the running server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post as route_post;
use cadence_verifier::config::{Database, Webhook, WebhookSecret};
use cadence_verifier::scoring::{Method, ScoringConfig, TrustConfig};
use cadence_verifier::store::{
    AlertKind, DeliveryOutcome, Effect, NewRecord, Store, TimelineEntry,
};
use cadence_wire::{DeviceId, Kind};
use common::db::TestDb;
use common::{Device, Rng, TestServer, Typist, batch, post, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_cadence-verifier");
const SECRET: &str = "webhook-secret-0123456789";

/// A small configuration: 4 enrollment windows, a population from 2 users, a cohort of 4
/// windows. The method is pinned to the per-user scaled distance (the documented fallback):
/// these tests are about what the verifier does with scores (enrollment, trust, alerts,
/// storage), not about the tuning of the population model, which has its own evaluation. The
/// trust parameters are the scoring module's defaults, which go with its score scale.
fn small_scoring() -> ScoringConfig {
    ScoringConfig {
        method: Method::ScaledManhattan,
        keyboard_enroll_windows: 4,
        mouse_enroll_windows: 4,
        min_population_users: 2,
        min_cohort_windows: 4,
        trust: TrustConfig::default(),
        ..ScoringConfig::default()
    }
}

/// A verifier on `db` with [`small_scoring`].
async fn start_small(dir: &Path, db: &TestDb) -> TestServer {
    TestServer::start_with(dir, |s| {
        db.apply(s);
        s.scoring = small_scoring();
    })
    .await
}

/// Runs the binary on `data_dir`; returns success, stdout and stderr.
fn cli(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command.args(args).arg("--data-dir").arg(data_dir);
    // A PostgreSQL test's data directory names its database in this file.
    let database = data_dir.join(common::db::CONFIG_FILE);
    if database.exists() && !args.contains(&"--config") {
        command.arg("--config").arg(database);
    }
    let out = command.env("CADENCE_LOG", "warn").output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// [`cli`] off the async runtime, so the in-process server keeps serving meanwhile.
async fn cli_async(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let data_dir = data_dir.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&data_dir, &args)
    })
    .await
    .unwrap()
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

async fn timeline(server: &TestServer, device: DeviceId) -> Vec<TimelineEntry> {
    let store = server.store().await;
    let t = store.timeline(device).await.unwrap();
    store.close().await;
    t
}

/// Posts windows `seqs` of `typist` for `device` and waits until every window is scored.
async fn send_windows(
    server: &TestServer,
    client: &reqwest::Client,
    device: &Device,
    typist: &Typist,
    rng: &mut Rng,
    seqs: std::ops::RangeInclusive<u64>,
) {
    let last = *seqs.end();
    let envelopes: Vec<Vec<u8>> = seqs
        .map(|seq| device.seal(Kind::Features, seq, &typist.window(rng)))
        .collect();
    let (status, body) = post(server, client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    wait_for(20, "windows to be scored", || async {
        timeline(server, device.id)
            .await
            .iter()
            .any(|e| e.seq == last && e.score.is_some())
    })
    .await;
}

/// (seq, trust, alert, score) of the scored windows in `seqs`.
fn trust_of(
    t: &[TimelineEntry],
    seqs: std::ops::RangeInclusive<u64>,
) -> Vec<(u64, f64, bool, f64)> {
    t.iter()
        .filter(|e| seqs.contains(&e.seq))
        .map(|e| {
            let s = e.score.as_ref().unwrap();
            assert!(s.rejected.is_none(), "{s:?}");
            assert!(s.calibrated, "window {} not calibrated: {s:?}", e.seq);
            (
                e.seq,
                s.trust
                    .unwrap_or_else(|| panic!("trust did not move: {s:?}")),
                s.alert,
                s.score.unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn trust_falls_and_alerts_only_after_a_run_of_unlike_windows() {
    for db in TestDb::all("trust_falls_and_alerts_only_after_a_run_of_unlike_windows").await {
        eprintln!("backend: {}", db.label());
        trust_falls_and_alerts_only_after_a_run_of_unlike_windows_on(&db).await;
    }
}

async fn trust_falls_and_alerts_only_after_a_run_of_unlike_windows_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_small(dir.path(), db).await;
    let client = server.client();
    let token = server.token.clone().unwrap();

    // Four users enroll on their first four windows each.
    let mut fleet = Vec::new();
    for i in 0..4u64 {
        let device = Device::enroll_as(&server, &client, &token, &format!("user{i}"), "desk").await;
        let typist = Typist::new(100 + i);
        let mut rng = Rng::new(i + 1);
        send_windows(&server, &client, &device, &typist, &mut rng, 1..=4).await;
        let t = timeline(&server, device.id).await;
        let enrolling: Vec<String> = t
            .iter()
            .map(|e| e.score.as_ref().unwrap().enrolling.clone().unwrap())
            .collect();
        assert_eq!(
            enrolling,
            [
                r#"{"keyboard":3}"#,
                r#"{"keyboard":2}"#,
                r#"{"keyboard":1}"#,
                r#"{"keyboard":0}"#
            ],
            "enrollment of user{i}"
        );
        assert!(t.iter().all(|e| e.score.as_ref().unwrap().score.is_none()));
        fleet.push((device, typist, rng));
    }
    wait_for(10, "the population of four users", || async {
        let store = server.store().await;
        let p = store.population().await.unwrap();
        store.close().await;
        p.is_some_and(|p| p.keyboard_users == 4)
    })
    .await;

    let other = fleet[1].0.id.to_string();
    let (device, typist, rng) = &mut fleet[0];
    let impostor = typist.scaled(2.5);

    // Genuine windows: scored, calibrated, full trust, no alert.
    send_windows(&server, &client, device, typist, rng, 5..=9).await;
    let genuine = trust_of(&timeline(&server, device.id).await, 5..=9);
    assert!(
        genuine
            .iter()
            .all(|(_, trust, alert, _)| *trust >= 90.0 && !alert),
        "{genuine:?}"
    );

    // One odd window: trust drops, no alert; genuine windows bring it back.
    send_windows(&server, &client, device, &impostor, rng, 10..=10).await;
    let odd = trust_of(&timeline(&server, device.id).await, 10..=10)[0];
    assert!(odd.1 < genuine[4].1 && !odd.2, "odd window: {odd:?}");
    assert!(odd.3 < genuine.iter().map(|g| g.3).fold(f64::INFINITY, f64::min));
    send_windows(&server, &client, device, typist, rng, 11..=15).await;
    let back = trust_of(&timeline(&server, device.id).await, 11..=15);
    assert!(back.iter().all(|b| !b.2), "{back:?}");
    assert!(back[4].1 >= 90.0, "{back:?}");
    let store = server.store().await;
    assert!(store.alerts(None).await.unwrap().is_empty());
    store.close().await;

    // A run of impostor windows: trust falls window by window, then one alert.
    send_windows(&server, &client, device, &impostor, rng, 16..=19).await;
    let run = trust_of(&timeline(&server, device.id).await, 16..=19);
    let first_alert = run.iter().position(|r| r.2).expect("an alert in the run");
    assert!(first_alert >= 1, "alert on the first odd window: {run:?}");
    assert!(
        run[..=first_alert].windows(2).all(|w| w[1].1 < w[0].1),
        "trust falls with each window: {run:?}"
    );
    assert!(
        run[first_alert].1 < TrustConfig::default().lockout,
        "{run:?}"
    );
    assert_eq!(run.iter().filter(|r| r.2).count(), 1, "{run:?}");

    let store = server.store().await;
    let alerts = store.alerts(None).await.unwrap();
    store.close().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind, AlertKind::Trust);
    assert_eq!(a.device_id, device.id);
    assert_eq!(a.seq, Some(run[first_alert].0));
    assert!(a.trust.unwrap() < TrustConfig::default().lockout);
    assert_eq!(a.os_user, "user0");

    // The operator's view, from the binary, while the server runs.
    let data = server.data_dir.clone();
    let (ok, out, err) = cli_async(&data, &["alerts", "--json"]).await;
    assert!(ok, "{err}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0]["kind"], "trust");
    assert_eq!(listed[0]["device_id"], device.id.to_string());
    assert_eq!(listed[0]["os_user"], "user0");
    assert_eq!(listed[0]["seq"], run[first_alert].0);
    assert!(listed[0]["evidence"]["level"].as_f64().unwrap() < TrustConfig::default().lockout);
    assert_eq!(
        listed[0]["evidence"]["lockout"],
        TrustConfig::default().lockout
    );
    assert!(listed[0]["evidence"]["keyboard"].is_number());
    let (ok, out, _) = cli_async(&data, &["alerts"]).await;
    assert!(ok);
    assert!(
        out.starts_with("#1  ") && out.contains("  trust  ") && out.contains("user=user0"),
        "{out}"
    );
    let (ok, out, _) = cli_async(&data, &["alerts", "--device", &other]).await;
    assert!(ok && out.is_empty(), "{out}");

    let (ok, out, err) = cli_async(&data, &["timeline", "--user", "user0", "--json"]).await;
    assert!(ok, "{err}");
    let lines = json_lines(&out);
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=19).collect::<Vec<u64>>());
    let states: Vec<&str> = lines.iter().map(|l| l["state"].as_str().unwrap()).collect();
    assert_eq!(&states[..4], ["enrolling"; 4]);
    assert!(states[4..].iter().all(|s| *s == "scored"), "{states:?}");
    assert_eq!(lines.iter().filter(|l| l["alert"] == true).count(), 1);
    assert!(lines[4]["trust"].as_f64().unwrap() >= 90.0);
    assert_eq!(lines[3]["enrolling"]["keyboard"], 0);

    let (ok, out, _) = cli_async(&data, &["timeline", "--user", &device.id.to_string()]).await;
    assert!(ok);
    let text: Vec<&str> = out.lines().collect();
    assert_eq!(text.len(), 19, "{out}");
    assert!(
        text[3].contains("enrolling: keyboard baseline complete"),
        "{}",
        text[3]
    );
    assert!(
        text[4].contains("calibrated=yes") && text[4].contains("trust="),
        "{}",
        text[4]
    );
    assert!(!out.contains("hold_p50"), "no feature values: {out}");

    let (ok, _, err) = cli_async(&data, &["timeline", "--user", "nobody"]).await;
    assert!(!ok && err.contains("no device is enrolled"), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn windows_stored_before_a_start_are_scored_after_it() {
    for db in TestDb::all("windows_stored_before_a_start_are_scored_after_it").await {
        eprintln!("backend: {}", db.label());
        windows_stored_before_a_start_are_scored_after_it_on(&db).await;
    }
}

async fn windows_stored_before_a_start_are_scored_after_it_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let settings = |s: &mut cadence_verifier::Settings| {
        db.apply(s);
        s.scoring = small_scoring();
    };
    let server = TestServer::start_with(dir.path(), settings).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    server.stop().await;

    // Records committed with no scorer running (as if the process died right after commit).
    let store = Store::open(&db.database(dir.path())).await.unwrap();
    let typist = Typist::new(7);
    let mut rng = Rng::new(7);
    let records: Vec<NewRecord> = (1..=3u64)
        .map(|seq| NewRecord {
            seq,
            kind: Kind::Features,
            created_ms: 1_767_225_600_000 + seq,
            payload: String::from_utf8(typist.window(&mut rng)).unwrap(),
            envelope_sha256: [seq as u8; 32],
            effect: Effect::None,
        })
        .collect();
    store.commit(device.id, 1, &records, &[]).await.unwrap();
    store.close().await;

    let server = TestServer::start_with(dir.path(), settings).await;
    wait_for(20, "catch-up scoring", || async {
        timeline(&server, device.id)
            .await
            .iter()
            .all(|e| e.score.is_some())
    })
    .await;
    let t = timeline(&server, device.id).await;
    assert_eq!(t.len(), 3);
    assert_eq!(
        t[2].score.as_ref().unwrap().enrolling.as_deref(),
        Some(r#"{"keyboard":1}"#)
    );
    server.stop().await;
}

/// A window of the oldest feature schema the verifier reads, as an agent older than this
/// verifier sends it; with a mouse block when `mouse` is given.
fn previous_schema_window(typist: &Typist, rng: &mut Rng, mouse: Option<f64>) -> Vec<u8> {
    use cadence_wire::features::{KEYBOARD_FEATURES, MOUSE_FEATURES, PREVIOUS};
    let p = PREVIOUS[PREVIOUS.len() - 1];
    let mut v: serde_json::Value = serde_json::from_slice(&typist.window(rng)).unwrap();
    v["schema"] = p.schema.into();
    let k = v["keyboard"].as_object_mut().unwrap();
    for (n, _) in &KEYBOARD_FEATURES[p.keyboard_len..] {
        k.remove(*n).unwrap();
    }
    if let Some(base) = mouse {
        let m: serde_json::Map<String, serde_json::Value> = MOUSE_FEATURES[..p.mouse_len]
            .iter()
            .enumerate()
            .map(|(i, (n, _))| ((*n).to_owned(), (base + i as f64).into()))
            .collect();
        v["mouse"] = serde_json::Value::Object(m);
        v["mouse_events"] = 400.into();
    }
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn windows_of_an_older_agent_are_stored_not_scored() {
    for db in TestDb::all("windows_of_an_older_agent_are_stored_not_scored").await {
        eprintln!("backend: {}", db.label());
        windows_of_an_older_agent_are_stored_not_scored_on(&db).await;
    }
}

/// A verifier upgraded before its agents keeps their windows (acknowledged, stored once,
/// listed) and says why it does not score them (their values mean other things, even in the
/// mouse block whose names are the same); current windows from the same device enroll as
/// usual.
async fn windows_of_an_older_agent_are_stored_not_scored_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_small(dir.path(), db).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    let typist = Typist::new(11);
    let mut rng = Rng::new(11);
    let envelopes = vec![
        device.seal(
            Kind::Features,
            1,
            &previous_schema_window(&typist, &mut rng, None),
        ),
        device.seal(
            Kind::Features,
            2,
            &previous_schema_window(&typist, &mut rng, Some(100.0)),
        ),
        device.seal(Kind::Features, 3, &typist.window(&mut rng)),
    ];
    let (status, body) = post(&server, &client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["acked"], serde_json::json!([1, 2, 3]), "{body}");
    wait_for(20, "every window to be looked at", || async {
        let t = timeline(&server, device.id).await;
        t.len() == 3 && t.iter().all(|e| e.score.is_some())
    })
    .await;
    let t = timeline(&server, device.id).await;
    for older in &t[..2] {
        let older = older.score.as_ref().unwrap();
        let why = older.rejected.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("unknown_schema")
                && why.contains("cadence.features.v1 window")
                && why.contains("older than this verifier"),
            "{older:?}"
        );
        assert!(
            older.score.is_none() && older.enrolling.is_none(),
            "{older:?}"
        );
    }
    // Four enrollment windows per modality: the older ones counted for neither.
    let current = t[2].score.as_ref().unwrap();
    assert!(current.rejected.is_none(), "{current:?}");
    assert_eq!(current.enrolling.as_deref(), Some(r#"{"keyboard":3}"#));

    // The operator's listing shows all three, the older ones as stored.
    let id = device.id.to_string();
    let (ok, out, err) = cli_async(&server.data_dir, &["windows", "--device", &id]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("schema=cadence.features.v1"), "{out}");
    assert!(lines[1].contains("blocks=keyboard,mouse"), "{out}");
    assert!(!lines[2].contains("schema="), "{out}");
    let (ok, out, err) = cli_async(&server.data_dir, &["windows", "--device", &id, "--json"]).await;
    assert!(ok, "{err}");
    let rows = json_lines(&out);
    assert_eq!(rows[0]["vector"]["schema"], "cadence.features.v1");
    assert_eq!(rows[1]["vector"]["mouse"]["speed_p50"], 101.0);
    assert_eq!(rows[2]["vector"]["schema"], cadence_wire::features::SCHEMA);
    server.stop().await;
}

/// The guard's payload, as the agent sends it.
fn guard_alert() -> Vec<u8> {
    serde_json::json!({
        "kind": "alert",
        "detector": "keystroke_injection",
        "rule": "too_fast",
        "keys": 25,
        "mean_interval_ms": 9.5,
        "median_hold_ms": 3.0,
        "os_flagged": 0
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn an_injection_alert_from_the_guard_becomes_an_alert() {
    for db in TestDb::all("an_injection_alert_from_the_guard_becomes_an_alert").await {
        eprintln!("backend: {}", db.label());
        an_injection_alert_from_the_guard_becomes_an_alert_on(&db).await;
    }
}

async fn an_injection_alert_from_the_guard_becomes_an_alert_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(dir.path(), db).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    let envelope = device.seal(Kind::Alert, 7, &guard_alert());
    let (status, body) = post(&server, &client, batch(std::slice::from_ref(&envelope))).await;
    assert_eq!(status, 200, "{body}");

    let store = server.store().await;
    let alerts = store.alerts(Some(device.id)).await.unwrap();
    assert_eq!(
        store.records(device.id, Kind::Alert).await.unwrap().len(),
        1
    );
    store.close().await;
    assert_eq!(alerts.len(), 1, "stored with the record: {alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.kind, AlertKind::Injection);
    assert_eq!(a.seq, Some(7));
    assert_eq!(a.created_ms, 1_767_225_600_007);
    assert_eq!(a.trust, None);
    assert!(a.deliveries.is_empty(), "no webhook configured");

    // A resend is a duplicate: no second alert.
    let (status, body) = post(&server, &client, batch(&[envelope])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"duplicates\":[7]"), "{body}");

    let (ok, out, err) = cli_async(&server.data_dir, &["alerts"]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("  injection  ") && out.contains("rule=too_fast") && out.contains("keys=25"),
        "{out}"
    );
    let (ok, out, _) = cli_async(&server.data_dir, &["alerts", "--json"]).await;
    assert!(ok);
    let v = &json_lines(&out)[0];
    assert_eq!(v["kind"], "injection");
    assert_eq!(v["evidence"]["detector"], "keystroke_injection");
    assert_eq!(v["evidence"]["mean_interval_ms"], 9.5);
    assert_eq!(v["hostname"], "laptop-1");
    server.stop().await;
}

/// What the receiver saw: when, headers, body.
type Seen = Arc<Mutex<Vec<(Instant, HeaderMap, Bytes)>>>;

/// A plain-HTTP webhook receiver on 127.0.0.1:0 answering `script` in turn (then 200).
async fn receiver(script: Vec<u16>) -> (String, Seen) {
    struct Recv {
        seen: Seen,
        script: Vec<u16>,
    }
    async fn hook(State(r): State<Arc<Recv>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let mut seen = r.seen.lock().unwrap();
        let status = r.script.get(seen.len()).copied().unwrap_or(200);
        seen.push((Instant::now(), headers, body));
        StatusCode::from_u16(status).unwrap()
    }
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route("/in/{*rest}", route_post(hook))
        .with_state(Arc::new(Recv {
            seen: seen.clone(),
            script,
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
            });
        }
    });
    (format!("http://{addr}/in/s3cr3t-path"), seen)
}

fn webhook(url: &str) -> Webhook {
    Webhook {
        url: url.to_owned(),
        secret: WebhookSecret::new(SECRET),
        ca_file: None,
    }
}

#[tokio::test]
async fn alerts_are_posted_to_webhooks_signed_and_retried() {
    for db in TestDb::all("alerts_are_posted_to_webhooks_signed_and_retried").await {
        eprintln!("backend: {}", db.label());
        alerts_are_posted_to_webhooks_signed_and_retried_on(&db).await;
    }
}

async fn alerts_are_posted_to_webhooks_signed_and_retried_on(db: &TestDb) {
    let (url, seen) = receiver(vec![500, 500]).await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| {
        db.apply(s);
        s.webhooks = vec![webhook(&url)];
    })
    .await;
    let client = server.client();
    let device = Device::enroll_as(
        &server,
        &client,
        server.token.as_deref().unwrap(),
        "carol",
        "desk-9",
    )
    .await;
    let (status, _) = post(
        &server,
        &client,
        batch(&[device.seal(Kind::Alert, 3, &guard_alert())]),
    )
    .await;
    assert_eq!(status, 200);

    let delivered = || async {
        let store = server.store().await;
        let a = store.alerts(None).await.unwrap();
        store.close().await;
        a
    };
    wait_for(30, "the webhook delivery", || async {
        delivered().await.first().is_some_and(|a| {
            a.deliveries
                .first()
                .is_some_and(|d| d.delivered_ms.is_some())
        })
    })
    .await;
    let alerts = delivered().await;
    let d = &alerts[0].deliveries[0];
    assert_eq!(d.attempts, 3, "two 500s, then 200: {d:?}");
    assert!(!d.failed);
    assert_eq!(
        d.last_error.as_deref(),
        Some("HTTP 500 Internal Server Error")
    );

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one request per attempt");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another-secret-0123456");
    for (_, headers, body) in &seen {
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-cadence-delivery"], alerts[0].id.to_string());
        let sig = headers["x-cadence-signature"].to_str().unwrap();
        let hex = sig.strip_prefix("sha256=").expect("sha256= prefix");
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        ring::hmac::verify(&key, body, &tag).expect("signature verifies with the secret");
        assert!(ring::hmac::verify(&wrong, body, &tag).is_err());
        assert_eq!(body, &seen[0].2, "the same body on every retry");
    }
    let body: serde_json::Value = serde_json::from_slice(&seen[0].2).unwrap();
    assert_eq!(body["alert_id"], alerts[0].id);
    assert_eq!(body["kind"], "injection");
    assert_eq!(body["device_id"], device.id.to_string());
    assert_eq!(body["os_user"], "carol");
    assert_eq!(body["hostname"], "desk-9");
    assert_eq!(body["created_ms"], 1_767_225_600_003u64);
    assert!(body["trust"].is_null());
    assert_eq!(body["evidence"]["rule"], "too_fast");
    // Backoff: about 1 s, then about 2 s.
    let gap1 = seen[1].0 - seen[0].0;
    let gap2 = seen[2].0 - seen[1].0;
    assert!(gap1 >= Duration::from_millis(900), "{gap1:?}");
    assert!(
        gap2 >= Duration::from_millis(1900) && gap2 > gap1,
        "{gap2:?}"
    );

    let (ok, out, err) = cli_async(&server.data_dir, &["alerts", "--json"]).await;
    assert!(ok, "{err}");
    let v = &json_lines(&out)[0];
    assert_eq!(v["deliveries"][0]["attempts"], 3);
    assert!(v["deliveries"][0]["delivered_ms"].is_u64());
    assert!(!out.contains("s3cr3t") && !out.contains(SECRET), "{out}");
    let (ok, out, _) = cli_async(&server.data_dir, &["alerts"]).await;
    assert!(ok && out.contains("webhooks: 1/1 delivered"), "{out}");
    server.stop().await;
}

#[tokio::test]
async fn a_delivery_is_given_up_after_fifteen_attempts() {
    // A port nothing listens on: every attempt fails at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), |s| s.webhooks = vec![webhook(&url)]).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    let (status, _) = post(
        &server,
        &client,
        batch(&[device.seal(Kind::Alert, 1, &guard_alert())]),
    )
    .await;
    assert_eq!(status, 200);
    async fn delivery(server: &TestServer) -> cadence_verifier::store::DeliveryState {
        let store = server.store().await;
        let a = store.alerts(None).await.unwrap();
        store.close().await;
        a[0].deliveries[0].clone()
    }
    wait_for(10, "the first attempt", || async {
        delivery(&server).await.attempts >= 1
    })
    .await;
    let data_dir = server.data_dir.clone();
    server.stop().await;

    // Thirteen more failed attempts, recorded as the dispatcher would, due at once.
    let store = Store::open(&Database::Sqlite(data_dir.join("verifier.db")))
        .await
        .unwrap();
    let alert = store.alerts(None).await.unwrap().remove(0);
    let (id, made) = (alert.id, alert.deliveries[0].attempts);
    assert!(made >= 1);
    for _ in made..14 {
        let retry = DeliveryOutcome::Retry {
            next_attempt_ms: 0,
            error: "test".to_owned(),
        };
        let due = store
            .due_deliveries(u64::MAX, std::slice::from_ref(&url), 1)
            .await
            .unwrap();
        assert_eq!(due[0].alert.id, id);
        assert!(store.record_delivery(&due[0], &retry).await.unwrap());
    }
    assert_eq!(
        store.alerts(None).await.unwrap()[0].deliveries[0].attempts,
        14
    );
    store.close().await;

    let server = TestServer::start_with(dir.path(), |s| s.webhooks = vec![webhook(&url)]).await;
    wait_for(20, "the delivery to be given up", || async {
        delivery(&server).await.failed
    })
    .await;
    let d = delivery(&server).await;
    assert_eq!(d.attempts, 15);
    assert!(d.delivered_ms.is_none());
    let error = d.last_error.unwrap();
    assert!(!error.contains("/hook") && error != "test", "{error}");
    let (ok, out, _) = cli_async(&server.data_dir, &["alerts"]).await;
    assert!(ok && out.contains("0/1 delivered, 1 given up"), "{out}");
    server.stop().await;
}

#[tokio::test]
async fn baseline_reset_makes_the_next_windows_enroll_again() {
    for db in TestDb::all("baseline_reset_makes_the_next_windows_enroll_again").await {
        eprintln!("backend: {}", db.label());
        baseline_reset_makes_the_next_windows_enroll_again_on(&db).await;
    }
}

async fn baseline_reset_makes_the_next_windows_enroll_again_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_small(dir.path(), db).await;
    let client = server.client();
    let device = Device::enroll_as(
        &server,
        &client,
        server.token.as_deref().unwrap(),
        "bob",
        "pc",
    )
    .await;
    let typist = Typist::new(42);
    let mut rng = Rng::new(42);
    send_windows(&server, &client, &device, &typist, &mut rng, 1..=4).await;
    let profile = || async {
        let store = server.store().await;
        let p = store.profile(device.id).await.unwrap().unwrap();
        store.close().await;
        serde_json::from_str::<serde_json::Value>(&p.json).unwrap()
    };
    assert!(profile().await["keyboard"]["baseline"].is_object());

    // Mouse only: the keyboard baseline stays.
    let (ok, out, err) = cli_async(
        &server.data_dir,
        &["baseline", "reset", "--user", "bob", "--modality", "mouse"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("reset mouse (nothing learned yet)"), "{out}");
    assert!(profile().await["keyboard"]["baseline"].is_object());

    let (ok, out, err) = cli_async(
        &server.data_dir,
        &["baseline", "reset", "--user", &device.id.to_string()],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("bob@pc") && out.contains("reset keyboard baseline (4 enrollment windows"),
        "{out}"
    );
    let p = profile().await;
    assert!(p["keyboard"]["baseline"].is_null(), "{p}");
    assert_eq!(p["trust"]["level"], 100.0);

    // The next windows enroll afresh.
    send_windows(&server, &client, &device, &typist, &mut rng, 5..=6).await;
    let t = timeline(&server, device.id).await;
    let enrolling: Vec<Option<&str>> = t[4..]
        .iter()
        .map(|e| e.score.as_ref().unwrap().enrolling.as_deref())
        .collect();
    assert_eq!(
        enrolling,
        [Some(r#"{"keyboard":3}"#), Some(r#"{"keyboard":2}"#)]
    );
    assert!(
        t[4..]
            .iter()
            .all(|e| e.score.as_ref().unwrap().score.is_none())
    );

    let (ok, _, err) =
        cli_async(&server.data_dir, &["baseline", "reset", "--user", "nobody"]).await;
    assert!(!ok && err.contains("no device is enrolled"), "{err}");
    server.stop().await;
}

/// One labelled line of `cadence-agent replay` output.
fn labelled(typist: &Typist, rng: &mut Rng, subject: &str, segment: usize) -> serde_json::Value {
    let mut v = serde_json::to_value(typist.vector(rng)).unwrap();
    v["subject"] = subject.into();
    v["session"] = "s1".into();
    v["segment"] = segment.to_string().into();
    v
}

#[test]
fn eval_reports_figures_rejections_and_users_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let mut rng = Rng::new(9);
    for u in 0..8u64 {
        let t = Typist::new(500 + u);
        for i in 0..14 {
            lines.push(labelled(&t, &mut rng, &format!("u{u}"), i).to_string());
        }
    }
    let short = Typist::new(999);
    for i in 0..3 {
        lines.push(labelled(&short, &mut rng, "shorty", i).to_string());
    }
    let good = labelled(&short, &mut rng, "u0", 99);
    let mut unknown = good.clone();
    unknown["schema"] = "cadence.features.v9".into();
    let mut missing = good.clone();
    missing["keyboard"]
        .as_object_mut()
        .unwrap()
        .remove("hold_p50");
    let mut null = good.clone();
    null["keyboard"]["hold_p50"] = serde_json::Value::Null;
    let huge = good.to_string().replacen(
        &format!("\"hold_p50\":{}", good["keyboard"]["hold_p50"]),
        "\"hold_p50\":1e999",
        1,
    );
    assert!(huge.contains("1e999"));
    lines.extend([
        unknown.to_string(),
        missing.to_string(),
        null.to_string(),
        huge,
    ]);
    let vectors = dir.path().join("vectors.jsonl");
    std::fs::write(&vectors, lines.join("\n") + "\n").unwrap();
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        "[scoring]\nmethod = \"scaled_manhattan\"\nmin_cohort_windows = 4\n",
    )
    .unwrap();
    let v = vectors.to_str().unwrap();
    let c = config.to_str().unwrap();

    let (ok, out, err) = cli(
        dir.path(),
        &[
            "eval",
            "--vectors",
            v,
            "--enroll",
            "4",
            "--impostors",
            "3",
            "--config",
            c,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("4 rejected (missing_feature: 1, non_finite: 2, unknown_schema: 1)"),
        "{out}"
    );
    assert!(out.contains("1 user(s) left out"), "{out}");
    assert!(out.contains("EER") && out.contains("ROC AUC"), "{out}");
    assert!(
        out.contains("FAR at FRR 1%") && out.contains("FAR at FRR 5%"),
        "{out}"
    );
    assert!(out.contains("ANIA") && out.contains("ANGA"), "{out}");

    let (ok, out, err) = cli(
        dir.path(),
        &[
            "eval",
            "--vectors",
            v,
            "--enroll",
            "4",
            "--impostors",
            "3",
            "--config",
            c,
            "--json",
        ],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        report["method"], "scaled_manhattan",
        "--config's [scoring] is used"
    );
    assert_eq!(report["lines"], 8 * 14 + 3 + 4);
    assert_eq!(report["accepted"], 8 * 14 + 3);
    assert_eq!(report["rejected"]["unknown_schema"], 1);
    assert_eq!(report["rejected"]["missing_feature"], 1);
    assert_eq!(report["rejected"]["non_finite"], 2);
    let kb = &report["modalities"][0];
    assert_eq!(kb["modality"], "keyboard");
    assert_eq!(kb["users"], 8);
    assert_eq!(kb["users_left_out"], 1);
    assert_eq!(kb["genuine_attempts"], 8 * 10);
    assert_eq!(kb["impostor_attempts"], 8 * 3);
    // Eight clearly different typists: the scoring must tell them apart.
    assert!(kb["eer_mean"].as_f64().unwrap() < 0.1, "{kb}");
    assert!(kb["auc"].as_f64().unwrap() > 0.9, "{kb}");
    assert!(kb["eer_global"].as_f64().unwrap() < 0.2, "{kb}");
    assert!(
        kb["continuous"]["impostor_runs"].as_u64().unwrap() > 0,
        "{kb}"
    );

    // --min-windows raises the bar: 14 windows per user are now too few for everyone.
    let (ok, out, err) = cli(
        dir.path(),
        &[
            "eval",
            "--vectors",
            v,
            "--enroll",
            "4",
            "--min-windows",
            "15",
            "--config",
            c,
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("9 user(s) left out with fewer than 15"),
        "{out}"
    );

    // Too few windows for anyone: said so, nothing evaluated.
    let few = dir.path().join("few.jsonl");
    std::fs::write(&few, lines[..3].join("\n")).unwrap();
    let (ok, out, err) = cli(dir.path(), &["eval", "--vectors", few.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("1 user(s) left out with fewer than"), "{out}");
    assert!(out.contains("too few users"), "{out}");

    // Nothing usable at all: the refusals are still counted, with their reasons.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines[lines.len() - 4..].join("\n")).unwrap();
    let (ok, _, err) = cli(dir.path(), &["eval", "--vectors", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("4 lines, 0 accepted")
            && err.contains("missing_feature: 1, non_finite: 2, unknown_schema: 1")
            && err.contains("rejected line 1: unknown_schema"),
        "{err}"
    );

    let (ok, _, err) = cli(dir.path(), &["eval", "--vectors", "/nonexistent/v.jsonl"]);
    assert!(!ok);
    assert!(
        err.contains("reading") && err.contains("/nonexistent/v.jsonl"),
        "{err}"
    );
}
