//! Two verifier replicas over one PostgreSQL database, behind a round-robin load balancer,
//! with real agent processes: every window is stored exactly once and none is lost when one
//! replica is killed mid-stream, sequence numbers stay unique, and each user's scoring state
//! (enrollment countdown, trust) follows every window once, in order.
//!
//! Needs `CADENCE_TEST_POSTGRES_URL` (a server where this test may create a database, e.g.
//! `postgres://postgres@127.0.0.1:5432/test`) and `psql`; skipped, and says so, without them,
//! except with `CI=true`, where their absence fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use cadence_e2e::{
    Agent, TempDir, Verifier, eventually, expected_vectors, free_port, write_recording,
};

const WINDOW: [&str; 4] = ["--window-secs", "8", "--min-keys", "20"];
const AGENTS: u64 = 3;
const ENROLL_WINDOWS: u64 = 4;
/// How long the load balancer keeps one client connection: short, so each agent's requests
/// alternate between the replicas instead of riding one kept-alive connection.
const CONNECTION_LIFETIME: Duration = Duration::from_millis(700);

/// A fresh PostgreSQL database for this test, dropped at the end.
struct TestDatabase {
    admin: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn create(test: &str) -> Option<TestDatabase> {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        let Some(admin) = std::env::var("CADENCE_TEST_POSTGRES_URL")
            .ok()
            .filter(|v| !v.is_empty())
        else {
            assert!(
                !ci,
                "{test}: CADENCE_TEST_POSTGRES_URL is not set and CI=true"
            );
            eprintln!("{test}: SKIPPED: set CADENCE_TEST_POSTGRES_URL to run it");
            return None;
        };
        if Command::new("psql").arg("--version").output().is_err() {
            assert!(!ci, "{test}: psql is missing and CI=true");
            eprintln!("{test}: SKIPPED: psql is not installed");
            return None;
        }
        let name = format!(
            "cadence_e2e_{}_{:08x}",
            std::process::id(),
            fastrand::u32(..)
        );
        psql(&admin, &format!("CREATE DATABASE {name}"));
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin.as_str(), String::new()),
        };
        let server = &base[..base.rfind('/').expect("a database URL has a path")];
        let url = format!("{server}/{name}{query}");
        Some(TestDatabase { admin, name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(&self.admin)
            .args([
                "-qAtc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}

/// Runs one statement; returns its output rows.
fn psql(url: &str, sql: &str) -> String {
    let o = Command::new("psql")
        .arg(url)
        .args(["-qAtc", sql])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A TCP load balancer on loopback: each new connection goes to the next backend in turn,
/// or to the other one when that one refuses (a dead replica), and is cut after
/// [`CONNECTION_LIFETIME`]. TLS passes through untouched.
struct Proxy {
    port: u16,
    /// Connections handed to each backend.
    served: Arc<[AtomicUsize; 2]>,
}

impl Proxy {
    fn start(backends: [u16; 2]) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let counts = served.clone();
        // The accept loop ends with the test process.
        thread::spawn(move || {
            let mut next = 0usize;
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                next = (next + 1) % 2;
                let picked = [next, 1 - next].into_iter().find_map(|i| {
                    TcpStream::connect(("127.0.0.1", backends[i]))
                        .ok()
                        .map(|s| (i, s))
                });
                let Some((i, server)) = picked else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                counts[i].fetch_add(1, Ordering::Relaxed);
                pipe(client, server);
            }
        });
        Proxy { port, served }
    }

    fn served(&self) -> [usize; 2] {
        [0, 1].map(|i| self.served[i].load(Ordering::Relaxed))
    }
}

/// Copies bytes both ways until either side closes or the connection's lifetime ends.
fn pipe(client: TcpStream, server: TcpStream) {
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        thread::spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Write);
        });
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (c3, s3) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    copy(client, server);
    copy(s2, c2);
    thread::spawn(move || {
        thread::sleep(CONNECTION_LIFETIME);
        let _ = c3.shutdown(Shutdown::Both);
        let _ = s3.shutdown(Shutdown::Both);
    });
}

/// The verifier's key material a replica needs to serve the same fleet: the HPKE key agents
/// seal to, and the TLS certificate (here the development CA and its server certificate).
const SHARED_FILES: [&str; 5] = ["hpke.key", "ca.pem", "ca.key", "server.pem", "server.key"];

fn timeline(v: &Verifier, device: &str) -> Vec<serde_json::Value> {
    let o = v.cli(&["timeline", "--user", device, "--json"]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_replicas_over_one_database_lose_nothing_when_one_dies() {
    let Some(db) = TestDatabase::create("two_replicas_over_one_database") else {
        return;
    };
    let tmp = TempDir::new("replicas");
    let config = tmp.path().join("verifier.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\n\
             [scoring]\n\
             method = \"scaled_manhattan\"\n\
             keyboard_enroll_windows = {ENROLL_WINDOWS}\n\
             mouse_enroll_windows = 4\n\
             min_population_users = 2\n\
             min_cohort_windows = 4\n",
            db.url
        ),
    )
    .unwrap();

    // Replica A starts first on the empty database: it makes the schema, the keys and the
    // first token. Replica B gets A's key files and finds the token in the database.
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut a = Verifier::start_with(&dir_a, free_port(), Some(&config));
    let token = a
        .first_token
        .clone()
        .expect("a first token on an empty database");
    std::fs::create_dir_all(&dir_b).unwrap();
    for f in SHARED_FILES {
        std::fs::copy(dir_a.join(f), dir_b.join(f)).unwrap();
    }
    let b = Verifier::start_with(&dir_b, free_port(), Some(&config));
    assert_eq!(b.first_token, None, "the token store is shared");
    // A replica with keys of its own would be unreachable for the enrolled agents: refused.
    let mut stray = Command::new(cadence_e2e::bin("cadence-verifier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("stray"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(30), || {
        matches!(stray.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = stray.kill();
        let _ = stray.wait();
        panic!("a replica with another HPKE key started serving");
    }
    let out = stray.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "a replica with another HPKE key started"
    );
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("copy hpke.key"), "{why}");
    let port_of = |v: &Verifier| v.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let proxy = Proxy::start([port_of(&a), port_of(&b)]);
    let server = format!("https://127.0.0.1:{}", proxy.port);
    let ca = a.ca.to_string_lossy().into_owned();

    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let agent = Agent::new(&tmp.path().join(format!("agent{i}")));
        let out = agent.ok(&[
            "enroll", "--server", &server, "--token", &token, "--ca", &ca,
        ]);
        let device = out.split_whitespace().nth(2).unwrap_or_default().to_owned();
        assert_eq!(device.len(), 32, "no device id in {out:?}");
        let file = tmp.path().join(format!("{}_keystrokes.txt", 10 + i));
        write_recording(&file, 40, 10 + i);
        let expected = expected_vectors(&file, &WINDOW);
        agent.ok(&["consent", "grant"]);
        agents.push((agent, device, file, expected));
    }
    for (agent, _, file, _) in &mut agents {
        let source = format!("replay:aalto:{}", file.display());
        let mut args = vec![
            "--source",
            &source,
            "--speed",
            "40",
            "--heartbeat-secs",
            "1",
            "--exit-when-done",
        ];
        args.extend_from_slice(&WINDOW);
        agent.spawn_run(&args);
    }

    // Both replicas take part, then A dies with the stream half done.
    assert!(
        eventually(Duration::from_secs(60), || {
            agents.iter().all(|(_, d, _, _)| b.windows(d).len() >= 6)
                && proxy.served().iter().all(|n| *n >= 3)
        }),
        "the stream did not reach both replicas: {:?}",
        proxy.served()
    );
    let before: usize = agents.iter().map(|(_, d, _, _)| b.windows(d).len()).sum();
    let total: usize = agents.iter().map(|(_, _, _, e)| e.len()).sum();
    assert!(
        before < total,
        "the stream finished before the kill; the test proves nothing"
    );
    let served_before_kill = proxy.served();
    a.kill9();
    eprintln!(
        "killed replica A with {before} of {total} windows stored; connections so far {served_before_kill:?}"
    );

    for (agent, _, _, _) in &mut agents {
        assert!(
            agent.wait(Duration::from_secs(180)),
            "an agent did not finish delivering through the surviving replica"
        );
    }
    eprintln!("connections per replica: {:?}", proxy.served());

    // Every window stored exactly once, none lost, in the agent's order.
    for (agent, device, _, expected) in &agents {
        let stored = b.windows(device);
        let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
        let mut unique = seqs.clone();
        unique.dedup();
        assert_eq!(unique, seqs, "a sequence number is stored twice");
        let vectors: Vec<String> = stored.into_iter().map(|(_, v)| v).collect();
        assert_eq!(
            &vectors, expected,
            "device {device}: windows lost or changed"
        );
        let st = agent.status();
        assert_eq!(st["queued"].as_u64(), Some(0), "{st}");
    }
    let devices = b.devices();
    assert_eq!(devices.len(), AGENTS as usize);

    // Scoring: every stored window gets exactly one score row (the surviving replica scores
    // what A stored but did not score), the enrollment countdown runs once, in order, and the
    // stored profile's trust is the trust after the last window that moved it.
    for (_, device, _, expected) in &agents {
        assert!(
            eventually(Duration::from_secs(60), || {
                timeline(&b, device).iter().all(|w| w["state"] != "pending")
            }),
            "windows of {device} left unscored"
        );
        let t = timeline(&b, device);
        assert_eq!(t.len(), expected.len());
        let countdown: Vec<u64> = t
            .iter()
            .filter_map(|w| w["enrolling"]["keyboard"].as_u64())
            .collect();
        assert_eq!(
            countdown,
            (0..ENROLL_WINDOWS).rev().collect::<Vec<u64>>(),
            "device {device}: enrollment saw a window twice or skipped one"
        );
        let scored = t.iter().filter(|w| w["state"] == "scored").count();
        assert_eq!(
            scored,
            t.len() - ENROLL_WINDOWS as usize,
            "device {device}: every window after enrollment is scored once"
        );
        // The level after the last window that moved trust; an alert restarts it at 100.
        let last = t.iter().rev().find(|w| w["trust"].is_f64());
        let expected_level = match last {
            None => 100.0,
            Some(w) if w["alert"] == true => 100.0,
            Some(w) => w["trust"].as_f64().unwrap(),
        };
        let alert_windows = t.iter().filter(|w| w["alert"] == true).count();
        let alerts_stored: usize = psql(
            &db.url,
            &format!("SELECT COUNT(*) FROM alerts WHERE device_id = '{device}' AND kind = 'trust'"),
        )
        .trim()
        .parse()
        .unwrap();
        assert_eq!(
            alerts_stored, alert_windows,
            "device {device}: one trust alert per alerting window"
        );
        let profile: serde_json::Value = serde_json::from_str(&psql(
            &db.url,
            &format!("SELECT profile FROM profiles WHERE device_id = '{device}'"),
        ))
        .unwrap();
        let level = profile["trust"]["level"].as_f64().unwrap();
        assert_eq!(level, expected_level, "device {device}: {profile}");
        assert!(profile["keyboard"]["baseline"].is_object(), "{profile}");
    }
    drop(b);
}
