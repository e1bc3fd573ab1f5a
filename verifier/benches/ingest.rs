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

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cadence_verifier::{Settings, Verifier};
use cadence_wire::features::{FeatureVector, KEYBOARD_LEN, KeyboardFeatures, SCHEMA_V1};
use cadence_wire::records::{EnrollRequest, EnrollResponse, IngestResponse, encode_batch};
use cadence_wire::{
    DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, VerifierPublicKey, open, seal,
};

const CRYPTO_RUN: Duration = Duration::from_secs(2);
const INGEST_RUN: Duration = Duration::from_secs(10);
const LATENCY_RUN: Duration = Duration::from_secs(4);
const DEVICES: usize = 50;
const CLIENTS: usize = 16;
const BATCH: usize = 32;

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

struct SimDevice {
    key: DeviceSigningKey,
    id: DeviceId,
}

async fn enroll(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> (SimDevice, VerifierPublicKey) {
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
        SimDevice {
            key,
            id: r.device_id,
        },
        r.verifier_public_key,
    )
}

/// Seals `count` feature envelopes for each device, on every core.
fn preseal(devices: &[SimDevice], to: &VerifierPublicKey, count: usize) -> Vec<VecDeque<Vec<u8>>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out: Vec<Mutex<VecDeque<Vec<u8>>>> = devices
        .iter()
        .map(|_| Mutex::new(VecDeque::new()))
        .collect();
    std::thread::scope(|s| {
        for t in 0..threads {
            let out = &out;
            s.spawn(move || {
                for (d, device) in devices.iter().enumerate().filter(|(d, _)| d % threads == t) {
                    let sealed: VecDeque<Vec<u8>> = (1..=count as u64)
                        .map(|seq| {
                            let h = Header::new(
                                Kind::Features,
                                device.id,
                                seq,
                                1_767_225_600_000 + seq,
                            );
                            seal(&h, &payload(seq), &device.key, to).unwrap()
                        })
                        .collect();
                    *out[d].lock().unwrap() = sealed;
                }
            });
        }
    });
    out.into_iter().map(|m| m.into_inner().unwrap()).collect()
}

fn client(ca: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca).unwrap()])
        .build()
        .unwrap()
}

/// Posts batches of `batch` from `queues` (one device at a time, round robin) until `run` is
/// over or the envelopes run out. Returns envelopes acknowledged and per-request latencies.
async fn post_loop(
    client: reqwest::Client,
    url: String,
    mut queues: Vec<VecDeque<Vec<u8>>>,
    batch: usize,
    run: Duration,
) -> (usize, Vec<Duration>) {
    let start = Instant::now();
    let mut acked = 0;
    let mut latencies = Vec::new();
    let mut next = 0;
    while start.elapsed() < run && queues.iter().any(|q| !q.is_empty()) {
        let n = queues.len();
        let q = &mut queues[next % n];
        next += 1;
        if q.is_empty() {
            continue;
        }
        let take = batch.min(q.len());
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

/// Runs `clients` post loops at once over `queues` split between them; envelopes/s, latencies.
async fn load(
    ca: &[u8],
    url: &str,
    queues: Vec<VecDeque<Vec<u8>>>,
    clients: usize,
    batch: usize,
    run: Duration,
) -> (f64, Vec<Duration>) {
    let mut shares: Vec<Vec<VecDeque<Vec<u8>>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, q) in queues.into_iter().enumerate() {
        shares[i % clients].push(q);
    }
    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(post_loop(client(ca), url.to_owned(), share, batch, run)))
        .collect();
    let mut acked = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.unwrap();
        acked += n;
        latencies.extend(l);
    }
    (acked as f64 / start.elapsed().as_secs_f64(), latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let (crypto, payload_len) = crypto_limit();
    println!("payload: {payload_len} bytes of feature-vector JSON per envelope");
    println!("crypto limit (open, one core): {crypto:.0} envelopes/s");

    cadence_verifier::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::with_data_dir(dir.path());
        settings.listen = "127.0.0.1:0".parse().unwrap();
        let verifier = Verifier::start(&settings).await.unwrap();
        let s = verifier.startup().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(verifier.run(async move {
            let _ = stopped.await;
        }));
        let base = format!("https://{}", s.addr);
        let url = format!("{base}/v1/ingest");
        let ca = std::fs::read(s.ca_cert.unwrap()).unwrap();
        let token = s.first_token.unwrap().expose().to_owned();
        let setup = client(&ca);

        // (b) batches of 32 from 16 clients.
        let mut devices = Vec::new();
        let mut to = None;
        for _ in 0..DEVICES {
            let (d, k) = enroll(&setup, &base, &token).await;
            devices.push(d);
            to = Some(k);
        }
        let to = to.unwrap();
        // Enough for the whole run even at twice the one-core ceiling.
        let per_device = ((2.0 * crypto * INGEST_RUN.as_secs_f64()) as usize / DEVICES).clamp(BATCH, 6_000);
        let sealing = Instant::now();
        let queues = tokio::task::block_in_place(|| preseal(&devices, &to, per_device));
        println!(
            "sealed {} envelopes for {DEVICES} devices in {:.1} s",
            per_device * DEVICES,
            sealing.elapsed().as_secs_f64()
        );
        let (rate, mut lat) = load(&ca, &url, queues, CLIENTS, BATCH, INGEST_RUN).await;
        lat.sort();
        println!(
            "ingest (sqlite, {CLIENTS} clients, batches of {BATCH}): {rate:.0} envelopes/s committed = {:.0}% of the crypto limit",
            100.0 * rate / crypto
        );
        println!(
            "  batch latency p50/p99: {} / {}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );

        // (c) single-envelope batches: one client, then 16.
        let mut single = Vec::new();
        for _ in 0..CLIENTS {
            single.push(enroll(&setup, &base, &token).await.0);
        }
        let queues = tokio::task::block_in_place(|| preseal(&single, &to, 1_500));
        let (one, rest) = queues.split_at(1);
        let (rate1, mut lat1) = load(&ca, &url, one.to_vec(), 1, 1, LATENCY_RUN).await;
        lat1.sort();
        println!(
            "single-envelope requests, 1 client: p50/p99 latency {} / {} ({rate1:.0} requests/s)",
            ms(percentile(&lat1, 0.5)),
            ms(percentile(&lat1, 0.99))
        );
        // Fresh sequence numbers for the loaded run: the first device's queue is spent.
        let (rate16, mut lat16) = load(&ca, &url, rest.to_vec(), CLIENTS - 1, 1, LATENCY_RUN).await;
        lat16.sort();
        println!(
            "single-envelope requests, {} clients: p50/p99 latency {} / {} ({rate16:.0} requests/s)",
            CLIENTS - 1,
            ms(percentile(&lat16, 0.5)),
            ms(percentile(&lat16, 0.99))
        );

        let _ = stop.send(());
        server.await.unwrap().unwrap();
    });
}
