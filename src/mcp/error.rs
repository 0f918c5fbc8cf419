//! Errors of the MCP client pool. Every message names the server, so a
//! failure in a pipeline with five servers says which one to look at.

use std::time::Duration;

use thiserror::Error;

/// Setting up the pool or talking to one server outside a tool call.
#[derive(Debug, Error)]
pub enum McpError {
    /// A stage asked for a server the spec does not declare.
    #[error("MCP server \"{server}\": not declared in the spec (add an [mcp.{server}] table)")]
    UnknownServer { server: String },
    /// The transport could not be set up (no such command, refused
    /// connection, bad URL, not an SSE stream, ...).
    #[error("MCP server \"{server}\": cannot connect: {reason}")]
    Connect { server: String, reason: String },
    /// The connection opened but the MCP handshake failed.
    #[error("MCP server \"{server}\": handshake failed: {reason}")]
    Handshake { server: String, reason: String },
    /// The server did not answer within the deadline.
    #[error("MCP server \"{server}\": {what} timed out after {after:?}")]
    Timeout {
        server: String,
        what: &'static str,
        after: Duration,
    },
    /// The server answered a request with an error, or the session broke.
    #[error("MCP server \"{server}\": {what} failed: {reason}")]
    Request {
        server: String,
        what: &'static str,
        reason: String,
    },
    /// Parlor does not connect to this server itself (e.g. `hosted`).
    #[error("MCP server \"{server}\": transport \"{transport}\" is not connected by parlor")]
    NotConnectable { server: String, transport: String },
    /// Reconnection is backing off after a failed attempt.
    #[error("MCP server \"{server}\": unavailable, next reconnect attempt in {retry_in:?} (last error: {last})")]
    Unavailable {
        server: String,
        retry_in: Duration,
        last: String,
    },
    /// The server does not offer this capability.
    #[error("MCP server \"{server}\": does not support {what}")]
    Unsupported { server: String, what: &'static str },
    /// Several servers failed to connect at start; one line each.
    #[error("{} MCP server(s) failed to start:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Many(Vec<McpError>),
}

/// Why a tool call produced no result. A tool that *ran* and reported an
/// error is not this: that is a [`crate::mcp::ToolOutput`] with `is_error`,
/// data for the model. These are failures of the plumbing; the planner can
/// still hand [`ToolCallError::as_output`] to the model so it can recover.
#[derive(Debug, Error)]
pub enum ToolCallError {
    /// Not a `server__tool` name the pool offers.
    #[error("unknown tool \"{name}\"")]
    UnknownTool { name: String },
    /// The gate withholds this tool: changed since it was trusted, never
    /// trusted, or poisoned (src/mcp/gate.rs).
    #[error("tool \"{name}\" is quarantined and was not called: {reason}")]
    Quarantined { name: String, reason: String },
    /// Arguments must be a JSON object (or null for none).
    #[error("tool \"{name}\": arguments must be a JSON object, got {got}")]
    BadArguments { name: String, got: String },
    /// The server did not answer within the per-call deadline.
    #[error("tool \"{name}\": no answer from MCP server \"{server}\" within {after:?}")]
    Timeout {
        name: String,
        server: String,
        after: Duration,
    },
    /// The server went away while the call was in flight (crash, closed
    /// connection). The next call reconnects.
    #[error("tool \"{name}\": MCP server \"{server}\" disconnected during the call: {reason}")]
    Disconnected {
        name: String,
        server: String,
        reason: String,
    },
    /// The server could not be reached (or re-reached) at all.
    #[error("tool \"{name}\": {source}")]
    Unavailable {
        name: String,
        #[source]
        source: McpError,
    },
    /// The server rejected the request at the protocol level (JSON-RPC error,
    /// e.g. unknown tool or invalid params).
    #[error("tool \"{name}\": MCP server \"{server}\" returned an error: {reason}")]
    Protocol {
        name: String,
        server: String,
        reason: String,
    },
}

impl ToolCallError {
    /// The failure as a tool result the model can read (`is_error = true`).
    pub fn as_output(&self) -> crate::mcp::ToolOutput {
        let text = self.to_string();
        crate::mcp::ToolOutput {
            raw: serde_json::json!({
                "content": [{ "type": "text", "text": text }],
                "isError": true,
            }),
            text,
            is_error: true,
        }
    }
}
