//! `parlor-mcp-knowledge`: retrieval over the shop's documents as an MCP server,
//! over Streamable HTTP (`/mcp`) and legacy SSE (`/sse` + `/message`), or
//! over stdin/stdout with `--stdio`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use parlor::mcp::servers::knowledge::{self, KnowledgeBase, KnowledgeServer};
use parlor::mcp::servers::protect::{ProtectConfig, Protector};

/// The shop's help documents, searchable, as an MCP server over HTTP.
#[derive(Debug, Parser)]
#[command(name = "parlor-mcp-knowledge", version)]
struct Args {
    /// Address to listen on. Pipelines reach it at http://<addr>/mcp (or /sse).
    #[arg(long, env = "KNOWLEDGE_ADDR", default_value = knowledge::DEFAULT_ADDR)]
    addr: SocketAddr,
    /// Index the *.md files of this directory instead of the bundled documents.
    #[arg(long, env = "KNOWLEDGE_DOCS")]
    docs: Option<PathBuf>,
    /// Speak MCP on stdin/stdout instead of listening (for `transport = "stdio"`).
    #[arg(long)]
    stdio: bool,
    /// Require OAuth bearer tokens from this authorization server (its issuer URL).
    #[arg(long, env = "KNOWLEDGE_AUTH_ISSUER", requires = "auth_audience")]
    auth_issuer: Option<String>,
    /// This server's URL as tokens name it (`aud`), e.g. http://127.0.0.1:8931.
    #[arg(long, env = "KNOWLEDGE_AUTH_AUDIENCE", requires = "auth_issuer")]
    auth_audience: Option<String>,
    /// The scope every request needs.
    #[arg(long, env = "KNOWLEDGE_AUTH_SCOPE", default_value = "knowledge:read")]
    auth_scope: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parlor::mcp::servers::init_stderr_logging();
    let args = Args::parse();
    let docs = match &args.docs {
        Some(dir) => knowledge::documents_from_dir(dir)?,
        None => knowledge::bundled_documents(),
    };
    let kb = KnowledgeBase::build(docs)?;
    tracing::info!(
        docs = kb.documents().count(),
        passages = kb.passage_count(),
        message = "Knowledge index built."
    );
    let server = KnowledgeServer::new(Arc::new(kb));
    if args.stdio {
        return parlor::mcp::servers::serve_stdio(
            server,
            "knowledge",
            parlor::mcp::servers::shutdown_signal(),
        )
        .await;
    }
    let listener = parlor::mcp::servers::listen(args.addr).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mcp = %format!("http://{addr}/mcp"), sse = %format!("http://{addr}/sse"), message = "Knowledge server listening.");
    let protector = match (args.auth_issuer, args.auth_audience) {
        (Some(issuer), Some(audience)) => {
            let p = Protector::new(ProtectConfig {
                issuer,
                audience,
                scope: args.auth_scope,
            })?;
            tracing::info!(resource_metadata = %p.metadata_url(), message = "OAuth bearer tokens required.");
            Some(p)
        }
        _ => None,
    };
    knowledge::serve_protected(
        listener,
        server,
        protector,
        parlor::mcp::servers::shutdown_signal(),
    )
    .await?;
    tracing::info!(message = "Knowledge server stopped.");
    Ok(())
}
