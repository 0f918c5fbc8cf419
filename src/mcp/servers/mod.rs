//! parlor's own MCP servers: the tools and documents the example pipelines call.
//!
//! They are ordinary MCP servers, run as their own processes
//! (`src/bin/parlor-mcp-*.rs`), so the planner reaches them through the same
//! client pool, policy layer and transports as any third-party server.
//!
//! # Layout
//! - [`orders`]: an orders and customer database over stdio, backed by SQLite
//!   and seeded from `pipelines/data/orders.sql` ("where is my order?").
//! - [`knowledge`]: retrieval over the bundled documents in
//!   `pipelines/data/knowledge/` with a tantivy index, over Streamable HTTP
//!   (`/mcp`) and legacy SSE (`/sse` + `/message`), or over stdio.
//! - [`auth`]: an OAuth 2.1 authorization server (client credentials, JWT
//!   access tokens), run as `parlor-mcp-auth`; `auth_code` adds its consent
//!   page, authorization codes with PKCE and rotating refresh tokens.
//! - [`protect`]: a server's routes behind bearer-token checks (opt-in for
//!   the knowledge server: `--auth-issuer`, `--auth-audience`).

pub mod auth;
mod auth_code;
pub mod knowledge;
pub mod orders;
pub mod protect;

use rmcp::model::{CallToolResult, ContentBlock};

/// A failed tool call the model should read and recover from (unknown order,
/// order already shipped), as opposed to a protocol error, which a client
/// treats as a broken server.
pub(crate) fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// Serves `server` over stdin/stdout until the client closes the pipe or
/// `shutdown` resolves. `what` names the server in logs.
///
/// # Errors
/// When the MCP handshake fails or the session ends with an error.
pub async fn serve_stdio<S: rmcp::ServerHandler>(
    server: S,
    what: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let running = server.serve(rmcp::transport::stdio()).await?;
    let cancel = running.cancellation_token();
    tokio::select! {
        quit = running.waiting() => {
            let reason = quit?;
            tracing::info!(?reason, server = what, message = "Server stopped.");
        }
        () = shutdown => {
            cancel.cancel();
            tracing::info!(server = what, message = "Server shut down.");
        }
    }
    Ok(())
}

/// A listener for a server binary on `addr`, with an error that says what
/// to try when the port is taken.
pub async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another server on it? try --addr)"))
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: what a terminal or a supervisor sends.
/// A signal whose handler cannot be installed is logged and then never fires.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, message = "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, message = "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!(message = "Ctrl-C received, shutting down."),
        () = terminate => tracing::info!(message = "SIGTERM received, shutting down."),
    }
}

/// Logging for a server binary: stderr only (for stdio servers stdout is
/// the protocol), no colour, level from `PARLOR_LOG` (default `info`).
pub fn init_stderr_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PARLOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}
