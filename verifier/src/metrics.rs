//! Operational metrics: counters kept in process and rendered in the Prometheus text format.
//!
//! Owns the verifier's counters (envelopes received, stored, acknowledged as duplicates,
//! refused by reason; batches refused; alerts raised by kind), the histogram of scoring
//! latency, and the rendering of all of them plus a gauge of devices by monitoring state (read
//! from the store at scrape time) as the text exposition format, version 0.0.4. Hands on
//! [`Metrics`] (cheap to share: atomics only, no lock on the ingest path) and the text of one
//! scrape ([`Metrics::render`]). Never carries a device id, user name, host name, token or
//! feature value in a label: labels are fixed sets (reason codes, alert kinds, monitoring
//! states), so a scrape tells how the fleet's verifier is doing, not who did what.
//!
//! Counters are per process: a replica counts what it received itself, and Prometheus sums
//! replicas. The devices gauge comes from the shared database, so every replica reports the
//! same fleet-wide figure (aggregate it with `max`, not `sum`).
//!
//! # Families
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `cadence_envelopes_received_total` | counter | | envelopes in ingest batches whose framing was readable |
//! | `cadence_envelopes_stored_total` | counter | | records stored now (each `(device, seq)` once) |
//! | `cadence_envelopes_duplicate_total` | counter | | resends acknowledged without storing again |
//! | `cadence_heartbeats_total` | counter | | heartbeats acknowledged (never stored as records) |
//! | `cadence_envelopes_rejected_total` | counter | `reason`: the stable codes of [`Reason::code`](crate::ingest::Reason::code) | envelopes refused |
//! | `cadence_batches_refused_total` | counter | `reason`: `bad_batch`, `mixed_devices` | whole batches refused before any envelope was opened |
//! | `cadence_alerts_raised_total` | counter | `kind`: `trust`, `injection` | alerts stored |
//! | `cadence_scoring_latency_seconds` | histogram | | per window, from its commit to its score row's commit |
//! | `cadence_devices` | gauge | `state`: monitoring state, `unknown` before any report | enrolled devices |
//! | `cadence_build_info` | gauge | `version` | always 1 |

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{AlertKind, state_name};
use cadence_wire::records::MonitoringState;

/// The stable refusal codes, in the order they are rendered. A code not listed here (a new
/// [`Reason`](crate::ingest::Reason) without an entry) is counted under `other`.
pub const REJECT_CODES: [&str; 9] = [
    "malformed",
    "version",
    "too_large",
    "unknown_device",
    "wrong_recipient",
    "bad_signature",
    "bad_payload",
    "seq_reused",
    "other",
];

/// Why a whole batch was refused.
pub const BATCH_CODES: [&str; 2] = ["bad_batch", "mixed_devices"];

/// Upper bounds of the scoring latency buckets, in milliseconds (`+Inf` follows).
pub const LATENCY_BUCKETS_MS: [u64; 13] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// The monitoring states always rendered (with 0 when no device is in them).
const STATES: [MonitoringState; 5] = [
    MonitoringState::Monitoring,
    MonitoringState::Paused,
    MonitoringState::WaitingForConsent,
    MonitoringState::Withdrawn,
    MonitoringState::Error,
];

/// The label value for devices that never reported a state.
pub const UNKNOWN_STATE: &str = "unknown";

/// The verifier's counters. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug, Default)]
pub struct Metrics {
    received: AtomicU64,
    stored: AtomicU64,
    duplicates: AtomicU64,
    heartbeats: AtomicU64,
    rejected: [AtomicU64; REJECT_CODES.len()],
    batches_refused: [AtomicU64; BATCH_CODES.len()],
    /// Trust, injection.
    alerts: [AtomicU64; 2],
    latency: Histogram,
}

/// A fixed-bucket histogram of milliseconds. Buckets hold their own counts (not cumulative);
/// rendering adds them up.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, ms: u64) {
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&upper| ms <= upper)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// `n` envelopes arrived in a readable batch.
    pub fn received(&self, n: usize) {
        add(&self.received, n);
    }

    /// One record was stored.
    pub fn stored(&self) {
        add(&self.stored, 1);
    }

    /// One resend was acknowledged without storing.
    pub fn duplicate(&self) {
        add(&self.duplicates, 1);
    }

    /// One heartbeat was acknowledged.
    pub fn heartbeat(&self) {
        add(&self.heartbeats, 1);
    }

    /// One envelope was refused with this stable code.
    pub fn rejected(&self, code: &str) {
        let i = REJECT_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(REJECT_CODES.len() - 1);
        add(&self.rejected[i], 1);
    }

    /// A whole batch was refused; `code` is one of [`BATCH_CODES`].
    pub fn batch_refused(&self, code: &str) {
        if let Some(i) = BATCH_CODES.iter().position(|c| *c == code) {
            add(&self.batches_refused[i], 1);
        }
    }

    /// An alert of `kind` was stored.
    pub fn alert(&self, kind: AlertKind) {
        let i = match kind {
            AlertKind::Trust => 0,
            AlertKind::Injection => 1,
        };
        add(&self.alerts[i], 1);
    }

    /// A window's score row was committed `ms` milliseconds after the window itself.
    pub fn scoring_latency_ms(&self, ms: u64) {
        self.latency.observe(ms);
    }

    /// The whole scrape: every family above, with `devices` (monitoring state or `None` for
    /// never reported, and how many devices) as the gauge.
    pub fn render(&self, devices: &[(Option<String>, u64)]) -> String {
        let mut out = String::with_capacity(4096);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "cadence_envelopes_received_total",
            "Envelopes received in ingest batches whose framing was readable.",
            &[(None, get(&self.received))],
        );
        counter(
            &mut out,
            "cadence_envelopes_stored_total",
            "Records stored (each device and sequence number once).",
            &[(None, get(&self.stored))],
        );
        counter(
            &mut out,
            "cadence_envelopes_duplicate_total",
            "Resent envelopes acknowledged without storing them again.",
            &[(None, get(&self.duplicates))],
        );
        counter(
            &mut out,
            "cadence_heartbeats_total",
            "Heartbeats acknowledged.",
            &[(None, get(&self.heartbeats))],
        );
        let rejected: Vec<(Option<(&str, &str)>, u64)> = REJECT_CODES
            .iter()
            .zip(&self.rejected)
            .map(|(code, n)| (Some(("reason", *code)), get(n)))
            .collect();
        counter(
            &mut out,
            "cadence_envelopes_rejected_total",
            "Envelopes refused, by stable reason code.",
            &rejected,
        );
        let batches: Vec<(Option<(&str, &str)>, u64)> = BATCH_CODES
            .iter()
            .zip(&self.batches_refused)
            .map(|(code, n)| (Some(("reason", *code)), get(n)))
            .collect();
        counter(
            &mut out,
            "cadence_batches_refused_total",
            "Ingest batches refused before any envelope was opened.",
            &batches,
        );
        counter(
            &mut out,
            "cadence_alerts_raised_total",
            "Alerts stored, by kind.",
            &[
                (
                    Some(("kind", AlertKind::Trust.as_str())),
                    get(&self.alerts[0]),
                ),
                (
                    Some(("kind", AlertKind::Injection.as_str())),
                    get(&self.alerts[1]),
                ),
            ],
        );
        self.render_latency(&mut out);
        render_devices(&mut out, devices);
        header(
            &mut out,
            "cadence_build_info",
            "The verifier's version.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "cadence_build_info{{version=\"{}\"}} 1",
            escape(env!("CARGO_PKG_VERSION"))
        );
        out
    }

    fn render_latency(&self, out: &mut String) {
        let name = "cadence_scoring_latency_seconds";
        header(
            out,
            name,
            "Time from a window's commit to its score row's commit.",
            "histogram",
        );
        let mut cumulative = 0u64;
        for (i, bucket) in self.latency.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = match LATENCY_BUCKETS_MS.get(i) {
                Some(&ms) => seconds(ms),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum {}",
            seconds(self.latency.sum_ms.load(Ordering::Relaxed))
        );
        // The count is the +Inf bucket, read in the same pass, so the two always agree.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

fn render_devices(out: &mut String, devices: &[(Option<String>, u64)]) {
    header(
        out,
        "cadence_devices",
        "Enrolled devices by monitoring state (from the database; the same on every replica).",
        "gauge",
    );
    let mut rows: Vec<(String, u64)> = STATES
        .iter()
        .map(|s| (state_name(*s).to_owned(), 0))
        .collect();
    rows.push((UNKNOWN_STATE.to_owned(), 0));
    for (state, n) in devices {
        let state = state.as_deref().unwrap_or(UNKNOWN_STATE);
        match rows.iter_mut().find(|(s, _)| s == state) {
            Some((_, count)) => *count += n,
            None => rows.push((state.to_owned(), *n)),
        }
    }
    for (state, n) in rows {
        let _ = writeln!(out, "cadence_devices{{state=\"{}\"}} {n}", escape(&state));
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, samples: &[(Option<(&str, &str)>, u64)]) {
    header(out, name, help, "counter");
    for (label, value) in samples {
        match label {
            Some((key, v)) => {
                let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {value}", escape(v));
            }
            None => {
                let _ = writeln!(out, "{name} {value}");
            }
        }
    }
}

/// Milliseconds as decimal seconds, exactly (no float rounding): `2500` → `2.5`.
fn seconds(ms: u64) -> String {
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{whole}")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// A label value escaped as the text format requires (backslash, double quote, newline).
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Reason;

    #[test]
    fn every_refusal_reason_has_its_own_label() {
        let reasons = [
            Reason::Malformed("x".into()),
            Reason::WrongVersion(2),
            Reason::TooLarge(1),
            Reason::UnknownDevice,
            Reason::WrongRecipient,
            Reason::BadSignature,
            Reason::BadPayload("x".into()),
            Reason::SeqReused,
        ];
        for r in &reasons {
            let i = REJECT_CODES.iter().position(|c| *c == r.code());
            assert!(
                i.is_some_and(|i| i < REJECT_CODES.len() - 1),
                "{} has no label of its own",
                r.code()
            );
        }
        let m = Metrics::default();
        m.rejected("bad_signature");
        m.rejected("bad_signature");
        m.rejected("something_new");
        let text = m.render(&[]);
        assert!(text.contains("cadence_envelopes_rejected_total{reason=\"bad_signature\"} 2\n"));
        assert!(text.contains("cadence_envelopes_rejected_total{reason=\"other\"} 1\n"));
        assert!(text.contains("cadence_envelopes_rejected_total{reason=\"seq_reused\"} 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let m = Metrics::default();
        for ms in [3, 5, 6, 700, 70_000] {
            m.scoring_latency_ms(ms);
        }
        let text = m.render(&[]);
        let bucket = |le: &str| -> u64 {
            let prefix = format!("cadence_scoring_latency_seconds_bucket{{le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap();
            line[prefix.len()..].parse().unwrap()
        };
        assert_eq!(bucket("0.005"), 2);
        assert_eq!(bucket("0.01"), 3);
        assert_eq!(bucket("0.5"), 3);
        assert_eq!(bucket("1"), 4);
        assert_eq!(bucket("60"), 4);
        assert_eq!(bucket("+Inf"), 5);
        assert!(text.contains("cadence_scoring_latency_seconds_count 5\n"));
        assert!(text.contains("cadence_scoring_latency_seconds_sum 70.714\n"));
    }

    #[test]
    fn devices_gauge_lists_every_state_and_folds_unknown_ones() {
        let m = Metrics::default();
        let text = m.render(&[
            (Some("monitoring".into()), 3),
            (None, 2),
            (Some("odd\"state".into()), 1),
        ]);
        assert!(text.contains("cadence_devices{state=\"monitoring\"} 3\n"));
        assert!(text.contains("cadence_devices{state=\"paused\"} 0\n"));
        assert!(text.contains("cadence_devices{state=\"unknown\"} 2\n"));
        assert!(text.contains("cadence_devices{state=\"odd\\\"state\"} 1\n"));
    }

    #[test]
    fn seconds_are_exact_decimals() {
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(250), "0.25");
        assert_eq!(seconds(1_000), "1");
        assert_eq!(seconds(2_500), "2.5");
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
