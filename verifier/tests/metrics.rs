//! `/metrics`, `/healthz` and `/readyz` against a real verifier on 127.0.0.1:0, in process: who
//! may scrape, that the text is well-formed Prometheus exposition, and that every counter moves
//! with what really happened (envelopes stored, resent, refused by reason; batches refused;
//! windows scored; alerts; devices by state).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use cadence_verifier::config::{Database, SecretToken};
use cadence_verifier::dashboard::auth::AdminAuth;
use cadence_verifier::dashboard::{self, DashboardState};
use cadence_verifier::metrics::Metrics;
use cadence_verifier::scoring::{Method, ScoringConfig, TrustConfig};
use cadence_verifier::store::Store;
use cadence_wire::{DeviceSigningKey, Kind};
use common::db::TestDb;
use common::{Device, Rng, TestServer, Typist, batch, post, wait_for};
use hyper::service::Service;
use hyper_util::service::TowerToHyperService;

const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
const SCRAPER: &str = "metrics-token-for-tests-0123456789abcd";

/// Scoring that enrolls on two windows, so a test scores real windows quickly.
fn quick_scoring() -> ScoringConfig {
    ScoringConfig {
        method: Method::ScaledManhattan,
        keyboard_enroll_windows: 2,
        mouse_enroll_windows: 2,
        min_population_users: 2,
        min_cohort_windows: 2,
        trust: TrustConfig::default(),
        ..ScoringConfig::default()
    }
}

async fn start(dir: &std::path::Path, db: &TestDb) -> TestServer {
    TestServer::start_with(dir, |s| {
        db.apply(s);
        s.admin_tokens = vec![SecretToken::new(ADMIN)];
        s.metrics_tokens = vec![SecretToken::new(SCRAPER)];
        s.scoring = quick_scoring();
    })
    .await
}

/// One parsed scrape: sample name with its labels → value, and the declared families.
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key}; have {:?}", self.samples.keys()))
    }
}

/// Parses the text exposition format strictly: every line is a `# HELP`/`# TYPE` comment or
/// a sample of a declared family, label values are quoted, values are numbers, and no sample
/// appears twice.
fn parse(text: &str) -> Scrape {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped = BTreeSet::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(!help.is_empty());
            assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (key, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{name}"
        );
        if let Some(labels) = key.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once('=').unwrap();
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(v.starts_with('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "{name} has no TYPE");
        assert!(helped.contains(family), "{name} has no HELP");
        assert!(
            samples.insert(key.to_owned(), value).is_none(),
            "{key} twice"
        );
    }
    Scrape { samples, types }
}

async fn scrape(server: &TestServer, client: &reqwest::Client) -> Scrape {
    let r = client
        .get(server.url("/metrics"))
        .bearer_auth(SCRAPER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        r.headers()
    );
    parse(&r.text().await.unwrap())
}

#[tokio::test]
async fn only_a_metrics_or_admin_token_may_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &TestDb::Sqlite).await;
    let client = server.client();
    let enroll_token = server.token.clone().unwrap();

    let r = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"cadence\"");
    for wrong in [
        "nothing-like-a-token",
        &enroll_token,
        &SCRAPER[..SCRAPER.len() - 1],
        &format!("{SCRAPER}x"),
    ] {
        let r = client
            .get(server.url("/metrics"))
            .bearer_auth(wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{wrong}");
        assert!(r.text().await.unwrap().contains("\"error\""));
    }
    let r = client
        .get(server.url("/metrics"))
        .header("authorization", format!("Basic {SCRAPER}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for good in [SCRAPER, ADMIN] {
        let r = client
            .get(server.url("/metrics"))
            .bearer_auth(good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // A metrics token opens nothing else.
    let r = client
        .get(server.url("/dashboard/api/devices"))
        .bearer_auth(SCRAPER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"database": "ok", "keys": "ok"}));
    server.stop().await;
}

#[tokio::test]
async fn counters_follow_what_ingest_and_scoring_did() {
    for db in TestDb::all("counters_follow_what_ingest_and_scoring_did").await {
        eprintln!("backend: {}", db.label());
        counters_follow_what_ingest_and_scoring_did_on(&db).await;
    }
}

async fn counters_follow_what_ingest_and_scoring_did_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), db).await;
    let client = server.client();
    let token = server.token.clone().unwrap();

    let empty = scrape(&server, &client).await;
    assert_eq!(empty.types["cadence_scoring_latency_seconds"], "histogram");
    assert_eq!(empty.types["cadence_devices"], "gauge");
    assert_eq!(empty.get("cadence_envelopes_received_total"), 0.0);
    assert_eq!(empty.get("cadence_devices{state=\"monitoring\"}"), 0.0);
    assert_eq!(empty.get("cadence_devices{state=\"unknown\"}"), 0.0);

    // Two users, four windows each: two enroll, two are scored.
    let a = Device::enroll_as(&server, &client, &token, "ann", "desk-1").await;
    let b = Device::enroll_as(&server, &client, &token, "bob", "desk-2").await;
    let mut rng = Rng::new(3);
    for (device, seed) in [(&a, 11), (&b, 12)] {
        let typist = Typist::new(seed);
        let envelopes: Vec<Vec<u8>> = (1..=4)
            .map(|seq| device.seal(Kind::Features, seq, &typist.window(&mut rng)))
            .collect();
        let (status, body) = post(&server, &client, batch(&envelopes)).await;
        assert_eq!(status, 200, "{body}");
    }
    // A resend of two, one new window and a window sealed by a stranger's key.
    let stranger = DeviceSigningKey::generate().unwrap();
    let forged = cadence_wire::seal(
        &cadence_wire::Header::new(Kind::Features, a.id, 9, 1_767_225_600_009),
        &common::features_json(9),
        &stranger,
        &a.verifier,
    )
    .unwrap();
    // Sealing is randomized: window 1 sealed again is other bytes under a used sequence
    // number (refused), while the very same bytes of window 5 sent twice are a duplicate.
    let five = a.window(5);
    let resend = vec![
        a.seal(
            Kind::Features,
            1,
            &Typist::new(11).window(&mut Rng::new(99)),
        ),
        five.clone(),
        forged,
    ];
    let (status, body) = post(&server, &client, batch(&resend)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(&server, &client, batch(&[five])).await;
    assert_eq!(status, 200, "a byte-identical resend is acknowledged");
    // A batch naming two devices, and framing that is garbage.
    let (status, _) = post(&server, &client, batch(&[a.window(6), b.window(6)])).await;
    assert_eq!(status, 400);
    let (status, _) = post(&server, &client, b"\xff\xff\xff\xffgarbage".to_vec()).await;
    assert_eq!(status, 400);
    // A heartbeat, and the guard's alert.
    let hb = a.seal(
        Kind::Heartbeat,
        100,
        br#"{"state":"monitoring","queued":0}"#,
    );
    let guard = a.seal(
        Kind::Alert,
        101,
        br#"{"kind":"alert","detector":"keystroke_injection","keys":25}"#,
    );
    let (status, body) = post(&server, &client, batch(&[hb, guard])).await;
    assert_eq!(status, 200, "{body}");

    // Every features window stored is scored (enrolling or scored) in the end.
    wait_for(30, "scoring of 9 windows", || async {
        scrape(&server, &client)
            .await
            .get("cadence_scoring_latency_seconds_count")
            == 9.0
    })
    .await;
    let m = scrape(&server, &client).await;
    // 8 + 3 + 1 + 2 (heartbeat, alert) envelopes in readable batches; the mixed batch's 2
    // were read too, the garbage batch had none.
    assert_eq!(m.get("cadence_envelopes_received_total"), 16.0);
    assert_eq!(m.get("cadence_envelopes_stored_total"), 10.0);
    assert_eq!(m.get("cadence_envelopes_duplicate_total"), 1.0);
    assert_eq!(m.get("cadence_heartbeats_total"), 1.0);
    assert_eq!(
        m.get("cadence_envelopes_rejected_total{reason=\"bad_signature\"}"),
        1.0
    );
    assert_eq!(
        m.get("cadence_envelopes_rejected_total{reason=\"seq_reused\"}"),
        1.0
    );
    assert_eq!(
        m.get("cadence_envelopes_rejected_total{reason=\"unknown_device\"}"),
        0.0
    );
    assert_eq!(
        m.get("cadence_batches_refused_total{reason=\"mixed_devices\"}"),
        1.0
    );
    assert_eq!(
        m.get("cadence_batches_refused_total{reason=\"bad_batch\"}"),
        1.0
    );
    assert_eq!(
        m.get("cadence_alerts_raised_total{kind=\"injection\"}"),
        1.0
    );
    assert_eq!(m.get("cadence_alerts_raised_total{kind=\"trust\"}"), 0.0);
    // Histogram: cumulative buckets ending at the count.
    let buckets: Vec<f64> = m
        .samples
        .iter()
        .filter(|(k, _)| k.starts_with("cadence_scoring_latency_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 5);
    assert_eq!(
        m.get("cadence_scoring_latency_seconds_bucket{le=\"+Inf\"}"),
        9.0
    );
    assert!(
        buckets.iter().all(|b| *b <= 9.0),
        "no bucket above the count: {buckets:?}"
    );
    assert!(m.get("cadence_scoring_latency_seconds_sum") >= 0.0);
    // Devices by state, from the database.
    assert_eq!(m.get("cadence_devices{state=\"monitoring\"}"), 1.0);
    assert_eq!(m.get("cadence_devices{state=\"unknown\"}"), 1.0);
    assert_eq!(m.get("cadence_devices{state=\"withdrawn\"}"), 0.0);
    assert_eq!(m.get("cadence_build_info{version=\"0.1.0\"}"), 1.0);
    // No device id, user or host name ever appears in a scrape.
    let r = client
        .get(server.url("/metrics"))
        .bearer_auth(SCRAPER)
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    for secret in [
        a.id.to_string(),
        b.id.to_string(),
        "ann".into(),
        "desk-1".into(),
    ] {
        assert!(!text.contains(&secret), "{secret} in the scrape");
    }
    server.stop().await;
}

#[tokio::test]
async fn readyz_says_when_the_database_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&Database::Sqlite(dir.path().join("verifier.db")))
        .await
        .unwrap();
    let state = Arc::new(DashboardState {
        store: store.clone(),
        metrics: Arc::new(Metrics::default()),
        auth: AdminAuth::new(&[], &[]).unwrap(),
        lockout: 50.0,
        silent_after_secs: 300,
    });
    let service = TowerToHyperService::new(dashboard::router(state));
    let ready = || async {
        let request = Request::builder()
            .uri("/readyz")
            .body(Body::empty())
            .unwrap();
        let response = service.call(request).await.unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    assert_eq!(ready().await.0, 200);
    store.close().await;
    let (status, body) = ready().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"database\":\"unreachable\""), "{body}");
}
