//! Ingest figures, printed: the crypto ceiling on one core, then what a verifier on SQLite
//! commits when many agents post at once, and its request latency.
//!
//! `cargo bench -p cadence-verifier --bench ingest`
//!
//! (a) `open()` (HPKE decrypt + Ed25519 verify) back to back on one thread for ~1 KiB feature
//! payloads: the per-core ceiling (PLATFORM-NOTES.md, "Crypto figures").
//! (b) A verifier in this process on 127.0.0.1:0 with a temporary data directory; 50 enrolled
//! simulated devices with pre-sealed envelopes; 16 concurrent reqwest clients (one connection
//! each) post batches of 32 for ~10 s. Counts envelopes acknowledged, i.e. committed.
//! (c) Single-envelope batches: request latency with one client, then with 16.
//! Clients and server share this machine's cores, so (b) is a floor for a dedicated verifier.
//! Loopback only; every loop is bounded in time and count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use support::{ms, percentile};

const INGEST_RUN: Duration = Duration::from_secs(10);
const LATENCY_RUN: Duration = Duration::from_secs(4);
const DEVICES: usize = 50;
const CLIENTS: usize = 16;
const BATCH: usize = 32;
/// Decimals of the milliseconds printed.
const MS: usize = 2;

fn main() {
    let (crypto, payload_len) = support::crypto_limit();
    println!("payload: {payload_len} bytes of feature-vector JSON per envelope");
    println!("crypto limit (open, one core): {crypto:.0} envelopes/s");

    support::runtime().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let server = support::serve(&support::loopback_settings(dir.path())).await;
        let base = server.base.clone();
        let urls = [format!("{base}/v1/ingest")];
        let ca = server.ca.clone();
        let token = server.token.clone().unwrap();
        let setup = support::client(&ca);

        // (b) batches of 32 from 16 clients.
        let mut devices = Vec::new();
        let mut to = None;
        for _ in 0..DEVICES {
            let (d, k) = support::enroll(&setup, &base, &token).await;
            devices.push(d);
            to = Some(k);
        }
        let to = to.unwrap();
        // Enough for the whole run even at twice the one-core ceiling.
        let per_device = ((2.0 * crypto * INGEST_RUN.as_secs_f64()) as usize / DEVICES).clamp(BATCH, 6_000);
        let sealing = Instant::now();
        let queues = tokio::task::block_in_place(|| support::preseal(&devices, &to, per_device));
        println!(
            "sealed {} envelopes for {DEVICES} devices in {:.1} s",
            per_device * DEVICES,
            sealing.elapsed().as_secs_f64()
        );
        let run = support::load(&ca, &urls, queues, CLIENTS, BATCH, INGEST_RUN).await;
        let rate = run.acked as f64 / run.elapsed.as_secs_f64();
        println!(
            "ingest (sqlite, {CLIENTS} clients, batches of {BATCH}): {rate:.0} envelopes/s committed = {:.0}% of the crypto limit",
            100.0 * rate / crypto
        );
        println!(
            "  batch latency p50/p99: {} / {}",
            ms(percentile(&run.latencies, 0.5), MS),
            ms(percentile(&run.latencies, 0.99), MS)
        );

        // (c) single-envelope batches: one client, then 16.
        let mut single = Vec::new();
        for _ in 0..CLIENTS {
            single.push(support::enroll(&setup, &base, &token).await.0);
        }
        let queues = tokio::task::block_in_place(|| support::preseal(&single, &to, 1_500));
        let (one, rest) = queues.split_at(1);
        let run1 = support::load(&ca, &urls, one.to_vec(), 1, 1, LATENCY_RUN).await;
        println!(
            "single-envelope requests, 1 client: p50/p99 latency {} / {} ({:.0} requests/s)",
            ms(percentile(&run1.latencies, 0.5), MS),
            ms(percentile(&run1.latencies, 0.99), MS),
            run1.acked as f64 / run1.elapsed.as_secs_f64()
        );
        // Fresh sequence numbers for the loaded run: the first device's queue is spent.
        let run15 = support::load(&ca, &urls, rest.to_vec(), CLIENTS - 1, 1, LATENCY_RUN).await;
        println!(
            "single-envelope requests, {} clients: p50/p99 latency {} / {} ({:.0} requests/s)",
            CLIENTS - 1,
            ms(percentile(&run15.latencies, 0.5), MS),
            ms(percentile(&run15.latencies, 0.99), MS),
            run15.acked as f64 / run15.elapsed.as_secs_f64()
        );

        server.stop().await;
    });
}
