//! The employee's side end to end, with real processes: the consent dialog the daemon shows,
//! the tray icon over D-Bus and each of its menu items, withdrawal stopping live capture, and
//! what the verifier shows per device (monitoring, paused, withdrawn, waiting, silent).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr,
    missing_docs
)]

#[path = "../../agent/tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cadence_e2e::{Agent, TempDir, Verifier, bin, eventually, free_port};
use support::{Xvfb, on_path};
use zbus::zvariant::{OwnedValue, Value};

const TITLE: &str = "Cadence: monitoring of input timing";

/// An SNI pixmap: width, height, ARGB bytes.
type Pixmap = (i32, i32, Vec<u8>);

/// True when every tool is there; otherwise says the test is skipped (a failure under
/// CI=true, where scripts/test.sh installs them).
fn tools(test: &str, needed: &[&str]) -> bool {
    let missing: Vec<&str> = needed.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {missing:?} not on PATH"
    );
    eprintln!(
        "skipped: {test}: {} not on PATH (apt-get install xvfb xdotool zenity dbus)",
        missing.join(", ")
    );
    false
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn setup(tag: &str, verifier_config: Option<&str>) -> (TempDir, Verifier, Agent, String) {
    let tmp = TempDir::new(tag);
    let config = verifier_config.map(|text| {
        let p = tmp.path().join("verifier.toml");
        std::fs::write(&p, text).unwrap();
        p
    });
    let v = Verifier::start_with(&tmp.path().join("verifier"), free_port(), config.as_deref());
    let token = v.first_token.clone().unwrap_or_else(|| v.token());
    let agent = Agent::new(&tmp.path().join("agent"));
    let device = agent.enroll(&v, &token);
    (tmp, v, agent, device)
}

/// The verifier's `devices --json` entry for `device`.
fn device_entry(v: &Verifier, device: &str) -> serde_json::Value {
    v.devices()
        .into_iter()
        .find(|d| d["device_id"] == device)
        .expect("the device is listed")
}

/// Waits up to `secs` for `devices` to show `device` as `status`; fails with its entry.
fn await_status(v: &Verifier, device: &str, status: &str, secs: u64) {
    assert!(
        eventually(
            Duration::from_secs(secs),
            || device_entry(v, device)["status"] == status
        ),
        "not {status} within {secs} s: {}",
        device_entry(v, device)
    );
}

/// A private D-Bus session bus, stopped when dropped.
struct SessionBus {
    child: Child,
    address: String,
}

impl SessionBus {
    fn start() -> SessionBus {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dbus-daemon");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(!line.trim().is_empty(), "dbus-daemon printed no address");
        SessionBus {
            child,
            address: line.trim().to_owned(),
        }
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The desktop's side of the StatusNotifierItem protocol, reduced to what an item needs:
/// it records who registered.
struct Watcher {
    items: Arc<Mutex<Vec<String>>>,
}

#[zbus::interface(name = "org.kde.StatusNotifierWatcher")]
impl Watcher {
    fn register_status_notifier_item(&self, service: String) {
        self.items.lock().unwrap().push(service);
    }

    fn register_status_notifier_host(&self, _service: String) {}

    #[zbus(property)]
    fn registered_status_notifier_items(&self) -> Vec<String> {
        self.items.lock().unwrap().clone()
    }

    #[zbus(property)]
    fn is_status_notifier_host_registered(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn protocol_version(&self) -> i32 {
        0
    }
}

/// The agent's tray item, seen from the bus.
struct Item {
    item: zbus::blocking::Proxy<'static>,
    menu: zbus::blocking::Proxy<'static>,
}

impl Item {
    fn new(conn: &zbus::blocking::Connection, service: &str) -> Item {
        let proxy = |path: &str, iface: &str| {
            zbus::blocking::proxy::Builder::<zbus::blocking::Proxy<'static>>::new(conn)
                .destination(service.to_owned())
                .unwrap()
                .path(path.to_owned())
                .unwrap()
                .interface(iface.to_owned())
                .unwrap()
                // The item announces changes with its own signals (NewTitle, ...), not
                // PropertiesChanged: read every property afresh.
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .unwrap()
        };
        let item = proxy("/StatusNotifierItem", "org.kde.StatusNotifierItem");
        let menu_path: zbus::zvariant::OwnedObjectPath = item.get_property("Menu").unwrap();
        let menu = proxy(menu_path.as_str(), "com.canonical.dbusmenu");
        Item { item, menu }
    }

    fn title(&self) -> String {
        self.item.get_property("Title").unwrap_or_default()
    }

    /// The tooltip's (icon, title, description) without the icon.
    fn tooltip(&self) -> String {
        let t: (String, Vec<Pixmap>, String, String) = self.item.get_property("ToolTip").unwrap();
        format!("{} | {}", t.2, t.3)
    }

    fn icon_colour(&self) -> Vec<u8> {
        let icons: Vec<Pixmap> = self.item.get_property("IconPixmap").unwrap();
        // ARGB, the centre pixel.
        let (w, h, px) = icons.into_iter().next().expect("an icon");
        let at = (((h / 2) * w + w / 2) * 4) as usize;
        px[at..at + 4].to_vec()
    }

    /// The menu: (id, label, enabled) of every item, in order.
    fn layout(&self) -> Vec<(i32, String, bool)> {
        let reply = self
            .menu
            .call_method("GetLayout", &(0i32, -1i32, Vec::<String>::new()))
            .unwrap();
        type Layout = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
        let (_rev, (_, _, children)): (u32, Layout) = reply.body().deserialize().unwrap();
        let mut out = Vec::new();
        for c in &children {
            walk(c, &mut out);
        }
        out
    }

    /// Clicks the item whose label starts with `label`.
    fn click(&self, label: &str) {
        let layout = self.layout();
        let (id, _, enabled) = layout
            .iter()
            .find(|(_, l, _)| l.starts_with(label))
            .unwrap_or_else(|| panic!("no menu item {label:?} in {layout:?}"));
        assert!(enabled, "menu item {label:?} is disabled: {layout:?}");
        self.menu
            .call_method("Event", &(*id, "clicked", Value::from(0i32), 0u32))
            .unwrap();
    }
}

fn walk(v: &Value<'_>, out: &mut Vec<(i32, String, bool)>) {
    match v {
        Value::Value(inner) => walk(inner, out),
        Value::Structure(s) => {
            let f = s.fields();
            let (Some(Value::I32(id)), Some(Value::Dict(props))) = (f.first(), f.get(1)) else {
                return;
            };
            let mut label = String::new();
            let mut enabled = true;
            let mut separator = false;
            for (k, val) in props.iter() {
                let val = match val {
                    Value::Value(b) => &**b,
                    other => other,
                };
                match (k, val) {
                    (Value::Str(k), Value::Str(s)) if k.as_str() == "label" => {
                        label = s.as_str().to_owned();
                    }
                    (Value::Str(k), Value::Bool(b)) if k.as_str() == "enabled" => enabled = *b,
                    (Value::Str(k), Value::Str(s)) if k.as_str() == "type" => {
                        separator = s.as_str() == "separator";
                    }
                    _ => {}
                }
            }
            if !separator {
                out.push((*id, label, enabled));
            }
            if let Some(Value::Array(children)) = f.get(2) {
                for c in children.iter() {
                    walk(c, out);
                }
            }
        }
        _ => {}
    }
}

/// Waits for the consent dialog on `x` and returns its window id.
fn dialog_window(x: &Xvfb) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("xdotool")
            .env("DISPLAY", &x.display)
            .args(["search", "--onlyvisible", "--name", TITLE])
            .output()
            .unwrap();
        if let Some(id) = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
        {
            return id.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the consent dialog never appeared"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Clicks the dialog's right-most button, "Allow".
fn click_allow(x: &Xvfb) {
    let win = dialog_window(x);
    x.xdotool(&["windowfocus", "--sync", &win]);
    let out = Command::new("xdotool")
        .env("DISPLAY", &x.display)
        .args(["getwindowgeometry", "--shell", &win])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| -> i64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let (px, py) = (get("X") + get("WIDTH") - 40, get("Y") + get("HEIGHT") - 22);
    x.xdotool(&[
        "mousemove",
        "--sync",
        &px.to_string(),
        &py.to_string(),
        "click",
        "1",
    ]);
}

fn consent_decision(agent: &Agent) -> Option<String> {
    let text = std::fs::read_to_string(agent.dir.join("consent.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["decision"].as_str().map(str::to_owned)
}

/// A directory with a stand-in `xdg-open` that logs the path it is asked to open.
fn fake_opener(dir: &Path) -> (PathBuf, PathBuf) {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let log = dir.join("opened.log");
    let script = bin_dir.join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (bin_dir, log)
}

fn opened(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dialog_grants_and_the_tray_follows_every_state_and_acts_on_every_item() {
    if !tools(
        "the_dialog_grants_and_the_tray_follows_every_state_and_acts_on_every_item",
        &["Xvfb", "xdotool", "zenity", "dbus-daemon"],
    ) {
        return;
    }
    let (tmp, mut v, mut agent, device) = setup("tray", None);
    let managed = tmp.path().join("managed.toml");
    std::fs::write(
        &managed,
        "[verifier]\nheartbeat_secs = 1\n[notice]\ntext = \"ACME tests this device.\"\n[policy]\nallow_pause = true\nallow_quit = true\n",
    )
    .unwrap();
    let x = Xvfb::start(&[]);
    let bus = SessionBus::start();
    let items = Arc::new(Mutex::new(Vec::new()));
    let watcher_conn = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.kde.StatusNotifierWatcher")
        .unwrap()
        .serve_at(
            "/StatusNotifierWatcher",
            Watcher {
                items: items.clone(),
            },
        )
        .unwrap()
        .build()
        .unwrap();
    let (bin_dir, log) = fake_opener(tmp.path());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = Command::new(bin("cadence-agent"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .arg("--managed")
        .arg(&managed)
        .args(["run", "--source", "none"])
        .env("DISPLAY", &x.display)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("PATH", &path)
        .env("CADENCE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Killed when the test ends, whatever happens.
    agent.child = Some(run);

    // The item registers with the watcher.
    assert!(
        eventually(Duration::from_secs(20), || !items
            .lock()
            .unwrap()
            .is_empty()),
        "the tray item never registered"
    );
    let service = items.lock().unwrap()[0].clone();
    let tray = Item::new(&watcher_conn, &service);
    assert!(
        tray.title().contains("Waiting for your consent"),
        "{}",
        tray.title()
    );
    let waiting_colour = tray.icon_colour();
    assert_eq!(
        consent_decision(&agent),
        None,
        "nothing decided before the dialog"
    );

    // First start in a graphical session: the dialog; a click on Allow grants.
    click_allow(&x);
    assert!(
        eventually(Duration::from_secs(10), || tray
            .title()
            .contains("Monitoring")),
        "the tray did not follow the grant: {}",
        tray.title()
    );
    assert_eq!(consent_decision(&agent).as_deref(), Some("granted"));
    assert!(tray.tooltip().contains("Monitoring"), "{}", tray.tooltip());
    assert_ne!(
        tray.icon_colour(),
        waiting_colour,
        "the icon follows the state"
    );
    await_status(&v, &device, "monitoring", 10);

    // Pause for 30 minutes: capture stops, the verifier hears of it.
    tray.click("Pause for 30 minutes");
    assert!(
        eventually(Duration::from_secs(10), || tray.title().contains("Paused")),
        "{}",
        tray.title()
    );
    assert_eq!(consent_decision(&agent).as_deref(), Some("paused"));
    await_status(&v, &device, "paused", 10);
    let st = agent.status();
    assert!(
        st["paused_until_ms"].as_u64().unwrap() > now_ms() + 25 * 60 * 1000,
        "{st}"
    );

    // Resume.
    tray.click("Resume monitoring");
    assert!(eventually(Duration::from_secs(10), || tray
        .title()
        .contains("Monitoring")));
    assert_eq!(consent_decision(&agent).as_deref(), Some("resumed"));

    // What is collected…: a local page made from PRIVACY.md.
    tray.click("What is collected");
    assert!(eventually(Duration::from_secs(10), || opened(&log)
        .iter()
        .any(|p| p.ends_with("privacy.html"))));
    let page = std::fs::read_to_string(agent.dir.join("privacy.html")).unwrap();
    assert!(page.contains("What is never collected"), "{page}");

    // Show my recent data: the records sent, exactly as sent.
    tray.click("Show my recent data");
    assert!(eventually(Duration::from_secs(10), || opened(&log)
        .iter()
        .any(|p| p.ends_with("recent.html"))));
    let page = std::fs::read_to_string(agent.dir.join("recent.html")).unwrap();
    assert!(
        page.contains("consent") && page.contains("paused"),
        "{page}"
    );
    let shown = agent.ok(&["show", "--json", "--last", "50"]);
    let decisions: Vec<String> = shown
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "consent")
        .map(|r| r["payload"]["decision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(decisions, ["granted", "paused", "resumed"], "{shown}");

    // The verifier goes away: the tray says offline, with the records queued.
    let port: u16 = v.url.rsplit(':').next().unwrap().parse().unwrap();
    v.stop();
    tray.click("Pause for 30 minutes");
    assert!(eventually(Duration::from_secs(10), || tray
        .title()
        .contains("Paused")));
    tray.click("Resume monitoring");
    assert!(
        eventually(Duration::from_secs(20), || tray.title().contains("Offline")),
        "{}",
        tray.title()
    );
    assert!(tray.title().contains("records queued"), "{}", tray.title());
    let v = Verifier::start(&v.dir, port);
    assert!(
        eventually(Duration::from_secs(30), || tray
            .title()
            .contains("Monitoring")),
        "back online: {}",
        tray.title()
    );

    // Withdraw consent.
    tray.click("Withdraw consent");
    assert!(eventually(Duration::from_secs(10), || tray
        .title()
        .contains("withdrawn")));
    assert_eq!(consent_decision(&agent).as_deref(), Some("withdrawn"));
    await_status(&v, &device, "withdrawn", 10);
    let labels: Vec<String> = tray.layout().into_iter().map(|(_, l, _)| l).collect();
    assert!(
        !labels.iter().any(|l| l.starts_with("Withdraw")),
        "{labels:?}"
    );

    // Review and allow…: the dialog again, and Allow grants again.
    tray.click("Review and allow");
    click_allow(&x);
    assert!(eventually(Duration::from_secs(10), || tray
        .title()
        .contains("Monitoring")));
    assert_eq!(consent_decision(&agent).as_deref(), Some("granted"));

    // Quit (the policy allows it here): the agent exits cleanly.
    tray.click("Quit");
    let mut exited = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            exited = agent.child.as_mut().unwrap().try_wait().unwrap();
            exited.is_some()
        }),
        "Quit did not stop the agent"
    );
    assert!(exited.unwrap().success(), "{exited:?}");
    drop(watcher_conn);
}

#[test]
fn withdrawing_stops_live_capture_within_a_second_and_the_verifier_shows_it() {
    if !tools(
        "withdrawing_stops_live_capture_within_a_second_and_the_verifier_shows_it",
        &["Xvfb", "xdotool"],
    ) {
        return;
    }
    let x = Xvfb::start(&[]);
    let (_tmp, v, mut agent, device) = setup("withdraw", None);
    agent.ok(&["consent", "grant"]);
    agent.spawn_run(&[
        "--source",
        &format!("x11{}", x.display),
        "--no-ui",
        "--heartbeat-secs",
        "1",
        "--window-secs",
        "2",
        "--min-keys",
        "10",
        "--min-mouse",
        "20",
    ]);
    // Someone types and moves the pointer, before and well after the withdrawal.
    let stop = Arc::new(AtomicBool::new(false));
    let typist = {
        let stop = stop.clone();
        let display = x.display.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let _ = Command::new("xdotool")
                    .env("DISPLAY", &display)
                    .args(["type", "--delay", "140", "steady typing "])
                    .status();
                let _ = Command::new("xdotool")
                    .env("DISPLAY", &display)
                    .args(["mousemove_relative", "--", "5", "3"])
                    .status();
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(30), || v.windows(&device).len() >= 2),
        "capture never produced windows before the withdrawal: {}",
        agent.status()
    );
    let withdrawn_at = now_ms();
    agent.ok(&["consent", "withdraw"]);
    // Typing goes on for several window lengths after the withdrawal.
    thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    typist.join().unwrap();
    await_status(&v, &device, "withdrawn", 15);

    // From the data: no window stored at the verifier closed later than one second after the
    // withdrawal, so none holds an event from after it.
    let o = v.cli(&["windows", "--device", &device, "--json"]);
    let created: Vec<u64> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["created_ms"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(created.iter().any(|&c| c < withdrawn_at), "{created:?}");
    let late: Vec<u64> = created
        .iter()
        .copied()
        .filter(|&c| c > withdrawn_at + 1000)
        .collect();
    assert!(
        late.is_empty(),
        "windows closed after withdrawal + 1 s (withdrawn at {withdrawn_at}): {late:?}"
    );
    // And in the agent's own record of what it sent: nothing after the withdrawal record.
    let shown = agent.ok(&["show", "--json", "--last", "50"]);
    let kinds: Vec<(String, String)> = shown
        .lines()
        .map(|l| {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                r["kind"].as_str().unwrap().to_owned(),
                r["payload"]["decision"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let at = kinds
        .iter()
        .position(|(k, d)| k == "consent" && d == "withdrawn")
        .expect("the withdrawal was sealed");
    assert!(
        kinds[at + 1..].iter().all(|(k, _)| k != "features"),
        "a window was sealed after the withdrawal: {kinds:?}"
    );
    assert_eq!(agent.status()["state"], "withdrawn");
    agent.stop();
}

#[test]
fn a_missing_dialog_program_is_reported_and_never_grants() {
    if !tools(
        "a_missing_dialog_program_is_reported_and_never_grants",
        &["Xvfb"],
    ) {
        return;
    }
    let x = Xvfb::start(&[]);
    let (tmp, _v, agent, _device) = setup("nozenity", None);
    // A PATH with no zenity at all.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let child = Command::new(bin("cadence-agent"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["run", "--source", "none", "--heartbeat-secs", "1"])
        .env("DISPLAY", &x.display)
        .env("PATH", &empty)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("CADENCE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent_run = agent;
    agent_run.child = Some(child);
    let mut stderr = BufReader::new(agent_run.child.as_mut().unwrap().stderr.take().unwrap());
    let mut said = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !said.contains("consent grant") {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        said.push_str(&line);
    }
    assert!(
        said.contains("zenity") && said.contains("not installed"),
        "{said}"
    );
    assert!(said.contains("cadence-agent consent grant"), "{said}");
    assert_eq!(consent_decision(&agent_run), None);
    assert_eq!(agent_run.status()["state"], "waiting_for_consent");
    agent_run.stop();
}

#[test]
fn the_verifier_shows_a_device_silent_when_its_agent_stops() {
    let (_tmp, v, mut agent, device) = setup("silent", Some("[devices]\nsilent_after_secs = 5\n"));
    agent.spawn_run(&["--source", "none", "--no-ui", "--heartbeat-secs", "1"]);
    await_status(&v, &device, "waiting", 15);
    agent.ok(&["consent", "grant"]);
    await_status(&v, &device, "monitoring", 15);
    agent.stop();
    await_status(&v, &device, "silent", 30);
    let line = String::from_utf8_lossy(&v.cli(&["devices"]).stdout).into_owned();
    assert!(line.contains("status=silent"), "{line}");
}

#[test]
fn stopping_the_agent_while_its_dialog_is_open_takes_the_dialog_away() {
    if !tools(
        "stopping_the_agent_while_its_dialog_is_open_takes_the_dialog_away",
        &["Xvfb", "xdotool", "zenity"],
    ) {
        return;
    }
    let x = Xvfb::start(&[]);
    let (_tmp, _v, mut agent, _device) = setup("dialogstop", None);
    let child = Command::new(bin("cadence-agent"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["run", "--source", "none"])
        .env("DISPLAY", &x.display)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("CADENCE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    agent.child = Some(child);
    dialog_window(&x);
    // A clean exit (the harness asserts it), not one that waits for the dialog's answer.
    agent.stop();
    assert!(
        eventually(Duration::from_secs(10), || {
            let out = Command::new("xdotool")
                .env("DISPLAY", &x.display)
                .args(["search", "--onlyvisible", "--name", TITLE])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().is_empty()
        }),
        "the dialog outlived the agent"
    );
    assert_eq!(consent_decision(&agent), None);
}

/// The desktop's notification service, reduced to what the agent uses: it records each
/// `Notify` call as (replaces_id, body) and keeps a replaced notification's id, as servers do.
struct Notifications {
    calls: Arc<Mutex<Vec<(u32, String)>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        replaces_id: u32,
        _app_icon: String,
        _summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut calls = self.calls.lock().unwrap();
        calls.push((replaces_id, body));
        if replaces_id != 0 {
            replaces_id
        } else {
            100 + calls.len() as u32
        }
    }
}

/// Runs the agent in a graphical session without a tray (no StatusNotifierWatcher, as on
/// stock GNOME) on `bus`, with no dialog program, until its `status` is readable.
fn run_without_tray(agent: &mut Agent, bus: &SessionBus, empty_path: &Path) {
    let child = Command::new(bin("cadence-agent"))
        .arg("--data-dir")
        .arg(&agent.dir)
        .args(["run", "--source", "none", "--heartbeat-secs", "1"])
        .env_remove("DISPLAY")
        .env("WAYLAND_DISPLAY", "cadence-test-no-compositor")
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env("PATH", empty_path)
        .env("CADENCE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    agent.child = Some(child);
    assert!(
        eventually(Duration::from_secs(20), || {
            agent
                .cli(&["status", "--json"])
                .status
                .success()
                .then(|| agent.status())
                .is_some_and(|s| s["running"] == true && s.get("shown_by").is_some())
        }),
        "the agent never said where its state is shown"
    );
}

#[test]
fn without_a_tray_every_change_of_state_is_notified_and_replaces_the_last() {
    if !tools(
        "without_a_tray_every_change_of_state_is_notified_and_replaces_the_last",
        &["dbus-daemon"],
    ) {
        return;
    }
    let (tmp, _v, mut agent, _device) = setup("notify", None);
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let bus = SessionBus::start();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let _server = zbus::blocking::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.Notifications")
        .unwrap()
        .serve_at(
            "/org/freedesktop/Notifications",
            Notifications {
                calls: calls.clone(),
            },
        )
        .unwrap()
        .build()
        .unwrap();
    run_without_tray(&mut agent, &bus, &empty);
    assert_eq!(agent.status()["shown_by"], "notifications");
    let said = |text: &str| {
        let calls = calls.clone();
        let text = text.to_owned();
        move || calls.lock().unwrap().iter().any(|(_, b)| b.contains(&text))
    };
    assert!(
        eventually(Duration::from_secs(20), said("Waiting for your consent")),
        "{:?}",
        calls.lock().unwrap()
    );
    agent.ok(&["consent", "grant"]);
    assert!(
        eventually(Duration::from_secs(20), said("Monitoring")),
        "{:?}",
        calls.lock().unwrap()
    );
    agent.ok(&["consent", "withdraw"]);
    assert!(
        eventually(Duration::from_secs(20), said("withdrawn")),
        "{:?}",
        calls.lock().unwrap()
    );
    agent.stop();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls[0].0, 0,
        "the first notification replaces none: {calls:?}"
    );
    assert!(
        calls[1..].iter().all(|(r, _)| *r == 101),
        "every later notification replaces the first: {calls:?}"
    );
    assert!(
        calls.windows(2).all(|w| w[0].1 != w[1].1),
        "a notification repeated an unchanged state: {calls:?}"
    );

    // Neither a tray nor a notification service: said in `status`.
    let bare = SessionBus::start();
    run_without_tray(&mut agent, &bare, &empty);
    let shown = agent.status()["shown_by"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        shown.starts_with("nowhere") && shown.contains("org.freedesktop.Notifications"),
        "{shown}"
    );
    agent.stop();
}

/// The consent decisions the agent sealed, in order, from `show --json`.
fn sealed_decisions(agent: &Agent) -> Vec<String> {
    agent
        .ok(&["show", "--json", "--last", "50"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "consent")
        .map(|r| r["payload"]["decision"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn every_decision_is_sealed_once_also_those_made_while_no_agent_runs() {
    let (_tmp, v, mut agent, device) = setup("journal", None);
    // Three decisions in quick succession, with no agent running.
    agent.ok(&["consent", "grant"]);
    agent.ok(&["consent", "withdraw"]);
    agent.ok(&["consent", "grant"]);
    let run = ["--source", "none", "--no-ui", "--heartbeat-secs", "1"];
    agent.spawn_run(&run);
    let want = ["granted", "withdrawn", "granted"];
    assert!(
        eventually(Duration::from_secs(20), || sealed_decisions(&agent) == want),
        "{:?}",
        sealed_decisions(&agent)
    );
    await_status(&v, &device, "monitoring", 20);
    agent.stop();
    // A restart seals nothing again; the next decision follows the three.
    agent.spawn_run(&run);
    agent.ok(&["consent", "withdraw"]);
    let want = ["granted", "withdrawn", "granted", "withdrawn"];
    assert!(
        eventually(Duration::from_secs(20), || sealed_decisions(&agent).len()
            >= want.len()),
        "{:?}",
        sealed_decisions(&agent)
    );
    assert_eq!(sealed_decisions(&agent), want);
    await_status(&v, &device, "withdrawn", 20);
    agent.stop();
}
