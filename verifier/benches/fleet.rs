//! Fleet load, printed: many simulated agents posting to a verifier on loopback, on SQLite,
//! on PostgreSQL, and on two replicas sharing one PostgreSQL database, next to the crypto
//! limit measured in the same run.
//!
//! The "two replicas" are two verifier instances in this one process, sharing its one tokio
//! runtime (and so its worker threads) and one PostgreSQL database: they show that replicas
//! stay consistent under load and what sharing costs, not what two machines would do.
//!
//! `CADENCE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p cadence-verifier --bench fleet`
//!
//! (a) `open()` (HPKE decrypt + Ed25519 verify) back to back on one thread for ~1 KiB feature
//! payloads: the per-core ceiling, measured. The whole machine's figure printed beside it is
//! computed (that rate times the cores), not measured.
//! (b) For each backend: a verifier in this process on 127.0.0.1:0 (PostgreSQL: a fresh
//! database, dropped afterwards); [`AGENTS`] enrolled simulated agents with pre-sealed
//! envelopes; [`CONNECTIONS`] concurrent HTTPS connections, each carrying the requests of its
//! share of the agents in turn, one agent's batch of [`BATCH`] windows per request, for
//! [`RUN`]. Reports envelopes committed per second and the request latency (p50, p99) as the
//! agent sees it on an established connection: TLS records, HTTP, decrypt, verify, dedupe
//! check, commit. Each connection is kept alive and does its TLS handshake once, at its first
//! request, so handshakes are not in these latencies. That is saturation: every connection
//! always has a request waiting, so latency there is mostly queueing.
//! (c) Paced: the same agents send one window per request, at half the request rate (b)
//! reached (each request is a commit, so requests, not envelopes, are the cost), on a fixed
//! schedule (open loop: latency counts from when the request was due, so a stall is not
//! hidden by the requests it delayed). This is the p99 an agent sees on a busy verifier.
//! (d) Checks afterwards that the store holds exactly the envelopes acknowledged.
//!
//! The scorer runs as in production but with an enrollment longer than the run, so every
//! window costs one profile update and no population is learned mid-run: the figures are
//! ingest's. Clients, verifier(s) and PostgreSQL share this machine's cores, so they are a
//! floor for a dedicated verifier. Loopback only; every loop is bounded in time and count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/db.rs"]
mod db;
mod support;

use std::time::{Duration, Instant};

use cadence_verifier::scoring::ScoringConfig;
use cadence_verifier::store::Store;
use cadence_wire::VerifierPublicKey;
use cadence_wire::records::encode_batch;
use db::TestDb;
use support::{Queue, Served, SimAgent, client, ms, percentile};

const RUN: Duration = Duration::from_secs(10);
/// Simulated agents (devices), each with its own key and sequence numbers.
const AGENTS: usize = 1_000;
/// Concurrent HTTPS connections the agents' requests arrive on.
const CONNECTIONS: usize = 64;
/// Windows per request: an agent's spool after a couple of minutes offline.
const BATCH: usize = 4;
/// Decimals of the milliseconds printed.
const MS: usize = 1;

/// A verifier on `db`, its scorer enrolling for longer than the run (see the module doc).
async fn serve(data_dir: &std::path::Path, db: &TestDb) -> Served {
    let mut settings = support::loopback_settings(data_dir);
    db.apply(&mut settings);
    settings.scoring = ScoringConfig {
        keyboard_enroll_windows: 1_000_000,
        ..ScoringConfig::default()
    };
    support::serve(&settings).await
}

/// Enrolls `n` agents, 16 at a time.
async fn enroll_all(
    base: &str,
    ca: &[u8],
    token: &str,
    n: usize,
) -> (Vec<SimAgent>, VerifierPublicKey) {
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (base, token, c) = (base.to_owned(), token.to_owned(), client(ca));
            tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in (t..n).step_by(16) {
                    out.push(support::enroll(&c, &base, &token).await);
                }
                out
            })
        })
        .collect();
    let mut agents = Vec::with_capacity(n);
    let mut to = None;
    for t in tasks {
        for (a, k) in t.await.unwrap() {
            agents.push(a);
            to = Some(k);
        }
    }
    (agents, to.unwrap())
}

/// One connection sending one envelope per request every `every`, from its agents in turn;
/// latency from when each request was due.
async fn paced(
    client: reqwest::Client,
    url: String,
    mut agents: Vec<Queue>,
    every: Duration,
    run: Duration,
) -> (usize, Vec<Duration>) {
    let start = tokio::time::Instant::now();
    let (mut acked, mut latencies) = (0, Vec::new());
    let mut due = start + every.mul_f64(fastrand::f64());
    let mut next = 0;
    while due < start + run {
        tokio::time::sleep_until(due).await;
        let n = agents.len();
        let Some(envelope) = agents[next % n].pop_front() else {
            break;
        };
        next += 1;
        support::ingest(&client, &url, encode_batch([&envelope[..]]), 1).await;
        latencies.push(due.elapsed());
        acked += 1;
        due += every;
    }
    (acked, latencies)
}

/// (b) and (c) on `db` with `replicas` verifiers sharing it (and one data directory, so one
/// key pair and certificate).
async fn fleet(label: &str, db: &TestDb, replicas: usize, crypto: f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for _ in 0..replicas {
        // One after the other: the first makes the keys, the schema and the token.
        servers.push(serve(dir.path(), db).await);
    }
    let token = servers[0].token.clone().unwrap();
    let ca = servers[0].ca.clone();
    // Connections spread over the replicas, as a load balancer would.
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("{}/v1/ingest", s.base))
        .collect();
    let (agents, to) = enroll_all(&servers[0].base, &ca, &token, AGENTS).await;
    let per_agent = ((1.5 * crypto * RUN.as_secs_f64()) as usize / AGENTS).clamp(BATCH, 400);
    let mut queues = tokio::task::block_in_place(|| support::preseal(&agents, &to, 2 * per_agent));
    // The second half of each agent's envelopes (later sequence numbers) is for (c).
    let later: Vec<Queue> = queues.iter_mut().map(|q| q.split_off(per_agent)).collect();
    let saturated = support::load(&ca, &urls, queues, CONNECTIONS, BATCH, RUN).await;
    let elapsed = saturated.elapsed.as_secs_f64();
    let rate = saturated.acked as f64 / elapsed;
    let lat = &saturated.latencies;
    let request_rate = lat.len() as f64 / elapsed;
    println!(
        "{label}: saturated {rate:.0} envelopes/s committed ({:.0}% of one core's crypto limit), {} requests of {BATCH}, latency p50 {} p99 {}",
        100.0 * rate / crypto,
        lat.len(),
        ms(percentile(lat, 0.5), MS),
        ms(percentile(lat, 0.99), MS),
    );

    // (c) Half the saturated request rate, one envelope per request, on a schedule.
    let target = request_rate / 2.0;
    let every = Duration::from_secs_f64(CONNECTIONS as f64 / target);
    // Each agent's later sequence numbers; what (b) left unsent is never sent (a gap).
    let shares = support::shares(later, CONNECTIONS);
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let url = urls[i % replicas].clone();
            tokio::spawn(paced(client(&ca), url, share, every, RUN))
        })
        .collect();
    let paced = support::gather(start, tasks).await;
    let paced_rate = paced.acked as f64 / paced.elapsed.as_secs_f64();
    let acked = saturated.acked + paced.acked;
    let lat = &paced.latencies;
    println!(
        "{label}: paced at {target:.0}/s, one envelope per request: {paced_rate:.0} envelopes/s committed, latency p50 {} p99 {} max {}",
        ms(percentile(lat, 0.5), MS),
        ms(percentile(lat, 0.99), MS),
        ms(lat.last().copied().unwrap_or_default(), MS),
    );
    for s in servers {
        s.stop().await;
    }
    let store = Store::open_existing(&db.database(dir.path()))
        .await
        .unwrap();
    let stored: u64 = store
        .devices()
        .await
        .unwrap()
        .iter()
        .map(|d| d.records)
        .sum();
    store.close().await;
    assert_eq!(
        stored, acked as u64,
        "{label}: stored differs from acknowledged"
    );
    println!("  stored exactly the {acked} envelopes acknowledged");
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (crypto, payload_len) = support::crypto_limit();
    println!("payload: {payload_len} bytes of feature-vector JSON per envelope; {cores} cores");
    println!(
        "crypto limit (open = HPKE decrypt + Ed25519 verify): {crypto:.0} envelopes/s on one core (measured), {:.0} on {cores} (computed: one core's rate x {cores}, not measured)",
        crypto * cores as f64
    );
    println!(
        "load: {AGENTS} simulated agents over {CONNECTIONS} connections, batches of {BATCH}, {} s per backend",
        RUN.as_secs()
    );
    support::runtime().block_on(async {
        fleet("sqlite", &TestDb::Sqlite, 1, crypto).await;
        match TestDb::postgres("fleet bench").await {
            Some(pg) => fleet("postgres, 1 verifier", &pg, 1, crypto).await,
            None => println!("postgres: skipped (set {})", db::POSTGRES_ENV),
        }
        if let Some(pg) = TestDb::postgres("fleet bench").await {
            fleet(
                "postgres, 2 replicas (two instances, one process and runtime)",
                &pg,
                2,
                crypto,
            )
            .await;
        }
    });
}
