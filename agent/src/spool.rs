//! Spool: the agent's durable, bounded, append-only queue of sealed records.
//!
//! Owns the spool directory inside the agent's data directory. Takes sealed envelope bytes
//! (opaque here, at most [`MAX_RECORD_BYTES`] each) under a sequence number the caller assigns,
//! and hands them back, oldest first, through [`Spool::pending`] until the verifier
//! acknowledges them through [`Spool::ack`].
//!
//! What it guarantees: a record counts as produced only once [`Spool::append`] has returned,
//! and that happens only after `fsync` (`sync_data`) of its bytes (and, for a new segment, of
//! the directory entry). A record is deleted only after it is acknowledged, or when the spool
//! is full and its whole segment is evicted — and then the lost range comes back as a [`Gap`]
//! that is kept durably until the caller confirms it sent a signed gap record for it
//! ([`Spool::gaps_reported`]). A `kill -9` or a power cut leaves at worst a torn record at a
//! segment's tail, which [`Spool::open`] cuts off with a warning.
//!
//! What it never does: parse, log or look inside a payload; panic or loop on damaged files;
//! return an acknowledged record again (before or after a restart); grow past its configured
//! bound; store two records under one sequence number.
//!
//! # Directory layout
//!
//! ```text
//! <dir>/                         created with mode 0700 (unix)
//!   lock                         empty; an exclusive advisory lock held while a Spool is open
//!   ack-state                    acknowledgement state, replaced atomically (below)
//!   ack-state.tmp                transient: the next ack-state being written; removed at open
//!   00000000000000000001.seg     segments, named by a 20-digit decimal id so that name order
//!   00000000000000000002.seg     is creation order; only the newest one is ever appended to
//! ```
//!
//! Any other file in the directory is ignored (and left alone).
//!
//! # Segment file
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CDNCSPL" followed by format version 0x01
//! 8       ...   records, back to back, no padding
//! ```
//!
//! Each record:
//!
//! ```text
//! offset  size  field
//! 0       4     len      u32 little-endian: payload length, at most MAX_RECORD_BYTES
//! 4       8     seq      u64 little-endian: the caller's sequence number
//! 12      4     crc      u32 little-endian: CRC-32 (IEEE) of the len, seq and payload bytes
//! 16      len   payload  the sealed envelope, opaque
//! ```
//!
//! The checksum covers the length field as well as seq and payload, so that a damaged length
//! is reported as damage rather than read as a shorter record.
//!
//! Invariants: sequence numbers strictly increase within a segment and from each segment to
//! the next; bytes are only ever appended to the newest segment, never rewritten; a file is
//! only shortened by recovery (cutting a damaged tail) or by a failed append rolling itself
//! back; a segment is deleted whole, once all its records are acknowledged or when it is
//! evicted. A segment file shorter than its header was cut short while being created and holds
//! no record; it is removed at open.
//!
//! # Acknowledgement state (`ack-state`)
//!
//! ```text
//! offset  size  field
//! 0       8     magic "CDNCACK" followed by format version 0x01
//! 8       8     done_below  u64 LE: every sequence number below it is acknowledged or evicted
//! 16      4     n_ranges    u32 LE
//! 20      16·n  ranges      (first u64 LE, last u64 LE): every spooled record with first <=
//!                           seq <= last is acknowledged (acknowledged out of order)
//! ..      4     n_gaps      u32 LE
//! ..      24·m  gaps        (first_seq, last_seq, count) u64 LE each: evicted records whose
//!                           loss the caller has not yet confirmed reporting
//! ..      4     crc         u32 LE: CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Invariants: ranges are sorted, disjoint, `first <= last` and `first >= done_below`; gaps
//! have `first_seq <= last_seq` and `count >= 1`; `done_below` never decreases. The file is
//! written to `ack-state.tmp`, fsynced, renamed over `ack-state`, and the directory fsynced,
//! so it is always either the old or the new state. It is written *before* any segment is
//! deleted: a deletion that did not reach the disk before a crash only brings back records
//! that the state already marks as done, and [`Spool::open`] deletes them again.
//!
//! # Bound
//!
//! The segment files together stay within `max_bytes` (the small `ack-state` file is outside
//! the bound). When an append would cross it, the oldest whole segments go first, acknowledged
//! or not; the unacknowledged records among them form the [`Gap`] returned in
//! [`Appended::evicted`].
//!
//! # Durability, `sync` and `Drop`
//!
//! Every successful [`Spool::append`] and [`Spool::append_batch`] has already fsynced, so
//! nothing is buffered between calls: [`Spool::sync`] is only a barrier for shutdown code that
//! wants one, and dropping a [`Spool`] does no I/O — it closes the files and releases the lock.
//! Deleting segments is not fsynced (see above for why that is safe).
//!
//! On Windows there is no portable way to fsync a directory; NTFS journals its metadata, and
//! the directory sync is skipped there.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, error, info, trace, warn};

/// Largest payload one record may carry (a sealed envelope never exceeds it).
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// Segment size at which the spool starts a new segment file, unless configured otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Smallest `max_bytes` a spool accepts: one segment holding one record of the largest size.
pub const MIN_MAX_BYTES: u64 = SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + MAX_RECORD_BYTES as u64;

const SEGMENT_MAGIC: [u8; 8] = *b"CDNCSPL\x01";
const SEGMENT_HEADER_BYTES: u64 = 8;
const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_ID_DIGITS: usize = 20;
const RECORD_HEADER_BYTES: u64 = 16;
const STATE_MAGIC: [u8; 8] = *b"CDNCACK\x01";
const STATE_FILE: &str = "ack-state";
const STATE_TMP_FILE: &str = "ack-state.tmp";
const LOCK_FILE: &str = "lock";
/// Unreported gaps kept before the oldest two are merged: a caller that never confirms its gap
/// records must not make the state file grow without bound.
const MAX_GAPS: usize = 1024;

/// Errors from the spool.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file operation failed: most likely a full disk, a permission problem on the data
    /// directory, or a failing disk.
    #[error("spool I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What the OS reported.
        source: io::Error,
    },
    /// Another spool (usually a second agent running for the same user) has the directory open.
    #[error("spool directory {0} is already in use by another process")]
    Locked(PathBuf),
    /// The configured limits cannot work (a configuration mistake).
    #[error("invalid spool limits: {0}")]
    Limits(String),
    /// The record is larger than any sealed envelope may be: a caller bug.
    #[error("record {seq} is {len} bytes; the spool holds records of at most {max} bytes")]
    TooLarge {
        /// The record's sequence number.
        seq: u64,
        /// Its payload length.
        len: usize,
        /// The limit, [`MAX_RECORD_BYTES`].
        max: usize,
    },
    /// The sequence number does not increase: a caller bug, or a counter restarted without
    /// using [`Recovery::next_seq`].
    #[error("sequence number {seq} is not greater than the last one appended ({last})")]
    NotIncreasing {
        /// The sequence number offered.
        seq: u64,
        /// The last sequence number the spool has seen.
        last: u64,
    },
    /// `u64::MAX` is reserved so that "one past the last" always fits in a `u64`.
    #[error("sequence number {0} is reserved")]
    ReservedSeq(u64),
    /// The acknowledgement state file is damaged (disk damage: it is only ever replaced
    /// atomically). The spool refuses to guess which records were acknowledged or where the
    /// sequence numbers stand; moving the file away re-sends every spooled record.
    #[error("acknowledgement state {path} is damaged: {reason}")]
    CorruptState {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Limits for [`Spool::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    max_bytes: u64,
    segment_bytes: u64,
}

impl SpoolOptions {
    /// Segment files together stay within `max_bytes` (at least [`MIN_MAX_BYTES`]); segments
    /// roll at [`DEFAULT_SEGMENT_BYTES`].
    pub fn new(max_bytes: u64) -> Self {
        SpoolOptions {
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }

    /// Starts a new segment once the current one would pass `bytes` (a segment always holds
    /// at least one record). Eviction frees whole segments, so this is also its granularity.
    pub fn segment_bytes(mut self, bytes: u64) -> Self {
        self.segment_bytes = bytes;
        self
    }

    fn check(&self) -> Result<(), SpoolError> {
        let mut problems = Vec::new();
        if self.max_bytes < MIN_MAX_BYTES {
            problems.push(format!(
                "max_bytes is {}, below the minimum of {MIN_MAX_BYTES} (one largest record)",
                self.max_bytes
            ));
        }
        if self.segment_bytes == 0 {
            problems.push("segment_bytes must not be zero".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SpoolError::Limits(problems.join("; ")))
        }
    }
}

/// A run of records lost to eviction, to be reported to the verifier as a signed gap record.
///
/// Every lost sequence number lies in `first_seq..=last_seq`; `count` says how many records
/// were lost, which is fewer than the span when the caller skipped numbers or some records in
/// between had already been acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Lowest lost sequence number.
    pub first_seq: u64,
    /// Highest lost sequence number.
    pub last_seq: u64,
    /// Number of records lost.
    pub count: u64,
}

impl Gap {
    fn with(gap: Option<Gap>, seq: u64) -> Gap {
        match gap {
            None => Gap {
                first_seq: seq,
                last_seq: seq,
                count: 1,
            },
            Some(g) => g.merge(Gap {
                first_seq: seq,
                last_seq: seq,
                count: 1,
            }),
        }
    }

    fn merge(self, other: Gap) -> Gap {
        Gap {
            first_seq: self.first_seq.min(other.first_seq),
            last_seq: self.last_seq.max(other.last_seq),
            count: self.count.saturating_add(other.count),
        }
    }
}

/// What an append did besides storing the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an eviction gap must be reported to the verifier"]
pub struct Appended {
    /// Unacknowledged records deleted to stay within the bound, if any. The gap is also kept
    /// in [`Spool::unreported_gaps`] until [`Spool::gaps_reported`] confirms it was sent.
    pub evicted: Option<Gap>,
}

/// Whether damage found at open looked like an interrupted write or like corruption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// The tail of a segment was cut short or never reached the disk: the expected result of
    /// a crash during an append. The record there was never reported as produced.
    TornTail,
    /// A record failed its checksum with more data after it: disk damage. The records from
    /// that point to the end of the segment are lost.
    Corrupt,
}

/// One segment cut short by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The segment file.
    pub segment: PathBuf,
    /// Where it was cut: the end of its last good record.
    pub offset: u64,
    /// Bytes dropped from that point to the end of the file.
    pub bytes_dropped: u64,
    /// How the damage looked.
    pub kind: DamageKind,
    /// Sequence number of the last good record before the cut, if any.
    pub last_good_seq: Option<u64>,
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Unacknowledged records recovered (what [`Spool::pending`] will hand out).
    pub records: usize,
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Bytes of torn tails (interrupted writes) cut off.
    pub torn_bytes_dropped: u64,
    /// Bytes dropped after a corrupt record (disk damage).
    pub corrupt_bytes_dropped: u64,
    /// Every cut made, torn or corrupt.
    pub damage: Vec<Damage>,
    /// Records with a good checksum skipped because their sequence number did not increase
    /// (left behind by an append that failed after its bytes reached the disk).
    pub skipped_records: usize,
    /// Files named like segments but without a segment header, left alone.
    pub ignored_files: usize,
    /// Evicted ranges not yet confirmed reported (see [`Spool::gaps_reported`]).
    pub unreported_gaps: Vec<Gap>,
    /// The sequence number to use next: one past the highest ever appended (on disk, or
    /// remembered by the acknowledgement state), or 0 for a new spool.
    pub next_seq: u64,
}

/// Counters for status display and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Records appended and not yet acknowledged (nor evicted).
    pub records_pending: usize,
    /// Bytes in segment files, the figure the bound applies to.
    pub bytes_on_disk: u64,
    /// Segment files.
    pub segments: usize,
    /// Sequence number of the oldest pending record.
    pub oldest_seq: Option<u64>,
    /// Sequence number of the newest pending record.
    pub newest_seq: Option<u64>,
}

/// Where one record lives.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    /// Offset of the record header within its segment file.
    offset: u64,
    /// Payload length.
    len: u32,
    acked: bool,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Bytes of the file the spool vouches for: the header plus whole, synced records.
    len: u64,
    /// Indexed records in seq order.
    entries: Vec<Entry>,
    /// How many of `entries` are acknowledged.
    acked: usize,
}

impl Segment {
    fn fully_acked(&self) -> bool {
        !self.entries.is_empty() && self.acked == self.entries.len()
    }

    fn unacked(&self) -> usize {
        self.entries.len() - self.acked
    }
}

/// The segment being appended to.
#[derive(Debug)]
struct Head {
    seg: Segment,
    /// Append handle, opened at the first write so a recovered segment costs nothing until used.
    file: Option<File>,
    /// Records encoded during the current append call and not yet written and synced. They
    /// join `seg.entries` only after `sync_data` succeeds; between calls this is empty.
    buf: Vec<u8>,
    /// Index entries for the records in `buf`.
    staged: Vec<Entry>,
}

impl Head {
    fn write_out(&mut self) -> io::Result<()> {
        let file = match self.file.take() {
            Some(file) => file,
            None => OpenOptions::new().append(true).open(&self.seg.path)?,
        };
        let file = self.file.insert(file);
        file.write_all(&self.buf)?;
        file.sync_data()
    }
}

/// How to make room for one record (see [`Spool::plan_room`]).
#[derive(Debug)]
struct Plan {
    roll: bool,
    evict_closed: usize,
    evict_head: bool,
}

/// The durable spool. See the module documentation for the format and guarantees.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Holds the exclusive lock on `<dir>/lock` for as long as the spool is open, so that two
    /// processes never append to the same segments.
    _lock: File,
    /// Segments no longer appended to, oldest first; never empty of records.
    segments: VecDeque<Segment>,
    /// The newest segment, if it still takes appends.
    head: Option<Head>,
    /// Sum of `len` over all segments.
    total_bytes: u64,
    pending_count: usize,
    /// Highest sequence number ever appended (durably) or remembered by the ack state.
    last_seq: Option<u64>,
    next_segment_id: u64,
    gaps: Vec<Gap>,
    /// Acknowledgements were marked in memory but writing the state file failed; the next
    /// `ack` must write it even if it adds nothing new.
    state_dirty: bool,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, bounded to `max_bytes` of segments,
    /// recovering from any crash: see [`Spool::open_with`].
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Recovery), SpoolError> {
        Self::open_with(dir, SpoolOptions::new(max_bytes))
    }

    /// Opens (creating if needed, mode 0700 on unix) the spool in `dir`.
    ///
    /// Scans every segment in order. A torn tail (a record running past the end of the file,
    /// or failing its checksum at the very end, or zeros to the end) is cut off with a
    /// warning; a record failing its checksum with more data after it drops the rest of its
    /// segment with a warning. Neither is an error. Errors are I/O failures, another process
    /// holding the spool, bad limits, or a damaged acknowledgement state.
    pub fn open_with(dir: &Path, options: SpoolOptions) -> Result<(Spool, Recovery), SpoolError> {
        options.check()?;
        create_dir(dir)?;
        let lock = lock_dir(dir)?;
        let tmp = dir.join(STATE_TMP_FILE);
        match fs::remove_file(&tmp) {
            Ok(()) => debug!(path = %tmp.display(), "removed an unfinished ack-state update"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&tmp)(e)),
        }
        let state = read_state(dir)?;

        let mut recovery = Recovery::default();
        let mut last_seen: Option<u64> = None;
        let (listing, next_segment_id) = list_segments(dir)?;
        let mut scanned = Vec::new();
        for (_, path) in listing {
            if let Some(found) = scan_segment(&path, last_seen, &mut recovery)? {
                last_seen = found.last_seq.or(last_seen);
                scanned.push(found);
            }
        }

        let count = scanned.len();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes: options.max_bytes,
            segment_bytes: options.segment_bytes,
            _lock: lock,
            segments: VecDeque::new(),
            head: None,
            total_bytes: 0,
            pending_count: 0,
            last_seq: [
                last_seen,
                state.done_below.checked_sub(1),
                state.gaps.iter().map(|g| g.last_seq).max(),
            ]
            .into_iter()
            .flatten()
            .max(),
            next_segment_id,
            gaps: state.gaps.clone(),
            state_dirty: false,
        };
        for (i, mut found) in scanned.into_iter().enumerate() {
            for entry in &mut found.seg.entries {
                entry.acked = state.is_acked(entry.seq);
            }
            found.seg.acked = found.seg.entries.iter().filter(|e| e.acked).count();
            let newest = i + 1 == count;
            let keep_as_head = newest && found.appendable;
            let done =
                found.seg.fully_acked() && (!keep_as_head || found.seg.len >= spool.segment_bytes);
            let empty = found.seg.entries.is_empty() && !keep_as_head;
            if done || empty {
                debug!(segment = %found.seg.path.display(), "removing a segment with nothing left to send");
                remove_segment(&found.seg.path);
            } else {
                spool.total_bytes += found.seg.len;
                spool.pending_count += found.seg.unacked();
                if keep_as_head {
                    spool.head = Some(Head {
                        seg: found.seg,
                        file: None,
                        buf: Vec::new(),
                        staged: Vec::new(),
                    });
                } else {
                    spool.segments.push_back(found.seg);
                }
            }
        }

        recovery.records = spool.pending_count;
        recovery.segments = spool.segment_count();
        recovery.unreported_gaps = spool.gaps.clone();
        recovery.next_seq = spool.last_seq.map_or(0, |s| s + 1);
        info!(
            records = recovery.records,
            segments = recovery.segments,
            bytes = spool.total_bytes,
            torn_bytes_dropped = recovery.torn_bytes_dropped,
            corrupt_bytes_dropped = recovery.corrupt_bytes_dropped,
            unreported_gaps = recovery.unreported_gaps.len(),
            "spool opened"
        );
        Ok((spool, recovery))
    }

    /// Appends one record and fsyncs it; when this returns `Ok`, the record is produced.
    ///
    /// `seq` must be greater than every sequence number appended before (and below
    /// `u64::MAX`). If the bound forces evicting unacknowledged records, their range is in
    /// [`Appended::evicted`]. On error nothing was appended (see [`Spool::last_seq`]).
    pub fn append(&mut self, seq: u64, bytes: &[u8]) -> Result<Appended, SpoolError> {
        self.append_batch(&[(seq, bytes)])
    }

    /// Appends several records (in increasing seq order) with one fsync per segment touched.
    ///
    /// The whole batch is checked before anything is written. If writing fails part way,
    /// the records up to [`Spool::last_seq`] are durable and the rest were not appended.
    pub fn append_batch(&mut self, records: &[(u64, &[u8])]) -> Result<Appended, SpoolError> {
        let mut last = self.last_seq;
        for &(seq, payload) in records {
            if payload.len() > MAX_RECORD_BYTES {
                return Err(SpoolError::TooLarge {
                    seq,
                    len: payload.len(),
                    max: MAX_RECORD_BYTES,
                });
            }
            if seq == u64::MAX {
                return Err(SpoolError::ReservedSeq(seq));
            }
            if let Some(last) = last
                && seq <= last
            {
                return Err(SpoolError::NotIncreasing { seq, last });
            }
            last = Some(seq);
        }

        let mut gap = None;
        for &(seq, payload) in records {
            let need = RECORD_HEADER_BYTES + payload.len() as u64;
            if !self.fits_in_head(need) {
                self.flush_head()?;
                let plan = self.plan_room(need);
                if plan.evict_closed > 0 || plan.evict_head {
                    self.evict(plan.evict_closed, plan.evict_head, &mut gap)?;
                }
                if plan.roll {
                    self.close_head();
                }
            }
            let head = match self.head.take() {
                Some(head) => head,
                None => self.create_head()?,
            };
            let head = self.head.insert(head);
            let offset = head.seg.len + head.buf.len() as u64;
            let len = encode_record(&mut head.buf, seq, payload);
            head.staged.push(Entry {
                seq,
                offset,
                len,
                acked: false,
            });
        }
        self.flush_head()?;
        trace!(records = records.len(), "spool append synced");
        Ok(Appended { evicted: gap })
    }

    /// Up to `max_records` of the oldest unacknowledged records, in seq order, read from disk,
    /// stopping before the payloads would pass `max_bytes` — but always at least one record if
    /// any is pending, so that one large record cannot stall the queue.
    ///
    /// A record that fails its checksum on this read (disk damage since open) is skipped with
    /// an error log; it stays in the spool and, at the next open, recovery drops it and the
    /// rest of its segment as corrupt.
    pub fn pending(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for seg in self.all_segments() {
            if seg.unacked() == 0 {
                continue;
            }
            if out.len() >= max_records {
                break;
            }
            let mut file = File::open(&seg.path).map_err(io_error(&seg.path))?;
            for entry in seg.entries.iter().filter(|e| !e.acked) {
                let len = entry.len as usize;
                if out.len() >= max_records || (!out.is_empty() && bytes + len > max_bytes) {
                    return Ok(out);
                }
                match read_record(&mut file, entry) {
                    Ok(Some(payload)) => {
                        bytes += len;
                        out.push((entry.seq, payload));
                    }
                    Ok(None) => error!(
                        segment = %seg.path.display(),
                        seq = entry.seq,
                        "spooled record no longer matches its checksum; skipping it"
                    ),
                    Err(source) => {
                        return Err(SpoolError::Io {
                            path: seg.path.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Marks records acknowledged by the verifier, writes the acknowledgement state durably,
    /// then deletes every segment whose records are all acknowledged (the segment being
    /// appended to only once it is full).
    ///
    /// Sequence numbers not in the spool (already acknowledged, evicted, never appended) are
    /// ignored. Acknowledged records are never returned by [`Spool::pending`] again, also
    /// after a restart.
    pub fn ack(&mut self, seqs: &[u64]) -> Result<(), SpoolError> {
        let mut newly = 0usize;
        let mut unknown = 0usize;
        for &seq in seqs {
            let Some((seg, index)) = self.locate_mut(seq) else {
                unknown += 1;
                continue;
            };
            if let Some(entry) = seg.entries.get_mut(index)
                && !entry.acked
            {
                entry.acked = true;
                seg.acked += 1;
                newly += 1;
            }
        }
        if unknown > 0 {
            debug!(
                unknown,
                "ignored acknowledgements for records not in the spool"
            );
        }
        if newly == 0 && !self.state_dirty {
            return Ok(());
        }
        self.pending_count -= newly;
        self.state_dirty = true;
        let gaps = self.gaps.clone();
        self.persist_state(0, false, &gaps)?;

        let mut removed = Vec::new();
        self.segments.retain(|seg| {
            if seg.fully_acked() {
                removed.push((seg.path.clone(), seg.len));
                false
            } else {
                true
            }
        });
        if let Some(head) = &self.head
            && head.seg.fully_acked()
            && head.seg.len >= self.segment_bytes
        {
            removed.push((head.seg.path.clone(), head.seg.len));
            self.head = None;
        }
        for (path, len) in removed {
            self.total_bytes -= len;
            remove_segment(&path);
        }
        trace!(acked = newly, "spool acknowledgements recorded");
        Ok(())
    }

    /// Evicted ranges whose gap records the caller has not yet confirmed sending. Check this
    /// after [`Spool::open`] (see [`Recovery::unreported_gaps`]) and after a failed append: an
    /// eviction is recorded durably before the segments go, even if the append then fails.
    pub fn unreported_gaps(&self) -> &[Gap] {
        &self.gaps
    }

    /// Confirms that gap records for `reported` have been appended (so they are now in the
    /// spool themselves); they are dropped from the durable list of unreported gaps.
    pub fn gaps_reported(&mut self, reported: &[Gap]) -> Result<(), SpoolError> {
        let gaps: Vec<Gap> = self
            .gaps
            .iter()
            .filter(|g| !reported.contains(g))
            .copied()
            .collect();
        if gaps.len() == self.gaps.len() {
            return Ok(());
        }
        self.persist_state(0, false, &gaps)?;
        self.gaps = gaps;
        Ok(())
    }

    /// Highest sequence number appended so far (or remembered from before a restart).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Current counters.
    pub fn stats(&self) -> SpoolStats {
        let unacked = || {
            self.all_segments()
                .flat_map(|s| s.entries.iter())
                .filter(|e| !e.acked)
        };
        SpoolStats {
            records_pending: self.pending_count,
            bytes_on_disk: self.total_bytes,
            segments: self.segment_count(),
            oldest_seq: unacked().next().map(|e| e.seq),
            newest_seq: unacked().last().map(|e| e.seq),
        }
    }

    /// Fsyncs the segment being appended to and the directory. Appends are already durable
    /// when they return, so this is only a barrier for shutdown code; dropping the spool
    /// without calling it loses nothing.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(head) = &self.head
            && let Some(file) = &head.file
        {
            file.sync_data().map_err(io_error(&head.seg.path))?;
        }
        sync_dir(&self.dir)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn all_segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().chain(self.head.iter().map(|h| &h.seg))
    }

    fn segment_count(&self) -> usize {
        self.segments.len() + usize::from(self.head.is_some())
    }

    /// The segment holding `seq` and the record's index in it.
    fn locate_mut(&mut self, seq: u64) -> Option<(&mut Segment, usize)> {
        let in_head = self
            .head
            .as_ref()
            .and_then(|h| h.seg.entries.first())
            .is_some_and(|first| first.seq <= seq);
        let seg = if in_head {
            &mut self.head.as_mut()?.seg
        } else {
            let i = self
                .segments
                .partition_point(|s| s.entries.last().is_none_or(|last| last.seq < seq));
            self.segments.get_mut(i)?
        };
        let index = seg.entries.binary_search_by_key(&seq, |e| e.seq).ok()?;
        Some((seg, index))
    }

    /// Whether a record of `need` bytes can join the head without rolling or evicting.
    fn fits_in_head(&self, need: u64) -> bool {
        let Some(head) = &self.head else {
            return false;
        };
        let buffered = head.buf.len() as u64;
        let used = head.seg.len + buffered;
        let full = used > SEGMENT_HEADER_BYTES && used + need > self.segment_bytes;
        !full && self.total_bytes + buffered + need <= self.max_bytes
    }

    /// How to make room for a record of `need` bytes, the head having been flushed: whether
    /// to start a new segment, and how many of the oldest segments to evict for the bound.
    fn plan_room(&self, need: u64) -> Plan {
        let mut plan = Plan {
            roll: self.head.as_ref().is_none_or(|h| {
                h.seg.len > SEGMENT_HEADER_BYTES && h.seg.len + need > self.segment_bytes
            }),
            evict_closed: 0,
            evict_head: false,
        };
        let mut total = self.total_bytes;
        // Each pass either stops or removes one segment or sets a flag, so this ends; with
        // every segment gone, one record always fits because max_bytes >= MIN_MAX_BYTES.
        loop {
            let add = need + if plan.roll { SEGMENT_HEADER_BYTES } else { 0 };
            if total.saturating_add(add) <= self.max_bytes {
                break;
            }
            if let Some(seg) = self.segments.get(plan.evict_closed) {
                total -= seg.len;
                plan.evict_closed += 1;
            } else if !plan.roll {
                plan.roll = true;
            } else if !plan.evict_head {
                total -= self.head.as_ref().map_or(0, |h| h.seg.len);
                plan.evict_head = true;
            } else {
                break;
            }
        }
        plan
    }

    /// Deletes the `closed` oldest segments (and the head if `head_too`), first recording
    /// durably the unacknowledged records among them as a gap, merged into `call_gap`.
    fn evict(
        &mut self,
        closed: usize,
        head_too: bool,
        call_gap: &mut Option<Gap>,
    ) -> Result<(), SpoolError> {
        let victims = self
            .segments
            .iter()
            .take(closed)
            .chain(self.head.iter().filter(|_| head_too).map(|h| &h.seg));
        let lost = victims
            .flat_map(|s| s.entries.iter())
            .filter(|e| !e.acked)
            .fold(None, |gap, e| Some(Gap::with(gap, e.seq)));
        if let Some(lost) = lost {
            let mut gaps = self.gaps.clone();
            let merged = match *call_gap {
                Some(earlier) => {
                    // The earlier eviction of this same call is the last gap recorded:
                    // one call reports one gap.
                    if gaps.last() == Some(&earlier) {
                        gaps.pop();
                    }
                    earlier.merge(lost)
                }
                None => lost,
            };
            gaps.push(merged);
            while gaps.len() > MAX_GAPS {
                let oldest = gaps.remove(0);
                if let Some(next) = gaps.first_mut() {
                    *next = oldest.merge(*next);
                }
            }
            self.persist_state(closed, head_too, &gaps)?;
            self.gaps = gaps;
            *call_gap = Some(merged);
            warn!(
                first_seq = lost.first_seq,
                last_seq = lost.last_seq,
                count = lost.count,
                max_bytes = self.max_bytes,
                "spool full: evicted the oldest unacknowledged records"
            );
        }
        for _ in 0..closed {
            if let Some(seg) = self.segments.pop_front() {
                self.forget(&seg);
            }
        }
        if head_too && let Some(head) = self.head.take() {
            self.forget(&head.seg);
        }
        Ok(())
    }

    /// Drops a segment from the counters and deletes its file.
    fn forget(&mut self, seg: &Segment) {
        self.total_bytes -= seg.len;
        self.pending_count -= seg.unacked();
        remove_segment(&seg.path);
    }

    /// Writes and syncs the records staged in the head, then indexes them. On failure, cuts
    /// the file back to its last synced length and retires the head, so that a later append
    /// never lands after a partial record.
    fn flush_head(&mut self) -> Result<(), SpoolError> {
        let Some(head) = self.head.as_mut() else {
            return Ok(());
        };
        if head.buf.is_empty() {
            return Ok(());
        }
        match head.write_out() {
            Ok(()) => {
                let written = head.buf.len() as u64;
                head.seg.len += written;
                self.total_bytes += written;
                self.pending_count += head.staged.len();
                if let Some(last) = head.staged.last() {
                    self.last_seq = Some(last.seq);
                }
                head.seg.entries.append(&mut head.staged);
                head.buf.clear();
                Ok(())
            }
            Err(source) => {
                let path = head.seg.path.clone();
                if let Some(file) = &head.file
                    && let Err(e) = file.set_len(head.seg.len).and_then(|()| file.sync_data())
                {
                    warn!(segment = %path.display(), error = %e, "could not cut back a failed append; recovery will at the next open");
                }
                head.buf.clear();
                head.staged.clear();
                self.close_head();
                Err(SpoolError::Io { path, source })
            }
        }
    }

    /// Stops appending to the head: it joins the closed segments, or is deleted if it holds
    /// no record (so closed segments are never empty).
    fn close_head(&mut self) {
        if let Some(head) = self.head.take() {
            if head.seg.entries.is_empty() {
                self.total_bytes -= head.seg.len;
                remove_segment(&head.seg.path);
            } else {
                self.segments.push_back(head.seg);
            }
        }
    }

    /// Creates the next segment file with its header and makes its name durable.
    fn create_head(&mut self) -> Result<Head, SpoolError> {
        let id = self.next_segment_id;
        let path = self.dir.join(segment_name(id));
        let mut file = new_file(&path, true)?;
        self.next_segment_id = id.saturating_add(1);
        // The header is synced together with the first record; the directory entry must be
        // durable before any record in the file counts as produced.
        if let Err(e) = file
            .write_all(&SEGMENT_MAGIC)
            .map_err(io_error(&path))
            .and_then(|()| sync_dir(&self.dir))
        {
            remove_segment(&path);
            return Err(e);
        }
        self.total_bytes += SEGMENT_HEADER_BYTES;
        debug!(segment = %path.display(), "started a spool segment");
        Ok(Head {
            seg: Segment {
                path,
                len: SEGMENT_HEADER_BYTES,
                entries: Vec::new(),
                acked: 0,
            },
            file: Some(file),
            buf: Vec::new(),
            staged: Vec::new(),
        })
    }

    /// Writes the acknowledgement state as it will be once the `skip_closed` oldest segments
    /// (and the head, if `skip_head`) are gone, with `gaps` as the unreported gaps.
    fn persist_state(
        &mut self,
        skip_closed: usize,
        skip_head: bool,
        gaps: &[Gap],
    ) -> Result<(), SpoolError> {
        let live = self
            .segments
            .iter()
            .skip(skip_closed)
            .chain(self.head.iter().filter(|_| !skip_head).map(|h| &h.seg));
        let mut done_below = None;
        let mut ranges = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for entry in live.flat_map(|s| s.entries.iter()) {
            if done_below.is_none() {
                if !entry.acked {
                    done_below = Some(entry.seq);
                }
                continue;
            }
            if entry.acked {
                run = Some((run.map_or(entry.seq, |(first, _)| first), entry.seq));
            } else if let Some(r) = run.take() {
                ranges.push(r);
            }
        }
        ranges.extend(run);
        let state = AckState {
            done_below: done_below.unwrap_or_else(|| self.last_seq.map_or(0, |s| s + 1)),
            ranges,
            gaps: gaps.to_vec(),
        };
        let result = write_state(&self.dir, &state.encode());
        self.state_dirty = result.is_err();
        result
    }
}

/// One segment as found by [`scan_segment`].
struct Scanned {
    seg: Segment,
    /// False when a damaged tail could not be cut off: nothing more may be appended to it.
    appendable: bool,
    /// Highest sequence number indexed so far, this segment included.
    last_seq: Option<u64>,
}

/// Reads a segment, indexing its records and cutting off a damaged tail. `prev_seq` is the
/// last sequence number indexed from earlier segments. Returns `None` for a file that is not
/// (or no longer) a segment.
fn scan_segment(
    path: &Path,
    prev_seq: Option<u64>,
    recovery: &mut Recovery,
) -> Result<Option<Scanned>, SpoolError> {
    let file = File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);

    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    let header_read = file_len >= SEGMENT_HEADER_BYTES
        && read_full(&mut reader, &mut header).map_err(io_error(path))?;
    let torn_creation = !header_read
        || (header != SEGMENT_MAGIC
            && is_zero(&header)
            && rest_is_zero(&mut reader).map_err(io_error(path))?);
    if torn_creation {
        warn!(
            segment = %path.display(),
            bytes = file_len,
            "spool segment was cut short while being created; removing it"
        );
        recovery.torn_bytes_dropped += file_len;
        recovery.damage.push(Damage {
            segment: path.to_path_buf(),
            offset: 0,
            bytes_dropped: file_len,
            kind: DamageKind::TornTail,
            last_good_seq: None,
        });
        remove_segment(path);
        return Ok(None);
    }
    if header != SEGMENT_MAGIC {
        warn!(segment = %path.display(), "file named like a spool segment has no segment header; ignoring it");
        recovery.ignored_files += 1;
        return Ok(None);
    }

    let mut seg = Segment {
        path: path.to_path_buf(),
        len: SEGMENT_HEADER_BYTES,
        entries: Vec::new(),
        acked: 0,
    };
    let mut last = prev_seq;
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut payload = Vec::new();
    // Each pass advances `offset` by a whole record or stops: no damage can make this spin.
    let damage = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            break None;
        }
        let mut hdr = [0u8; RECORD_HEADER_BYTES as usize];
        if remaining < RECORD_HEADER_BYTES
            || !read_full(&mut reader, &mut hdr).map_err(io_error(path))?
        {
            break Some(DamageKind::TornTail);
        }
        let (len, seq, crc) = decode_header(&hdr);
        let end = offset + RECORD_HEADER_BYTES + u64::from(len);
        if end > file_len {
            break Some(DamageKind::TornTail);
        }
        if len as usize > MAX_RECORD_BYTES {
            break Some(DamageKind::Corrupt);
        }
        payload.resize(len as usize, 0);
        if !read_full(&mut reader, &mut payload).map_err(io_error(path))? {
            break Some(DamageKind::TornTail);
        }
        if record_crc(len, seq, &payload) != crc {
            // A bad record that ends the file, or zeros to the end (the file grew but the data
            // never reached the disk), is an interrupted write; anything else is damage.
            let torn = end == file_len
                || (is_zero(&hdr)
                    && is_zero(&payload)
                    && rest_is_zero(&mut reader).map_err(io_error(path))?);
            break Some(if torn {
                DamageKind::TornTail
            } else {
                DamageKind::Corrupt
            });
        }
        if let Some(prev) = last
            && seq <= prev
        {
            warn!(segment = %path.display(), seq, prev, "skipping a spooled record whose sequence number does not increase");
            recovery.skipped_records += 1;
        } else {
            seg.entries.push(Entry {
                seq,
                offset,
                len,
                acked: false,
            });
            last = Some(seq);
        }
        offset = end;
    };
    drop(reader);
    seg.len = offset;

    let mut appendable = true;
    if let Some(kind) = damage {
        let dropped = file_len - offset;
        let last_good_seq = seg.entries.last().map(|e| e.seq);
        match kind {
            DamageKind::TornTail => {
                recovery.torn_bytes_dropped += dropped;
                warn!(segment = %path.display(), offset, bytes = dropped, "dropping the torn tail of a spool segment (interrupted write)");
            }
            DamageKind::Corrupt => {
                recovery.corrupt_bytes_dropped += dropped;
                warn!(segment = %path.display(), offset, bytes = dropped, ?last_good_seq, "spool segment is damaged; dropping it from the damaged record on");
            }
        }
        recovery.damage.push(Damage {
            segment: path.to_path_buf(),
            offset,
            bytes_dropped: dropped,
            kind,
            last_good_seq,
        });
        let cut = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(offset).and_then(|()| f.sync_all()));
        if let Err(e) = cut {
            warn!(segment = %path.display(), error = %e, "could not cut the damaged tail; the segment takes no more appends");
            appendable = false;
        }
    }
    Ok(Some(Scanned {
        seg,
        appendable,
        last_seq: last,
    }))
}

/// Reads one indexed record back; `Ok(None)` if it no longer matches its index or checksum.
fn read_record(file: &mut File, entry: &Entry) -> io::Result<Option<Vec<u8>>> {
    file.seek(SeekFrom::Start(entry.offset))?;
    let mut hdr = [0u8; RECORD_HEADER_BYTES as usize];
    if !read_full(file, &mut hdr)? {
        return Ok(None);
    }
    let (len, seq, crc) = decode_header(&hdr);
    if len != entry.len || seq != entry.seq {
        return Ok(None);
    }
    let mut payload = vec![0u8; len as usize];
    if !read_full(file, &mut payload)? || record_crc(len, seq, &payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Appends the encoded record to `buf`; returns the payload length.
fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) -> u32 {
    // Callers check payload.len() <= MAX_RECORD_BYTES, which fits a u32; saturating keeps this
    // total without a panic path, and a saturated length could only fail its checksum.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&record_crc(len, seq, payload).to_le_bytes());
    buf.extend_from_slice(payload);
    len
}

fn decode_header(hdr: &[u8; RECORD_HEADER_BYTES as usize]) -> (u32, u64, u32) {
    let [
        l0,
        l1,
        l2,
        l3,
        s0,
        s1,
        s2,
        s3,
        s4,
        s5,
        s6,
        s7,
        c0,
        c1,
        c2,
        c3,
    ] = *hdr;
    (
        u32::from_le_bytes([l0, l1, l2, l3]),
        u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
        u32::from_le_bytes([c0, c1, c2, c3]),
    )
}

fn record_crc(len: u32, seq: u64, payload: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(&len.to_le_bytes());
    crc.update(&seq.to_le_bytes());
    crc.update(payload);
    crc.finish()
}

/// Fills `buf`; `Ok(false)` if the file ended first.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Whether everything left to read is zero bytes.
fn rest_is_zero(reader: &mut impl Read) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                if !is_zero(&chunk[..n]) {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn segment_name(id: u64) -> String {
    format!("{id:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_ID_DIGITS)
}

/// Segment files in the directory, oldest first, and the lowest id not taken by any entry
/// named like a segment (a stray directory of that name included).
fn list_segments(dir: &Path) -> Result<(Vec<(u64, PathBuf)>, u64), SpoolError> {
    let mut found = Vec::new();
    let mut next_id: u64 = 1;
    for item in fs::read_dir(dir).map_err(io_error(dir))? {
        let item = item.map_err(io_error(dir))?;
        let name = item.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .filter(|stem| {
                stem.len() == SEGMENT_ID_DIGITS && stem.bytes().all(|b| b.is_ascii_digit())
            })
            .and_then(|stem| stem.parse::<u64>().ok());
        let Some(id) = id else {
            trace!(file = ?name, "ignoring a file that is not a spool segment");
            continue;
        };
        next_id = next_id.max(id.saturating_add(1));
        if item.file_type().map_err(io_error(dir))?.is_file() {
            found.push((id, item.path()));
        } else {
            warn!(entry = ?name, "ignoring a non-file named like a spool segment");
        }
    }
    found.sort_unstable_by_key(|&(id, _)| id);
    Ok((found, next_id))
}

fn remove_segment(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        // Left behind, the file only holds records the ack state marks done (or none), and
        // the next open removes it again.
        Err(e) => warn!(segment = %path.display(), error = %e, "could not delete a spool segment"),
    }
}

fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        // Payloads are sealed, but their count and timing are still nobody else's business.
        builder.mode(0o700);
    }
    builder.create(dir).map_err(io_error(dir))
}

fn lock_dir(dir: &Path) -> Result<File, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(SpoolError::Locked(dir.to_path_buf())),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

/// Opens a new file for writing, owner-only on unix; `append` for segments.
fn new_file(path: &Path, append: bool) -> Result<File, SpoolError> {
    let mut options = OpenOptions::new();
    if append {
        options.append(true).create_new(true);
    } else {
        options.write(true).create(true).truncate(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(io_error(path))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(dir))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// The decoded `ack-state` file.
#[derive(Debug, Default, PartialEq, Eq)]
struct AckState {
    done_below: u64,
    ranges: Vec<(u64, u64)>,
    gaps: Vec<Gap>,
}

impl AckState {
    fn is_acked(&self, seq: u64) -> bool {
        if seq < self.done_below {
            return true;
        }
        let i = self.ranges.partition_point(|&(_, last)| last < seq);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= seq)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(28 + 16 * self.ranges.len() + 24 * self.gaps.len());
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&self.done_below.to_le_bytes());
        // Both lists are bounded far below u32::MAX: ranges by the records on disk (at most
        // max_bytes / 16), gaps by MAX_GAPS.
        out.extend_from_slice(
            &u32::try_from(self.ranges.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for &(first, last) in &self.ranges {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&last.to_le_bytes());
        }
        out.extend_from_slice(
            &u32::try_from(self.gaps.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        for gap in &self.gaps {
            out.extend_from_slice(&gap.first_seq.to_le_bytes());
            out.extend_from_slice(&gap.last_seq.to_le_bytes());
            out.extend_from_slice(&gap.count.to_le_bytes());
        }
        let mut crc = Crc32::new();
        crc.update(&out);
        out.extend_from_slice(&crc.finish().to_le_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<AckState, &'static str> {
        let Some(split) = bytes.len().checked_sub(4) else {
            return Err("too short");
        };
        let (body, crc_bytes) = bytes.split_at(split);
        let mut crc = Crc32::new();
        crc.update(body);
        if crc_bytes != crc.finish().to_le_bytes() {
            return Err("checksum mismatch");
        }
        let mut r = ByteReader { rest: body };
        if r.take(8) != Some(&STATE_MAGIC[..]) {
            return Err("unknown header or version");
        }
        let done_below = r.u64().ok_or("truncated")?;
        let n_ranges = r.u32().ok_or("truncated")?;
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for _ in 0..n_ranges {
            let first = r.u64().ok_or("truncated range list")?;
            let last = r.u64().ok_or("truncated range list")?;
            let after_previous = ranges.last().is_none_or(|&(_, prev)| first > prev);
            if first > last || first < done_below || !after_previous {
                return Err("acknowledged ranges out of order");
            }
            ranges.push((first, last));
        }
        let n_gaps = r.u32().ok_or("truncated")?;
        let mut gaps = Vec::new();
        for _ in 0..n_gaps {
            let gap = Gap {
                first_seq: r.u64().ok_or("truncated gap list")?,
                last_seq: r.u64().ok_or("truncated gap list")?,
                count: r.u64().ok_or("truncated gap list")?,
            };
            if gap.first_seq > gap.last_seq || gap.count == 0 {
                return Err("invalid gap");
            }
            gaps.push(gap);
        }
        if !r.rest.is_empty() {
            return Err("trailing bytes");
        }
        Ok(AckState {
            done_below,
            ranges,
            gaps,
        })
    }
}

struct ByteReader<'a> {
    rest: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

fn read_state(dir: &Path) -> Result<AckState, SpoolError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(AckState::default()),
        Err(e) => return Err(io_error(&path)(e)),
    };
    AckState::decode(&bytes).map_err(|reason| SpoolError::CorruptState { path, reason })
}

/// Replaces the state file atomically and durably: temp file, fsync, rename, directory fsync.
fn write_state(dir: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = dir.join(STATE_TMP_FILE);
    let path = dir.join(STATE_FILE);
    let mut file = new_file(&tmp, false)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), as used by zlib and gzip.
///
/// Hand-written rather than the `crc32fast` crate: twenty lines against a new dependency, and
/// speed does not matter here — every append ends in an fsync that costs far more than
/// checksumming a 256 KiB record byte by byte.
struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    fn new() -> Self {
        Crc32(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(self) -> u32 {
        !self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("cadence-spool-{}-{n}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            TestDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const ROOMY: u64 = 64 * 1024 * 1024;

    fn payload(seq: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    fn all(spool: &Spool) -> Vec<(u64, Vec<u8>)> {
        spool.pending(usize::MAX, usize::MAX).unwrap()
    }

    fn seqs(records: &[(u64, Vec<u8>)]) -> Vec<u64> {
        records.iter().map(|(s, _)| *s).collect()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir)
            .unwrap()
            .0
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// Appends where the bound is not in play.
    fn put(spool: &mut Spool, seq: u64, bytes: &[u8]) {
        assert_eq!(spool.append(seq, bytes).unwrap().evicted, None);
    }

    fn fill(spool: &mut Spool, range: std::ops::RangeInclusive<u64>, len: usize) {
        for seq in range {
            let appended = spool.append(seq, &payload(seq, len)).unwrap();
            assert_eq!(appended.evicted, None);
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        let mut crc = Crc32::new();
        crc.update(b"123456789");
        assert_eq!(crc.finish(), 0xCBF4_3926);
    }

    #[test]
    fn append_pending_ack_round_trip() {
        let dir = TestDir::new("round-trip");
        let (mut spool, recovery) = Spool::open(dir.path(), ROOMY).unwrap();
        assert_eq!(recovery.records, 0);
        assert_eq!(recovery.next_seq, 0);
        fill(&mut spool, 1..=10, 100);

        let got = all(&spool);
        assert_eq!(seqs(&got), (1..=10).collect::<Vec<_>>());
        for (seq, bytes) in &got {
            assert_eq!(bytes, &payload(*seq, 100));
        }
        assert_eq!(seqs(&spool.pending(3, usize::MAX).unwrap()), vec![1, 2, 3]);
        // max_bytes stops before passing the limit, but never returns nothing.
        assert_eq!(seqs(&spool.pending(100, 250).unwrap()), vec![1, 2]);
        assert_eq!(seqs(&spool.pending(100, 1).unwrap()), vec![1]);
        assert!(spool.pending(0, usize::MAX).unwrap().is_empty());

        spool.ack(&[1, 2, 3, 7, 99]).unwrap();
        assert_eq!(seqs(&all(&spool)), vec![4, 5, 6, 8, 9, 10]);
        let stats = spool.stats();
        assert_eq!(stats.records_pending, 6);
        assert_eq!(stats.oldest_seq, Some(4));
        assert_eq!(stats.newest_seq, Some(10));
        assert_eq!(stats.segments, 1);

        // Acknowledging again is harmless.
        spool.ack(&[1, 7]).unwrap();
        assert_eq!(spool.stats().records_pending, 6);
    }

    #[test]
    fn batch_spans_segments_and_round_trips() {
        let dir = TestDir::new("batch");
        let opts = SpoolOptions::new(ROOMY).segment_bytes(1000);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        let data: Vec<(u64, Vec<u8>)> = (1..=50).map(|s| (s, payload(s, 90))).collect();
        let batch: Vec<(u64, &[u8])> = data.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        let appended = spool.append_batch(&batch).unwrap();
        assert_eq!(appended.evicted, None);
        assert!(spool.stats().segments > 1);
        assert_eq!(all(&spool), data);
        drop(spool);
        let (spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.records, 50);
        assert_eq!(recovery.next_seq, 51);
        assert_eq!(all(&spool), data);
    }

    #[test]
    fn restart_keeps_unacked_and_forgets_acked() {
        let dir = TestDir::new("restart");
        let opts = SpoolOptions::new(ROOMY).segment_bytes(2000);
        {
            let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
            fill(&mut spool, 1..=40, 100);
            spool.ack(&[1, 2, 3, 4, 5, 10, 11, 12, 20, 40]).unwrap();
        }
        let expected: Vec<u64> = (1..=40)
            .filter(|s| ![1, 2, 3, 4, 5, 10, 11, 12, 20, 40].contains(s))
            .collect();
        let (mut spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.records, expected.len());
        assert_eq!(recovery.next_seq, 41);
        assert_eq!(recovery.torn_bytes_dropped, 0);
        assert!(recovery.damage.is_empty());
        assert_eq!(seqs(&all(&spool)), expected);
        assert!(matches!(
            spool.append(40, b"x"),
            Err(SpoolError::NotIncreasing { seq: 40, last: 40 })
        ));

        // Acknowledge everything: after a restart nothing is pending, and the sequence
        // numbers still continue where they were, though every segment may be gone.
        spool.ack(&(1..=40).collect::<Vec<_>>()).unwrap();
        put(&mut spool, 41, b"last");
        spool.ack(&[41]).unwrap();
        drop(spool);
        let (spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.records, 0);
        assert_eq!(recovery.next_seq, 42);
        assert!(all(&spool).is_empty());
    }

    #[test]
    fn torn_tail_at_every_offset_of_the_last_record() {
        let dir = TestDir::new("torn-source");
        let (mut spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
        fill(&mut spool, 1..=5, 100);
        drop(spool);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 1);
        let name = files[0].file_name().unwrap().to_owned();
        let bytes = fs::read(&files[0]).unwrap();
        let last_start = bytes.len() - (RECORD_HEADER_BYTES as usize + 100);

        for cut in last_start..bytes.len() {
            let case = TestDir::new("torn-case");
            fs::create_dir_all(case.path()).unwrap();
            fs::write(case.path().join(&name), &bytes[..cut]).unwrap();
            let (mut spool, recovery) = Spool::open(case.path(), ROOMY).unwrap();
            assert_eq!(recovery.records, 4, "cut at {cut}");
            assert_eq!(recovery.torn_bytes_dropped, (cut - last_start) as u64);
            assert_eq!(recovery.corrupt_bytes_dropped, 0);
            assert_eq!(recovery.next_seq, 5);
            assert_eq!(seqs(&all(&spool)), vec![1, 2, 3, 4]);
            // The cut is clean: the spool appends after it and all of it survives a restart.
            put(&mut spool, 5, &payload(5, 100));
            drop(spool);
            let (spool, recovery) = Spool::open(case.path(), ROOMY).unwrap();
            assert_eq!(recovery.torn_bytes_dropped, 0);
            assert_eq!(seqs(&all(&spool)), vec![1, 2, 3, 4, 5]);
            assert_eq!(all(&spool)[4].1, payload(5, 100));
        }

        // A segment cut inside its own header holds nothing and is removed.
        for cut in 0..SEGMENT_HEADER_BYTES as usize {
            let case = TestDir::new("torn-header");
            fs::create_dir_all(case.path()).unwrap();
            fs::write(case.path().join(&name), &bytes[..cut]).unwrap();
            let (spool, recovery) = Spool::open(case.path(), ROOMY).unwrap();
            assert_eq!(recovery.records, 0);
            assert_eq!(recovery.torn_bytes_dropped, cut as u64);
            assert!(all(&spool).is_empty());
            assert!(segment_files(case.path()).is_empty());
        }
    }

    #[test]
    fn garbage_after_the_last_record_is_dropped() {
        for (label, garbage) in [
            (
                "random",
                (0..1000).map(|_| fastrand::u8(..)).collect::<Vec<u8>>(),
            ),
            ("zeros", vec![0u8; 4096]),
        ] {
            let dir = TestDir::new(label);
            let (mut spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
            fill(&mut spool, 1..=3, 200);
            drop(spool);
            let seg = segment_files(dir.path()).remove(0);
            let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
            file.write_all(&garbage).unwrap();
            drop(file);

            let (mut spool, recovery) = Spool::open(dir.path(), ROOMY).unwrap();
            assert_eq!(recovery.records, 3, "{label}");
            assert_eq!(
                recovery.torn_bytes_dropped + recovery.corrupt_bytes_dropped,
                garbage.len() as u64,
                "{label}"
            );
            if label == "zeros" {
                assert_eq!(recovery.damage[0].kind, DamageKind::TornTail);
            }
            assert_eq!(recovery.damage[0].last_good_seq, Some(3));
            assert_eq!(seqs(&all(&spool)), vec![1, 2, 3]);
            put(&mut spool, 4, &payload(4, 200));
            drop(spool);
            let (spool, recovery) = Spool::open(dir.path(), ROOMY).unwrap();
            assert!(recovery.damage.is_empty());
            assert_eq!(seqs(&all(&spool)), vec![1, 2, 3, 4]);
        }
    }

    #[test]
    fn flipped_byte_in_a_middle_record_drops_the_rest_of_its_segment_only() {
        let dir = TestDir::new("flip");
        // 3 records of 116 bytes per segment.
        let opts = SpoolOptions::new(ROOMY).segment_bytes(8 + 3 * 116);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        fill(&mut spool, 1..=6, 100);
        drop(spool);
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 2);
        let mut bytes = fs::read(&files[0]).unwrap();
        let record2 = 8 + 116;
        bytes[record2 + 16 + 50] ^= 0x40;
        fs::write(&files[0], &bytes).unwrap();

        let (mut spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.damage.len(), 1);
        let damage = &recovery.damage[0];
        assert_eq!(damage.kind, DamageKind::Corrupt);
        assert_eq!(damage.offset, record2 as u64);
        assert_eq!(damage.bytes_dropped, 2 * 116);
        assert_eq!(damage.last_good_seq, Some(1));
        assert_eq!(recovery.corrupt_bytes_dropped, 2 * 116);
        assert_eq!(seqs(&all(&spool)), vec![1, 4, 5, 6]);
        assert_eq!(recovery.next_seq, 7);
        put(&mut spool, 7, b"after");
        assert_eq!(seqs(&all(&spool)), vec![1, 4, 5, 6, 7]);

        // A damaged length field is caught too (the checksum covers it).
        drop(spool);
        let files = segment_files(dir.path());
        let mut bytes = fs::read(&files[1]).unwrap();
        bytes[8] ^= 0x01; // len of seq 4: 100 -> 101
        fs::write(&files[1], &bytes).unwrap();
        let (spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.damage.len(), 1);
        assert_eq!(seqs(&all(&spool)), vec![1, 7]);
    }

    #[test]
    fn bound_evicts_oldest_segments_and_reports_the_exact_gap() {
        let dir = TestDir::new("bound");
        // 1016-byte records, 16 per segment (8 + 16 * 1016 = 16264 <= 16384).
        let opts = SpoolOptions::new(MIN_MAX_BYTES).segment_bytes(16 * 1024);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        let mut first_gap = None;
        let mut gaps = Vec::new();
        for seq in 1..=400u64 {
            if seq == 20 {
                // Out-of-order and in-order acks in the oldest segment: not lost when evicted.
                spool.ack(&[1, 2, 3, 10]).unwrap();
            }
            let before = seqs(&all(&spool));
            let appended = spool.append(seq, &payload(seq, 1000)).unwrap();
            let after = seqs(&all(&spool));
            assert!(spool.stats().bytes_on_disk <= MIN_MAX_BYTES);
            let lost: Vec<u64> = before
                .iter()
                .copied()
                .filter(|s| !after.contains(s))
                .collect();
            match appended.evicted {
                None => assert!(lost.is_empty(), "seq {seq} lost {lost:?} unreported"),
                Some(gap) => {
                    assert_eq!(gap.first_seq, lost[0]);
                    assert_eq!(gap.last_seq, *lost.last().unwrap());
                    assert_eq!(gap.count, lost.len() as u64);
                    first_gap.get_or_insert(gap);
                    gaps.push(gap);
                }
            }
            assert_eq!(after.last(), Some(&seq));
        }
        assert_eq!(
            first_gap,
            Some(Gap {
                first_seq: 4,
                last_seq: 16,
                count: 12
            })
        );
        assert!(gaps.len() > 5);
        assert_eq!(spool.unreported_gaps(), gaps.as_slice());

        // Unreported gaps survive a restart until confirmed.
        drop(spool);
        let (mut spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert_eq!(recovery.unreported_gaps, gaps);
        assert_eq!(recovery.next_seq, 401);
        let still_pending = seqs(&all(&spool));
        assert_eq!(*still_pending.last().unwrap(), 400);
        assert!(still_pending.windows(2).all(|w| w[1] == w[0] + 1));
        spool.gaps_reported(&gaps[..2]).unwrap();
        assert_eq!(spool.unreported_gaps(), &gaps[2..]);
        spool.gaps_reported(&gaps).unwrap();
        drop(spool);
        let (_, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        assert!(recovery.unreported_gaps.is_empty());
    }

    #[test]
    fn one_batch_larger_than_the_bound_reports_one_gap() {
        let dir = TestDir::new("big-batch");
        let opts = SpoolOptions::new(MIN_MAX_BYTES).segment_bytes(64 * 1024);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        let data: Vec<(u64, Vec<u8>)> = (1..=10).map(|s| (s, payload(s, 60_000))).collect();
        let batch: Vec<(u64, &[u8])> = data.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        let appended = spool.append_batch(&batch).unwrap();
        let kept = seqs(&all(&spool));
        let gap = appended.evicted.unwrap();
        assert_eq!(gap.first_seq, 1);
        assert_eq!(gap.last_seq, kept[0] - 1);
        assert_eq!(gap.count, kept[0] - 1);
        assert_eq!(*kept.last().unwrap(), 10);
        assert_eq!(spool.unreported_gaps(), &[gap]);
        assert!(spool.stats().bytes_on_disk <= MIN_MAX_BYTES);
    }

    #[test]
    fn sequence_numbers_must_increase() {
        let dir = TestDir::new("monotonic");
        let (mut spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
        put(&mut spool, 5, b"five");
        assert!(matches!(
            spool.append(5, b"again"),
            Err(SpoolError::NotIncreasing { seq: 5, last: 5 })
        ));
        assert!(matches!(
            spool.append(3, b"older"),
            Err(SpoolError::NotIncreasing { seq: 3, last: 5 })
        ));
        // A bad batch is rejected whole.
        assert!(matches!(
            spool.append_batch(&[(6, b"six"), (8, b"eight"), (7, b"seven")]),
            Err(SpoolError::NotIncreasing { seq: 7, last: 8 })
        ));
        assert!(matches!(
            spool.append(u64::MAX, b"max"),
            Err(SpoolError::ReservedSeq(_))
        ));
        let huge = vec![0u8; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            spool.append(9, &huge),
            Err(SpoolError::TooLarge { seq: 9, .. })
        ));
        assert_eq!(seqs(&all(&spool)), vec![5]);
        assert_eq!(spool.last_seq(), Some(5));
        put(&mut spool, 6, b"six");
        put(&mut spool, 1000, &vec![7u8; MAX_RECORD_BYTES]);
        assert_eq!(seqs(&all(&spool)), vec![5, 6, 1000]);
    }

    #[test]
    fn acked_segments_are_deleted() {
        let dir = TestDir::new("delete");
        let opts = SpoolOptions::new(ROOMY).segment_bytes(4096);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        fill(&mut spool, 1..=100, 500);
        let full = spool.stats();
        assert!(full.segments > 10);
        assert_eq!(segment_files(dir.path()).len(), full.segments);

        spool.ack(&(1..=50).collect::<Vec<_>>()).unwrap();
        let half = spool.stats();
        assert!(half.bytes_on_disk < full.bytes_on_disk);
        assert!(half.segments < full.segments);
        assert_eq!(segment_files(dir.path()).len(), half.segments);
        assert_eq!(half.oldest_seq, Some(51));

        // Out of order: the last half first, then the rest.
        spool.ack(&(51..=100).rev().collect::<Vec<_>>()).unwrap();
        let none = spool.stats();
        assert_eq!(none.records_pending, 0);
        assert!(none.segments <= 1);
        assert!(none.bytes_on_disk <= 4096);
        assert_eq!(segment_files(dir.path()).len(), none.segments);
        assert_eq!(none.oldest_seq, None);
    }

    #[test]
    fn unknown_files_are_ignored_and_the_directory_is_locked() {
        let dir = TestDir::new("unknown");
        fs::create_dir_all(dir.path()).unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        fs::write(dir.path().join(segment_name(99)), b"not a segment at all").unwrap();
        fs::create_dir(dir.path().join(segment_name(100))).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), ROOMY).unwrap();
        assert_eq!(recovery.ignored_files, 1);
        assert_eq!(recovery.records, 0);
        put(&mut spool, 1, b"one");
        assert!(dir.path().join(segment_name(101)).is_file());
        assert!(dir.path().join("notes.txt").is_file());
        assert!(matches!(
            Spool::open(dir.path(), ROOMY),
            Err(SpoolError::Locked(_))
        ));
        drop(spool);
        let (spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
        assert_eq!(seqs(&all(&spool)), vec![1]);
    }

    #[cfg(unix)]
    #[test]
    fn directory_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TestDir::new("mode");
        let (_spool, _) = Spool::open(&dir.path().join("spool"), ROOMY).unwrap();
        let mode = fs::metadata(dir.path().join("spool"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn damaged_ack_state_is_an_error_not_a_guess() {
        let dir = TestDir::new("state");
        let (mut spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
        fill(&mut spool, 1..=3, 10);
        spool.ack(&[1]).unwrap();
        drop(spool);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        bytes[9] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Spool::open(dir.path(), ROOMY),
            Err(SpoolError::CorruptState { .. })
        ));
    }

    #[test]
    fn ack_state_round_trips_and_rejects_bad_input() {
        let state = AckState {
            done_below: 10,
            ranges: vec![(12, 14), (20, 20)],
            gaps: vec![Gap {
                first_seq: 1,
                last_seq: 5,
                count: 4,
            }],
        };
        let bytes = state.encode();
        assert_eq!(AckState::decode(&bytes).unwrap(), state);
        assert!(state.is_acked(9) && state.is_acked(13) && state.is_acked(20));
        assert!(!state.is_acked(10) && !state.is_acked(15) && !state.is_acked(21));
        for cut in 0..bytes.len() {
            assert!(AckState::decode(&bytes[..cut]).is_err());
        }
        let unordered = AckState {
            ranges: vec![(20, 20), (12, 14)],
            ..state
        };
        assert!(AckState::decode(&unordered.encode()).is_err());
    }

    #[test]
    fn segments_whose_deletion_was_lost_are_deleted_again() {
        let dir = TestDir::new("resurrect");
        let opts = SpoolOptions::new(MIN_MAX_BYTES).segment_bytes(16 * 1024);
        let (mut spool, _) = Spool::open_with(dir.path(), opts).unwrap();
        fill(&mut spool, 1..=40, 1000);
        let saved: Vec<(PathBuf, Vec<u8>)> = segment_files(dir.path())
            .into_iter()
            .map(|p| {
                let bytes = fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        spool.ack(&(1..=16).collect::<Vec<_>>()).unwrap();
        // Fill until the bound evicts the next segment (17..=32) unacknowledged.
        let mut seq = 41;
        let gap = loop {
            if let Some(gap) = spool.append(seq, &payload(seq, 1000)).unwrap().evicted {
                break gap;
            }
            seq += 1;
        };
        assert_eq!((gap.first_seq, gap.last_seq, gap.count), (17, 32, 16));
        drop(spool);
        // As if neither deletion had reached the disk before a power cut.
        for (path, bytes) in &saved[..2] {
            assert!(!path.exists());
            fs::write(path, bytes).unwrap();
        }
        let (spool, recovery) = Spool::open_with(dir.path(), opts).unwrap();
        let pending = seqs(&all(&spool));
        assert_eq!(pending[0], 33);
        assert_eq!(recovery.unreported_gaps, vec![gap]);
        for (path, _) in &saved[..2] {
            assert!(!path.exists());
        }
    }

    #[test]
    fn a_repeated_sequence_number_on_disk_is_skipped() {
        let dir = TestDir::new("repeat");
        let (mut spool, _) = Spool::open(dir.path(), ROOMY).unwrap();
        fill(&mut spool, 1..=3, 10);
        drop(spool);
        let first = segment_files(dir.path()).remove(0);
        fs::copy(&first, dir.path().join(segment_name(2))).unwrap();
        let (mut spool, recovery) = Spool::open(dir.path(), ROOMY).unwrap();
        assert_eq!(recovery.skipped_records, 3);
        assert_eq!(seqs(&all(&spool)), vec![1, 2, 3]);
        put(&mut spool, 4, b"four");
        assert_eq!(seqs(&all(&spool)), vec![1, 2, 3, 4]);
    }

    #[test]
    fn limits_are_checked() {
        let dir = TestDir::new("limits");
        assert!(matches!(
            Spool::open(dir.path(), 1000),
            Err(SpoolError::Limits(_))
        ));
        assert!(matches!(
            Spool::open_with(dir.path(), SpoolOptions::new(ROOMY).segment_bytes(0)),
            Err(SpoolError::Limits(_))
        ));
    }
}
