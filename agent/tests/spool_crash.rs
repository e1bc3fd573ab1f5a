#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash test for the spool: a child process (this same test binary, switched to child mode
//! by an environment variable) appends records as fast as it can and reports each one on
//! stdout once `append` has returned, that is once the record is durable. The parent reads a
//! few hundred reports, kills the child with SIGKILL mid-stream, reopens the spool and checks
//! that every reported record is there, with its bytes, in order, exactly once — three times
//! over, acknowledging part of the backlog between rounds.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cadence_agent::spool::{Spool, SpoolOptions};

/// Set to the spool directory in the child process.
const CHILD_ENV: &str = "CADENCE_SPOOL_CHILD";
/// This test's name, so that the child runs only it.
const TEST_NAME: &str = "durable_records_survive_sigkill";
const REPORTS_PER_ROUND: usize = 300;
const ROUNDS: usize = 3;

fn options() -> SpoolOptions {
    // Small segments so that kills also land around segment rolls.
    SpoolOptions::new(1 << 30).segment_bytes(256 * 1024)
}

/// The payload for `seq`: mostly small, every tenth large, so that some kills land inside a
/// long write. Cheap to build, so that the child spends its time writing and syncing, where
/// the kills should land.
fn payload(seq: u64) -> Vec<u8> {
    let len = if seq.is_multiple_of(10) {
        150_000 + (seq * 7_919) % 100_000
    } else {
        16 + (seq * 7_919) % 4_000
    } as usize;
    let mut bytes = vec![(seq % 251) as u8; len];
    bytes[..8].copy_from_slice(&seq.to_le_bytes());
    bytes[len - 8..].copy_from_slice(&seq.to_be_bytes());
    bytes
}

/// Child mode: append forever (bounded, so that an orphan ends by itself), reporting each
/// durable sequence number.
fn child(dir: &Path) -> ! {
    let (mut spool, recovery) = Spool::open_with(dir, options()).unwrap();
    let mut out = std::io::stdout().lock();
    let first = recovery.next_seq.max(1);
    for seq in first..first + 200_000 {
        let appended = spool.append(seq, &payload(seq)).unwrap();
        assert_eq!(appended.evicted, None);
        writeln!(out, "durable {seq}").unwrap();
        out.flush().unwrap();
    }
    std::process::exit(0)
}

/// A report line's sequence number. With `--nocapture` and one thread, libtest prints
/// `test <name> ... ` without a newline before the test runs, so the first report shares a
/// line with it.
fn parse_report(line: &str) -> Option<u64> {
    line.rsplit_once("durable ")?.1.trim().parse().ok()
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn durable_records_survive_sigkill() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = TempDir(std::env::temp_dir().join(format!(
        "cadence-spool-crash-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )));

    // Reported durable and not yet acknowledged, in report order.
    let mut outstanding: Vec<u64> = Vec::new();
    let mut acked: Vec<u64> = Vec::new();
    // The sequence number the next child starts at.
    let mut next_seq = 1u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut reported = Vec::new();
        // A little randomness in when the kill comes.
        let wanted = REPORTS_PER_ROUND + fastrand::usize(..100);
        while reported.len() < wanted {
            let line = lines
                .next()
                .expect("child stopped reporting before it was killed")
                .unwrap();
            reported.extend(parse_report(&line));
        }
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        // Reports already in the pipe when the child died count too.
        reported.extend(lines.map_while(Result::ok).filter_map(|l| parse_report(&l)));

        assert!(
            reported.windows(2).all(|w| w[1] == w[0] + 1) && reported[0] == next_seq,
            "round {round}: child reported out of order: {:?}",
            &reported[..5]
        );
        let last_reported = *reported.last().unwrap();
        outstanding.extend(&reported);

        let (mut spool, recovery) = Spool::open_with(&dir.0, options()).unwrap();
        let pending = spool.pending(usize::MAX, usize::MAX).unwrap();
        let seqs: Vec<u64> = pending.iter().map(|(s, _)| *s).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "round {round}: pending out of order or duplicated"
        );
        for (seq, bytes) in &pending {
            assert!(
                *bytes == payload(*seq),
                "round {round}: record {seq} damaged"
            );
            assert!(!acked.contains(seq), "round {round}: acked {seq} came back");
        }
        for seq in &outstanding {
            assert!(
                seqs.binary_search(seq).is_ok(),
                "round {round}: durable record {seq} lost (recovery: {recovery:?})"
            );
        }
        // Besides the reported records, at most the one appended but not yet reported when
        // the kill came.
        assert!(seqs.len() <= outstanding.len() + 1);
        assert!(*seqs.last().unwrap() <= last_reported + 1);
        assert_eq!(recovery.next_seq, seqs.last().unwrap() + 1);
        assert!(recovery.unreported_gaps.is_empty());
        eprintln!(
            "round {round}: {} reported, {} pending, torn bytes dropped {}, damage {:?}",
            reported.len(),
            seqs.len(),
            recovery.torn_bytes_dropped,
            recovery.damage
        );
        assert_eq!(recovery.corrupt_bytes_dropped, 0, "round {round}");

        // Acknowledge the older half plus every third record of the rest (out of order), so
        // the next round also checks that acknowledgements survive.
        let half = seqs.len() / 2;
        let to_ack: Vec<u64> = seqs[..half]
            .iter()
            .copied()
            .chain(seqs[half..].iter().copied().step_by(3))
            .collect();
        spool.ack(&to_ack).unwrap();
        // Everything still pending is durable now, the unreported extra record included.
        outstanding = seqs
            .iter()
            .copied()
            .filter(|s| !to_ack.contains(s))
            .collect();
        acked.extend(to_ack);
        next_seq = recovery.next_seq;
    }
}
