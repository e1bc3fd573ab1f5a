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

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cadence_verifier::scoring::ScoringConfig;
use cadence_verifier::store::Store;
use cadence_verifier::{Settings, Verifier};
use cadence_wire::features::{FeatureVector, KEYBOARD_LEN, KeyboardFeatures, SCHEMA_V1};
use cadence_wire::records::{EnrollRequest, EnrollResponse, IngestResponse, encode_batch};
use cadence_wire::{
    DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, VerifierPublicKey, open, seal,
};
use db::TestDb;
use tokio::sync::oneshot;

const CRYPTO_RUN: Duration = Duration::from_secs(2);
const RUN: Duration = Duration::from_secs(10);
/// Simulated agents (devices), each with its own key and sequence numbers.
const AGENTS: usize = 1_000;
/// Concurrent HTTPS connections the agents' requests arrive on.
const CONNECTIONS: usize = 64;
/// Windows per request: an agent's spool after a couple of minutes offline.
const BATCH: usize = 4;

fn payload(n: u64) -> Vec<u8> {
    let mut k = [0.0; KEYBOARD_LEN];
    for (i, v) in k.iter_mut().enumerate() {
        *v = 87.123_456_789 + i as f64 * 3.3 + (n % 11) as f64 * 0.7;
    }
    let v = FeatureVector {
        schema: SCHEMA_V1.to_owned(),
        duration_ms: 30_000,
        keys: 140,
        mouse_events: 0,
        keyboard: Some(KeyboardFeatures(k)),
        mouse: None,
    };
    serde_json::to_vec(&v).unwrap()
}

/// (a): envelopes opened per second on one thread.
fn crypto_limit() -> (f64, usize) {
    let device = DeviceSigningKey::generate().unwrap();
    let verifier = VerifierKeyPair::generate().unwrap();
    let p = payload(1);
    let envelopes: Vec<Vec<u8>> = (0..256)
        .map(|seq| {
            let h = Header::new(Kind::Features, DeviceId([1; 16]), seq, 1);
            seal(&h, &p, &device, &verifier.public_key()).unwrap()
        })
        .collect();
    let key = device.public_key();
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < CRYPTO_RUN {
        for e in &envelopes {
            black_box(open(black_box(e), &verifier, &key).unwrap());
        }
        n += envelopes.len();
    }
    (n as f64 / start.elapsed().as_secs_f64(), p.len())
}

/// A verifier serving in this process.
struct Served {
    base: String,
    ca: Vec<u8>,
    token: Option<String>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), cadence_verifier::Error>>,
}

async fn serve(data_dir: &std::path::Path, db: &TestDb) -> Served {
    let mut settings = Settings::with_data_dir(data_dir);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    db.apply(&mut settings);
    settings.scoring = ScoringConfig {
        keyboard_enroll_windows: 1_000_000,
        ..ScoringConfig::default()
    };
    let verifier = Verifier::start(&settings).await.unwrap();
    let s = verifier.startup().clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(verifier.run(async move {
        let _ = stopped.await;
    }));
    Served {
        base: format!("https://{}", s.addr),
        ca: std::fs::read(s.ca_cert.unwrap()).unwrap(),
        token: s.first_token.map(|t| t.expose().to_owned()),
        stop,
        task,
    }
}

struct SimAgent {
    key: DeviceSigningKey,
    id: DeviceId,
}

fn client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
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
                    let key = DeviceSigningKey::generate().unwrap();
                    let r: EnrollResponse = c
                        .post(format!("{base}/v1/enroll"))
                        .json(&EnrollRequest {
                            token: token.clone(),
                            device_public_key: key.public_key(),
                            os_user: "bench".to_owned(),
                            hostname: "bench".to_owned(),
                        })
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    out.push((
                        SimAgent {
                            key,
                            id: r.device_id,
                        },
                        r.verifier_public_key,
                    ));
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

/// Seals `count` feature envelopes for each agent, on every core.
fn preseal(agents: &[SimAgent], to: &VerifierPublicKey, count: usize) -> Vec<VecDeque<Vec<u8>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out: Vec<Mutex<VecDeque<Vec<u8>>>> =
        agents.iter().map(|_| Mutex::new(VecDeque::new())).collect();
    std::thread::scope(|s| {
        for t in 0..threads {
            let out = &out;
            s.spawn(move || {
                for (d, agent) in agents.iter().enumerate().filter(|(d, _)| d % threads == t) {
                    *out[d].lock().unwrap() = (1..=count as u64)
                        .map(|seq| {
                            let h =
                                Header::new(Kind::Features, agent.id, seq, 1_767_225_600_000 + seq);
                            seal(&h, &payload(seq), &agent.key, to).unwrap()
                        })
                        .collect();
                }
            });
        }
    });
    out.into_iter().map(|m| m.into_inner().unwrap()).collect()
}

/// One connection: its agents' batches in turn until `run` is over or they run out.
async fn connection(
    client: reqwest::Client,
    url: String,
    mut agents: Vec<VecDeque<Vec<u8>>>,
    run: Duration,
) -> (usize, Vec<Duration>) {
    let start = Instant::now();
    let (mut acked, mut latencies, mut next) = (0, Vec::new(), 0);
    while start.elapsed() < run && agents.iter().any(|q| !q.is_empty()) {
        let n = agents.len();
        let q = &mut agents[next % n];
        next += 1;
        if q.is_empty() {
            continue;
        }
        let take = BATCH.min(q.len());
        let envelopes: Vec<Vec<u8>> = q.drain(..take).collect();
        let body = encode_batch(envelopes.iter().map(|e| &e[..]));
        let t = Instant::now();
        let r = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "ingest failed: {}",
            r.text().await.unwrap_or_default()
        );
        let answer: IngestResponse = r.json().await.unwrap();
        latencies.push(t.elapsed());
        assert_eq!(answer.acked.len(), take);
        acked += take;
    }
    (acked, latencies)
}

/// One connection sending one envelope per request every `every`, from its agents in turn;
/// latency from when each request was due.
async fn paced(
    client: reqwest::Client,
    url: String,
    mut agents: Vec<VecDeque<Vec<u8>>>,
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
        let r = client
            .post(&url)
            .body(encode_batch([&envelope[..]]))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "ingest failed: {}",
            r.text().await.unwrap_or_default()
        );
        let answer: IngestResponse = r.json().await.unwrap();
        latencies.push(due.elapsed());
        assert_eq!(answer.acked.len(), 1);
        acked += 1;
        due += every;
    }
    (acked, latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
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
    let (agents, to) = enroll_all(&servers[0].base, &ca, &token, AGENTS).await;
    let per_agent = ((1.5 * crypto * RUN.as_secs_f64()) as usize / AGENTS).clamp(BATCH, 400);
    let mut queues = tokio::task::block_in_place(|| preseal(&agents, &to, 2 * per_agent));
    // The second half of each agent's envelopes (later sequence numbers) is for (c).
    let later: Vec<VecDeque<Vec<u8>>> = queues.iter_mut().map(|q| q.split_off(per_agent)).collect();
    let mut shares: Vec<Vec<VecDeque<Vec<u8>>>> = (0..CONNECTIONS).map(|_| Vec::new()).collect();
    for (i, q) in queues.into_iter().enumerate() {
        shares[i % CONNECTIONS].push(q);
    }
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            // Connections spread over the replicas, as a load balancer would.
            let url = format!("{}/v1/ingest", servers[i % replicas].base);
            tokio::spawn(connection(client(&ca), url, share, RUN))
        })
        .collect();
    let (mut acked, mut lat) = (0, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        acked += n;
        lat.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = acked as f64 / elapsed;
    let request_rate = lat.len() as f64 / elapsed;
    lat.sort();
    println!(
        "{label}: saturated {rate:.0} envelopes/s committed ({:.0}% of one core's crypto limit), {} requests of {BATCH}, latency p50 {} p99 {}",
        100.0 * rate / crypto,
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );

    // (c) Half the saturated request rate, one envelope per request, on a schedule.
    let target = request_rate / 2.0;
    let every = Duration::from_secs_f64(CONNECTIONS as f64 / target);
    let mut shares: Vec<Vec<VecDeque<Vec<u8>>>> = (0..CONNECTIONS).map(|_| Vec::new()).collect();
    // Each agent's later sequence numbers; what (b) left unsent is never sent (a gap).
    for (i, q) in later.into_iter().enumerate() {
        shares[i % CONNECTIONS].push(q);
    }
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let url = format!("{}/v1/ingest", servers[i % replicas].base);
            tokio::spawn(paced(client(&ca), url, share, every, RUN))
        })
        .collect();
    let (mut paced_acked, mut lat) = (0, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        paced_acked += n;
        lat.extend(l);
    }
    let paced_rate = paced_acked as f64 / start.elapsed().as_secs_f64();
    acked += paced_acked;
    lat.sort();
    println!(
        "{label}: paced at {target:.0}/s, one envelope per request: {paced_rate:.0} envelopes/s committed, latency p50 {} p99 {} max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default()),
    );
    for s in servers {
        let _ = s.stop.send(());
        s.task.await.unwrap().unwrap();
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
    let (crypto, payload_len) = crypto_limit();
    println!("payload: {payload_len} bytes of feature-vector JSON per envelope; {cores} cores");
    println!(
        "crypto limit (open = HPKE decrypt + Ed25519 verify): {crypto:.0} envelopes/s on one core (measured), {:.0} on {cores} (computed: one core's rate x {cores}, not measured)",
        crypto * cores as f64
    );
    println!(
        "load: {AGENTS} simulated agents over {CONNECTIONS} connections, batches of {BATCH}, {} s per backend",
        RUN.as_secs()
    );
    cadence_verifier::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
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
