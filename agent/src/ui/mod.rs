//! The employee's side of the agent: the consent dialog, the tray icon and the local pages
//! the tray opens.
//!
//! Owns how the agent asks and shows; decides nothing. What a click means (a grant, a pause, a
//! withdrawal) is [`crate::consent`]'s, and the daemon applies it. Never shows input data
//! other than the records already sent, exactly as sent.

pub mod dialog;
pub mod notify;
pub mod pages;
pub mod tray;
pub mod uiloop;
