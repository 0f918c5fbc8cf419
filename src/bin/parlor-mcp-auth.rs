//! `parlor-mcp-auth`: the OAuth 2.1 authorization server for parlor's remote
//! MCP servers (client credentials, authorization code with PKCE, refresh
//! tokens, JWT access tokens; see
//! `parlor::mcp::servers::auth`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use parlor::mcp::servers::auth::{self, AuthServer};

/// Issues short-lived access tokens for parlor's MCP servers.
#[derive(Debug, Parser)]
#[command(name = "parlor-mcp-auth", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "AUTH_ADDR", default_value = auth::DEFAULT_ADDR)]
    addr: SocketAddr,
    /// The registered clients and people: a TOML file of [[client]] tables (id,
    /// secret_sha256 or redirect_uris, scopes) and [[user]] tables (name, password_sha256).
    #[arg(long, env = "AUTH_CLIENTS")]
    clients: PathBuf,
    /// The issuer URL clients and resource servers know this server by
    /// (default: http://<the address it listens on>).
    #[arg(long, env = "AUTH_ISSUER")]
    issuer: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parlor::mcp::servers::init_stderr_logging();
    let args = Args::parse();
    let clients = auth::load_clients(&args.clients)?;
    let listener = parlor::mcp::servers::listen(args.addr).await?;
    let addr = listener.local_addr()?;
    let issuer = args.issuer.unwrap_or_else(|| format!("http://{addr}"));
    let server = Arc::new(AuthServer::new(&issuer, clients)?);
    tracing::info!(%addr, issuer = %server.issuer(), message = "Authorization server listening.");
    axum::serve(listener, auth::router(server))
        .with_graceful_shutdown(parlor::mcp::servers::shutdown_signal())
        .await?;
    tracing::info!(message = "Authorization server stopped.");
    Ok(())
}
