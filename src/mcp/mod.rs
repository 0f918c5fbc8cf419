//! The MCP client pool: the only module that knows rmcp.
//!
//! # Layout
//! - [`pool`]: [`McpPool`], one live session per server; tools under
//!   `server__tool` names, cached lists refreshed on `list_changed`,
//!   resources (read, subscribe, inject within a budget), prompts,
//!   reconnection with backoff. Every request has a deadline.
//! - [`transport`]: an `[mcp.NAME]` spec to a connected rmcp session (stdio
//!   child with a cleared environment, legacy SSE, Streamable HTTP).
//! - [`sse`]: the legacy HTTP+SSE client transport rmcp 3.x no longer ships.
//! - [`oauth`]: OAuth 2.1 tokens for a remote server (`[mcp.NAME.oauth]`):
//!   discovery, client credentials or a person's rotating refresh token,
//!   renewed before expiry; [`bearer`] puts them on rmcp's Streamable HTTP
//!   requests; [`oauth_login`] is `parlor mcp login` (authorization code
//!   with PKCE and a loopback redirect); [`credentials`] keeps each server's
//!   refresh token in a file of its own.
//! - [`servers`]: parlor's own MCP servers (orders over stdio, knowledge over
//!   HTTP), run as the `parlor-mcp-*` binaries.
//! - [`audit`]: [`AuditLog`], every tool decision as a hash-chained JSON
//!   line, fsynced (with group commit) before the result is used;
//!   [`audit::verify`] behind `parlor audit verify`.
//! - [`allow`]: the `[trust]` allow-list of servers, checked at spec load.
//! - [`scan`]: the tool-poisoning scanner (invisible text, instructions to
//!   the model, secrets, references to other servers' tools, shadowing).
//! - [`pins`]: the tool-pin lock file `parlor mcp trust` writes.
//! - [`gate`]: pins and findings applied to every tool list; withheld tools
//!   are not offered and calls to them are refused.
//! - [`policy`]: [`Policy`], role rules and per-principal token buckets
//!   (the `[access]` table), asked before every tool call.
//! - [`error`]: [`McpError`] for set-up and requests, [`ToolCallError`] for
//!   tool calls that produced no result.

pub mod allow;
pub mod audit;
pub mod bearer;
pub mod credentials;
pub mod error;
pub mod gate;
pub mod oauth;
pub mod oauth_login;
pub mod pins;
pub mod policy;
pub mod pool;
pub mod scan;
pub mod servers;
pub mod sse;
pub mod transport;

pub use audit::{AuditContext, AuditEntry, AuditError, AuditLog, Decision};
pub use error::{McpError, ToolCallError};
pub use gate::{Assessment, Gate, PinStatus, ToolDef};
pub use policy::{Policy, Verdict};
pub use pool::{
    McpPool, McpPoolOptions, PromptArgumentInfo, PromptInfo, PromptText, Quarantine,
    ResourceContent, ResourceInfo, ServerStatus, ToolInfo, ToolOutput,
};
