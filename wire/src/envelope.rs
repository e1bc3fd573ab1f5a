//! The envelope, format v1: how one record leaves a device, signed and encrypted.
//!
//! Owns the byte layout of a sealed record, the device's Ed25519 signature over it, and its
//! encryption to the verifier's public key. Hands on sealed bytes (agent: seal → spool → uplink)
//! and, on the verifier, a [`Header`] and payload whose signer and integrity have been checked.
//! Never implements a cryptographic primitive: Ed25519 is `ring`'s, HPKE (RFC 9180) is the `hpke`
//! crate's. Never panics on input bytes: a sealed envelope is outside input to the verifier, and
//! anything short, long, unsigned, tampered or of another version is an [`EnvelopeError`].
//! Never looks inside the payload: what a record means is the business of its [`Kind`] (a
//! `Features` payload is a [`FeatureVector`](crate::FeatureVector) in its JSON form).
//!
//! # Layout (integers big-endian, offsets in bytes)
//!
//! | offset | length | field | value |
//! |---|---|---|---|
//! | 0 | 4 | magic | `b"CDNC"` (`43 44 4e 43`) |
//! | 4 | 1 | version | `1` ([`VERSION`]) |
//! | 5 | 1 | kind | [`Kind`]: `1` features, `2` consent, `3` alert, `4` heartbeat, `5` gap |
//! | 6 | 2 | reserved | `00 00` |
//! | 8 | 16 | device | [`DeviceId`], assigned at enrollment |
//! | 24 | 8 | seq | sequence number, per device, `u64` |
//! | 32 | 8 | created_ms | creation time, milliseconds since the Unix epoch, `u64` |
//! | 40 | 32 | enc | HPKE encapsulated key: the sender's one-time X25519 public key |
//! | 72 | n + 80 | ciphertext | ChaCha20-Poly1305 of `payload ‖ signature`, then its 16-byte tag |
//!
//! Bytes 0–39 are the **header** ([`HEADER_LEN`]); it travels in clear so the verifier can find the
//! device's key (and drop a replayed `(device, seq)`) before decrypting anything.
//! Inside the ciphertext are the `n` payload bytes and the 64-byte Ed25519 **signature** by the
//! device key over `header (40 bytes) ‖ payload (n bytes)`.
//!
//! Encryption is HPKE (RFC 9180) in base mode, single shot, with the suite
//! DHKEM(X25519, HKDF-SHA256) `0x0020`, HKDF-SHA256 `0x0001`, ChaCha20-Poly1305 `0x0003`;
//! `info` is `b"cadence envelope v1"` ([`HPKE_INFO`]) and the associated data is the header.
//!
//! # Invariants, all checked by [`open`]
//!
//! - The whole envelope is at least [`ENVELOPE_OVERHEAD`] (152) bytes, an empty payload, and
//!   at most [`MAX_ENVELOPE_BYTES`] (256 KiB); so a payload is at most [`MAX_PAYLOAD_BYTES`].
//! - Magic, version and reserved bytes are exactly as above; the kind is one of the five.
//!   Every later version keeps the magic and the version byte where they are, so a reader
//!   can always tell a newer envelope from garbage.
//! - The ciphertext decrypts under the verifier's key with the header as associated data: a
//!   changed header byte, `enc` byte or ciphertext byte fails here.
//! - The signature verifies under the device key the caller looked up for `header.device`.
//!
//! # What opening does not prove
//!
//! - **Freshness.** A replayed envelope opens again. The verifier keeps `(device, seq)` unique
//!   and judges `created_ms` against its own clock.
//! - **Which device key.** [`open`] checks against the key it is given; finding the key that
//!   belongs to `header.device` (from [`peek_header`]) is the caller's job.
//! - **Secrecy of the header and of the length.** Device, sequence number, kind, time and payload
//!   length are visible to anyone who sees the bytes (TLS hides them on the way).
//! - **Forward secrecy against the verifier's key.** Whoever holds the verifier's private key can
//!   open every envelope ever sealed to it; the device's one-time key protects only the sender.
//!
//! The device key signs only envelopes through this module. A signature it makes for any other
//! purpose must not cover a message that begins with `b"CDNC"`, so it can never pass for one.

use std::fmt;
use std::str::FromStr;

use hpke::aead::{AeadTag, ChaCha20Poly1305};
use hpke::inout::InOutBuf;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// The HPKE key encapsulation: DHKEM(X25519, HKDF-SHA256).
type HpkeKem = X25519HkdfSha256;
/// The HPKE key schedule's KDF.
type HpkeKdf = HkdfSha256;
/// The HPKE AEAD.
type HpkeAead = ChaCha20Poly1305;

/// The envelope format version this code writes and the only one it reads.
pub const VERSION: u8 = 1;
/// The first four bytes of every envelope.
pub const MAGIC: [u8; 4] = *b"CDNC";
/// The HPKE `info` string: binds every key derived for an envelope to this format and version.
pub const HPKE_INFO: &[u8] = b"cadence envelope v1";

/// Length of the clear header.
pub const HEADER_LEN: usize = 40;
/// Length of the HPKE encapsulated key (an X25519 public key).
pub const ENC_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Length of the ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its payload; also the length of an envelope with an empty payload.
pub const ENVELOPE_OVERHEAD: usize = HEADER_LEN + ENC_LEN + SIGNATURE_LEN + TAG_LEN;
/// The largest envelope the verifier accepts. A feature window is about a KiB of JSON; this
/// leaves ample room while keeping what one envelope can make the verifier decrypt small.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// The largest payload [`seal`] accepts: whatever fits in [`MAX_ENVELOPE_BYTES`].
pub const MAX_PAYLOAD_BYTES: usize = MAX_ENVELOPE_BYTES - ENVELOPE_OVERHEAD;

/// Why an envelope was refused, or a key could not be made or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope (or the one a payload would make) is longer than [`MAX_ENVELOPE_BYTES`]:
    /// a payload the agent should have split, or a client trying to make the verifier work.
    #[error("envelope of {0} bytes is over the limit of {MAX_ENVELOPE_BYTES}")]
    TooLarge(usize),
    /// Fewer bytes than the smallest possible envelope: a cut-off upload or a corrupt spool
    /// record.
    #[error("envelope of {0} bytes is shorter than the minimum of {ENVELOPE_OVERHEAD}")]
    Truncated(usize),
    /// The bytes do not start with `CDNC`: not an envelope at all (wrong endpoint, wrong file).
    #[error("not a Cadence envelope (bad magic)")]
    BadMagic,
    /// The envelope says another format version: an agent newer or older than this code.
    #[error("envelope version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u8),
    /// The kind byte names no known kind: an agent newer than this code, or a corrupt header.
    #[error("unknown envelope kind {0}")]
    UnknownKind(u8),
    /// The reserved header bytes are not zero: a newer agent using them, or a corrupt header.
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    /// The ciphertext does not decrypt: sealed to another verifier key (a stale or wrong key in
    /// the agent's configuration), or any byte of the envelope was changed on the way.
    #[error("envelope does not decrypt: sealed to another verifier key, or tampered with")]
    Decrypt,
    /// The signature does not verify: the device key looked up is not the one that signed (a
    /// re-enrolled device, a wrong device id), or the record was forged.
    #[error("envelope signature does not verify under the device key")]
    BadSignature,
    /// A key was rejected or could not be generated: corrupt key storage, or the operating
    /// system's random source failed.
    #[error("key error: {0}")]
    Crypto(String),
    /// A device id or public key in text form is not the expected number of lowercase hex
    /// digits: a typo or a truncated configuration value.
    #[error("{what} must be {expected} lowercase hex digits")]
    BadHex {
        /// What was being parsed.
        what: &'static str,
        /// How many hex digits it takes.
        expected: usize,
    },
}

/// What a record is; the verifier routes on it before reading the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum Kind {
    /// A closed feature window; the payload is a [`FeatureVector`](crate::FeatureVector) as JSON.
    Features = 1,
    /// The user's consent was given or withdrawn on this device.
    Consent = 2,
    /// A local detector (guard) fired, such as keystroke injection.
    Alert = 3,
    /// The agent is alive and capturing (or knowingly idle), with nothing else to report.
    Heartbeat = 4,
    /// The agent reports a stretch it could not capture or had to discard.
    Gap = 5,
}

impl Kind {
    /// Every kind, in wire-byte order.
    pub const ALL: [Kind; 5] = [
        Kind::Features,
        Kind::Consent,
        Kind::Alert,
        Kind::Heartbeat,
        Kind::Gap,
    ];

    /// The kind's byte on the wire.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The kind's name, as in its serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Features => "features",
            Kind::Consent => "consent",
            Kind::Alert => "alert",
            Kind::Heartbeat => "heartbeat",
            Kind::Gap => "gap",
        }
    }
}

impl TryFrom<u8> for Kind {
    type Error = EnvelopeError;

    fn try_from(b: u8) -> Result<Kind, EnvelopeError> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_u8() == b)
            .ok_or(EnvelopeError::UnknownKind(b))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Defines a fixed-size public identifier whose text and serde form is lowercase hex.
macro_rules! hex_bytes {
    ($(#[$meta:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = EnvelopeError;

            /// Parses exactly two lowercase hex digits per byte; anything else (uppercase
            /// included: there is one canonical form) is [`EnvelopeError::BadHex`].
            fn from_str(s: &str) -> Result<Self, EnvelopeError> {
                parse_hex(s, $what).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(
    /// A device's identity, assigned at enrollment: 16 bytes, 32 lowercase hex digits as text.
    DeviceId,
    16,
    "a device id"
);

hex_bytes!(
    /// A device's Ed25519 public key, as the verifier stores it at enrollment: 64 hex digits.
    DevicePublicKey,
    32,
    "a device public key"
);

hex_bytes!(
    /// The verifier's HPKE (X25519) public key, pinned in the agent's managed configuration:
    /// 64 hex digits.
    VerifierPublicKey,
    32,
    "a verifier public key"
);

impl DeviceId {
    /// A fresh random id from the operating system's random source.
    pub fn random() -> Result<DeviceId, EnvelopeError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| EnvelopeError::Crypto("system random source failed".to_owned()))?;
        Ok(DeviceId(id))
    }
}

/// Decodes exactly `N` bytes from `2 × N` lowercase hex digits.
fn parse_hex<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], EnvelopeError> {
    let bad = || EnvelopeError::BadHex {
        what,
        expected: 2 * N,
    };
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() != 2 * N {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let [hi, lo] = pair else { return Err(bad()) };
        *o = (nibble(*hi).ok_or_else(bad)? << 4) | nibble(*lo).ok_or_else(bad)?;
    }
    Ok(out)
}

/// The clear part of an envelope: who sent it, which record, when, and what kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Header {
    /// Format version; [`VERSION`] for everything this code seals.
    pub version: u8,
    /// What the payload is.
    pub kind: Kind,
    /// The sending device.
    pub device: DeviceId,
    /// The device's sequence number for this record; `(device, seq)` is unique per record.
    pub seq: u64,
    /// When the agent produced the record, milliseconds since the Unix epoch (device clock).
    pub created_ms: u64,
}

impl Header {
    /// A header of the current [`VERSION`].
    pub fn new(kind: Kind, device: DeviceId, seq: u64, created_ms: u64) -> Header {
        Header {
            version: VERSION,
            kind,
            device,
            seq,
            created_ms,
        }
    }

    /// The header's 40 bytes, as laid out in the [module documentation](self).
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let fixed = [self.version, self.kind.as_u8(), 0, 0];
        let seq = self.seq.to_be_bytes();
        let created = self.created_ms.to_be_bytes();
        let fields = MAGIC
            .iter()
            .chain(&fixed)
            .chain(&self.device.0)
            .chain(&seq)
            .chain(&created);
        let mut out = [0u8; HEADER_LEN];
        for (o, b) in out.iter_mut().zip(fields) {
            *o = *b;
        }
        out
    }

    /// Reads a header, checking magic, version, reserved bytes and kind (in that order).
    pub fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Result<Header, EnvelopeError> {
        let mut r = Reader(bytes);
        if r.take::<4>()? != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        let [version] = r.take::<1>()?;
        if version != VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let [kind] = r.take::<1>()?;
        if r.take::<2>()? != [0, 0] {
            return Err(EnvelopeError::ReservedNotZero);
        }
        let kind = Kind::try_from(kind)?;
        let device = DeviceId(r.take::<16>()?);
        let seq = u64::from_be_bytes(r.take::<8>()?);
        let created_ms = u64::from_be_bytes(r.take::<8>()?);
        Ok(Header {
            version,
            kind,
            device,
            seq,
            created_ms,
        })
    }
}

/// A cursor that hands out fixed-size pieces of a byte slice and can only fail, never panic.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(EnvelopeError::Truncated(self.0.len()))?;
        self.0 = rest;
        Ok(*head)
    }
}

/// A device's Ed25519 signing key. Lives only on the device, in its key store.
///
/// The PKCS#8 copy kept for storage is wiped on drop. `ring` keeps its own copy of the
/// private key inside the key pair and offers no way to wipe it.
pub struct DeviceSigningKey {
    /// What `ring` signs with.
    pair: Ed25519KeyPair,
    /// The same key as a PKCS#8 v2 document, so it can be written to the key store.
    pkcs8: Zeroizing<Vec<u8>>,
}

impl DeviceSigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<DeviceSigningKey, EnvelopeError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| EnvelopeError::Crypto("could not generate an Ed25519 key".to_owned()))?;
        DeviceSigningKey::from_pkcs8(doc.as_ref())
    }

    /// Loads a key from the PKCS#8 v2 document [`pkcs8_bytes`](Self::pkcs8_bytes) gave.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<DeviceSigningKey, EnvelopeError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| EnvelopeError::Crypto(format!("device signing key rejected: {e}")))?;
        Ok(DeviceSigningKey {
            pair,
            pkcs8: Zeroizing::new(pkcs8.to_vec()),
        })
    }

    /// The key as a PKCS#8 v2 document. **Secret**: write it only to the device's key store,
    /// readable by its owner alone; never log it.
    pub fn pkcs8_bytes(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, which the verifier learns at enrollment.
    pub fn public_key(&self) -> DevicePublicKey {
        let mut key = [0u8; 32];
        for (o, b) in key.iter_mut().zip(self.pair.public_key().as_ref()) {
            *o = *b;
        }
        DevicePublicKey(key)
    }
}

impl fmt::Debug for DeviceSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceSigningKey(<redacted>)")
    }
}

/// The verifier's HPKE key pair (X25519). Lives only on the verifier.
///
/// The private key is wiped on drop (by `x25519-dalek`, under `hpke`).
pub struct VerifierKeyPair {
    /// What envelopes are opened with.
    private: <HpkeKem as hpke::Kem>::PrivateKey,
    /// Its public half, as `hpke` type and as bytes.
    public: VerifierPublicKey,
}

impl VerifierKeyPair {
    /// A fresh key pair, derived (RFC 9180 `DeriveKeyPair`) from 32 bytes of the operating
    /// system's random source.
    pub fn generate() -> Result<VerifierKeyPair, EnvelopeError> {
        let mut ikm = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(ikm.as_mut())
            .map_err(|_| EnvelopeError::Crypto("system random source failed".to_owned()))?;
        let (private, _) = HpkeKem::derive_keypair(ikm.as_ref());
        Ok(VerifierKeyPair::from_private(private))
    }

    /// Loads a key pair from the 32 private-key bytes
    /// [`to_private_bytes`](Self::to_private_bytes) gave. Any 32 bytes make a key (X25519
    /// clamps them), so only a wrong length is refused.
    pub fn from_bytes(private: &[u8]) -> Result<VerifierKeyPair, EnvelopeError> {
        let private = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(private)
            .map_err(|e| EnvelopeError::Crypto(format!("verifier private key rejected: {e}")))?;
        Ok(VerifierKeyPair::from_private(private))
    }

    fn from_private(private: <HpkeKem as hpke::Kem>::PrivateKey) -> VerifierKeyPair {
        let mut public = [0u8; 32];
        for (o, b) in public
            .iter_mut()
            .zip(HpkeKem::sk_to_pk(&private).to_bytes())
        {
            *o = b;
        }
        VerifierKeyPair {
            private,
            public: VerifierPublicKey(public),
        }
    }

    /// The private key's 32 bytes (clamped), wiped when the returned value is dropped.
    /// **Secret**: write them only to the verifier's key store, readable by its owner alone;
    /// never log them.
    pub fn to_private_bytes(&self) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.private.write_exact(out.as_mut());
        out
    }

    /// The public half, which agents are configured with.
    pub fn public_key(&self) -> VerifierPublicKey {
        self.public
    }
}

impl fmt::Debug for VerifierKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierKeyPair")
            .field("private", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// Signs `header ‖ payload` with the device key and encrypts `payload ‖ signature` to the
/// verifier, the header as associated data. Returns the whole envelope.
///
/// Refuses a header of another version and a payload over [`MAX_PAYLOAD_BYTES`]. Each call
/// uses a fresh one-time HPKE key, so sealing the same record twice gives different bytes.
/// (`hpke` draws it from the operating system and panics if that random source fails, which on
/// the supported systems means the system itself is broken.)
pub fn seal(
    header: &Header,
    payload: &[u8],
    signer: &DeviceSigningKey,
    to: &VerifierPublicKey,
) -> Result<Vec<u8>, EnvelopeError> {
    if header.version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(header.version));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(EnvelopeError::TooLarge(
            payload.len().saturating_add(ENVELOPE_OVERHEAD),
        ));
    }
    let recipient = <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&to.0)
        .map_err(|e| EnvelopeError::Crypto(format!("verifier public key rejected: {e}")))?;
    let head = header.to_bytes();

    let mut signed = Vec::with_capacity(HEADER_LEN + payload.len());
    signed.extend_from_slice(&head);
    signed.extend_from_slice(payload);
    let signature = signer.pair.sign(&signed);

    // Encrypted in place: out = header ‖ enc (filled below) ‖ payload ‖ signature ‖ tag.
    let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + payload.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(&[0u8; ENC_LEN]);
    out.extend_from_slice(payload);
    out.extend_from_slice(signature.as_ref());
    let (_, body) = out.split_at_mut(HEADER_LEN + ENC_LEN);
    let (enc, tag) = hpke::single_shot_seal_inout_detached::<HpkeAead, HpkeKdf, HpkeKem>(
        &OpModeS::Base,
        &recipient,
        HPKE_INFO,
        InOutBuf::from(body),
        &head,
    )
    .map_err(|e| EnvelopeError::Crypto(format!("HPKE seal failed ({e}): bad verifier key?")))?;
    out.extend_from_slice(&tag.to_bytes());
    let (_, rest) = out.split_at_mut(HEADER_LEN);
    for (o, b) in rest.iter_mut().zip(enc.to_bytes()) {
        *o = b;
    }
    Ok(out)
}

/// Reads the clear header of an envelope without any key, so the verifier can look up the
/// device's key (and drop a replay) before decrypting.
///
/// Checks everything that needs no key: the size limits, magic, version, reserved bytes and
/// kind. Nothing it returns is authenticated until [`open`] succeeds.
pub fn peek_header(bytes: &[u8]) -> Result<Header, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge(bytes.len()));
    }
    let (head, _) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(EnvelopeError::Truncated(bytes.len()))?;
    let header = Header::from_bytes(head)?;
    if bytes.len() < ENVELOPE_OVERHEAD {
        return Err(EnvelopeError::Truncated(bytes.len()));
    }
    Ok(header)
}

/// Checks and opens an envelope: its size and header ([`peek_header`]), that it decrypts under
/// the verifier's key with its header intact, and that `device_key` signed header and payload.
/// Returns the header and the payload.
///
/// `device_key` must be the key the verifier holds for `peek_header(bytes)?.device`; see the
/// [module documentation](self) for what a successful open does not prove.
pub fn open(
    bytes: &[u8],
    verifier: &VerifierKeyPair,
    device_key: &DevicePublicKey,
) -> Result<(Header, Vec<u8>), EnvelopeError> {
    let header = peek_header(bytes)?;
    let truncated = || EnvelopeError::Truncated(bytes.len());
    let (head, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or_else(truncated)?;
    let (enc, rest) = rest.split_first_chunk::<ENC_LEN>().ok_or_else(truncated)?;
    let (ciphertext, tag) = rest.split_last_chunk::<TAG_LEN>().ok_or_else(truncated)?;

    let enc =
        <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc).map_err(|_| EnvelopeError::Decrypt)?;
    let tag = AeadTag::<HpkeAead>::from_bytes(tag).map_err(|_| EnvelopeError::Decrypt)?;

    // Decrypted in place right after a copy of the header, so the signed message
    // `header ‖ payload` ends up contiguous: buf = header ‖ payload ‖ signature.
    let mut buf = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    buf.extend_from_slice(head);
    buf.extend_from_slice(ciphertext);
    let (_, body) = buf.split_at_mut(HEADER_LEN);
    hpke::single_shot_open_inout_detached::<HpkeAead, HpkeKdf, HpkeKem>(
        &OpModeR::Base,
        &verifier.private,
        &enc,
        HPKE_INFO,
        InOutBuf::from(body),
        head,
        &tag,
    )
    .map_err(|_| EnvelopeError::Decrypt)?;

    let signed_len = buf.len().checked_sub(SIGNATURE_LEN).ok_or_else(truncated)?;
    let (signed, signature) = buf.split_at(signed_len);
    UnparsedPublicKey::new(&ED25519, &device_key.0)
        .verify(signed, signature)
        .map_err(|_| EnvelopeError::BadSignature)?;

    buf.truncate(signed_len);
    buf.drain(..HEADER_LEN);
    Ok((header, buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic xorshift64: reproducible "random" input without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    struct Keys {
        device: DeviceSigningKey,
        verifier: VerifierKeyPair,
    }

    fn keys() -> Keys {
        Keys {
            device: DeviceSigningKey::generate().unwrap(),
            verifier: VerifierKeyPair::generate().unwrap(),
        }
    }

    fn header(kind: Kind) -> Header {
        Header::new(kind, DeviceId([7; 16]), 42, 1_767_225_600_000)
    }

    fn sealed(k: &Keys, payload: &[u8]) -> Vec<u8> {
        seal(
            &header(Kind::Features),
            payload,
            &k.device,
            &k.verifier.public_key(),
        )
        .unwrap()
    }

    fn open_with(k: &Keys, bytes: &[u8]) -> Result<(Header, Vec<u8>), EnvelopeError> {
        open(bytes, &k.verifier, &k.device.public_key())
    }

    #[test]
    fn round_trip_for_every_kind() {
        let k = keys();
        for kind in Kind::ALL {
            let payload = format!("payload of kind {kind}").into_bytes();
            let h = Header::new(kind, DeviceId::random().unwrap(), u64::MAX - 1, 5);
            let bytes = seal(&h, &payload, &k.device, &k.verifier.public_key()).unwrap();
            assert_eq!(bytes.len(), payload.len() + ENVELOPE_OVERHEAD);
            assert_eq!(peek_header(&bytes).unwrap(), h);
            let (h2, p2) = open_with(&k, &bytes).unwrap();
            assert_eq!(h2, h);
            assert_eq!(p2, payload);
        }
    }

    #[test]
    fn empty_and_maximal_payloads_round_trip() {
        let k = keys();
        for len in [0, MAX_PAYLOAD_BYTES] {
            let payload = vec![0xa5; len];
            let bytes = sealed(&k, &payload);
            assert_eq!(bytes.len(), len + ENVELOPE_OVERHEAD);
            assert_eq!(open_with(&k, &bytes).unwrap().1, payload);
        }
    }

    #[test]
    fn random_payload_sizes_round_trip() {
        let k = keys();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..64 {
            let len = rng.below(4096);
            let payload = rng.bytes(len);
            let h = Header::new(
                Kind::ALL[rng.below(Kind::ALL.len())],
                DeviceId([rng.next() as u8; 16]),
                rng.next(),
                rng.next(),
            );
            let bytes = seal(&h, &payload, &k.device, &k.verifier.public_key()).unwrap();
            assert_eq!(open_with(&k, &bytes).unwrap(), (h, payload));
        }
    }

    #[test]
    fn sealing_twice_gives_different_bytes() {
        let k = keys();
        assert_ne!(sealed(&k, b"same"), sealed(&k, b"same"));
    }

    #[test]
    fn flipping_any_single_byte_is_rejected() {
        let k = keys();
        let bytes = sealed(&k, b"{\"schema\":\"cadence.features.v1\"}");
        // Every position, each with a low bit, a high bit and the whole byte changed.
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut t = bytes.clone();
                t[i] ^= flip;
                assert!(open_with(&k, &t).is_err(), "byte {i} ^ {flip:#x} accepted");
            }
        }
    }

    #[test]
    fn header_tampering_names_the_field_or_fails_decryption() {
        let k = keys();
        let bytes = sealed(&k, b"x");
        let with = |i: usize, v: u8| {
            let mut t = bytes.clone();
            t[i] = v;
            open_with(&k, &t).unwrap_err()
        };
        assert_eq!(with(0, b'X'), EnvelopeError::BadMagic);
        assert_eq!(with(4, 2), EnvelopeError::UnsupportedVersion(2));
        assert_eq!(with(5, 0), EnvelopeError::UnknownKind(0));
        assert_eq!(with(5, 6), EnvelopeError::UnknownKind(6));
        assert_eq!(with(6, 1), EnvelopeError::ReservedNotZero);
        // A valid but different kind, device, seq or time: only the AAD check catches it.
        assert_eq!(with(5, Kind::Gap.as_u8()), EnvelopeError::Decrypt);
        assert_eq!(with(8, 0), EnvelopeError::Decrypt);
        assert_eq!(with(31, 0), EnvelopeError::Decrypt);
        assert_eq!(with(39, 0xff), EnvelopeError::Decrypt);
    }

    #[test]
    fn wrong_verifier_key_fails_to_decrypt() {
        let k = keys();
        let bytes = sealed(&k, b"payload");
        let other = VerifierKeyPair::generate().unwrap();
        assert_eq!(
            open(&bytes, &other, &k.device.public_key()).unwrap_err(),
            EnvelopeError::Decrypt
        );
    }

    #[test]
    fn wrong_device_key_is_a_bad_signature() {
        let k = keys();
        let bytes = sealed(&k, b"payload");
        let other = DeviceSigningKey::generate().unwrap().public_key();
        assert_eq!(
            open(&bytes, &k.verifier, &other).unwrap_err(),
            EnvelopeError::BadSignature
        );
        assert_eq!(
            open(&bytes, &k.verifier, &DevicePublicKey([0; 32])).unwrap_err(),
            EnvelopeError::BadSignature
        );
    }

    #[test]
    fn a_record_encrypted_but_not_signed_by_the_device_is_rejected() {
        // Anyone can encrypt to the verifier's public key; without the device key they can
        // only put a wrong or empty signature inside.
        let k = keys();
        let head = header(Kind::Alert).to_bytes();
        let recipient =
            <HpkeKem as hpke::Kem>::PublicKey::from_bytes(&k.verifier.public_key().0).unwrap();
        let mut plain = b"forged alert".to_vec();
        plain.extend_from_slice(&[0u8; SIGNATURE_LEN]);
        let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HpkeKdf, HpkeKem>(
            &OpModeS::Base,
            &recipient,
            HPKE_INFO,
            &plain,
            &head,
        )
        .unwrap();
        let mut forged = head.to_vec();
        forged.extend_from_slice(&enc.to_bytes());
        forged.extend_from_slice(&ct);
        assert_eq!(
            open_with(&k, &forged).unwrap_err(),
            EnvelopeError::BadSignature
        );
    }

    #[test]
    fn truncation_at_every_length_is_rejected() {
        let k = keys();
        let bytes = sealed(&k, b"a short payload");
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let err = open_with(&k, cut).unwrap_err();
            if len < ENVELOPE_OVERHEAD {
                assert_eq!(err, EnvelopeError::Truncated(len), "length {len}");
            } else {
                assert_eq!(err, EnvelopeError::Decrypt, "length {len}");
            }
        }
        assert!(peek_header(&bytes[..ENVELOPE_OVERHEAD - 1]).is_err());
    }

    #[test]
    fn oversized_is_rejected_on_both_sides() {
        let k = keys();
        let too_big = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            seal(
                &header(Kind::Features),
                &too_big,
                &k.device,
                &k.verifier.public_key()
            )
            .unwrap_err(),
            EnvelopeError::TooLarge(MAX_ENVELOPE_BYTES + 1)
        );
        let mut bytes = sealed(&k, b"ok");
        bytes.resize(MAX_ENVELOPE_BYTES + 1, 0);
        assert_eq!(
            open_with(&k, &bytes).unwrap_err(),
            EnvelopeError::TooLarge(MAX_ENVELOPE_BYTES + 1)
        );
        assert_eq!(
            peek_header(&bytes).unwrap_err(),
            EnvelopeError::TooLarge(MAX_ENVELOPE_BYTES + 1)
        );
    }

    #[test]
    fn seal_refuses_a_degenerate_verifier_key() {
        // The all-zero X25519 point gives an all-zero shared secret, which HPKE refuses.
        let k = keys();
        assert!(matches!(
            seal(
                &header(Kind::Heartbeat),
                b"",
                &k.device,
                &VerifierPublicKey([0; 32])
            ),
            Err(EnvelopeError::Crypto(_))
        ));
    }

    #[test]
    fn keys_and_errors_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<DeviceSigningKey>();
        send_sync::<VerifierKeyPair>();
        send_sync::<EnvelopeError>();
    }

    #[test]
    fn seal_refuses_another_version() {
        let k = keys();
        let mut h = header(Kind::Heartbeat);
        h.version = 2;
        assert_eq!(
            seal(&h, b"", &k.device, &k.verifier.public_key()).unwrap_err(),
            EnvelopeError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn header_layout_is_pinned() {
        let h = Header::new(
            Kind::Heartbeat,
            DeviceId(*b"0123456789abcdef"),
            0x0102_0304_0506_0708,
            0x1122_3344_5566_7788,
        );
        let expected: Vec<u8> = [
            &b"CDNC"[..],
            &[1, 4, 0, 0],
            b"0123456789abcdef",
            &[1, 2, 3, 4, 5, 6, 7, 8],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88],
        ]
        .concat();
        assert_eq!(h.to_bytes().to_vec(), expected);
        assert_eq!(Header::from_bytes(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn kinds_round_trip_as_bytes_and_names() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind.as_u8() as usize, i + 1);
            assert_eq!(Kind::try_from(kind.as_u8()).unwrap(), kind);
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<Kind>(&json).unwrap(), kind);
        }
        assert_eq!(Kind::try_from(0), Err(EnvelopeError::UnknownKind(0)));
        assert!(serde_json::from_str::<Kind>("\"Features\"").is_err());
    }

    #[test]
    fn hex_forms_round_trip_and_are_strict() {
        let id = DeviceId::random().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(text.parse::<DeviceId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);

        let id = DeviceId([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        for bad in [
            "",
            &"ab".repeat(15),
            &"ab".repeat(17),
            &"AB".repeat(16),
            &format!("{}g", "a".repeat(31)),
            &format!("{}é", "a".repeat(30)),
        ] {
            assert_eq!(
                bad.parse::<DeviceId>(),
                Err(EnvelopeError::BadHex {
                    what: "a device id",
                    expected: 32
                }),
                "{bad:?}"
            );
        }

        let pk = DeviceSigningKey::generate().unwrap().public_key();
        assert_eq!(pk.to_string().parse::<DevicePublicKey>().unwrap(), pk);
        let vk = VerifierKeyPair::generate().unwrap().public_key();
        let json = serde_json::to_string(&vk).unwrap();
        assert_eq!(json.len(), 66);
        assert_eq!(
            serde_json::from_str::<VerifierPublicKey>(&json).unwrap(),
            vk
        );

        let h = header(Kind::Consent);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"kind\":\"consent\""), "{json}");
        assert!(
            json.contains(&format!("\"device\":\"{}\"", h.device)),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Header>(&json).unwrap(), h);
    }

    #[test]
    fn keys_reload_from_their_stored_bytes() {
        let k = keys();
        let device = DeviceSigningKey::from_pkcs8(k.device.pkcs8_bytes()).unwrap();
        assert_eq!(device.public_key(), k.device.public_key());
        let verifier = VerifierKeyPair::from_bytes(k.verifier.to_private_bytes().as_ref()).unwrap();
        assert_eq!(verifier.public_key(), k.verifier.public_key());

        let bytes = seal(&header(Kind::Gap), b"gap", &device, &verifier.public_key()).unwrap();
        assert_eq!(open_with(&k, &bytes).unwrap().1, b"gap");

        assert!(matches!(
            DeviceSigningKey::from_pkcs8(b"not a key"),
            Err(EnvelopeError::Crypto(_))
        ));
        assert!(matches!(
            VerifierKeyPair::from_bytes(&[1; 31]),
            Err(EnvelopeError::Crypto(_))
        ));
    }

    #[test]
    fn debug_of_keys_prints_no_key_bytes() {
        let k = keys();
        let device = format!("{:?}", k.device);
        assert_eq!(device, "DeviceSigningKey(<redacted>)");
        let verifier = format!("{:?}", k.verifier);
        assert!(verifier.contains("<redacted>"), "{verifier}");
        let private = k.verifier.to_private_bytes();
        let private_hex: String = private.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!verifier.contains(&private_hex), "{verifier}");
        assert!(
            !verifier.contains(&format!("{:?}", &private[..4])),
            "{verifier}"
        );
        // The public key is fine to print, and is.
        assert!(
            verifier.contains(&k.verifier.public_key().to_string()),
            "{verifier}"
        );
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let k = keys();
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);

        // Random byte strings: most fail on the magic; a quarter get a valid header so the
        // later checks and the decryption run too.
        let valid_head = header(Kind::Features).to_bytes();
        for i in 0..10_000 {
            let len = rng.below(2 * ENVELOPE_OVERHEAD + 64);
            let mut bytes = rng.bytes(len);
            if i % 4 == 0 {
                for (o, b) in bytes.iter_mut().zip(&valid_head) {
                    *o = *b;
                }
            }
            let _ = peek_header(&bytes);
            assert!(open_with(&k, &bytes).is_err());
        }

        // Mutations of a valid envelope: flipped bytes, cuts, insertions, splices.
        let good = sealed(&k, &rng.bytes(200));
        for _ in 0..1_000 {
            let mut bytes = good.clone();
            match rng.below(4) {
                0 => {
                    for _ in 0..=rng.below(4) {
                        let i = rng.below(bytes.len());
                        bytes[i] ^= (rng.next() as u8) | 1;
                    }
                }
                1 => bytes.truncate(rng.below(good.len())),
                2 => {
                    let at = rng.below(bytes.len() + 1);
                    let n = 1 + rng.below(8);
                    let extra = rng.bytes(n);
                    bytes.splice(at..at, extra);
                }
                _ => {
                    let at = rng.below(bytes.len());
                    bytes.drain(at..(at + 1 + rng.below(8)).min(bytes.len()));
                }
            }
            if bytes == good {
                continue; // two flips of one byte cancelled out
            }
            let _ = peek_header(&bytes);
            assert!(open_with(&k, &bytes).is_err());
        }
    }
}
