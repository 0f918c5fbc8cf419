//! Live calls: a caller's audio streamed in, parlor's events and voice
//! streamed back, with barge-in.
//!
//! # Layout
//! - [`protocol`]: the events and control messages, as JSON.
//! - [`playout`]: reply audio paced to playback, and what the caller heard.
//! - [`call`]: one call over a started pipeline, carrier-agnostic.
//! - [`confirm`]: sensitive tool calls approved by the caller.
//! - [`client`]: the caller's side over a WebSocket (`parlor call`, tests,
//!   the bench).
//!
//! The WebSocket route itself is in `server/calls.rs`: this module knows
//! nothing of axum.

pub mod call;
pub mod client;
pub mod confirm;
pub mod playout;
pub mod protocol;

pub use call::{open, CallInput, CallOutput, InputError, Outbound, DEFAULT_LEAD};
pub use confirm::{LiveConfirmer, DEFAULT_CONFIRM_TIMEOUT};
pub use protocol::{ClientMessage, ServerEvent};
