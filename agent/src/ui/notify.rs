//! Desktop notifications: the monitoring state where no tray icon can be shown.
//!
//! Owns one thread that talks to the desktop's notification service
//! (`org.freedesktop.Notifications` on the session bus, e.g. stock GNOME, which shows no tray
//! icons). The daemon hands it the same [`TrayView`]s as the tray; the thread shows one
//! notification whenever the state changes (monitoring, paused, withdrawn, waiting for
//! consent, error, offline) and replaces the previous one (`replaces_id`), so they never pile
//! up. A change of the queue length alone is not a change of state and shows nothing new.
//!
//! Linux only for now: on Windows and macOS [`spawn`] reports itself unavailable.
//!
//! Never shows anything about input: the text is the state in words
//! ([`super::tray::words`]).

use std::sync::mpsc;
use std::thread;

use cadence_wire::records::MonitoringState;

use super::tray::TrayView;

/// The D-Bus name of the desktop notification service.
pub const SERVICE: &str = "org.freedesktop.Notifications";

/// The daemon's handle on the notification thread; dropping it ends the thread.
pub struct Notifier {
    tx: mpsc::Sender<Option<TrayView>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Notifier {
    /// Shows `view` if its state differs from the one last shown.
    pub fn show(&self, view: TrayView) {
        let _ = self.tx.send(Some(view));
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.tx.send(None);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What makes a new notification: the state, with "offline" apart from monitoring. The queue
/// length is left out, so a growing queue does not notify on every record.
pub fn kind(v: &TrayView) -> (MonitoringState, bool) {
    (
        v.state,
        v.state == MonitoringState::Monitoring && v.offline && v.queued > 0,
    )
}

/// Starts the notification thread and shows `first`; `Err` says in words why there is no
/// notification service.
pub fn spawn(first: TrayView) -> Result<Notifier, String> {
    let bus = connect()?;
    let (tx, rx) = mpsc::channel::<Option<TrayView>>();
    let thread = thread::Builder::new()
        .name("cadence-notify".into())
        .spawn(move || {
            let mut shown: Option<(MonitoringState, bool)> = None;
            // The id the service gave the notification on screen (0: none yet).
            let mut id = 0u32;
            let mut next = Some(first);
            while let Some(v) = next {
                if shown != Some(kind(&v)) {
                    match bus.notify(id, &v) {
                        Ok(new) => {
                            id = new;
                            shown = Some(kind(&v));
                        }
                        Err(e) => tracing::warn!("the state could not be notified: {e}"),
                    }
                }
                next = rx.recv().ok().flatten();
            }
        })
        .map_err(|e| format!("cannot start the notification thread: {e}"))?;
    Ok(Notifier {
        tx,
        thread: Some(thread),
    })
}

#[cfg(target_os = "linux")]
struct Bus(zbus::blocking::Connection);

#[cfg(target_os = "linux")]
fn connect() -> Result<Bus, String> {
    let conn =
        zbus::blocking::Connection::session().map_err(|e| format!("no D-Bus session bus ({e})"))?;
    let dbus = zbus::blocking::fdo::DBusProxy::new(&conn)
        .map_err(|e| format!("the session bus does not answer ({e})"))?;
    let name = zbus::names::BusName::try_from(SERVICE).map_err(|e| e.to_string())?;
    match dbus.name_has_owner(name) {
        Ok(true) => Ok(Bus(conn)),
        Ok(false) => Err(format!("no {SERVICE} on the session bus")),
        Err(e) => Err(format!("cannot ask the session bus for {SERVICE} ({e})")),
    }
}

#[cfg(target_os = "linux")]
impl Bus {
    /// One `Notify` call; returns the id of the notification shown.
    fn notify(&self, replaces_id: u32, v: &TrayView) -> Result<u32, String> {
        let hints: std::collections::HashMap<&str, zbus::zvariant::Value<'_>> =
            std::collections::HashMap::new();
        let reply = self
            .0
            .call_method(
                Some(SERVICE),
                "/org/freedesktop/Notifications",
                Some(SERVICE),
                "Notify",
                &(
                    "Cadence",
                    replaces_id,
                    "",
                    "Cadence",
                    super::tray::words(v),
                    Vec::<&str>::new(),
                    hints,
                    // The server's default expiry.
                    -1i32,
                ),
            )
            .map_err(|e| e.to_string())?;
        reply.body().deserialize::<u32>().map_err(|e| e.to_string())
    }
}

// Never constructed: `connect` fails on this OS.
#[cfg(not(target_os = "linux"))]
#[allow(dead_code)]
struct Bus;

#[cfg(not(target_os = "linux"))]
fn connect() -> Result<Bus, String> {
    Err("desktop notifications are not implemented on this OS yet".into())
}

#[cfg(not(target_os = "linux"))]
impl Bus {
    fn notify(&self, _replaces_id: u32, _v: &TrayView) -> Result<u32, String> {
        Err("desktop notifications are not implemented on this OS yet".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cadence_config::Policy;

    #[test]
    fn only_a_change_of_state_makes_a_new_notification() {
        let v = |state, queued, offline| TrayView {
            state,
            queued,
            offline,
            policy: Policy {
                allow_pause: false,
                allow_quit: false,
            },
        };
        let m = MonitoringState::Monitoring;
        assert_eq!(kind(&v(m, 1, false)), kind(&v(m, 9, false)));
        assert_eq!(kind(&v(m, 3, true)), kind(&v(m, 4, true)));
        assert_ne!(kind(&v(m, 3, true)), kind(&v(m, 3, false)));
        assert_ne!(
            kind(&v(MonitoringState::Paused, 0, false)),
            kind(&v(MonitoringState::Withdrawn, 0, false))
        );
        // Offline with nothing queued shows as monitoring (as the tray does).
        assert_eq!(kind(&v(m, 0, true)), kind(&v(m, 0, false)));
    }
}
