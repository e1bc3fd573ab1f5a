//! The Cadence verifier: enrollment, ingest and storage of agents' signed, encrypted records,
//! scoring of their windows against each user's baseline, and alerts.
//!
//! Owns the verifier's side of the wire contract ([`cadence_wire`]): it enrolls devices
//! against an enrollment token, then takes batches of sealed envelopes over HTTPS, checks each
//! one's signature against the enrolled device key, decrypts it, checks the payload for its
//! kind and stores it, once, before acknowledging. Then it scores each stored window
//! ([`scorer`], running [`scoring`]), keeps a trust level per (user, device), and raises an
//! alert when trust falls below the lockout or the agent's guard reports keystroke injection;
//! alerts are stored and POSTed to webhooks ([`alerts`]). Hands on an HTTP API ([`api`]), a
//! [`Store`](store::Store) others can read, signed webhook requests, and the commands of the
//! `cadence-verifier` binary ([`cli`]).
//!
//! What it never does: trust an unsigned, replayed, oversized or malformed envelope (each is a
//! clear 4xx, logged, and the server keeps serving); acknowledge a record before the database
//! committed it; store an enrollment token in clear; print or log a private key, a token
//! (except a new one, once, for the operator) or a feature value at info level; use a TLS
//! crypto provider other than `ring`.
//!
//! Layout, in the order a request travels: [`server`] (TLS accept loop, shutdown) →
//! [`api`] (routes, limits, status codes) → [`ingest`] (checks, dedupe) → [`store`] (SQLite)
//! → [`scorer`] (baselines, trust, trust alerts) → [`alerts`] (webhook delivery).
//! Beside them, [`dashboard`] serves the analysts' pages, their read-only JSON API behind an
//! admin token, `/readyz` and `/metrics` ([`metrics`]).
//! [`config`] turns flags and the optional TOML file into checked [`Settings`]; [`keys`] and
//! [`tls`] own the secrets in the data directory.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod config;
pub mod dashboard;
mod error;
pub mod ingest;
pub mod keys;
pub mod metrics;
pub mod scorer;
pub mod scoring;
pub mod server;
pub mod store;
pub mod tls;

pub use config::Settings;
pub use error::Error;
pub use server::{Startup, Verifier, serve, shutdown_signal};
