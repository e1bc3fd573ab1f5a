//! The HTTP API against a real verifier on 127.0.0.1:0, in process.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use cadence_wire::records::{ErrorBody, IngestResponse};
use cadence_wire::{DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, seal};
use common::db::TestDb;
use common::{Device, TestServer, batch, features_json, post};

fn error_of(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {body}"))
        .error
}

#[tokio::test]
async fn health_and_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = server.client();
    let token = server.token.clone().expect("first start prints a token");

    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    let device = Device::enroll(&server, &client, &token).await;

    // The same key enrolled again keeps its id.
    let again = client
        .post(server.url("/v1/enroll"))
        .json(&serde_json::json!({
            "token": token,
            "device_public_key": device.key.public_key(),
            "os_user": "alice",
            "hostname": "laptop-1",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["device_id"], device.id.to_string());

    let bad_token = client
        .post(server.url("/v1/enroll"))
        .json(&serde_json::json!({
            "token": "not-a-real-token-at-all",
            "device_public_key": DeviceSigningKey::generate().unwrap().public_key(),
            "os_user": "mallory",
            "hostname": "x",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_token.status(), 401);
    assert!(error_of(&bad_token.text().await.unwrap()).contains("token"));

    for body in [
        "{not json".to_owned(),
        serde_json::json!({"token": token, "device_public_key": "zz", "os_user": "a", "hostname": "b"}).to_string(),
        serde_json::json!({"token": token, "device_public_key": DeviceSigningKey::generate().unwrap().public_key(), "os_user": "", "hostname": "b"}).to_string(),
        serde_json::json!({"token": token, "device_public_key": DeviceSigningKey::generate().unwrap().public_key(), "os_user": "a", "hostname": "b", "extra": 1}).to_string(),
    ] {
        let r = client
            .post(server.url("/v1/enroll"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        error_of(&r.text().await.unwrap());
    }

    let r = client.get(server.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn ingest_stores_once_and_acknowledges_resends() {
    for db in TestDb::all("ingest_stores_once_and_acknowledges_resends").await {
        eprintln!("backend: {}", db.label());
        ingest_stores_once_and_acknowledges_resends_on(&db).await;
    }
}

async fn ingest_stores_once_and_acknowledges_resends_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(dir.path(), db).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;

    let envelopes: Vec<Vec<u8>> = (1..=20).map(|seq| device.window(seq)).collect();
    let (status, body) = post(&server, &client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, (1..=20).collect::<Vec<u64>>());
    assert!(answer.duplicates.is_empty());
    assert!(answer.rejected.is_empty());
    assert_eq!(server.stored(device.id).await, 20);

    // The same batch again (a lost acknowledgement): all acknowledged, nothing stored twice.
    let (status, body) = post(&server, &client, batch(&envelopes)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, (1..=20).collect::<Vec<u64>>());
    assert_eq!(answer.duplicates, (1..=20).collect::<Vec<u64>>());
    assert_eq!(server.stored(device.id).await, 20);

    // A resend mixed with new records: the new ones are stored, the old ones only acked.
    let mut mixed = envelopes[15..].to_vec();
    mixed.extend((21..=25).map(|seq| device.window(seq)));
    let (status, body) = post(&server, &client, batch(&mixed)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, (16..=25).collect::<Vec<u64>>());
    assert_eq!(answer.duplicates, (16..=20).collect::<Vec<u64>>());
    assert_eq!(server.stored(device.id).await, 25);

    // The same envelope twice in one batch is stored once.
    let twice = device.window(26);
    let (status, body) = post(&server, &client, batch(&[twice.clone(), twice])).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, vec![26, 26]);
    assert_eq!(answer.duplicates, vec![26]);
    assert_eq!(server.stored(device.id).await, 26);

    // Other kinds are checked and stored; the listing shows consent's state.
    let consent = serde_json::json!({
        "decision": "granted", "notice_sha256": "ab", "at_ms": 5, "os_user": "alice"
    });
    let gap =
        serde_json::json!({"first_seq": 3, "last_seq": 4, "count": 2, "reason": "spool full"});
    let alert = serde_json::json!({"detector": "injection", "score": 0.9});
    let others = vec![
        device.seal(Kind::Consent, 100, consent.to_string().as_bytes()),
        device.seal(Kind::Gap, 101, gap.to_string().as_bytes()),
        device.seal(Kind::Alert, 102, alert.to_string().as_bytes()),
    ];
    let (status, body) = post(&server, &client, batch(&others)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, vec![100, 101, 102]);
    let store = server.store().await;
    let devices = store.devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].records, 29);
    assert_eq!(devices[0].state.as_deref(), Some("monitoring"));
    assert!(devices[0].last_seen_ms.is_some());
    store.close().await;
    server.stop().await;
}

#[tokio::test]
async fn heartbeats_update_state_and_are_not_stored() {
    for db in TestDb::all("heartbeats_update_state_and_are_not_stored").await {
        eprintln!("backend: {}", db.label());
        heartbeats_update_state_and_are_not_stored_on(&db).await;
    }
}

async fn heartbeats_update_state_and_are_not_stored_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(dir.path(), db).await;
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    let hb = |seq: u64, created_ms: u64, state: &str| {
        let header = Header::new(Kind::Heartbeat, device.id, seq, created_ms);
        let payload = serde_json::json!({"state": state, "queued": 3}).to_string();
        seal(&header, payload.as_bytes(), &device.key, &device.verifier).unwrap()
    };
    let state = || async {
        let store = server.store().await;
        let d = store.devices().await.unwrap().remove(0);
        store.close().await;
        d
    };

    let (status, body) = post(&server, &client, batch(&[hb(1, 2_000, "paused")])).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"acked\":[1]"), "{body}");
    assert_eq!(state().await.state.as_deref(), Some("paused"));
    assert_eq!(state().await.records, 0);

    // An older heartbeat (a replay) is acknowledged but changes nothing.
    let (status, _) = post(&server, &client, batch(&[hb(2, 1_000, "monitoring")])).await;
    assert_eq!(status, 200);
    assert_eq!(state().await.state.as_deref(), Some("paused"));

    let (status, _) = post(&server, &client, batch(&[hb(3, 3_000, "monitoring")])).await;
    assert_eq!(status, 200);
    assert_eq!(state().await.state.as_deref(), Some("monitoring"));
    server.stop().await;
}

#[tokio::test]
async fn every_bad_input_is_refused_and_the_server_keeps_serving() {
    for db in TestDb::all("every_bad_input_is_refused_and_the_server_keeps_serving").await {
        eprintln!("backend: {}", db.label());
        every_bad_input_is_refused_and_the_server_keeps_serving_on(&db).await;
    }
}

async fn every_bad_input_is_refused_and_the_server_keeps_serving_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    // A small body limit, so the oversized case costs little.
    let server = TestServer::start_with(dir.path(), |s| {
        db.apply(s);
        s.max_body_bytes = 64 * 1024;
    })
    .await;
    let client = server.client();
    let token = server.token.clone().unwrap();
    let device = Device::enroll(&server, &client, &token).await;
    let other = Device::enroll(&server, &client, &token).await;
    let mut next_seq = 1u64;

    // One good batch first, so "nothing stored" below is measured against a known count.
    let (status, _) = post(&server, &client, batch(&[device.window(next_seq)])).await;
    assert_eq!(status, 200);
    next_seq += 1;
    let stored_before = server.stored(device.id).await;

    let good = device.window(next_seq);
    let forged = {
        // Claims to be `device` but is signed with another device's key.
        let header = Header::new(Kind::Features, device.id, next_seq, 1);
        seal(&header, &features_json(1), &other.key, &device.verifier).unwrap()
    };
    let unenrolled = {
        let header = Header::new(Kind::Features, DeviceId([9; 16]), 1, 1);
        let key = DeviceSigningKey::generate().unwrap();
        seal(&header, &features_json(1), &key, &device.verifier).unwrap()
    };
    let wrong_recipient = {
        let elsewhere = VerifierKeyPair::generate().unwrap().public_key();
        let header = Header::new(Kind::Features, device.id, next_seq, 1);
        seal(&header, &features_json(1), &device.key, &elsewhere).unwrap()
    };
    let mut wrong_version = good.clone();
    wrong_version[4] = 2;
    let bad_payload = device.seal(
        Kind::Features,
        next_seq,
        format!(
            r#"{{"schema":"{}","sentence":"hello"}}"#,
            cadence_wire::features::SCHEMA
        )
        .as_bytes(),
    );
    let broken_previous = {
        // A window of the schema before this one with a mouse feature missing: refused, and
        // the refusal says which (not the first feature the current schema has and it lacks).
        use cadence_wire::features::{KEYBOARD_FEATURES, PREVIOUS};
        let p = PREVIOUS[0];
        let mut v: serde_json::Value = serde_json::from_slice(&features_json(1)).unwrap();
        v["schema"] = p.schema.into();
        let k = v["keyboard"].as_object_mut().unwrap();
        for (n, _) in &KEYBOARD_FEATURES[p.keyboard_len..] {
            k.remove(*n);
        }
        let mut m: serde_json::Map<String, serde_json::Value> =
            cadence_wire::features::MOUSE_FEATURES[..p.mouse_len]
                .iter()
                .map(|(n, _)| ((*n).to_owned(), 1.0.into()))
                .collect();
        m.remove("speed_p50");
        v["mouse"] = serde_json::Value::Object(m);
        device.seal(Kind::Features, next_seq, &serde_json::to_vec(&v).unwrap())
    };
    let not_json = device.seal(Kind::Consent, next_seq, b"\xff\xfe");
    let reused = device.seal(Kind::Features, 1, &features_json(99)); // seq 1 is stored already
    let good_batch = batch(std::slice::from_ref(&good));
    let truncated = good_batch[..good_batch.len() - 10].to_vec();
    let mut garbage = vec![0u8; 4];
    garbage.extend_from_slice(b"GET / HTTP/1.1 this is not a batch");
    let oversized = vec![0u8; 64 * 1024 + 1];

    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("forged signature", batch(&[forged]), 401, "signature"),
        (
            "unenrolled device",
            batch(&[unenrolled]),
            401,
            "unknown device",
        ),
        ("wrong recipient", batch(&[wrong_recipient]), 401, "decrypt"),
        ("wrong version", batch(&[wrong_version]), 400, "version 2"),
        (
            "bad features payload",
            batch(&[bad_payload]),
            400,
            "bad payload",
        ),
        (
            "previous-schema window with a feature missing",
            batch(&[broken_previous]),
            400,
            "not a cadence.features.v2 vector: feature speed_p50 is missing",
        ),
        ("non-UTF-8 payload", batch(&[not_json]), 400, "bad payload"),
        (
            "reused sequence number",
            batch(&[reused]),
            409,
            "sequence number reused",
        ),
        ("truncated body", truncated, 400, "truncated"),
        ("garbage body", garbage, 400, ""),
        (
            "random bytes",
            (0..500u32).map(|i| (i * 7 + 3) as u8).collect(),
            400,
            "",
        ),
        ("empty body", Vec::new(), 400, "empty"),
        ("oversized body", oversized, 413, "limit"),
        (
            "two devices in one batch",
            batch(&[good.clone(), other.window(1)]),
            400,
            "one device",
        ),
    ];
    for (what, body, expected, needle) in cases {
        let (status, text) = post(&server, &client, body).await;
        assert_eq!(status, expected, "{what}: {text}");
        let error = error_of(&text);
        assert!(error.contains(needle), "{what}: {error}");
        assert_eq!(
            server.stored(device.id).await,
            stored_before,
            "{what} stored something"
        );
        // And the server still serves normally.
        let health = client.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200, "after {what}");
    }
    assert_eq!(server.stored(other.id).await, 0);

    // A batch with good and bad envelopes: 200, the good one stored, the bad one named.
    let mut half_bad = device.window(next_seq + 1);
    let last = half_bad.len() - 1;
    half_bad[last] ^= 1;
    let (status, body) = post(&server, &client, batch(&[good, half_bad])).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.acked, vec![next_seq]);
    assert_eq!(answer.rejected.len(), 1);
    assert_eq!(answer.rejected[0].seq, Some(next_seq + 1));
    assert_eq!(server.stored(device.id).await, stored_before + 1);
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_key_devices_and_records() {
    for db in TestDb::all("restart_keeps_key_devices_and_records").await {
        eprintln!("backend: {}", db.label());
        restart_keeps_key_devices_and_records_on(&db).await;
    }
}

async fn restart_keeps_key_devices_and_records_on(db: &TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_on(dir.path(), db).await;
    let public_key = server.public_key;
    let ca = server.ca_pem.clone();
    let client = server.client();
    let device = Device::enroll(&server, &client, server.token.as_deref().unwrap()).await;
    let first: Vec<Vec<u8>> = (1..=5).map(|seq| device.window(seq)).collect();
    let (status, _) = post(&server, &client, batch(&first)).await;
    assert_eq!(status, 200);
    server.stop().await;

    let server = TestServer::start_on(dir.path(), db).await;
    assert_eq!(server.public_key, public_key, "HPKE key kept");
    assert_eq!(server.ca_pem, ca, "CA kept");
    assert!(server.token.is_none(), "no new token on restart");
    let client = server.client();
    // The device is still enrolled, its records still there, and a resend is a duplicate.
    let (status, body) = post(&server, &client, batch(&first)).await;
    assert_eq!(status, 200, "{body}");
    let answer: IngestResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.duplicates, vec![1, 2, 3, 4, 5]);
    let (status, _) = post(&server, &client, batch(&[device.window(6)])).await;
    assert_eq!(status, 200);
    assert_eq!(server.stored(device.id).await, 6);
    server.stop().await;
}
