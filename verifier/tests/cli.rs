//! The `cadence-verifier` binary as an operator runs it: serve, token create, devices,
//! windows, SIGTERM, restart.
#![cfg(unix)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cadence_wire::records::IngestResponse;
use common::{Device, TestServer, batch, post};

const BIN: &str = env!("CARGO_BIN_EXE_cadence-verifier");

/// A `serve` process and the lines it printed at start-up.
struct Served {
    child: Child,
    lines: Vec<String>,
}

impl Served {
    fn start(data_dir: &Path) -> Served {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("CADENCE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        // Lines arrive at once, flushed; the public key line is always the last one but the
        // optional token, which follows it when present.
        let mut lines = Vec::new();
        while !lines
            .iter()
            .any(|l: &String| l.starts_with("verifier public key: "))
        {
            lines.push(rx.recv_timeout(Duration::from_secs(30)).unwrap());
        }
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            lines.push(line);
        }
        Served { child, lines }
    }

    fn value(&self, prefix: &str) -> Option<String> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_owned))
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "serve exited with {status}");
    }
}

fn run(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("CADENCE_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A client-side view of a served process, reusing the in-process helpers.
fn view(served: &Served, data_dir: &Path) -> TestServer {
    let base = served.value("listening on ").unwrap();
    let ca = served.value("CA certificate: ").unwrap();
    let key = served.value("verifier public key: ").unwrap();
    TestServer::remote(
        base,
        std::fs::read(ca).unwrap(),
        key.parse().unwrap(),
        data_dir,
    )
}

#[tokio::test]
async fn serve_token_devices_windows_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("verifier data");
    let served = Served::start(&data);
    let base = served.value("listening on ").unwrap();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    assert_ne!(base, "https://127.0.0.1:0");
    let ca = served.value("CA certificate: ").unwrap();
    assert_eq!(Path::new(&ca), data.join("ca.pem"));
    let first_token = served
        .value("enrollment token: ")
        .expect("first start prints a token");
    let server = view(&served, &data);
    let client = server.client();

    // `token create` works while the server runs, and its token enrolls.
    let (ok, out, err) = run(&data, &["token", "create"]);
    assert!(ok, "{err}");
    let token = out.trim();
    assert_eq!(out.lines().count(), 1);
    assert_ne!(token, first_token);
    let device = Device::enroll(&server, &client, token).await;
    Device::enroll(&server, &client, &first_token).await;

    let envelopes: Vec<Vec<u8>> = (1..=3).map(|seq| device.window(seq)).collect();
    let (status, body) = post(&server, &client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, vec![1, 2, 3]);

    let (ok, out, err) = run(&data, &["devices"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with(&device.id.to_string()))
        .unwrap();
    assert!(
        line.contains("user=alice") && line.contains("records=3"),
        "{line}"
    );

    let (ok, out, err) = run(&data, &["devices", "--json"]);
    assert!(ok, "{err}");
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["hostname"], "laptop-1");
        assert_eq!(v["device_id"].as_str().unwrap().len(), 32);
        assert!(v["records"].is_u64() && v["enrolled_ms"].is_u64());
    }

    let id = device.id.to_string();
    let (ok, out, err) = run(&data, &["windows", "--device", &id, "--json"]);
    assert!(ok, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["device"], id);
            assert_eq!(v["vector"]["schema"], "cadence.features.v3");
            assert!(v["received_ms"].as_u64().unwrap() > 0);
            v["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);

    let (ok, out, _) = run(&data, &["windows", "--device", &id]);
    assert!(ok);
    assert!(out.lines().next().unwrap().starts_with("seq=1 "), "{out}");
    assert!(
        !out.contains("hold_p50"),
        "text listing shows no feature values: {out}"
    );

    let (ok, _, err) = run(&data, &["windows", "--device", &"0".repeat(32)]);
    assert!(!ok);
    assert!(err.contains("no device"), "{err}");

    // Off the runtime, so this process's client connections can answer the server's
    // graceful shutdown (HTTP/2 GOAWAY and PING) while we wait for it to exit.
    tokio::task::spawn_blocking(move || served.terminate())
        .await
        .unwrap();

    // Restart: same key and CA, devices still there, no new token printed.
    let again = Served::start(&data);
    assert_eq!(again.value("verifier public key: "), served_key(&server));
    assert_eq!(again.value("CA certificate: ").unwrap(), ca);
    assert_eq!(again.value("enrollment token: "), None, "{:?}", again.lines);
    let server = view(&again, &data);
    let client = server.client();
    let (status, body) = post(&server, &client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.duplicates, vec![1, 2, 3]);
    tokio::task::spawn_blocking(move || again.terminate())
        .await
        .unwrap();
}

fn served_key(server: &TestServer) -> Option<String> {
    Some(server.public_key.to_string())
}

#[test]
fn bad_config_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("verifier.toml");
    std::fs::write(
        &config,
        "listen = \"nowhere\"\ndatabase_url = \"postgres://db\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("listen:"), "{err}");
    assert!(err.contains("database_url: no database name"), "{err}");
}

#[test]
fn read_commands_on_an_empty_data_dir_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(dir.path(), &["devices"]);
    assert!(!ok);
    assert!(err.contains("no verifier database"), "{err}");
}
