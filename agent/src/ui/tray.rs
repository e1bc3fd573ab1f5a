//! The tray icon: the monitoring state at a glance, and the menu the employee acts from.
//!
//! Owns one thread that holds the icon and its menu (menu items are not `Send`). The daemon
//! hands it [`TrayView`]s through a [`Tray`] handle; the thread turns menu clicks into
//! [`MenuAction`]s and sends them back. The thread decides nothing: whether a pause is allowed
//! and what a withdrawal does is the daemon's (through [`crate::consent`]).
//!
//! Linux uses tray-icon's pure-Rust StatusNotifierItem backend (ksni over D-Bus, no GTK).
//! That backend registers blindly (it assumes a StatusNotifierWatcher is there), so the thread
//! first asks the session bus whether one is; without one there is no tray, and the daemon
//! shows the state in desktop notifications instead ([`super::notify`]), or says that it is
//! shown nowhere (`cadence-agent status` still tells the state).
//! On Windows and macOS the same code uses tray-icon's native backends (the notification
//! area; the menu-bar status item). Their UI events need the OS's event loop on the icon's
//! thread: a Win32 message pump on the tray thread, and on macOS the main thread, which
//! `cadence-agent run` keeps for it ([`super::uiloop`]).
//!
//! Never shows or sends anything about input: the title, tooltip and menu say only the state,
//! and how many records wait to be sent.

use std::sync::{Mutex, Once, mpsc};

use cadence_config::Policy;
use cadence_wire::records::MonitoringState;
use tray_icon::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tray_icon::{Icon, TrayIcon, TrayIconBuilder, TrayIconEvent};

use super::uiloop::{self, Pump, UiThread, Waker};

/// The D-Bus name of the service tray items register with on Linux desktops.
pub const WATCHER: &str = "org.kde.StatusNotifierWatcher";

/// What the tray shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrayView {
    /// The agent's monitoring state.
    pub state: MonitoringState,
    /// Records waiting in the spool.
    pub queued: u64,
    /// The last delivery attempt failed (the verifier cannot be reached).
    pub offline: bool,
    /// The organization's policy: whether Pause and Quit are offered.
    pub policy: Policy,
}

/// What a menu item asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MenuAction {
    /// "What is collected…": open the local privacy page.
    ShowCollected,
    /// "Show my recent data": open the page of the last records sent.
    ShowRecent,
    /// "Pause for 30 minutes".
    Pause,
    /// "Resume monitoring" (while paused).
    Resume,
    /// "Review and allow…" (while no grant is in force): show the consent dialog.
    Allow,
    /// "Withdraw consent".
    Withdraw,
    /// "Quit" (only where policy allows).
    Quit,
}

impl MenuAction {
    /// The menu item id (the dbusmenu label differs; ids stay stable).
    pub fn id(self) -> &'static str {
        match self {
            MenuAction::ShowCollected => "collected",
            MenuAction::ShowRecent => "recent",
            MenuAction::Pause => "pause",
            MenuAction::Resume => "resume",
            MenuAction::Allow => "allow",
            MenuAction::Withdraw => "withdraw",
            MenuAction::Quit => "quit",
        }
    }

    fn from_id(id: &str) -> Option<MenuAction> {
        [
            MenuAction::ShowCollected,
            MenuAction::ShowRecent,
            MenuAction::Pause,
            MenuAction::Resume,
            MenuAction::Allow,
            MenuAction::Withdraw,
            MenuAction::Quit,
        ]
        .into_iter()
        .find(|a| a.id() == id)
    }
}

/// The state in words, as the tray's title and the menu's first (disabled) item show it.
pub fn words(v: &TrayView) -> String {
    match v.state {
        MonitoringState::Monitoring if v.offline && v.queued > 0 => format!(
            "Offline: monitoring, {} {} queued for the verifier",
            v.queued,
            if v.queued == 1 { "record" } else { "records" }
        ),
        MonitoringState::Monitoring => "Monitoring: timing of keys and pointer".to_owned(),
        MonitoringState::Paused => "Paused: nothing is captured".to_owned(),
        MonitoringState::WaitingForConsent => {
            "Waiting for your consent: nothing is captured".into()
        }
        MonitoringState::Withdrawn => "Consent withdrawn: nothing is captured".to_owned(),
        MonitoringState::Error => "Error: monitoring cannot run".to_owned(),
    }
}

/// The menu for a view: (action, label, enabled), in order. `None` is a separator.
pub fn menu_items(v: &TrayView) -> Vec<Option<(MenuAction, &'static str, bool)>> {
    let consented = matches!(
        v.state,
        MonitoringState::Monitoring | MonitoringState::Paused | MonitoringState::Error
    );
    let mut m = vec![
        Some((MenuAction::ShowCollected, "What is collected…", true)),
        Some((MenuAction::ShowRecent, "Show my recent data", true)),
        None,
    ];
    if v.state == MonitoringState::Paused {
        m.push(Some((MenuAction::Resume, "Resume monitoring", true)));
    } else if v.policy.allow_pause {
        m.push(Some((
            MenuAction::Pause,
            "Pause for 30 minutes",
            v.state == MonitoringState::Monitoring,
        )));
    }
    if consented {
        m.push(Some((MenuAction::Withdraw, "Withdraw consent", true)));
    } else {
        m.push(Some((MenuAction::Allow, "Review and allow…", true)));
    }
    if v.policy.allow_quit {
        m.push(None);
        m.push(Some((MenuAction::Quit, "Quit", true)));
    }
    m
}

/// A 32×32 round icon in the state's colour (RGBA).
fn icon_rgba(v: &TrayView) -> [u8; 3] {
    match v.state {
        MonitoringState::Monitoring if v.offline && v.queued > 0 => [0xe0, 0x8a, 0x00],
        MonitoringState::Monitoring => [0x2e, 0x9e, 0x44],
        MonitoringState::Paused => [0x8a, 0x8a, 0x8a],
        MonitoringState::WaitingForConsent => [0x2f, 0x6f, 0xd0],
        MonitoringState::Withdrawn => [0x50, 0x50, 0x50],
        MonitoringState::Error => [0xd0, 0x2f, 0x2f],
    }
}

fn icon(v: &TrayView) -> Option<Icon> {
    const N: u32 = 32;
    let [r, g, b] = icon_rgba(v);
    let mut px = Vec::with_capacity((N * N * 4) as usize);
    let c = (N as f32 - 1.0) / 2.0;
    for y in 0..N {
        for x in 0..N {
            let d = ((x as f32 - c).powi(2) + (y as f32 - c).powi(2)).sqrt();
            let a = if d <= c - 1.0 { 0xff } else { 0 };
            px.extend_from_slice(&[r, g, b, a]);
        }
    }
    Icon::from_rgba(px, N, N).ok()
}

/// Messages to the tray thread.
enum Msg {
    View(TrayView),
    Menu(String),
    Stop,
}

/// The daemon's handle on the tray thread; dropping it removes the icon.
pub struct Tray {
    tx: mpsc::Sender<Msg>,
    waker: Waker,
    ui: Option<UiThread>,
}

impl Tray {
    /// Shows `view` now (nothing happens when it did not change).
    pub fn show(&self, view: TrayView) {
        let _ = self.tx.send(Msg::View(view));
        self.waker.wake();
    }
}

impl Drop for Tray {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        self.waker.wake();
        if let Some(ui) = self.ui.take() {
            ui.join();
        }
    }
}

/// Why there is no tray.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrayError {
    /// No StatusNotifierWatcher on the session bus (no tray-capable panel, or no session bus).
    #[error("no tray: {0}")]
    NoWatcher(String),
    /// The icon could not be created.
    #[error("no tray: the icon could not be created: {0}")]
    Build(String),
    /// Not available on this OS yet.
    #[error("no tray: {0}")]
    Unsupported(&'static str),
}

/// Starts the tray thread showing `first`; menu clicks arrive on `actions`. Returns when the
/// icon exists (or could not be made).
pub fn spawn(
    first: TrayView,
    actions: impl Fn(MenuAction) + Send + 'static,
) -> Result<Tray, TrayError> {
    tray_possible()?;
    let (tx, rx) = mpsc::channel::<Msg>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Waker, TrayError>>();
    let menu_tx = tx.clone();
    let ui = uiloop::spawn("cadence-tray", move || {
        let pump = Pump::current();
        let waker = pump.waker();
        // Menu clicks arrive on the UI thread on Windows and macOS, on the D-Bus worker on
        // Linux; the wake-up makes the pump look either way.
        *lock_sink() = Some((menu_tx, waker.clone()));
        route_events();
        let mut shown = first;
        let tray = match uiloop::autoreleased(|| build(&shown)) {
            Ok(t) => {
                let _ = ready_tx.send(Ok(waker));
                t
            }
            Err(e) => {
                *lock_sink() = None;
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        while let Some(msg) = pump.next(&rx) {
            match msg {
                Msg::Stop => break,
                Msg::Menu(id) => match MenuAction::from_id(&id) {
                    Some(a) => actions(a),
                    None => tracing::debug!(id, "tray: click on an item without action"),
                },
                Msg::View(v) if v != shown => {
                    uiloop::autoreleased(|| update(&tray, &v));
                    shown = v;
                }
                Msg::View(_) => {}
            }
        }
        *lock_sink() = None;
        uiloop::autoreleased(|| drop(tray));
    })
    .map_err(TrayError::Build)?;
    match ready_rx.recv() {
        Ok(Ok(waker)) => Ok(Tray {
            tx,
            waker,
            ui: Some(ui),
        }),
        Ok(Err(e)) => {
            ui.join();
            Err(e)
        }
        Err(_) => Err(TrayError::Build("the tray thread ended".into())),
    }
}

/// Where menu clicks go: the current tray's channel and the waker of its thread. (muda and
/// tray-icon keep the first event handler for the life of the process, so the handlers are
/// set once and forward to whichever tray is current.)
type Sink = Option<(mpsc::Sender<Msg>, Waker)>;
static MENU_SINK: Mutex<Sink> = Mutex::new(None);

fn lock_sink() -> std::sync::MutexGuard<'static, Sink> {
    MENU_SINK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets the process's menu and icon event handlers, once.
fn route_events() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        MenuEvent::set_event_handler(Some(|e: MenuEvent| {
            if let Some((tx, waker)) = lock_sink().as_ref() {
                let _ = tx.send(Msg::Menu(e.id.0));
                waker.wake();
            }
        }));
        // Clicks on and hovers over the icon itself mean nothing here (the menu is what
        // acts); without a handler tray-icon would queue every one of them for good.
        TrayIconEvent::set_event_handler(Some(|_: TrayIconEvent| {}));
    });
}

fn menu(v: &TrayView) -> Menu {
    let m = Menu::new();
    let state = MenuItem::with_id("state", words(v), false, None);
    let _ = m.append(&state);
    let _ = m.append(&PredefinedMenuItem::separator());
    for item in menu_items(v) {
        let _ = match item {
            Some((a, label, enabled)) => m.append(&MenuItem::with_id(a.id(), label, enabled, None)),
            None => m.append(&PredefinedMenuItem::separator()),
        };
    }
    m
}

fn title(v: &TrayView) -> String {
    format!("Cadence: {}", words(v))
}

fn build(v: &TrayView) -> Result<TrayIcon, TrayError> {
    let mut b = TrayIconBuilder::new()
        .with_id("cadence")
        .with_title(title(v))
        .with_tooltip(words(v))
        .with_menu(Box::new(menu(v)));
    if let Some(i) = icon(v) {
        b = b.with_icon(i);
    }
    b.build().map_err(|e| TrayError::Build(e.to_string()))
}

fn update(tray: &TrayIcon, v: &TrayView) {
    tray.set_menu(Some(Box::new(menu(v))));
    let _ = tray.set_icon(icon(v));
    let _ = tray.set_tooltip(Some(words(v)));
    tray.set_title(Some(title(v)));
}

/// Whether a StatusNotifierWatcher owns its name on the session bus.
#[cfg(target_os = "linux")]
fn tray_possible() -> Result<(), TrayError> {
    let conn = zbus::blocking::Connection::session()
        .map_err(|e| TrayError::NoWatcher(format!("no D-Bus session bus ({e})")))?;
    let dbus = zbus::blocking::fdo::DBusProxy::new(&conn)
        .map_err(|e| TrayError::NoWatcher(format!("the session bus does not answer ({e})")))?;
    let name =
        zbus::names::BusName::try_from(WATCHER).map_err(|e| TrayError::NoWatcher(e.to_string()))?;
    match dbus.name_has_owner(name) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TrayError::NoWatcher(format!(
            "no {WATCHER} on the session bus (the desktop shows no tray icons)"
        ))),
        Err(e) => Err(TrayError::NoWatcher(format!(
            "cannot ask the session bus for {WATCHER} ({e})"
        ))),
    }
}

/// Windows and macOS: the OS's own notification area / status bar is always there; the icon's
/// UI events are run by [`uiloop`] (on macOS only where the command serves the main thread).
#[cfg(not(target_os = "linux"))]
fn tray_possible() -> Result<(), TrayError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: MonitoringState) -> TrayView {
        TrayView {
            state,
            queued: 0,
            offline: false,
            policy: Policy {
                allow_pause: true,
                allow_quit: false,
            },
        }
    }

    fn actions(v: &TrayView) -> Vec<(MenuAction, bool)> {
        menu_items(v)
            .into_iter()
            .flatten()
            .map(|(a, _, e)| (a, e))
            .collect()
    }

    /// Windows (hosted runners have a desktop): the icon is made on its own thread, follows
    /// views through the message pump, and goes away on drop without hanging.
    #[test]
    #[cfg(windows)]
    fn on_windows_the_tray_thread_pumps_views_and_ends_on_drop() {
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let tray = spawn(view(MonitoringState::WaitingForConsent), |_| {}).unwrap();
            for state in [MonitoringState::Monitoring, MonitoringState::Paused] {
                tray.show(view(state));
            }
            drop(tray);
            done_tx.send(()).unwrap();
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the tray thread did not end within 20 s of the drop");
    }

    #[test]
    fn the_menu_follows_state_and_policy() {
        use MenuAction::*;
        let m = view(MonitoringState::Monitoring);
        assert_eq!(
            actions(&m),
            [
                (ShowCollected, true),
                (ShowRecent, true),
                (Pause, true),
                (Withdraw, true)
            ]
        );
        let p = view(MonitoringState::Paused);
        assert!(actions(&p).contains(&(Resume, true)));
        assert!(actions(&p).contains(&(Withdraw, true)));
        let w = view(MonitoringState::WaitingForConsent);
        assert!(
            actions(&w).contains(&(Pause, false)),
            "pause only while monitoring"
        );
        assert!(actions(&w).contains(&(Allow, true)));
        assert!(!actions(&w).iter().any(|(a, _)| *a == Withdraw));
        let strict = TrayView {
            policy: Policy {
                allow_pause: false,
                allow_quit: true,
            },
            ..m
        };
        let a = actions(&strict);
        assert!(!a.iter().any(|(a, _)| *a == Pause));
        assert!(a.contains(&(Quit, true)));
        assert!(
            a.contains(&(Withdraw, true)),
            "withdrawing is never a policy"
        );
    }

    #[test]
    fn words_say_offline_with_the_queue() {
        let v = TrayView {
            queued: 7,
            offline: true,
            ..view(MonitoringState::Monitoring)
        };
        assert!(words(&v).contains("7 records queued"), "{}", words(&v));
        assert!(words(&view(MonitoringState::Monitoring)).starts_with("Monitoring"));
        for a in [
            MenuAction::ShowCollected,
            MenuAction::ShowRecent,
            MenuAction::Pause,
            MenuAction::Resume,
            MenuAction::Allow,
            MenuAction::Withdraw,
            MenuAction::Quit,
        ] {
            assert_eq!(MenuAction::from_id(a.id()), Some(a));
        }
    }
}
