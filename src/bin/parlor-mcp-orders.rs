//! `parlor-mcp-orders`: the orders and customer database as an MCP server over stdio.
//!
//! stdout carries the protocol, so logs go to stderr only.

use std::path::PathBuf;

use clap::Parser;

/// Orders and customers (SQLite) as an MCP server on stdin/stdout.
#[derive(Debug, Parser)]
#[command(name = "parlor-mcp-orders", version)]
struct Args {
    /// The SQLite database; created and seeded with the bundled demo data when missing.
    #[arg(long, env = "ORDERS_DB", default_value = "pipelines/data/orders.db")]
    db: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    parlor::mcp::servers::init_stderr_logging();
    let args = Args::parse();
    parlor::mcp::servers::orders::serve_stdio(&args.db, parlor::mcp::servers::shutdown_signal())
        .await
}
