//! What the ingest and fleet benches share: the feature payload, the measured crypto limit, a
//! verifier served in this process on loopback, simulated agents enrolled with it, envelopes
//! sealed ahead of time, and connections posting them, timed.
//!
//! Owns only setup and measurement; each bench decides its workload and prints its figures.
//! Never asserts on a time: a figure that comes out slow is printed, not failed.
use std::collections::VecDeque;
use std::hint::black_box;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cadence_verifier::{Settings, Verifier};
use cadence_wire::features::{FeatureVector, KEYBOARD_LEN, KeyboardFeatures, SCHEMA};
use cadence_wire::records::{EnrollRequest, EnrollResponse, IngestResponse, encode_batch};
use cadence_wire::{
    DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, VerifierPublicKey, open, seal,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long (a) opens envelopes back to back.
const CRYPTO_RUN: Duration = Duration::from_secs(2);

/// One agent's sealed envelopes, oldest sequence number first.
pub type Queue = VecDeque<Vec<u8>>;

/// A ~1 KiB feature-vector JSON payload; `n` varies it a little.
pub fn payload(n: u64) -> Vec<u8> {
    let mut k = [0.0; KEYBOARD_LEN];
    for (i, v) in k.iter_mut().enumerate() {
        *v = 87.123_456_789 + i as f64 * 3.3 + (n % 11) as f64 * 0.7;
    }
    let v = FeatureVector {
        schema: SCHEMA.to_owned(),
        duration_ms: 30_000,
        keys: 140,
        mouse_events: 0,
        keyboard: Some(KeyboardFeatures(k)),
        mouse: None,
    };
    serde_json::to_vec(&v).unwrap()
}

/// (a): envelopes opened per second on one thread, and the payload's length in bytes.
pub fn crypto_limit() -> (f64, usize) {
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

/// The multi-thread runtime the verifiers and their clients share, with the TLS crypto
/// provider installed.
pub fn runtime() -> tokio::runtime::Runtime {
    cadence_verifier::tls::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Settings for a verifier on 127.0.0.1:0 keeping its state in `data_dir`.
pub fn loopback_settings(data_dir: &Path) -> Settings {
    let mut settings = Settings::with_data_dir(data_dir);
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings
}

/// A verifier serving in this process.
pub struct Served {
    pub base: String,
    /// The PEM certificate its clients trust.
    pub ca: Vec<u8>,
    /// The first enrollment token, made by the instance that created the data directory.
    pub token: Option<String>,
    /// Sending on it (or dropping it) starts the verifier's shutdown.
    shutdown: oneshot::Sender<()>,
    /// The verifier's `run`, awaited by [`Served::stop`].
    task: JoinHandle<Result<(), cadence_verifier::Error>>,
}

/// Starts a verifier with `settings` and serves it on this runtime until [`Served::stop`].
pub async fn serve(settings: &Settings) -> Served {
    let verifier = Verifier::start(settings).await.unwrap();
    let s = verifier.startup().clone();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(verifier.run(async move {
        let _ = stopped.await;
    }));
    Served {
        base: format!("https://{}", s.addr),
        ca: std::fs::read(s.ca_cert.unwrap()).unwrap(),
        token: s.first_token.map(|t| t.expose().to_owned()),
        shutdown,
        task,
    }
}

impl Served {
    /// Shuts the verifier down and waits for it; panics if it ended in an error.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// An HTTPS client trusting only `ca`. Each client carries one request at a time, so it keeps
/// one connection alive.
pub fn client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

/// A simulated agent (device): its own key and the id the verifier gave it.
pub struct SimAgent {
    key: DeviceSigningKey,
    id: DeviceId,
}

/// Enrolls one new agent with `token`; returns it and the verifier's public key.
pub async fn enroll(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> (SimAgent, VerifierPublicKey) {
    let key = DeviceSigningKey::generate().unwrap();
    let r: EnrollResponse = client
        .post(format!("{base}/v1/enroll"))
        .json(&EnrollRequest {
            token: token.to_owned(),
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
    (
        SimAgent {
            key,
            id: r.device_id,
        },
        r.verifier_public_key,
    )
}

/// Seals `count` feature envelopes (sequence numbers 1 to `count`) for each agent, on every
/// core.
pub fn preseal(agents: &[SimAgent], to: &VerifierPublicKey, count: usize) -> Vec<Queue> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out: Vec<Mutex<Queue>> = agents.iter().map(|_| Mutex::new(VecDeque::new())).collect();
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

/// Deals the agents' queues round robin to `connections` connections.
pub fn shares(queues: Vec<Queue>, connections: usize) -> Vec<Vec<Queue>> {
    let mut shares: Vec<Vec<Queue>> = (0..connections).map(|_| Vec::new()).collect();
    for (i, q) in queues.into_iter().enumerate() {
        shares[i % connections].push(q);
    }
    shares
}

/// Posts one ingest request, `body` holding `envelopes` envelopes (encoded beforehand, so that
/// the caller's clock need not count it), and checks that all of them are acknowledged.
pub async fn ingest(client: &reqwest::Client, url: &str, body: Vec<u8>, envelopes: usize) {
    let r = client.post(url).body(body).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "ingest failed: {}",
        r.text().await.unwrap_or_default()
    );
    let answer: IngestResponse = r.json().await.unwrap();
    assert_eq!(answer.acked.len(), envelopes);
}

/// One connection: batches of `batch` from its agents in turn until `run` is over or they run
/// out. Returns envelopes acknowledged and per-request latencies.
pub async fn post_loop(
    client: reqwest::Client,
    url: String,
    mut agents: Vec<Queue>,
    batch: usize,
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
        let take = batch.min(q.len());
        let envelopes: Vec<Vec<u8>> = q.drain(..take).collect();
        let body = encode_batch(envelopes.iter().map(|e| &e[..]));
        let t = Instant::now();
        ingest(&client, &url, body, take).await;
        latencies.push(t.elapsed());
        acked += take;
    }
    (acked, latencies)
}

/// What a set of connections did together.
pub struct Run {
    /// Envelopes acknowledged, i.e. committed.
    pub acked: usize,
    /// From the start until the last connection finished.
    pub elapsed: Duration,
    /// Request latencies of every connection, sorted.
    pub latencies: Vec<Duration>,
}

/// Waits for connection tasks started at `start` and adds up what they did.
pub async fn gather(start: Instant, tasks: Vec<JoinHandle<(usize, Vec<Duration>)>>) -> Run {
    let (mut acked, mut latencies) = (0, Vec::new());
    for t in tasks {
        let (n, l) = t.await.unwrap();
        acked += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    Run {
        acked,
        elapsed,
        latencies,
    }
}

/// `connections` post loops at once over `queues` dealt between them, connection `i` posting
/// to `urls[i % urls.len()]` (as a load balancer would spread them over replicas).
pub async fn load(
    ca: &[u8],
    urls: &[String],
    queues: Vec<Queue>,
    connections: usize,
    batch: usize,
    run: Duration,
) -> Run {
    let shares = shares(queues, connections);
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(i, share)| {
            let url = urls[i % urls.len()].clone();
            tokio::spawn(post_loop(client(ca), url, share, batch, run))
        })
        .collect();
    gather(start, tasks).await
}

/// The `p` quantile (0 to 1) of `sorted`, nearest rank; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `d` in milliseconds with `decimals` decimals.
pub fn ms(d: Duration, decimals: usize) -> String {
    format!("{:.*} ms", decimals, d.as_secs_f64() * 1e3)
}
