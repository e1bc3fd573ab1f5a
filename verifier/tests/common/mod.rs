//! Test helpers: an in-process verifier on 127.0.0.1:0 and a minimal simulated agent.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use cadence_verifier::config::Database;
use cadence_verifier::store::Store;
use cadence_verifier::{Settings, Verifier};
use cadence_wire::features::{FeatureVector, KEYBOARD_LEN, KeyboardFeatures, SCHEMA_V1};
use cadence_wire::records::{EnrollRequest, EnrollResponse, encode_batch};
use cadence_wire::{DeviceId, DeviceSigningKey, Header, Kind, VerifierPublicKey, seal};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A verifier serving in this process.
pub struct TestServer {
    pub base: String,
    pub ca_pem: Vec<u8>,
    pub public_key: VerifierPublicKey,
    pub token: Option<String>,
    pub data_dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), cadence_verifier::Error>>>,
}

impl TestServer {
    /// Starts a verifier on `data_dir` with `adjust` applied to the default settings.
    pub async fn start_with(data_dir: &Path, adjust: impl FnOnce(&mut Settings)) -> TestServer {
        let mut settings = Settings::with_data_dir(data_dir);
        settings.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut settings);
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
            stop: None,
            task: None,
        }
    }

    pub async fn start(data_dir: &Path) -> TestServer {
        TestServer::start_with(data_dir, |_| {}).await
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
        Store::open_existing(&Database::Sqlite(self.data_dir.join("verifier.db")))
            .await
            .unwrap()
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
        let key = DeviceSigningKey::generate().unwrap();
        let response = client
            .post(server.url("/v1/enroll"))
            .json(&EnrollRequest {
                token: token.to_owned(),
                device_public_key: key.public_key(),
                os_user: "alice".to_owned(),
                hostname: "laptop-1".to_owned(),
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
        schema: SCHEMA_V1.to_owned(),
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
