//! Arbitrary header fields and payload: `seal` then `open` gives them back, and the sealed
//! bytes with one byte changed (position and change taken from the input) are refused.
#![no_main]

use std::sync::LazyLock;

use cadence_wire::envelope::{
    DeviceId, DeviceSigningKey, Header, Kind, VerifierKeyPair, open, seal,
};
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<(DeviceSigningKey, VerifierKeyPair)> = LazyLock::new(|| {
    (
        DeviceSigningKey::generate().expect("device key"),
        VerifierKeyPair::from_bytes(&[7; 32]).expect("32 bytes make a key"),
    )
});

fuzz_target!(|data: &[u8]| {
    let Some((fields, payload)) = data.split_first_chunk::<36>() else {
        return;
    };
    let (device, verifier) = &*KEYS;
    let mut device_id = [0; 16];
    device_id.copy_from_slice(&fields[1..17]);
    let header = Header::new(
        Kind::ALL[usize::from(fields[0]) % Kind::ALL.len()],
        DeviceId(device_id),
        u64::from_be_bytes(fields[17..25].try_into().unwrap()),
        u64::from_be_bytes(fields[25..33].try_into().unwrap()),
    );
    let sealed = seal(&header, payload, device, &verifier.public_key()).unwrap();
    let opened = open(&sealed, verifier, &device.public_key()).unwrap();
    assert_eq!(opened, (header, payload.to_vec()));

    let at = usize::from(u16::from_be_bytes([fields[33], fields[34]])) % sealed.len();
    let mut tampered = sealed;
    tampered[at] ^= fields[35] | 1;
    assert!(open(&tampered, verifier, &device.public_key()).is_err());
});
