//! Cadence's wire types, shared by the agent and the verifier.
//!
//! Owns the versioned feature schema ([`features`]): the only description of a person's input
//! that ever leaves the agent's capture stage. Hands on plain data types with a strict JSON form.
//! Never carries key identity, characters, ordered timings, absolute pointer positions, window
//! titles or application names: the types have no field that could hold them.

pub mod features;

pub use features::{FeatureVector, KeyboardFeatures, MouseFeatures, SCHEMA_V1, SchemaError};
