//! Arbitrary bytes into `peek_header` and `open`: every input is refused, none panics.
#![no_main]

use std::sync::LazyLock;

use cadence_wire::envelope::{DevicePublicKey, VerifierKeyPair, open, peek_header};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<VerifierKeyPair> =
    LazyLock::new(|| VerifierKeyPair::from_bytes(&[7; 32]).expect("32 bytes make a key"));

fuzz_target!(|data: &[u8]| {
    let _ = peek_header(data);
    assert!(open(data, &VERIFIER, &DevicePublicKey([9; 32])).is_err());
});
