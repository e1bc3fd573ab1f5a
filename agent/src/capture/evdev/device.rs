//! The evdev devices themselves (Linux only): finding keyboards, mice and touchpads under
//! `/dev/input`, following hot-plug, and reading them through [`super::pump`].
//!
//! Owns the open device files, an inotify watch on `/dev/input`, and a stop pipe. Needs only
//! read access to the event nodes, which members of the `input` group have; never grabs a
//! device (`EVIOCGRAB` is not used), so the compositor and every other reader keep receiving
//! every event. The only ioctls used read capabilities, the device name and ids, and set this
//! reader's event clock (`EVIOCSCLOCKID`, which affects no one else).
//!
//! Idle costs nothing: the loop sleeps in `poll(2)` on the devices, the inotify descriptor and
//! the stop pipe, with no timeout. A small watcher thread sleeps on the stop flag (waking every
//! 2 s only to notice that the loop ended by itself) and writes one byte to the pipe when the
//! flag is raised.
//!
//! Event devices deliver input whatever login session is in front, so the loop asks logind
//! (a small file on tmpfs, read for every batch of events, so only while events flow) whether
//! this user's session is the active one, and drops what arrives while it is not
//! ([`SessionGate`]). Where that cannot be told (no logind), automatic backend choice never
//! picks evdev; only an explicit `--capture evdev` reads the devices then.
//!
//! The unsafe code here is the FFI to libc, each block with its `SAFETY` argument; nothing
//! else in the crate may use `unsafe`.

#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::{
    BUS_VIRTUAL, Capabilities, DeviceDecoder, EV_ABS, EV_KEY, EV_REL, KEY_CNT, KernelTimeMapper,
    Layout, Pumped, Role, pump,
};
use crate::capture::{CaptureError, EventSink, InputSource, MonoClock, Push, StopFlag};

/// Where the kernel's event nodes live.
pub const INPUT_DIR: &str = "/dev/input";

/// How often the idle watcher checks whether the device loop ended by itself.
const STOP_IDLE_CHECK: Duration = Duration::from_secs(2);
/// Where logind describes each login session.
const LOGIND_SESSIONS: &str = "/run/systemd/sessions";
/// Where logind describes the main seat (its `ACTIVE_UID=` is the user in front).
const LOGIND_SEAT0: &str = "/run/systemd/seats/seat0";

/// The value of `KEY=` in a logind state file (`/run/systemd/sessions/ID`,
/// `/run/systemd/seats/seat0`).
pub fn logind_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|rest| rest.strip_prefix('='))
            .map(str::trim)
    })
}

/// What tells whether this user's session is the one in front.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionSource {
    /// This process's logind session (`XDG_SESSION_ID`): its `ACTIVE=` flag.
    Session(PathBuf),
    /// No session id (a user service): the seat's `ACTIVE_UID=` must be this user.
    Seat { file: PathBuf, uid: u32 },
    /// No logind: cannot be told.
    Unknown,
}

/// Whether this user's session is the one in front. Event devices deliver input whatever
/// session is active, so after a switch to another user's session (or another console) the
/// devices would carry *their* input: it is read and dropped, never handed on, and the
/// return is a gap. Read afresh for every batch of events (never cached: a cached "active"
/// would let the next user's first keys through). A state file that cannot be read or does
/// not say "active" closes the gate. Without logind it cannot be told ([`Self::is_known`]):
/// the gate then stays open, which only an explicit `--capture evdev` accepts.
#[derive(Debug)]
pub struct SessionGate {
    source: SessionSource,
}

impl SessionGate {
    /// The gate for this process: its logind session, else seat0 and its own user id.
    pub fn from_env() -> Self {
        let session = std::env::var("XDG_SESSION_ID")
            .ok()
            .filter(|id| !id.is_empty() && !id.contains('/'))
            .map(|id| Path::new(LOGIND_SESSIONS).join(id))
            .filter(|f| f.exists());
        let seat = Path::new(LOGIND_SEAT0);
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("Uid:"))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|u| u.parse().ok())
            });
        let source = match (session, uid) {
            (Some(f), _) => SessionSource::Session(f),
            (None, Some(uid)) if seat.exists() => SessionSource::Seat {
                file: seat.to_owned(),
                uid,
            },
            _ => SessionSource::Unknown,
        };
        SessionGate { source }
    }

    /// Whether the gate can tell if this user's session is in front (logind is there).
    pub fn is_known(&self) -> bool {
        self.source != SessionSource::Unknown
    }

    /// How the gate tells, in words, for `doctor`.
    pub fn describe(&self) -> String {
        match &self.source {
            SessionSource::Session(f) => format!("logind session {}", f.display()),
            SessionSource::Seat { file, uid } => {
                format!("{} (active user must be uid {uid})", file.display())
            }
            SessionSource::Unknown => {
                "cannot be told (no logind): evdev would also read another signed-in user's \
                 input after a user switch, so it is never chosen automatically (only \
                 --capture evdev reads the devices then)"
                    .into()
            }
        }
    }

    /// Whether this user's session is in front now, read from logind's state file each
    /// call. A missing file (the session ended), an unreadable one or one without the field
    /// counts as not in front.
    pub fn active(&self) -> bool {
        let read = |f: &Path| std::fs::read_to_string(f).ok();
        match &self.source {
            SessionSource::Session(f) => {
                read(f).is_some_and(|t| logind_value(&t, "ACTIVE") == Some("1"))
            }
            SessionSource::Seat { file, uid } => read(file).is_some_and(|t| {
                logind_value(&t, "ACTIVE_UID").and_then(|u| u.parse::<u32>().ok()) == Some(*uid)
            }),
            SessionSource::Unknown => true,
        }
    }
}

// ioctl request numbers, as `linux/ioctl.h` builds them: direction, size, type 'E', number.
// The direction bits and the width of the size field differ on a few architectures.
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod ioc {
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 4;
    pub const DIR_SHIFT: u32 = 29;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod ioc {
    pub const READ: u32 = 2;
    pub const WRITE: u32 = 1;
    pub const DIR_SHIFT: u32 = 30;
}

const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << ioc::DIR_SHIFT) | ((size as u32) << 16) | ((b'E' as u32) << 8) | nr
}

/// `EVIOCGBIT(ev, len)`: the capability bitmap of event type `ev` (0: the types themselves).
const fn eviocgbit(ev: u16, len: usize) -> u32 {
    ioc(ioc::READ, 0x20 + ev as u32, len)
}
/// `EVIOCGID`: `struct input_id { bustype, vendor, product, version: u16 }`.
const EVIOCGID: u32 = ioc(ioc::READ, 0x02, 8);
/// `EVIOCGNAME(len)`: the device's name, for `doctor` only.
const fn eviocgname(len: usize) -> u32 {
    ioc(ioc::READ, 0x06, len)
}
/// `EVIOCSCLOCKID`: which clock stamps the events this reader receives.
const EVIOCSCLOCKID: u32 = ioc(ioc::WRITE, 0xa0, std::mem::size_of::<libc::c_int>());

/// Fills `buf` through a read-only ioctl; returns the bytes the kernel wrote.
fn ioctl_read(fd: RawFd, request: u32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: every request passed here is a read ioctl whose size field is `buf.len()`
    // (built by `eviocgbit`/`eviocgname` with that length, or EVIOCGID with 8 for an 8-byte
    // buffer), so the kernel writes at most `buf.len()` bytes into memory we own; `fd` is open.
    let n = unsafe { libc::ioctl(fd, request as libc::Ioctl, buf.as_mut_ptr()) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Reads a device's capability bitmaps.
fn capabilities(fd: RawFd) -> io::Result<Capabilities> {
    let mut types = vec![0u8; 4]; // EV_CNT = 0x20 bits
    let mut keys = vec![0u8; KEY_CNT / 8];
    let mut rel = vec![0u8; 2]; // REL_CNT = 0x10
    let mut abs = vec![0u8; 8]; // ABS_CNT = 0x40
    ioctl_read(fd, eviocgbit(0, types.len()), &mut types)?;
    // A device without a type reports an error or nothing; both mean "no bits".
    let _ = ioctl_read(fd, eviocgbit(EV_KEY, keys.len()), &mut keys);
    let _ = ioctl_read(fd, eviocgbit(EV_REL, rel.len()), &mut rel);
    let _ = ioctl_read(fd, eviocgbit(EV_ABS, abs.len()), &mut abs);
    Ok(Capabilities {
        types,
        keys,
        rel,
        abs,
    })
}

/// Whether the device was created by software (uinput), from its bus type.
fn is_virtual(fd: RawFd) -> bool {
    let mut id = [0u8; 8];
    ioctl_read(fd, EVIOCGID, &mut id).is_ok() && u16::from_ne_bytes([id[0], id[1]]) == BUS_VIRTUAL
}

/// The device's name ("AT Translated Set 2 keyboard"), for `doctor`.
fn device_name(fd: RawFd) -> String {
    let mut buf = [0u8; 256];
    match ioctl_read(fd, eviocgname(buf.len()), &mut buf) {
        Ok(n) => {
            let s = &buf[..n.min(buf.len())];
            let s = s.split(|&b| b == 0).next().unwrap_or_default();
            String::from_utf8_lossy(s).into_owned()
        }
        Err(_) => String::new(),
    }
}

/// Switches this reader's event times to `CLOCK_MONOTONIC` and returns the exact offset from
/// them to the capture clock, or `None` if the kernel keeps wall-clock times.
fn monotonic_offset(fd: RawFd, clock: &MonoClock) -> Option<i64> {
    let id: libc::c_int = libc::CLOCK_MONOTONIC;
    // SAFETY: EVIOCSCLOCKID reads one `int` from the pointer, which points at `id`, alive for
    // the call; `fd` is open.
    let r = unsafe { libc::ioctl(fd, EVIOCSCLOCKID as libc::Ioctl, &id as *const libc::c_int) };
    if r < 0 {
        return None;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // Read right after the kernel clock: Rust's Instant is CLOCK_MONOTONIC on Linux, so the
    // difference is the capture clock's origin on the kernel clock, to the microsecond.
    let now_us = i64::try_from(clock.now_us()).ok()?;
    if r != 0 {
        return None;
    }
    // time_t and long are 32 bits on some targets: the conversions are not always no-ops.
    #[allow(clippy::useless_conversion)]
    let kernel_us = i64::from(ts.tv_sec)
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.tv_nsec) / 1_000);
    Some(now_us.saturating_sub(kernel_us))
}

/// Opens an event node for reading, without blocking and without grabbing it.
fn open_node(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// One event node as `doctor` reports it.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node (`/dev/input/event3`).
    pub path: PathBuf,
    /// The device's name, when it could be opened.
    pub name: String,
    /// What capture reads it as (`None`: it could not be opened).
    pub role: Option<Role>,
    /// Why it could not be opened.
    pub error: Option<String>,
    /// A software-made device.
    pub is_virtual: bool,
}

/// Every `event*` node under `dir`, in name order.
fn event_nodes(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().as_bytes().starts_with(b"event"))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// Looks at every event node under `dir` as capture would, without reading any event.
pub fn survey(dir: &Path) -> io::Result<Vec<NodeReport>> {
    Ok(event_nodes(dir)?
        .into_iter()
        .map(|path| match open_node(&path) {
            Ok(f) => {
                let fd = f.as_raw_fd();
                NodeReport {
                    name: device_name(fd),
                    role: Some(capabilities(fd).map(|c| c.role()).unwrap_or_default()),
                    error: None,
                    is_virtual: is_virtual(fd),
                    path,
                }
            }
            Err(e) => NodeReport {
                path,
                name: String::new(),
                role: None,
                error: Some(e.to_string()),
                is_virtual: false,
            },
        })
        .collect())
}

/// An open device being read.
struct Device {
    path: PathBuf,
    /// Inode of the node when opened: a node recreated under the same name is a new device.
    ino: u64,
    file: File,
    decoder: DeviceDecoder,
    time: KernelTimeMapper,
}

/// Live capture from the kernel's event devices (Wayland sessions, the console, and X11 too).
#[derive(Debug)]
pub struct Evdev {
    /// Directory of event nodes (`/dev/input`; another one in tests).
    dir: PathBuf,
    /// The agent's capture clock.
    clock: MonoClock,
    /// A second run follows a stop or a failure: input in between was missed.
    ran_before: bool,
    /// What a node is: its capabilities, read by ioctl (tests substitute a fixed answer, as
    /// the nodes they make cannot answer capability ioctls).
    classify: fn(RawFd) -> Role,
}

/// A device's role from its capability bitmaps.
fn classify(fd: RawFd) -> Role {
    capabilities(fd).map(|c| c.role()).unwrap_or_default()
}

impl Evdev {
    /// A source reading the devices under `/dev/input`, stamping events on `clock`.
    pub fn new(clock: MonoClock) -> Self {
        Self::with_dir(PathBuf::from(INPUT_DIR), clock)
    }

    /// A source reading the event nodes under `dir`.
    pub fn with_dir(dir: PathBuf, clock: MonoClock) -> Self {
        Evdev {
            dir,
            clock,
            ran_before: false,
            classify,
        }
    }
}

/// The devices in use and the nodes looked at and left alone.
struct Devices {
    open: Vec<Device>,
    /// (path, inode) of nodes that are not keyboards or pointers, or cannot be opened: not
    /// opened again until the node changes (inotify says when).
    skipped: HashSet<(PathBuf, u64)>,
    /// Nodes that refused us for lack of permission at the last scan.
    denied: usize,
    /// See [`Evdev::classify`].
    classify: fn(RawFd) -> Role,
}

impl Devices {
    /// Opens every keyboard and pointer under `dir` not yet open.
    fn scan(&mut self, dir: &Path, clock: &MonoClock) -> io::Result<()> {
        self.denied = 0;
        for path in event_nodes(dir)? {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (path.clone(), meta.ino());
            if self.skipped.contains(&key)
                || self.open.iter().any(|d| d.path == path && d.ino == key.1)
            {
                continue;
            }
            let file = match open_node(&path) {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() == io::ErrorKind::PermissionDenied {
                        self.denied += 1;
                    }
                    tracing::debug!(node = %path.display(), "evdev: cannot open: {e}");
                    self.skipped.insert(key);
                    continue;
                }
            };
            let fd = file.as_raw_fd();
            let role = (self.classify)(fd);
            if !role.is_used() {
                self.skipped.insert(key);
                continue;
            }
            let time = match monotonic_offset(fd, clock) {
                Some(offset) => KernelTimeMapper::known(offset),
                None => KernelTimeMapper::estimating(),
            };
            tracing::info!(
                node = %path.display(),
                keyboard = role.keyboard,
                pointer = role.pointer,
                touchpad = role.touchpad,
                "evdev: reading device"
            );
            self.open.push(Device {
                path,
                ino: key.1,
                decoder: DeviceDecoder::new(Layout::NATIVE),
                file,
                time,
            });
        }
        Ok(())
    }
}

/// A non-blocking pipe: the watcher writes one byte to wake `poll` when the flag is raised.
fn stop_pipe() -> io::Result<(File, File)> {
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nothing else.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((File::from(r), File::from(w)))
}

/// An inotify descriptor watching `dir` for new nodes and permission changes (udev sets the
/// group of a new node just after creating it).
fn watch_dir(dir: &Path) -> io::Result<File> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: plain call; the result is checked.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by inotify_init1 and is owned by nothing else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
    // SAFETY: `path` is a NUL-terminated string alive for the call; the descriptor is open.
    if unsafe { libc::inotify_add_watch(file.as_raw_fd(), path.as_ptr(), mask) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Reads and discards everything pending on a non-blocking descriptor.
fn drain(mut f: &File) {
    let mut buf = [0u8; 4096];
    while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
}

impl InputSource for Evdev {
    fn name(&self) -> &'static str {
        "evdev"
    }

    fn run(&mut self, sink: &mut EventSink, stop: &StopFlag) -> Result<(), CaptureError> {
        if self.ran_before {
            sink.mark_gap();
        }
        self.ran_before = true;
        let os = |what: &str, e: io::Error| CaptureError::Os(format!("evdev: {what}: {e}"));
        let inotify = match watch_dir(&self.dir) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CaptureError::NoDevices(format!(
                    "{} does not exist (no input devices on this system)",
                    self.dir.display()
                )));
            }
            Err(e) => return Err(os("cannot watch the input directory", e)),
        };
        let mut devices = Devices {
            open: Vec::new(),
            skipped: HashSet::new(),
            denied: 0,
            classify: self.classify,
        };
        devices
            .scan(&self.dir, &self.clock)
            .map_err(|e| os("cannot list the input devices", e))?;
        if devices.open.is_empty() && devices.denied > 0 {
            return Err(CaptureError::NotPermitted(format!(
                "{} input devices under {} cannot be read; add this user to the `input` group \
                 (sudo usermod -aG input $USER) and log in again",
                devices.denied,
                self.dir.display()
            )));
        }
        if devices.open.is_empty() {
            tracing::info!("evdev: no keyboard or pointer yet; waiting for one to be plugged in");
        }
        let (wake_r, mut wake_w) = stop_pipe().map_err(|e| os("cannot create a pipe", e))?;
        let clock = self.clock;
        std::thread::scope(|scope| {
            // Dropping `done_tx` when the loop ends, however it ends, lets the watcher go.
            let (done_tx, done_rx) = mpsc::channel::<()>();
            scope.spawn(move || {
                while !stop.wait_timeout(STOP_IDLE_CHECK) {
                    if matches!(done_rx.try_recv(), Err(mpsc::TryRecvError::Disconnected)) {
                        return;
                    }
                }
                let _ = wake_w.write(&[1]);
            });
            let result = read_loop(
                &self.dir,
                &clock,
                &mut devices,
                &inotify,
                &wake_r,
                sink,
                stop,
            );
            drop(done_tx);
            result
        })
    }
}

/// Sleeps in poll(2) until a device, the directory or the stop pipe has something.
fn read_loop(
    dir: &Path,
    clock: &MonoClock,
    devices: &mut Devices,
    inotify: &File,
    wake: &File,
    sink: &mut EventSink,
    stop: &StopFlag,
) -> Result<(), CaptureError> {
    // Events from several devices interleave in read order; the stream stays non-decreasing.
    let mut last_t = 0u64;
    let session = SessionGate::from_env();
    let mut was_active = true;
    loop {
        if stop.is_raised() {
            return Ok(());
        }
        let mut fds: Vec<libc::pollfd> = [wake.as_raw_fd(), inotify.as_raw_fd()]
            .into_iter()
            .chain(devices.open.iter().map(|d| d.file.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call's duration.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(CaptureError::Os(format!("evdev: poll failed: {e}")));
        }
        if stop.is_raised() {
            return Ok(());
        }
        let mut closed = false;
        let mut gone = Vec::new();
        // Read for this batch, before any of its events is handed on.
        let active = session.active();
        if active != was_active {
            tracing::info!(active, "evdev: this login session is in front: {active}");
            if active {
                // Whatever was held belonged to someone else's session.
                for dev in &mut devices.open {
                    dev.decoder.reset();
                }
                sink.mark_gap();
            }
            was_active = active;
        }
        for (i, dev) in devices.open.iter_mut().enumerate() {
            if fds[i + 2].revents == 0 {
                continue;
            }
            let mut push = |mut ev: crate::capture::InputEvent| {
                if !active {
                    // Another session is in front: its input is drained, never handed on.
                    return;
                }
                ev.t_us = ev.t_us.max(last_t);
                last_t = ev.t_us;
                if sink.push(ev) == Push::Closed {
                    closed = true;
                }
            };
            let read = pump(
                &mut dev.file,
                &mut dev.decoder,
                &mut dev.time,
                &mut || clock.now_us(),
                &mut push,
            );
            match read {
                Ok(Pumped::Drained) => {}
                // A device never ends; a node that does (not a device) is dropped like one
                // that was unplugged, rather than polled again and again.
                Ok(Pumped::Ended) => {
                    tracing::info!(node = %dev.path.display(), "evdev: node ended");
                    gone.push(i);
                }
                // ENODEV: unplugged. Its held keys go with it; other devices are unaffected.
                Err(e) => {
                    tracing::info!(node = %dev.path.display(), "evdev: device gone: {e}");
                    gone.push(i);
                }
            }
        }
        for i in gone.into_iter().rev() {
            devices.open.swap_remove(i);
        }
        if closed {
            tracing::debug!("evdev: pipeline closed, stopping");
            return Ok(());
        }
        if fds[1].revents != 0 {
            drain(inotify);
            // A changed node may now be readable, or be a different device.
            devices.skipped.clear();
            if let Err(e) = devices.scan(dir, clock) {
                tracing::warn!("evdev: cannot rescan {}: {e}", dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from linux/input.h as compiled for x86-64 and arm64.
        if ioc::DIR_SHIFT == 30 {
            assert_eq!(eviocgbit(0, 4), 0x8004_4520);
            assert_eq!(eviocgbit(EV_KEY, 96), 0x8060_4521);
            assert_eq!(EVIOCGID, 0x8008_4502);
            assert_eq!(eviocgname(256), 0x8100_4506);
            assert_eq!(EVIOCSCLOCKID, 0x4004_45a0);
        }
    }

    #[test]
    fn a_missing_directory_is_no_devices_not_a_crash() {
        let mut src = Evdev::with_dir(PathBuf::from("/nonexistent/input"), MonoClock::start());
        let (mut sink, _rx) = crate::capture::queue(4);
        match src.run(&mut sink, &StopFlag::new()) {
            Err(CaptureError::NoDevices(_)) => {}
            other => panic!("expected NoDevices, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_directory_waits_for_devices_and_stops_on_the_flag() {
        let dir = std::env::temp_dir().join(format!("cadence-evdev-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        // A regular file named like an event node: opened, refused by the capability ioctl.
        std::fs::write(dir.join("event0"), b"").ok();
        let mut src = Evdev::with_dir(dir.clone(), MonoClock::start());
        let (mut sink, _rx) = crate::capture::queue(4);
        let stop = StopFlag::new();
        let raiser = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stop.raise();
            })
        };
        let result = src.run(&mut sink, &stop);
        let _ = raiser.join();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(result.is_ok(), "{result:?}");
    }

    /// Makes a named pipe: a node that opens, polls and reads like an event device.
    fn mkfifo(path: &Path) {
        let st = std::process::Command::new("mkfifo").arg(path).status();
        assert!(st.is_ok_and(|s| s.success()), "mkfifo {}", path.display());
    }

    fn keyboard(_: RawFd) -> Role {
        Role {
            keyboard: true,
            ..Role::default()
        }
    }

    /// Waits (up to a generous limit, not a timing assertion) for the next event.
    fn next(rx: &crate::capture::EventReceiver) -> crate::capture::InputEvent {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        match rx.recv(Some(deadline)) {
            crate::capture::Recv::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    fn typed(code: u16, t_us: u64) -> Vec<u8> {
        use crate::capture::evdev::{EV_SYN, SYN_REPORT, encode_test_event};
        [
            encode_test_event(Layout::NATIVE, t_us, EV_KEY, code, 1),
            encode_test_event(Layout::NATIVE, t_us, EV_SYN, SYN_REPORT, 0),
            encode_test_event(Layout::NATIVE, t_us + 80_000, EV_KEY, code, 0),
            encode_test_event(Layout::NATIVE, t_us + 80_000, EV_SYN, SYN_REPORT, 0),
        ]
        .concat()
    }

    #[test]
    fn the_device_loop_reads_follows_hot_plug_and_stops_on_the_flag() {
        use crate::capture::{EventKind, KeyClass};
        let dir = std::env::temp_dir().join(format!("cadence-evdev-loop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        mkfifo(&dir.join("event3"));
        std::fs::write(dir.join("mice"), b"").unwrap(); // not an event node: never opened

        let mut src = Evdev::with_dir(dir.clone(), MonoClock::start());
        src.classify = keyboard;
        let stop = StopFlag::new();
        let (rx, handle) = crate::capture::spawn(Box::new(src), stop.clone(), 64);

        // Opening the writing end blocks until capture has opened the node for reading.
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("event3"))
            .unwrap();
        // A named pipe cannot switch to CLOCK_MONOTONIC, so the offset is estimated from
        // arrival: let the capture clock pass the 80 ms the press happened before the release
        // arrives with it, as any real press would have.
        std::thread::sleep(Duration::from_millis(200));
        w.write_all(&typed(30, 1_000_000)).unwrap();
        let down = next(&rx);
        let up = next(&rx);
        assert_eq!(
            down.kind,
            EventKind::KeyDown {
                class: KeyClass::Character
            }
        );
        assert_eq!(
            up.kind,
            EventKind::KeyUp {
                class: KeyClass::Character,
                held_us: 80_000
            }
        );
        assert_eq!(
            up.t_us - down.t_us,
            80_000,
            "kernel times, not arrival times"
        );
        drop(w);

        // Hot-plug: a node created now is found through inotify and read.
        mkfifo(&dir.join("event9"));
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("event9"))
            .unwrap();
        w.write_all(&typed(57, 2_000_000)).unwrap();
        assert_eq!(
            next(&rx).kind,
            EventKind::KeyDown {
                class: KeyClass::Space
            }
        );
        assert!(matches!(next(&rx).kind, EventKind::KeyUp { .. }));

        stop.raise();
        let ended = handle
            .join()
            .map_err(|_| "capture thread panicked")
            .unwrap();
        assert!(ended.is_ok(), "{ended:?}");
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_login_session_state_is_read_from_logind() {
        let text = "# This is private data. Do not parse.\nUID=1000\nACTIVE=1\nACTIVE_UID=1000\n";
        assert_eq!(logind_value(text, "ACTIVE"), Some("1"));
        assert_eq!(logind_value(text, "ACTIVE_UID"), Some("1000"));
        assert_eq!(logind_value(text, "STATE"), None);
        let dir = std::env::temp_dir().join(format!("cadence-session-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A session file that says inactive closes the gate, and the very next look after
        // it changes sees the change (no cached answer).
        let file = dir.join("7");
        std::fs::write(&file, "ACTIVE=0\n").unwrap();
        let gate = SessionGate {
            source: SessionSource::Session(file.clone()),
        };
        assert!(gate.is_known());
        assert!(!gate.active());
        std::fs::write(&file, "ACTIVE=1\n").unwrap();
        assert!(gate.active());
        std::fs::write(&file, "ACTIVE=0\n").unwrap();
        assert!(!gate.active(), "a switch away is seen at the next batch");
        // The session ended (its file is gone), or the file says nothing: closed.
        std::fs::write(&file, "UID=1000\n").unwrap();
        assert!(!gate.active());
        std::fs::remove_file(&file).unwrap();
        assert!(!gate.active());
        // Without a session id: the seat's active user must be this user.
        let seat = dir.join("seat0");
        std::fs::write(&seat, "ACTIVE=3\nACTIVE_UID=1001\n").unwrap();
        let gate = SessionGate {
            source: SessionSource::Seat {
                file: seat.clone(),
                uid: 1000,
            },
        };
        assert!(!gate.active(), "another user is in front");
        std::fs::write(&seat, "ACTIVE=2\nACTIVE_UID=1000\n").unwrap();
        assert!(gate.active());
        std::fs::write(&seat, "ACTIVE=\n").unwrap();
        assert!(!gate.active(), "nobody in front (a greeter)");
        // No logind: it cannot be told, and is said so.
        let none = SessionGate {
            source: SessionSource::Unknown,
        };
        assert!(!none.is_known());
        assert!(none.describe().contains("cannot be told"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
