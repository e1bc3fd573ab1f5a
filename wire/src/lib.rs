//! Cadence's wire types, shared by the agent and the verifier.
//!
//! Owns the versioned feature schema ([`features`]): the only description of a person's input
//! that ever leaves the agent's capture stage. Hands on plain data types with a strict JSON form.
//! Owns the envelope ([`envelope`]) every record travels in: signed by the device, encrypted to
//! the verifier, and refused on the verifier's side if anything about it is off.
//! Owns the other records' payloads and the verifier API's bodies ([`records`]).
//! Never carries key identity, characters, ordered timings, absolute pointer positions, window
//! titles or application names: the types have no field that could hold them.

pub mod envelope;
pub mod features;
pub mod records;

pub use envelope::{
    DeviceId, DevicePublicKey, DeviceSigningKey, EnvelopeError, Header, Kind, MAX_ENVELOPE_BYTES,
    MAX_PAYLOAD_BYTES, VerifierKeyPair, VerifierPublicKey, open, peek_header, seal,
};
pub use features::{FeatureVector, KeyboardFeatures, MouseFeatures, SCHEMA, SchemaError};
