//! Per-core cost of the envelope's cryptography, with figures printed.
//!
//! `cargo bench -p cadence-wire --bench crypto`
//!
//! Each figure is one thread running one operation back to back for about [`RUN`] on a 1 KiB
//! payload (a feature window's JSON is about that size): Ed25519 sign and verify alone (`ring`),
//! then whole envelopes sealed and opened, then a tampered envelope refused, which is what a
//! flood of garbage that passes `peek_header` costs the verifier. Opening is the verifier's
//! ingest ceiling per core (PLATFORM-NOTES.md, "Crypto figures").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use cadence_wire::envelope::{
    DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, open, peek_header, seal,
};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

const RUN: Duration = Duration::from_millis(1500);
const PAYLOAD_BYTES: usize = 1024;

/// Calls `f` back to back for about [`RUN`] after a short warm-up; calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(100) {
        f();
    }
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < RUN {
        for _ in 0..16 {
            f();
        }
        calls += 16;
    }
    calls as f64 / start.elapsed().as_secs_f64()
}

fn report(what: &str, per_second: f64, unit: &str) {
    let each = if per_second > 1e6 {
        format!("{:.0} ns", 1e9 / per_second)
    } else {
        format!("{:.1} µs", 1e6 / per_second)
    };
    println!("{what}: {per_second:.0} {unit}/s (one core, {each} each)");
}

fn main() {
    // Deterministic stand-in for a feature window: the content does not change the cost.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let payload: Vec<u8> = (0..PAYLOAD_BYTES)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();

    let device = DeviceSigningKey::generate().unwrap();
    let verifier = VerifierKeyPair::generate().unwrap();
    let to = verifier.public_key();
    let device_pub = device.public_key();
    let header = Header::new(
        Kind::Features,
        DeviceId::random().unwrap(),
        1,
        1_767_225_600_000,
    );

    println!("payload: {PAYLOAD_BYTES} bytes; each figure over about {RUN:?}");

    let pair = Ed25519KeyPair::from_pkcs8(device.pkcs8_bytes()).unwrap();
    let signature = pair.sign(&payload);
    report(
        "ed25519 sign",
        rate(|| {
            black_box(pair.sign(black_box(&payload)));
        }),
        "signatures",
    );
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
    report(
        "ed25519 verify",
        rate(|| {
            public
                .verify(black_box(&payload), black_box(signature.as_ref()))
                .unwrap();
        }),
        "signatures",
    );

    report(
        "seal",
        rate(|| {
            black_box(seal(&header, black_box(&payload), &device, &to).unwrap());
        }),
        "envelopes",
    );

    let sealed = seal(&header, &payload, &device, &to).unwrap();
    report(
        "peek_header",
        rate(|| {
            black_box(peek_header(black_box(&sealed)).unwrap());
        }),
        "headers",
    );
    report(
        "open",
        rate(|| {
            black_box(open(black_box(&sealed), &verifier, &device_pub).unwrap());
        }),
        "envelopes",
    );

    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    report(
        "open, tampered (refused)",
        rate(|| {
            assert!(open(black_box(&tampered), &verifier, &device_pub).is_err());
        }),
        "envelopes",
    );
}
