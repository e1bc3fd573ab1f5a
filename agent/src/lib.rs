//! The Cadence agent library.
//!
//! Owns the device side of the data flow: [`capture`] turns OS input into timing events,
//! [`features`] turns windows of events into feature vectors. The binary (`main.rs`) only
//! parses flags and calls into [`cli`].
//!
//! What this crate never does: translate a key into text, look up a keyboard layout, keep
//! absolute pointer positions past capture, or emit a window under its minimum event count.

pub mod capture;
pub mod cli;
pub mod consent;
pub mod daemon;
pub mod detach;
pub mod doctor;
pub mod features;
pub mod guard;
pub mod spool;
pub mod state;
pub mod ui;
pub mod uplink;
