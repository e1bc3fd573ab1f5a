//! Test helpers: an in-process verifier on 127.0.0.1:0 and a minimal simulated agent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cadence_verifier::config::Database;
use cadence_verifier::store::Store;
use cadence_verifier::{Settings, Verifier};
use cadence_wire::features::{FeatureVector, KEYBOARD_LEN, KeyboardFeatures, SCHEMA};
use cadence_wire::records::{EnrollRequest, EnrollResponse, encode_batch};
use cadence_wire::{DeviceId, DeviceSigningKey, Header, Kind, VerifierPublicKey, seal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod db;

/// A verifier serving in this process.
pub struct TestServer {
    pub base: String,
    pub ca_pem: Vec<u8>,
    pub public_key: VerifierPublicKey,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    /// The database it serves from (SQLite in `data_dir` unless a test chose another).
    pub database: Database,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cadence_verifier::Error>>>,
}

impl TestServer {
    /// Starts a verifier on `data_dir` with `adjust` applied to the default settings.
    pub async fn start_with(data_dir: &Path, adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let mut settings = Settings::with_data_dir(data_dir);
        settings.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut settings);
        let database = settings.database.clone();
        let verifier = Verifier::start(&settings).await.unwrap();
        let s = verifier.startup().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(verifier.run(async move {
            let _ = stopped.await;
        }));
        TestServer {
            base: format!("https://{}", s.addr),
            ca_pem: std::fs::read(s.ca_cert.unwrap()).unwrap(),
            public_key: s.public_key,
            token: s.first_token.map(|t| t.expose().to_owned()),
            data_dir: data_dir.to_owned(),
            database,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A view of a verifier running in another process.
    pub fn remote(
        base: String,
        ca_pem: Vec<u8>,
        public_key: VerifierPublicKey,
        data_dir: &Path,
    ) -> TestServer {
        TestServer {
            base,
            ca_pem,
            public_key,
            token: None,
            data_dir: data_dir.to_owned(),
            database: Database::Sqlite(data_dir.join("verifier.db")),
            stop: None,
            task: None,
        }
    }

    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(data_dir, |_| {}).await
    }

    /// Starts a verifier on `data_dir` serving from `db`.
    pub async fn start_on(data_dir: &Path, db: &db::TestDb) -> TestServer {
        TestServer::start_with(data_dir, |s| db.apply(s)).await
    }

    /// Stops the server and waits until it has closed its database.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// An HTTPS client that trusts only this server's development CA.
    pub fn client(&self) -> reqwest::Client {
        cadence_verifier::tls::install_crypto_provider();
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&self.ca_pem).unwrap()])
            .build()
            .unwrap()
    }

    /// A second connection to the same database, for checking what was stored.
    pub async fn store(&self) -> Store {
        Store::open_existing(&self.database).await.unwrap()
    }

    /// Features records stored for `device`.
    pub async fn stored(&self, device: DeviceId) -> usize {
        let store = self.store().await;
        let n = store.records(device, Kind::Features).await.unwrap().len();
        store.close().await;
        n
    }
}

/// A simulated agent: its key and the id the verifier gave it.
pub struct Device {
    pub key: DeviceSigningKey,
    pub id: DeviceId,
    pub verifier: VerifierPublicKey,
}

impl Device {
    pub async fn enroll(server: &TestServer, client: &reqwest::Client, token: &str) -> Device {
        Device::enroll_as(server, client, token, "alice", "laptop-1").await
    }

    /// Enrolls for `os_user` on `hostname`.
    pub async fn enroll_as(
        server: &TestServer,
        client: &reqwest::Client,
        token: &str,
        os_user: &str,
        hostname: &str,
    ) -> Device {
        let key = DeviceSigningKey::generate().unwrap();
        let response = client
            .post(server.url("/v1/enroll"))
            .json(&EnrollRequest {
                token: token.to_owned(),
                device_public_key: key.public_key(),
                os_user: os_user.to_owned(),
                hostname: hostname.to_owned(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: EnrollResponse = response.json().await.unwrap();
        assert_eq!(body.verifier_public_key, server.public_key);
        Device {
            key,
            id: body.device_id,
            verifier: body.verifier_public_key,
        }
    }

    /// One sealed envelope of `kind` with `payload`.
    pub fn seal(&self, kind: Kind, seq: u64, payload: &[u8]) -> Vec<u8> {
        let header = Header::new(kind, self.id, seq, 1_767_225_600_000 + seq);
        seal(&header, payload, &self.key, &self.verifier).unwrap()
    }

    /// A sealed feature window.
    pub fn window(&self, seq: u64) -> Vec<u8> {
        self.seal(Kind::Features, seq, &features_json(seq))
    }
}

/// A valid feature vector's JSON (about 1 KiB), varied by `n`.
pub fn features_json(n: u64) -> Vec<u8> {
    let mut k = [0.0; KEYBOARD_LEN];
    for (i, v) in k.iter_mut().enumerate() {
        *v = 50.0 + i as f64 * 1.25 + (n % 7) as f64;
    }
    let v = FeatureVector {
        schema: SCHEMA.to_owned(),
        duration_ms: 30_000,
        keys: 120,
        mouse_events: 0,
        keyboard: Some(KeyboardFeatures(k)),
        mouse: None,
    };
    serde_json::to_vec(&v).unwrap()
}

pub fn batch(envelopes: &[Vec<u8>]) -> Vec<u8> {
    encode_batch(envelopes.iter().map(|e| &e[..]))
}

/// Posts a batch body; returns the status and the body text.
pub async fn post(server: &TestServer, client: &reqwest::Client, body: Vec<u8>) -> (u16, String) {
    let response = client
        .post(server.url("/v1/ingest"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// A deterministic pseudo-random source for generated windows (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly standard normal (sum of uniforms).
    pub fn normal(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// A typist: a personal level per keyboard feature, and how much windows vary around it.
#[derive(Clone)]
pub struct Typist {
    pub levels: [f64; KEYBOARD_LEN],
    pub spread: f64,
}

impl Typist {
    /// A typist whose levels differ from the common base by a personal factor per feature.
    pub fn new(seed: u64) -> Typist {
        let mut rng = Rng::new(seed);
        let mut levels = [0.0; KEYBOARD_LEN];
        for (i, l) in levels.iter_mut().enumerate() {
            *l = (40.0 + 4.0 * i as f64) * (0.35 * rng.normal()).exp();
        }
        Typist {
            levels,
            spread: 0.04,
        }
    }

    /// The same typist with every timing `factor` times slower: someone else entirely.
    pub fn scaled(&self, factor: f64) -> Typist {
        let mut t = self.clone();
        for l in &mut t.levels {
            *l *= factor;
        }
        t
    }

    /// One window's JSON.
    pub fn window(&self, rng: &mut Rng) -> Vec<u8> {
        serde_json::to_vec(&self.vector(rng)).unwrap()
    }

    pub fn vector(&self, rng: &mut Rng) -> FeatureVector {
        let mut k = [0.0; KEYBOARD_LEN];
        for (v, l) in k.iter_mut().zip(&self.levels) {
            *v = l * (self.spread * rng.normal()).exp();
        }
        FeatureVector {
            schema: SCHEMA.to_owned(),
            duration_ms: 30_000,
            keys: 150,
            mouse_events: 0,
            keyboard: Some(KeyboardFeatures(k)),
            mouse: None,
        }
    }
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `secs` seconds.
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
