//! The analysts' dashboard against a real verifier on 127.0.0.1:0, in process: who may read it
//! (tokens, the sign-in cookie), query validation, no data through a guessed id, and the pages
//! in headless Chromium over data really ingested as sealed envelopes and really scored: they
//! load without console errors, the chart draws every scored window, stored text stays text,
//! and a screenshot is kept in `target/test-artifacts/`.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: file
//! descriptors 3 and 4, NUL-separated JSON), so no WebSocket client is needed. Console errors
//! are collected from `Runtime.consoleAPICalled` (type error/assert), `Runtime.exceptionThrown`
//! and `Log.entryAdded` (level error: failed loads, Content-Security-Policy refusals).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cadence_verifier::config::SecretToken;
use cadence_verifier::dashboard::auth::{AdminAuth, SESSION_MS};
use cadence_verifier::scoring::{Method, ScoringConfig, TrustConfig};
use cadence_wire::{DeviceId, Kind};
use common::db::TestDb;
use common::{Device, Rng, TestServer, Typist, batch, post, wait_for};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-tests-0123456789abcdef";
const SCRAPER: &str = "metrics-token-for-tests-0123456789abcd";
const NOW_MS: u64 = 1_767_225_600_000;
/// A user name and host name an attacker might enroll with, hoping the dashboard renders them
/// as markup.
const EVIL_USER: &str = "<img src=x onerror=\"window.pwned=1\">";
const EVIL_HOST: &str = "\"><script>window.pwned=2</script>";

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

async fn start(dir: &Path, db: &TestDb) -> TestServer {
    TestServer::start_with(dir, |s| {
        db.apply(s);
        s.admin_tokens = vec![SecretToken::new(ADMIN)];
        s.metrics_tokens = vec![SecretToken::new(SCRAPER)];
        s.scoring = small_scoring();
    })
    .await
}

/// A client that trusts the server's CA and does not follow redirects.
fn plain_client(server: &TestServer) -> reqwest::Client {
    cadence_verifier::tls::install_crypto_provider();
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&server.ca_pem).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get(
    client: &reqwest::Client,
    server: &TestServer,
    path: &str,
    auth: Auth<'_>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = client.get(server.url(path));
    request = match auth {
        Auth::None => request,
        Auth::Bearer(t) => request.bearer_auth(t),
        Auth::Cookie(c) => request.header("cookie", format!("cadence_session={c}")),
    };
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
}

fn consent(decision: &str, at_ms: u64, os_user: &str) -> Vec<u8> {
    json!({
        "decision": decision,
        "notice_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "at_ms": at_ms,
        "os_user": os_user,
    })
    .to_string()
    .into_bytes()
}

/// The data every test here reads: three users enrolled and scored, user0 with a run of
/// impostor windows (one trust alert), user1 with a guard alert, consent records, and a
/// fourth device whose user and host names are markup.
struct Fleet {
    devices: Vec<Device>,
    evil: Device,
}

async fn fleet(server: &TestServer, client: &reqwest::Client) -> Fleet {
    let token = server.token.clone().unwrap();
    let mut devices = Vec::new();
    let mut typists = Vec::new();
    let mut rng = Rng::new(5);
    for i in 0..3u64 {
        let device = Device::enroll_as(server, client, &token, &format!("user{i}"), "desk").await;
        let typist = Typist::new(200 + i);
        send(server, client, &device, &typist, &mut rng, 1..=4).await;
        devices.push(device);
        typists.push(typist);
    }
    wait_for(20, "the population of three users", || async {
        let store = server.store().await;
        let p = store.population().await.unwrap();
        store.close().await;
        p.is_some_and(|p| p.keyboard_users == 3)
    })
    .await;
    let impostor = typists[0].scaled(2.5);
    send(server, client, &devices[0], &typists[0], &mut rng, 5..=14).await;
    send(server, client, &devices[0], &impostor, &mut rng, 15..=18).await;
    send(server, client, &devices[0], &typists[0], &mut rng, 19..=22).await;
    send(server, client, &devices[1], &typists[1], &mut rng, 5..=8).await;

    for (i, d) in devices.iter().enumerate() {
        let user = format!("user{i}");
        let mut records = vec![d.seal(Kind::Consent, 100, &consent("granted", NOW_MS, &user))];
        if i == 2 {
            records.push(d.seal(
                Kind::Consent,
                101,
                &consent("withdrawn", NOW_MS + 60_000, &user),
            ));
        }
        let (status, body) = post(server, client, batch(&records)).await;
        assert_eq!(status, 200, "{body}");
    }
    let guard = devices[1].seal(
        Kind::Alert,
        102,
        br#"{"kind":"alert","detector":"keystroke_injection","rule":"too_fast","keys":25,"mean_interval_ms":9.5}"#,
    );
    let (status, body) = post(server, client, batch(&[guard])).await;
    assert_eq!(status, 200, "{body}");

    let evil = Device::enroll_as(server, client, &token, EVIL_USER, EVIL_HOST).await;
    let (status, body) = post(
        server,
        client,
        batch(&[evil.seal(Kind::Consent, 1, &consent("granted", NOW_MS, EVIL_USER))]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    Fleet { devices, evil }
}

async fn send(
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
        let store = server.store().await;
        let t = store.timeline(device.id).await.unwrap();
        store.close().await;
        t.iter().any(|e| e.seq == last && e.score.is_some())
    })
    .await;
}

#[tokio::test]
async fn the_admin_api_needs_a_token_checks_queries_and_leaks_nothing() {
    let test = "the_admin_api_needs_a_token_checks_queries_and_leaks_nothing";
    for db in TestDb::all(test).await {
        eprintln!("backend: {}", db.label());
        the_admin_api_needs_a_token_checks_queries_and_leaks_nothing_on(&db).await;
    }
}

async fn the_admin_api_needs_a_token_checks_queries_and_leaks_nothing_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), db).await;
    let client = plain_client(&server);
    let f = fleet(&server, &client).await;
    let enroll_token = server.token.clone().unwrap();
    let a = f.devices[0].id;
    let b = f.devices[1].id;

    // Expired and forged sessions, made with the real token's key or without it.
    let expired = AdminAuth::new(&[SecretToken::new(ADMIN)], &[])
        .unwrap()
        .sign_in(ADMIN, cadence_verifier::api::now_ms() - SESSION_MS - 1)
        .unwrap();
    let forged = AdminAuth::new(&[SecretToken::new(format!("{ADMIN}-other"))], &[])
        .unwrap()
        .sign_in(&format!("{ADMIN}-other"), cadence_verifier::api::now_ms())
        .unwrap();

    let timeline_a = format!("/dashboard/api/timeline?device={a}");
    let api_paths = [
        "/dashboard/api/devices",
        "/dashboard/api/users",
        "/dashboard/api/alerts",
        "/dashboard/api/consent",
        &timeline_a,
    ];
    let refused = [
        Auth::None,
        Auth::Bearer("wrong-token"),
        Auth::Bearer(&enroll_token),
        Auth::Bearer(SCRAPER),
        Auth::Bearer(&ADMIN[1..]),
        Auth::Cookie(&expired),
        Auth::Cookie(&forged),
        Auth::Cookie("v1.99999999999999.00"),
        Auth::Cookie(ADMIN),
    ];
    for path in api_paths {
        for (i, auth) in refused.iter().enumerate() {
            let (status, headers, body) = get(&client, &server, path, *auth).await;
            assert_eq!(status, 401, "{path} with refused credential #{i}: {body}");
            assert_eq!(headers["www-authenticate"], "Bearer realm=\"cadence\"");
            assert!(!body.contains(&a.to_string()), "{path} #{i} leaked: {body}");
            assert!(body.contains("\"error\""), "{body}");
        }
        let (status, headers, body) = get(&client, &server, path, Auth::Bearer(ADMIN)).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
    for page in [
        "/dashboard/",
        "/dashboard/alerts",
        "/dashboard/consent",
        "/dashboard/user",
    ] {
        for (i, auth) in refused.iter().enumerate() {
            let (status, _, body) = get(&client, &server, page, *auth).await;
            assert_eq!(status, 401, "{page} #{i}");
            assert!(body.contains("action=\"/dashboard/login\""), "sign-in form");
        }
    }

    // Signing in: a wrong token is 401 without a cookie; the right one sets a strict cookie.
    let wrong = client
        .post(server.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let right = client
        .post(server.url("/dashboard/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 303);
    assert_eq!(right.headers()["location"], "/dashboard/");
    let set = right.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains(ADMIN), "the cookie is not the token");
    let session = set
        .strip_prefix("cadence_session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (status, _, body) = get(
        &client,
        &server,
        "/dashboard/api/devices",
        Auth::Cookie(&session),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, page) = get(&client, &server, "/dashboard/", Auth::Cookie(&session)).await;
    assert_eq!(status, 200);
    assert!(page.contains("data-page=\"overview\""));
    let out = client
        .post(server.url("/dashboard/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Query parameters: each mistake is a 400 that says what is wrong.
    for (path, says) in [
        ("/dashboard/api/timeline", "device: required"),
        (
            "/dashboard/api/timeline?device=xyz",
            "device: not a device id",
        ),
        (
            "/dashboard/api/timeline?device=../../etc",
            "device: not a device id",
        ),
        (
            &format!("/dashboard/api/timeline?device={a}&limit=0"),
            "limit: must be",
        ),
        (
            &format!("/dashboard/api/timeline?device={a}&limit=99999"),
            "limit: must be",
        ),
        (
            &format!("/dashboard/api/timeline?device={a}&device={b}"),
            "more than once",
        ),
        ("/dashboard/api/alerts?limit=abc", "limit: must be"),
        (
            "/dashboard/api/alerts?device=%27%20OR%201=1",
            "device: not a device id",
        ),
        (
            "/dashboard/api/consent?user=user0",
            "unknown query parameter \"user\"",
        ),
        ("/dashboard/api/devices?limit=5", "takes: none"),
    ] {
        let (status, _, body) = get(&client, &server, path, Auth::Bearer(ADMIN)).await;
        assert_eq!(status, 400, "{path}: {body}");
        let error = serde_json::from_str::<Value>(&body).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(error.contains(says), "{path}: {error}");
    }

    // A guessed id that no device has: 404 and nothing else, on every endpoint taking one.
    let guessed = DeviceId::random().unwrap();
    for path in [
        format!("/dashboard/api/timeline?device={guessed}"),
        format!("/dashboard/api/alerts?device={guessed}"),
        format!("/dashboard/api/consent?device={guessed}"),
    ] {
        let (status, _, body) = get(&client, &server, &path, Auth::Bearer(ADMIN)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body, r#"{"error":"no such device"}"#);
    }

    // One device's id gives that device's data only, and only what identity assurance
    // needs: scores, trust and alerts in order. Nothing that measures how much or when a
    // person worked: no record or window count, no per-window time or sequence number.
    let (_, _, body) = get(&client, &server, &timeline_a, Auth::Bearer(ADMIN)).await;
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["device"]["device_id"], a.to_string());
    assert_eq!(t["device"]["status"], "monitoring");
    assert_activity_free(&t);
    let windows = t["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 22, "every window of user0");
    let stored = server.store().await;
    let timeline = stored.timeline(a).await.unwrap();
    let scores: Vec<Option<f64>> = timeline
        .iter()
        .map(|e| e.score.as_ref().and_then(|s| s.score))
        .collect();
    let shown: Vec<Option<f64>> = windows.iter().map(|w| w["score"].as_f64()).collect();
    // In order, one per window (JSON text rounds the last digit).
    let same = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-12 * y.abs().max(1.0),
        (x, y) => x.is_none() && y.is_none(),
    };
    assert!(
        shown.len() == scores.len() && shown.iter().zip(&scores).all(|(x, y)| same(*x, *y)),
        "{shown:?} != {scores:?}"
    );
    assert_eq!(t["first_ms"], timeline[0].created_ms);
    assert_eq!(t["last_ms"], timeline[21].created_ms);
    assert!(
        !body.contains("hold") && !body.contains("keyboard"),
        "no feature values"
    );
    let (_, _, body) = get(
        &client,
        &server,
        &format!("/dashboard/api/timeline?device={b}&limit=3"),
        Auth::Bearer(ADMIN),
    )
    .await;
    let t: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(t["device"]["device_id"], b.to_string());
    assert_activity_free(&t);
    assert_eq!(t["windows"].as_array().unwrap().len(), 3, "the last three");
    let timeline = stored.timeline(b).await.unwrap();
    assert_eq!(timeline.len(), 8);
    assert_eq!(t["first_ms"], timeline[5].created_ms);
    assert_eq!(t["last_ms"], timeline[7].created_ms);
    stored.close().await;
    let (_, _, body) = get(
        &client,
        &server,
        "/dashboard/api/devices",
        Auth::Bearer(ADMIN),
    )
    .await;
    let devices: Value = serde_json::from_str(&body).unwrap();
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 4);
    for d in devices {
        assert_eq!(keys(d), DEVICE_KEYS, "{d}");
    }
    for (device, kinds) in [(a, vec!["trust"]), (b, vec!["injection"])] {
        let (_, _, body) = get(
            &client,
            &server,
            &format!("/dashboard/api/alerts?device={device}"),
            Auth::Bearer(ADMIN),
        )
        .await;
        let alerts: Value = serde_json::from_str(&body).unwrap();
        let alerts = alerts["alerts"].as_array().unwrap();
        assert!(
            alerts.iter().all(|x| x["device_id"] == device.to_string()),
            "{body}"
        );
        let got: Vec<&str> = alerts.iter().map(|x| x["kind"].as_str().unwrap()).collect();
        assert_eq!(got, kinds, "{body}");
    }
    let (_, _, body) = get(
        &client,
        &server,
        &format!("/dashboard/api/consent?device={}", f.devices[2].id),
        Auth::Bearer(ADMIN),
    )
    .await;
    let c: Value = serde_json::from_str(&body).unwrap();
    let decisions: Vec<&str> = c["consent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["decision"].as_str().unwrap())
        .collect();
    assert_eq!(decisions, ["withdrawn", "granted"], "newest first: {body}");

    // Users: each with the trust after its newest window that moved it.
    let (_, _, body) = get(
        &client,
        &server,
        "/dashboard/api/users",
        Auth::Bearer(ADMIN),
    )
    .await;
    let users: Value = serde_json::from_str(&body).unwrap();
    let users = users["users"].as_array().unwrap();
    assert_eq!(users.len(), 4);
    let user0 = users
        .iter()
        .find(|u| u["device_id"] == a.to_string())
        .unwrap();
    assert!(user0.get("trust_seq").is_none(), "no window count: {user0}");
    assert_eq!(user0["status"], "monitoring");
    assert_eq!(user0["alerts"], 1);
    assert!(user0["trust"].as_f64().unwrap() <= 100.0);
    let evil = users
        .iter()
        .find(|u| u["device_id"] == f.evil.id.to_string())
        .unwrap();
    assert_eq!(evil["os_user"], EVIL_USER, "stored and answered as given");
    assert!(evil["trust"].is_null(), "never scored");
    server.stop().await;
}

/// The fields a device has in the dashboard's answers: no `records` (a count of what a person
/// sent).
const DEVICE_KEYS: [&str; 7] = [
    "device_id",
    "enrolled_ms",
    "hostname",
    "last_seen_ms",
    "os_user",
    "state",
    "status",
];

/// An object's keys, sorted.
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// A timeline answer carries no activity figure: its device no record count, no total, and
/// each window only its score, trust and alert marker.
fn assert_activity_free(t: &Value) {
    assert_eq!(
        keys(t),
        ["device", "first_ms", "last_ms", "lockout", "windows"],
        "{t}"
    );
    assert_eq!(keys(&t["device"]), DEVICE_KEYS, "{t}");
    for w in t["windows"].as_array().unwrap() {
        assert_eq!(keys(w), ["alert", "score", "trust"], "{w}");
    }
}

/// A device that sent nothing for `[devices] silent_after_secs` shows as `silent` in the
/// devices and users lists and on its timeline, as `cadence-verifier devices` shows it.
#[tokio::test]
async fn devices_that_sent_nothing_for_too_long_show_as_silent() {
    let test = "devices_that_sent_nothing_for_too_long_show_as_silent";
    for db in TestDb::all(test).await {
        eprintln!("backend: {}", db.label());
        devices_that_sent_nothing_for_too_long_show_as_silent_on(&db).await;
    }
}

async fn devices_that_sent_nothing_for_too_long_show_as_silent_on(db: &TestDb) {
    use axum::body::Body;
    use axum::http::Request;
    use cadence_verifier::dashboard::{self, DashboardState};
    use cadence_verifier::metrics::Metrics;
    use cadence_verifier::store::{HeartbeatUpdate, NewDevice, Store};
    use cadence_wire::DeviceSigningKey;
    use cadence_wire::records::MonitoringState;
    use hyper::service::Service;
    use hyper_util::service::TowerToHyperService;
    use std::sync::Arc;

    const SILENT_AFTER_SECS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db.database(dir.path())).await.unwrap();
    let now = cadence_verifier::api::now_ms();
    let enroll = |user: &'static str, at_ms: u64| {
        let store = store.clone();
        async move {
            let key = DeviceSigningKey::generate().unwrap();
            let device = NewDevice {
                public_key: key.public_key(),
                os_user: user,
                hostname: "desk",
            };
            store
                .enroll(&device, DeviceId::random().unwrap(), at_ms)
                .await
                .unwrap()
        }
    };
    let heartbeat = |at_ms: u64| HeartbeatUpdate {
        created_ms: at_ms,
        state: MonitoringState::Monitoring,
        queued: 0,
    };
    // Monitoring, and last heard from a minute ago: within the limit.
    let live = enroll("live", now - 3_600_000).await;
    store
        .commit(live, now - 60_000, &[], &[heartbeat(now - 60_000)])
        .await
        .unwrap();
    // Monitoring when last heard from, but that was an hour ago: silent.
    let gone = enroll("gone", now - 7_200_000).await;
    store
        .commit(gone, now - 3_600_000, &[], &[heartbeat(now - 3_600_000)])
        .await
        .unwrap();
    // Enrolled an hour ago and never heard from since: silent too.
    let never = enroll("never", now - 3_600_000).await;

    let state = Arc::new(DashboardState {
        store: store.clone(),
        metrics: Arc::new(Metrics::default()),
        auth: AdminAuth::new(&[SecretToken::new(ADMIN)], &[]).unwrap(),
        lockout: 50.0,
        silent_after_secs: SILENT_AFTER_SECS,
    });
    let service = TowerToHyperService::new(dashboard::router(state));
    let get = |path: String| {
        let request = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Body::empty())
            .unwrap();
        let call = service.call(request);
        async move {
            let response = call.await.unwrap();
            assert_eq!(response.status(), 200);
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            serde_json::from_slice::<Value>(&body).unwrap()
        }
    };
    let expected = [
        (live, "monitoring", "monitoring"),
        (gone, "monitoring", "silent"),
        (never, "", "silent"),
    ];
    let devices = get("/dashboard/api/devices".to_owned()).await;
    let users = get("/dashboard/api/users".to_owned()).await;
    for (device, reported, status) in expected {
        let id = device.to_string();
        let find = |list: &Value, key: &str| {
            list[key]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["device_id"] == id)
                .unwrap()
                .clone()
        };
        let d = find(&devices, "devices");
        assert_eq!(d["status"], status, "{d}");
        assert_eq!(d["state"].as_str().unwrap_or(""), reported, "{d}");
        assert_eq!(find(&users, "users")["status"], status);
        let t = get(format!("/dashboard/api/timeline?device={id}")).await;
        assert_eq!(t["device"]["status"], status, "{t}");
    }
    store.close().await;
}

#[tokio::test]
async fn without_admin_tokens_the_dashboard_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = plain_client(&server);
    let token = server.token.clone().unwrap();
    for auth in [Auth::None, Auth::Bearer(&token), Auth::Bearer("")] {
        let (status, _, body) = get(&client, &server, "/dashboard/api/devices", auth).await;
        assert_eq!(status, 401);
        assert!(body.contains("no admin_tokens are configured"), "{body}");
        let (status, _, body) = get(&client, &server, "/metrics", auth).await;
        assert_eq!(status, 401, "{body}");
    }
    let r = client
        .post(server.url("/dashboard/login"))
        .body("token=")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, _, body) = get(&client, &server, "/dashboard/login", Auth::None).await;
    assert_eq!(status, 200);
    assert!(body.contains("The dashboard is closed"), "{body}");
    server.stop().await;
}

// ---------------------------------------------------------------------------------------
// Headless Chromium over the DevTools protocol.

/// Whether `cmd` is an executable file in some PATH directory.
fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Where test artifacts go: `target/test-artifacts/` of this workspace.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How long any one wait on the browser may take before the test fails (not a measurement:
/// only a bound so a broken page fails the test instead of hanging it).
const BROWSER_WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium with one page, driven over `--remote-debugging-pipe`.
struct Chromium {
    child: Child,
    input: ChildStdin,
    messages: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    /// Events not consumed yet.
    events: Vec<Value>,
    /// Console errors, exceptions and error log entries, in order.
    errors: Vec<String>,
    stderr_log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium, or says the test is skipped when it is not installed (a failure when
    /// `CI=true`: CI installs it).
    fn start(test: &str) -> Option<Chromium> {
        if !on_path("chromium") {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but chromium is not on PATH"
            );
            eprintln!("skipped: {test}: chromium not on PATH (apt-get install chromium)");
            return None;
        }
        let profile = tempfile::tempdir().unwrap();
        let stderr_log = profile.path().join("chromium.log");
        // fd 3 is what Chromium reads commands from, fd 4 where it writes answers: map them
        // onto our pipes with the shell, and keep its own stdout away from the protocol.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                // The verifier's development CA is not in the browser's store; this browser
                // only ever visits the test's own server on 127.0.0.1.
                "--ignore-certificate-errors",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let mut output = child.stdout.take().unwrap();
        let (tx, messages) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                let n = match output.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buffer.extend_from_slice(&chunk[..n]);
                while let Some(end) = buffer.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = buffer.drain(..=end).collect();
                    let Ok(value) = serde_json::from_slice::<Value>(&message[..end]) else {
                        continue;
                    };
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        });
        let mut browser = Chromium {
            child,
            input,
            messages,
            next_id: 0,
            session: String::new(),
            events: Vec::new(),
            errors: Vec::new(),
            stderr_log,
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.page_call(domain, json!({}));
        }
        browser.page_call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
        );
        Some(browser)
    }

    /// Sends a command (to the page's session when `page`) and waits for its answer.
    fn send(&mut self, method: &str, params: Value, page: bool) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if page {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.input.write_all(&bytes).unwrap();
        self.input.flush().unwrap();
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let message = self.receive(deadline);
            if message["id"] == json!(id) {
                return match message.get("error") {
                    Some(e) => Err(e.clone()),
                    None => Ok(message["result"].clone()),
                };
            }
            self.event(message);
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, false)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn page_call(&mut self, method: &str, params: Value) -> Value {
        self.send(method, params, true)
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    fn receive(&mut self, deadline: Instant) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.messages.recv_timeout(left) {
            Ok(m) => m,
            Err(e) => {
                let log = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
                panic!("no answer from chromium ({e}); its log:\n{log}");
            }
        }
    }

    /// Keeps an event, noting console errors.
    fn event(&mut self, message: Value) {
        let params = &message["params"];
        match message["method"].as_str() {
            Some("Runtime.consoleAPICalled")
                if matches!(params["type"].as_str(), Some("error" | "assert")) =>
            {
                let args: Vec<String> = params["args"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| {
                                v.get("value")
                                    .or(v.get("description"))
                                    .map_or_else(String::new, |v| v.to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.errors
                    .push(format!("console.error: {}", args.join(" ")));
            }
            Some("Runtime.exceptionThrown") => {
                let d = &params["exceptionDetails"];
                self.errors.push(format!(
                    "exception: {} {}",
                    d["text"], d["exception"]["description"]
                ));
            }
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                self.errors.push(format!(
                    "log: {} ({})",
                    params["entry"]["text"], params["entry"]["url"]
                ));
            }
            _ => {}
        }
        self.events.push(message);
    }

    /// Evaluates `expression` in the page; `None` while the page is between documents.
    fn eval(&mut self, expression: &str) -> Option<Value> {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                true,
            )
            .ok()?;
        if r.get("exceptionDetails").is_some() {
            return None;
        }
        Some(r["result"]["value"].clone())
    }

    /// Evaluates `expression`, which must succeed.
    fn value(&mut self, expression: &str) -> Value {
        self.eval(expression)
            .unwrap_or_else(|| panic!("evaluating {expression} failed"))
    }

    /// Waits until `expression` gives a value other than false/null.
    fn wait_until(&mut self, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            if let Some(v) = self.eval(expression)
                && !v.is_null()
                && v != json!(false)
            {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            // Let events in meanwhile.
            while let Ok(m) = self.messages.recv_timeout(Duration::from_millis(100)) {
                self.event(m);
            }
        }
    }

    /// Opens `url` and waits until the dashboard script says it is done (`ready` or `error`).
    fn open(&mut self, url: &str) -> String {
        self.page_call("Page.navigate", json!({"url": url}));
        self.settle()
    }

    /// Waits for the current dashboard page's script to finish; its `data-ready` value.
    fn settle(&mut self) -> String {
        self.wait_until(
            "the page's script to finish",
            "document.readyState === 'complete' && document.body && document.body.dataset.ready",
        )
        .as_str()
        .unwrap()
        .to_owned()
    }

    /// A PNG of the whole page.
    fn screenshot(&mut self, path: &Path) {
        let r = self.page_call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64_decode(r["data"].as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    /// How many elements match `selector` (a fixed selector from the test).
    fn count(&mut self, selector: &str) -> u64 {
        let expression = format!("document.querySelectorAll({}).length", json!(selector));
        self.value(&expression).as_u64().unwrap()
    }

    /// A string-valued expression.
    fn string(&mut self, expression: &str) -> String {
        self.value(expression).as_str().unwrap().to_owned()
    }

    /// Fails when any console error arrived since the last check.
    fn assert_no_errors(&mut self, what: &str) {
        let errors = self.take_errors();
        assert!(errors.is_empty(), "console errors on {what}: {errors:#?}");
    }

    /// Console errors since the last call.
    fn take_errors(&mut self) -> Vec<String> {
        // Drain what arrived meanwhile.
        while let Ok(m) = self.messages.recv_timeout(Duration::from_millis(200)) {
            self.event(m);
        }
        std::mem::take(&mut self.errors)
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (with padding) to bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|c| *c != b'=').collect();
        let mut n = 0u32;
        for (i, c) in data.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

#[test]
fn base64_decodes_known_text() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("aGV5"), b"hey");
}

/// What the pages must show for user0, from the API over the same data.
struct Expected {
    device: DeviceId,
    evil: DeviceId,
    /// Windows with a score, with a trust level, and that raised an alert.
    scored: usize,
    trusted: usize,
    alerts: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_renders_real_data_in_headless_chromium() {
    let Some(browser) = Chromium::start("the_dashboard_renders_real_data_in_headless_chromium")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &TestDb::Sqlite).await;
    let client = plain_client(&server);
    let f = fleet(&server, &client).await;
    let a = f.devices[0].id;
    let (_, _, body) = get(
        &client,
        &server,
        &format!("/dashboard/api/timeline?device={a}"),
        Auth::Bearer(ADMIN),
    )
    .await;
    let timeline: Value = serde_json::from_str(&body).unwrap();
    let windows = timeline["windows"].as_array().unwrap();
    let with = |key: &str| windows.iter().filter(|w| !w[key].is_null()).count();
    let expected = Expected {
        device: a,
        evil: f.evil.id,
        scored: with("score"),
        trusted: with("trust"),
        alerts: windows.iter().filter(|w| w["alert"] == true).count(),
    };
    assert!(expected.scored >= 10 && expected.trusted >= 10, "{body}");
    assert_eq!(expected.alerts, 1, "{body}");

    // The browser makes blocking calls: off the runtime's workers, which serve the verifier.
    let base = server.base.clone();
    let artifacts = artifacts_dir();
    let mut browser = browser;
    tokio::task::spawn_blocking(move || browse(&mut browser, &base, &expected, &artifacts))
        .await
        .unwrap();
    let png = artifacts_dir().join("dashboard.png");
    assert!(
        std::fs::metadata(&png).unwrap().len() > 10_000,
        "{}",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
    server.stop().await;
}

const CONTENT_TEXT: &str = "document.getElementById('content').textContent";
const TRUST_PATH_POINTS: &str = "document.querySelector('#chart path.trust')\
     .getAttribute('d').split(/[ML]/).filter(s => s.trim()).length";
const TRUST_PATH_WIDTH: &str = "document.querySelector('#chart path.trust').getBBox().width";
const INJECT_INLINE_SCRIPT: &str = "(() => { const s = document.createElement('script'); \
     s.textContent = 'window.inline = 1'; document.body.appendChild(s); return true; })()";

/// Signs in and walks every page, checking what each shows; panics on the first problem.
fn browse(browser: &mut Chromium, base: &str, expected: &Expected, artifacts: &Path) {
    // Not signed in: the sign-in page (answered with 401).
    browser.page_call(
        "Page.navigate",
        json!({"url": format!("{base}/dashboard/")}),
    );
    browser.wait_until(
        "the sign-in form",
        "document.getElementById('token') !== null",
    );
    browser.take_errors();

    // Sign in through the form, as a person would.
    browser.page_call(
        "Page.navigate",
        json!({"url": format!("{base}/dashboard/login")}),
    );
    browser.wait_until(
        "the sign-in page",
        "document.readyState === 'complete' && document.getElementById('token') !== null",
    );
    browser.value(&format!(
        "document.getElementById('token').value = {}; document.querySelector('form').submit(); true",
        json!(ADMIN)
    ));
    assert_eq!(browser.settle(), "true", "overview after sign-in");
    assert_eq!(browser.value("location.pathname"), json!("/dashboard/"));
    browser.assert_no_errors("sign-in and overview");
    assert_eq!(
        browser.count("#content table:first-of-type tbody tr"),
        4,
        "one row per user"
    );
    let text = browser.string(CONTENT_TEXT);
    assert!(
        text.contains("user0@desk") && text.contains("withdrawn"),
        "{text}"
    );
    // Markup in stored names stays text: shown literally, never run.
    assert!(
        text.contains(EVIL_USER) && text.contains(EVIL_HOST),
        "{text}"
    );
    assert_eq!(browser.value("typeof window.pwned"), json!("undefined"));
    assert_eq!(browser.count("#content img, #content script"), 0);
    browser.screenshot(&artifacts.join("dashboard-overview.png"));

    // The user's page: the chart draws every scored window from the ingested data.
    let user = format!("{base}/dashboard/user?device={}", expected.device);
    assert_eq!(browser.open(&user), "true");
    let points = |browser: &mut Chromium, class: &str| {
        let expression =
            format!("Number(document.querySelector('#chart path.{class}').dataset.points)");
        browser.value(&expression).as_u64().unwrap() as usize
    };
    assert_eq!(points(browser, "score"), expected.scored);
    assert_eq!(points(browser, "trust"), expected.trusted);
    assert_eq!(
        browser.value(TRUST_PATH_POINTS),
        json!(expected.trusted),
        "one path point per window with trust"
    );
    assert_eq!(
        browser.count("#chart circle.alert-mark"),
        expected.alerts as u64
    );
    assert_eq!(browser.count("#chart line.lockout"), 1);
    let width = browser.value(TRUST_PATH_WIDTH).as_f64().unwrap();
    assert!(width > 100.0, "the trust line spans the chart: {width}");
    assert_eq!(
        browser.string("document.getElementById('title').textContent"),
        "user0@desk"
    );
    browser.assert_no_errors("the user page");
    browser.screenshot(&artifacts.join("dashboard.png"));

    // Alerts with their evidence; consent records.
    assert_eq!(browser.open(&format!("{base}/dashboard/alerts")), "true");
    let text = browser.string(CONTENT_TEXT);
    for shown in ["injection", "keystroke_injection", "trust", "lockout"] {
        assert!(text.contains(shown), "{shown} in {text}");
    }
    assert_eq!(browser.count("#content tbody tr"), 2);
    browser.screenshot(&artifacts.join("dashboard-alerts.png"));
    assert_eq!(browser.open(&format!("{base}/dashboard/consent")), "true");
    assert_eq!(browser.count("#content tbody tr"), 5);
    browser.assert_no_errors("alerts and consent");
    let evil = format!("{base}/dashboard/user?device={}", expected.evil);
    assert_eq!(browser.open(&evil), "true");
    assert_eq!(browser.value("typeof window.pwned"), json!("undefined"));
    assert_eq!(
        browser.string("document.getElementById('title').textContent"),
        format!("{EVIL_USER}@{EVIL_HOST}")
    );
    browser.assert_no_errors("a user with markup in its name");

    // The capture sees errors: a bad id is a 400 the page reports, and an injected inline
    // script is refused by the Content-Security-Policy.
    let bad = format!("{base}/dashboard/user?device=nothex");
    assert_eq!(browser.open(&bad), "error");
    let status = browser.string("document.getElementById('status').textContent");
    assert!(status.contains("device: not a device id"), "{status}");
    let errors = browser.take_errors();
    assert!(
        errors.iter().any(|e| e.contains("device: not a device id")),
        "{errors:#?}"
    );
    browser.value(INJECT_INLINE_SCRIPT);
    assert_eq!(
        browser.value("typeof window.inline"),
        json!("undefined"),
        "CSP blocks inline script"
    );
    let errors = browser.take_errors();
    assert!(
        errors.iter().any(|e| e.contains("Content Security Policy")),
        "{errors:#?}"
    );
}
