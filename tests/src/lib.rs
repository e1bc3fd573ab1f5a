//! Harness for end-to-end tests: real `cadence-verifier` and `cadence-agent` processes, each
//! with its own data directory, talking over loopback HTTPS.
//!
//! The binaries are the workspace's own, built by `cargo test --workspace`; when they are
//! missing (running this package alone) the harness builds them once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// `target/<profile>/` of this build.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test binary>
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// Path of a workspace binary, building the binaries if they are not there.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let p = bin_dir().join(name);
    if !p.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "cadence-agent",
                    "-p",
                    "cadence-verifier",
                    "--bins",
                ])
                .status()
                .unwrap();
            assert!(status.success(), "building the binaries failed");
        });
    }
    p
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "cadence-e2e-{tag}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `cadence-verifier serve`.
pub struct Verifier {
    pub child: Option<Child>,
    pub dir: PathBuf,
    /// The configuration file it was started with (and its commands are run with), if any.
    pub config: Option<PathBuf>,
    pub url: String,
    pub ca: PathBuf,
    /// The token printed at first start, if this start printed one.
    pub first_token: Option<String>,
    /// Everything the server printed on stdout.
    pub stdout: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Verifier {
    /// Starts a verifier on `dir`, listening on 127.0.0.1:`port`.
    pub fn start(dir: &Path, port: u16) -> Verifier {
        Verifier::start_with(dir, port, None)
    }

    /// Starts a verifier on `dir` with a configuration file (its `--listen` still wins).
    pub fn start_with(dir: &Path, port: u16, config: Option<&Path>) -> Verifier {
        let mut command = Command::new(bin("cadence-verifier"));
        command.args(["serve", "--data-dir"]).arg(dir);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("CADENCE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut url, mut ca, mut token) = (None, None, None);
        while Instant::now() < deadline && url.is_none() {
            for l in lines.lock().unwrap().iter() {
                if let Some(u) = l.strip_prefix("listening on ") {
                    url = Some(u.trim().to_owned());
                }
                if let Some(c) = l.strip_prefix("CA certificate: ") {
                    ca = Some(PathBuf::from(c.trim()));
                }
                if let Some(t) = l.strip_prefix("enrollment token: ") {
                    token = Some(t.trim().to_owned());
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the verifier exited at start: {status}");
            }
            thread::sleep(Duration::from_millis(50));
        }
        let url = url.expect("the verifier never said where it listens");
        // The CA and token lines come before or right after the listening line.
        thread::sleep(Duration::from_millis(100));
        for l in lines.lock().unwrap().iter() {
            if let Some(c) = l.strip_prefix("CA certificate: ") {
                ca = Some(PathBuf::from(c.trim()));
            }
            if let Some(t) = l.strip_prefix("enrollment token: ") {
                token = Some(t.trim().to_owned());
            }
        }
        Verifier {
            child: Some(child),
            dir: dir.to_owned(),
            config: config.map(Path::to_owned),
            url,
            ca: ca.unwrap_or_else(|| dir.join("ca.pem")),
            first_token: token,
            stdout: lines,
        }
    }

    /// A new enrollment token from the CLI.
    pub fn token(&self) -> String {
        let o = self.cli(&["token", "create"]);
        let s = String::from_utf8_lossy(&o.stdout);
        s.lines()
            .last()
            .unwrap_or_default()
            .trim()
            .trim_start_matches("enrollment token: ")
            .to_owned()
    }

    /// Runs a verifier subcommand against this data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(bin("cadence-verifier"));
        command.args(args).arg("--data-dir").arg(&self.dir);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let o = command.output().unwrap();
        assert!(
            o.status.success(),
            "cadence-verifier {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// Stored windows of `device`: (seq, vector JSON) in seq order.
    pub fn windows(&self, device: &str) -> Vec<(u64, String)> {
        let o = self.cli(&["windows", "--device", device, "--json"]);
        let mut v: Vec<(u64, String)> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let j: serde_json::Value = serde_json::from_str(l).unwrap();
                (j["seq"].as_u64().unwrap(), j["vector"].to_string())
            })
            .collect();
        v.sort_by_key(|(s, _)| *s);
        v
    }

    /// `devices --json`, one value per device.
    pub fn devices(&self) -> Vec<serde_json::Value> {
        let o = self.cli(&["devices", "--json"]);
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.take() {
            kill_now(c);
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(10));
        }
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An agent's data directory and the commands run against it.
pub struct Agent {
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl Agent {
    pub fn new(dir: &Path) -> Agent {
        Agent {
            dir: dir.to_owned(),
            child: None,
        }
    }

    /// Runs an agent subcommand to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("cadence-agent"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .env("CADENCE_LOG", "warn")
            .output()
            .unwrap()
    }

    /// Runs a subcommand that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "cadence-agent {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Enrolls with `v` and returns the device id.
    pub fn enroll(&self, v: &Verifier, token: &str) -> String {
        let out = self.ok(&[
            "enroll",
            "--server",
            &v.url,
            "--token",
            token,
            "--ca",
            &v.ca.to_string_lossy(),
        ]);
        let id = out.split_whitespace().nth(2).unwrap_or_default().to_owned();
        assert_eq!(id.len(), 32, "no device id in {out:?}");
        id
    }

    /// Starts `run` in the background.
    pub fn spawn_run(&mut self, args: &[&str]) {
        let child = Command::new(bin("cadence-agent"))
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("run")
            .args(args)
            .env(
                "CADENCE_LOG",
                std::env::var("CADENCE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Waits for the background `run` to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                assert!(status.success(), "the agent failed: {status}");
                self.child = None;
                return true;
            }
            thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn kill9(&mut self) {
        if let Some(c) = self.child.take() {
            kill_now(c);
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            let status = terminate(c, Duration::from_secs(15));
            assert!(
                status.is_some_and(|s| s.success()),
                "the agent did not shut down cleanly: {status:?}"
            );
        }
    }

    /// The agent's `status --json`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(self.ok(&["status", "--json"]).trim()).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// SIGKILL and reap.
fn kill_now(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// SIGTERM, wait up to `limit` for the process to exit by itself, then SIGKILL. Returns how it
/// exited by itself, if it did.
fn terminate(mut c: Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
        thread::sleep(Duration::from_millis(20));
    }
    let status = c.try_wait().ok().flatten();
    kill_now(c);
    status
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(100));
    }
    f()
}

/// Writes a generated keystroke recording in the Aalto format: `sentences` sentences of about
/// 50 keystrokes with human-like timing. Made up here, never the research data.
pub fn write_recording(path: &Path, sentences: usize, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut s = String::from(
        "PARTICIPANT_ID\tTEST_SECTION_ID\tSENTENCE\tUSER_INPUT\tKEYSTROKE_ID\tPRESS_TIME\tRELEASE_TIME\tLETTER\tKEYCODE\n",
    );
    let mut t = 1_600_000_000_000u64;
    let mut id = 0;
    for sentence in 0..sentences {
        for k in 0..50 {
            let code = if k % 6 == 5 {
                32
            } else if rng.u32(0..40) == 0 {
                8
            } else {
                65 + rng.u32(0..26)
            };
            let hold = rng.u64(60..140);
            s.push_str(&format!(
                "77\t{}\tx\tx\t{id}\t{t}\t{}\tx\t{code}\n",
                500 + sentence,
                t + hold
            ));
            id += 1;
            t += rng.u64(90..320);
        }
        t += rng.u64(1_500..4_000);
    }
    std::fs::write(path, s).unwrap();
}

/// The vectors `cadence-agent replay` computes for `file` with `window_args`, as JSON strings.
pub fn expected_vectors(file: &Path, window_args: &[&str]) -> Vec<String> {
    let o = Command::new(bin("cadence-agent"))
        .args(["replay", "--format", "aalto"])
        .arg(file)
        .args(window_args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let m = v.as_object_mut().unwrap();
            for label in ["subject", "session", "segment", "split"] {
                m.remove(label);
            }
            v.to_string()
        })
        .collect()
}
