//! The OpenAI Realtime protocol (GA shape).
//!
//! # Layout
//! - [`events`]: client and server events as JSON, shared by any side that
//!   speaks the protocol.
//! - [`session`]: a session served by a live call of parlor's own
//!   pipeline (the state behind `GET /v1/realtime`), carrier-agnostic.
//! - [`tools`]: the function tools a client declares and runs itself.
//! - [`client`]: the client end of a WebSocket to a Realtime server, which
//!   the realtime stage (`stages/realtime.rs`) drives.
//!
//! The WebSocket route is in `server/realtime.rs`: this module knows
//! nothing of axum.

pub mod client;
pub mod events;
pub mod session;
pub mod tools;

pub use events::{BadEvent, ClientEvent, Parsed, ServerEvent, ServerMessage};
pub use session::{ClientReply, Session};
