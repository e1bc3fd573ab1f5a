//! Shared helpers for tests that need a private X server.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Whether `cmd` is an executable file in some PATH directory.
pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| dir.join(cmd).is_file()))
        .unwrap_or(false)
}

/// True when the tools are there; otherwise says the test is skipped.
pub fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["Xvfb", "xdotool"]
        .into_iter()
        .filter(|t| !on_path(t))
        .collect();
    if missing.is_empty() {
        true
    } else {
        // CI installs the tools: there, their absence is a failure, not a skip.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {missing:?} not on PATH"
        );
        eprintln!(
            "skipped: {test}: {} not on PATH (apt-get install xvfb xdotool xauth)",
            missing.join(" and ")
        );
        false
    }
}

/// A private X server, killed when dropped so a failing test leaves nothing behind.
pub struct Xvfb {
    pub child: Child,
    pub display: String,
}

impl Xvfb {
    /// Starts `Xvfb :N -nolisten tcp EXTRA...` on a free display number and waits for its
    /// socket. Parallel tests each pick a random number and retry on a clash.
    pub fn start(extra: &[&str]) -> Xvfb {
        Self::start_any(None, extra)
    }

    /// Starts a server on exactly `display` (":N"), for tests that restart a lost server.
    pub fn start_on(display: &str, extra: &[&str]) -> Xvfb {
        let n = display
            .trim_start_matches(':')
            .parse()
            .expect("display number");
        Self::start_any(Some(n), extra)
    }

    fn start_any(fixed: Option<u32>, extra: &[&str]) -> Xvfb {
        for _ in 0..20 {
            let n = fixed.unwrap_or_else(|| 90 + fastrand::u32(0..2000));
            let socket = format!("/tmp/.X11-unix/X{n}");
            if Path::new(&socket).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                if fixed.is_some() {
                    thread::sleep(Duration::from_millis(100)); // the old server is still leaving
                }
                continue;
            }
            let child = Command::new("Xvfb")
                .arg(format!(":{n}"))
                // -noreset: an X server resets when its last client leaves, and a connection
                // attempted during that reset is dropped; xdotool and probe() come and go
                // while the capture connects.
                .args(["-nolisten", "tcp", "-noreset"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn Xvfb");
            let mut server = Xvfb {
                child,
                display: format!(":{n}"),
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if Path::new(&socket).exists() {
                    return server;
                }
                if server.child.try_wait().expect("poll Xvfb").is_some() {
                    break; // lost a race for this number; try another
                }
                thread::sleep(Duration::from_millis(20));
            }
            server.kill();
        }
        panic!("could not start Xvfb on any display number");
    }

    /// Stops the server: SIGTERM first, so it removes its socket and lock file, then SIGKILL
    /// if it lingers. Either way the capture sees its connection close.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn xdotool(&self, args: &[&str]) {
        let status = Command::new("xdotool")
            .env("DISPLAY", &self.display)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run xdotool");
        assert!(status.success(), "xdotool {args:?} failed: {status}");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        self.kill();
    }
}
