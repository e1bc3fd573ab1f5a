//! The thread a tray icon lives on, and the OS's UI events on it.
//!
//! Owns where UI work runs and how it waits. A UI job (the tray's) gets a [`Pump`] that hands
//! it the next message from its channel while running the OS's UI events in between, and a
//! [`Waker`] that other threads use after sending it a message.
//!
//! - Linux: an ordinary thread. The tray's StatusNotifierItem backend serves D-Bus on its own
//!   worker, so the thread only waits on its channel.
//! - Windows: an ordinary thread that pumps its Win32 messages: the icon's hidden window and
//!   its menu belong to the thread that made them and answer only while it dispatches. A
//!   message for the thread wakes it with a thread message (`uiloop::windows`). Messages are
//!   dispatched, never translated (`TranslateMessage` makes characters from key presses).
//! - macOS: AppKit delivers UI events only on the main thread, and status-bar items must be
//!   made there. `cadence-agent run` therefore keeps the main thread for UI jobs
//!   ([`with_main_thread_ui`]) and runs the daemon on another; [`spawn`] hands the job to the
//!   main thread, which runs it between turns of the AppKit event queue (`uiloop::macos`).
//!
//! Never looks at an event's content: events are only handed back to the OS to dispatch.

use std::sync::mpsc;

#[cfg(target_os = "macos")]
pub mod macos;
#[cfg(windows)]
pub mod windows;

/// A running UI job; [`UiThread::join`] waits for it to end.
pub struct UiThread {
    #[cfg(not(target_os = "macos"))]
    handle: std::thread::JoinHandle<()>,
    #[cfg(target_os = "macos")]
    done: mpsc::Receiver<()>,
}

impl UiThread {
    /// Waits until the job has returned.
    pub fn join(self) {
        #[cfg(not(target_os = "macos"))]
        let _ = self.handle.join();
        #[cfg(target_os = "macos")]
        let _ = self.done.recv();
    }
}

/// Runs `job` where this OS lets it own UI: a new thread named `name`, or on macOS the main
/// thread (only while [`with_main_thread_ui`] serves it; otherwise an error says so).
pub fn spawn(name: &str, job: impl FnOnce() + Send + 'static) -> Result<UiThread, String> {
    #[cfg(not(target_os = "macos"))]
    {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(job)
            .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
        Ok(UiThread { handle })
    }
    #[cfg(target_os = "macos")]
    {
        let (done_tx, done) = mpsc::channel();
        let wrapped: MainJob = Box::new(move || {
            job();
            let _ = done_tx.send(());
        });
        let sent = MAIN_QUEUE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|q| q.send(wrapped).is_ok());
        if sent {
            Ok(UiThread { done })
        } else {
            Err(format!(
                "{name}: the main thread does not serve UI work in this command"
            ))
        }
    }
}

/// Wakes a UI job after a message was sent to it. Cheap to clone and send between threads.
#[derive(Debug, Clone)]
pub struct Waker {
    #[cfg(windows)]
    thread_id: u32,
}

impl Waker {
    /// Makes the job's [`Pump::next`] look at its channel now.
    pub fn wake(&self) {
        #[cfg(windows)]
        windows::wake(self.thread_id);
    }
}

/// How a UI job waits: for its next message, running the OS's UI events meanwhile.
pub struct Pump {
    #[cfg(windows)]
    thread_id: u32,
    // Made on the UI thread and used there only.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Pump {
    /// The pump of the calling thread (a UI job's, from [`spawn`]).
    pub fn current() -> Pump {
        #[cfg(target_os = "macos")]
        macos::init_app();
        Pump {
            #[cfg(windows)]
            thread_id: windows::this_thread_with_queue(),
            _not_send: std::marker::PhantomData,
        }
    }

    /// What other threads wake this pump with.
    pub fn waker(&self) -> Waker {
        Waker {
            #[cfg(windows)]
            thread_id: self.thread_id,
        }
    }

    /// The next message on `rx`, running UI events until one arrives; `None` once every
    /// sender is gone (or, on Windows, the thread was told to quit).
    pub fn next<T>(&self, rx: &mpsc::Receiver<T>) -> Option<T> {
        #[cfg(not(any(windows, target_os = "macos")))]
        {
            rx.recv().ok()
        }
        #[cfg(any(windows, target_os = "macos"))]
        loop {
            match rx.try_recv() {
                Ok(m) => return Some(m),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            // Windows: blocks until a message for the thread (a UI event or a wake-up).
            #[cfg(windows)]
            if !windows::dispatch_one() {
                return None;
            }
            // macOS: AppKit events for at most this long, then the channel again (there is no
            // cheap cross-thread wake-up without Objective-C objects of our own).
            #[cfg(target_os = "macos")]
            macos::dispatch_for(MAC_TURN_SECS);
        }
    }
}

/// How long one turn of the macOS event queue waits before the channel is looked at again:
/// a change of state shows within this.
#[cfg(target_os = "macos")]
const MAC_TURN_SECS: f64 = 0.1;

#[cfg(target_os = "macos")]
type MainJob = Box<dyn FnOnce() + Send>;

/// Where [`spawn`] hands macOS UI jobs while [`with_main_thread_ui`] serves them.
#[cfg(target_os = "macos")]
static MAIN_QUEUE: std::sync::Mutex<Option<mpsc::Sender<MainJob>>> = std::sync::Mutex::new(None);

/// Runs `f` (the daemon) and returns its result. On macOS, called on the main thread, `f` runs
/// on another thread (with the main thread's stack size) while this one runs the UI jobs
/// [`spawn`] hands it; elsewhere, or off the main thread, `f` simply runs here.
pub fn with_main_thread_ui<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_os = "macos"))]
    {
        f()
    }
    #[cfg(target_os = "macos")]
    {
        if !macos::is_main_thread() {
            return f();
        }
        let (tx, rx) = mpsc::channel::<MainJob>();
        *MAIN_QUEUE.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        // Taken by the daemon thread, or back here if that thread cannot start.
        let slot = std::sync::Mutex::new(Some(f));
        let take = || slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let out = std::thread::scope(|s| {
            let daemon = std::thread::Builder::new()
                .name("cadence-daemon".into())
                .stack_size(DAEMON_STACK)
                .spawn_scoped(s, || take().map(|f| f()));
            match daemon {
                Ok(daemon) => {
                    while !daemon.is_finished() {
                        if let Ok(job) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                            job();
                        }
                    }
                    daemon.join()
                }
                Err(e) => {
                    tracing::warn!("no daemon thread ({e}): running without a tray icon");
                    *MAIN_QUEUE.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    Ok(take().map(|f| f()))
                }
            }
        });
        *MAIN_QUEUE.lock().unwrap_or_else(|p| p.into_inner()) = None;
        match out {
            Ok(Some(r)) => r,
            // INVARIANT: the slot is full until exactly one of the two takes it, and runs it.
            Ok(None) => unreachable!("the daemon ran neither on its thread nor here"),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// The daemon thread's stack on macOS: the main thread's (8 MiB), which it ran on before.
#[cfg(target_os = "macos")]
const DAEMON_STACK: usize = 8 << 20;

/// Runs `f` with an autorelease pool on macOS (AppKit objects a tray update makes are freed
/// when it ends); elsewhere just runs it.
pub fn autoreleased<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_os = "macos")]
    {
        macos::autoreleased(f)
    }
    #[cfg(not(target_os = "macos"))]
    {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(not(target_os = "macos"))]
    fn a_ui_job_gets_its_messages_in_order_and_ends_when_the_senders_are_gone() {
        let (tx, rx) = mpsc::channel::<u32>();
        let (out_tx, out_rx) = mpsc::channel();
        let (waker_tx, waker_rx) = mpsc::channel();
        let ui = spawn("cadence-test-ui", move || {
            let pump = Pump::current();
            waker_tx.send(pump.waker()).unwrap();
            while let Some(m) = pump.next(&rx) {
                out_tx.send(m).unwrap();
            }
        })
        .unwrap();
        let waker = waker_rx.recv().unwrap();
        for m in [3, 1, 2] {
            tx.send(m).unwrap();
            waker.wake();
        }
        drop(tx);
        waker.wake();
        ui.join();
        assert_eq!(out_rx.iter().collect::<Vec<_>>(), vec![3, 1, 2]);
    }

    /// macOS: UI work runs only on a main thread that serves it; a test thread does not.
    #[test]
    #[cfg(target_os = "macos")]
    fn without_the_main_thread_served_a_ui_job_is_refused() {
        let err = spawn("cadence-test-ui", || {}).err().unwrap();
        assert!(err.contains("main thread"), "{err}");
    }

    #[test]
    fn with_main_thread_ui_returns_what_the_daemon_returned() {
        assert_eq!(with_main_thread_ui(|| 41 + 1), 42);
    }
}
