//! stub
pub mod config;
mod error;
pub mod keys;
pub mod store;
pub mod tls;
pub use error::Error;
