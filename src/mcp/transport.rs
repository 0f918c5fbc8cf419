//! From an `[mcp.NAME]` table to a live rmcp client session.
//!
//! - `stdio`: a child process. Its environment is cleared and rebuilt from
//!   PATH plus the spec's `env` only, so one server's secrets never reach
//!   another (nor does parlor's own environment). Its stderr goes to tracing
//!   (stdout is the protocol).
//! - `sse`: the legacy HTTP+SSE transport in [`super::sse`].
//! - `streamable-http`: rmcp's Streamable HTTP client.
//!
//! A remote server with `[mcp.NAME.oauth]` gets its [`TokenSource`]'s
//! bearer token on every request ([`super::bearer`] for Streamable HTTP).
//!
//! The handshake sends `initialize` with the newest protocol version that
//! still has one ([`ProtocolVersion::LATEST_WITH_INITIALIZE`]); servers answer
//! with the newest they speak, down to 2024-11-05, and rmcp uses that.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{ClientConfig, ProtocolVersion};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::bearer::BearerClient;
use super::error::McpError;
use super::oauth::TokenSource;
use super::sse::SseClientTransport;
use crate::spec::McpServerSpec;

/// What parlor says about itself in `initialize`.
pub fn client_config() -> ClientConfig {
    serde_json::from_value(serde_json::json!({
        "protocolVersion": ProtocolVersion::LATEST_WITH_INITIALIZE.as_str(),
        "capabilities": {},
        "clientInfo": { "name": "parlor", "version": env!("CARGO_PKG_VERSION") },
    }))
    .expect("static client config")
}

/// The transport's name as written in the spec.
pub fn transport_name(spec: &McpServerSpec) -> &'static str {
    match spec {
        McpServerSpec::Stdio { .. } => "stdio",
        McpServerSpec::Sse { .. } => "sse",
        McpServerSpec::StreamableHttp { .. } => "streamable-http",
        McpServerSpec::Hosted(_) => "hosted",
    }
}

/// Where the server is: the command line or the URL.
pub fn target(spec: &McpServerSpec) -> String {
    match spec {
        McpServerSpec::Stdio { command, args, .. } => std::iter::once(command.as_str())
            .chain(args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        McpServerSpec::Sse { url, .. } | McpServerSpec::StreamableHttp { url, .. } => url.clone(),
        McpServerSpec::Hosted(hosted) => hosted.url.clone(),
    }
}

/// The token source of a remote server with `[mcp.NAME.oauth]`: built once
/// per server, so reconnects reuse its token.
///
/// # Errors
/// [`McpError::Connect`] when the client secret's variable is unset.
pub fn token_source(
    name: &str,
    spec: &McpServerSpec,
) -> Result<Option<Arc<TokenSource>>, McpError> {
    let (McpServerSpec::Sse {
        url,
        oauth: Some(oauth),
    }
    | McpServerSpec::StreamableHttp {
        url,
        oauth: Some(oauth),
    }) = spec
    else {
        return Ok(None);
    };
    TokenSource::new(name, url, oauth)
        .map(|t| Some(Arc::new(t)))
        .map_err(|e| McpError::Connect {
            server: name.to_string(),
            reason: e.to_string(),
        })
}

/// Connects to server `name` and completes the MCP handshake within
/// `timeout`. `tokens` (from [`token_source`]) authorizes a remote server.
///
/// # Errors
/// [`McpError::Connect`] when the transport cannot be set up (bad command or
/// URL), [`McpError::Handshake`] when `initialize` fails,
/// [`McpError::Timeout`] when either takes longer than `timeout`, and
/// [`McpError::NotConnectable`] for `hosted` servers.
pub async fn connect<H: ClientHandler>(
    name: &str,
    spec: &McpServerSpec,
    handler: H,
    tokens: Option<Arc<TokenSource>>,
    timeout: Duration,
) -> Result<RunningService<RoleClient, H>, McpError> {
    let connect_err = |reason: String| McpError::Connect {
        server: name.to_string(),
        reason,
    };
    let handshake = |e: rmcp::service::ClientInitializeError| McpError::Handshake {
        server: name.to_string(),
        reason: init_reason(&e),
    };
    let deadline = |_| McpError::Timeout {
        server: name.to_string(),
        what: "connect and initialize",
        after: timeout,
    };
    match spec {
        McpServerSpec::Stdio { command, args, env } => {
            let mut cmd = tokio::process::Command::new(resolve_command(command));
            cmd.args(args).env_clear();
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", path);
            }
            for (key, value) in env {
                let value = crate::spec::expand_env(value)
                    .map_err(|why| connect_err(format!("env {key}: {why}")))?;
                cmd.env(key, value);
            }
            cmd.kill_on_drop(true);
            let (child, stderr) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| connect_err(format!("cannot start `{command}`: {e}")))?;
            if let Some(stderr) = stderr {
                let server = name.to_string();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(stderr).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        tracing::info!(message = "MCP server stderr.", server = %server, line = %line);
                    }
                });
            }
            tokio::time::timeout(timeout, handler.serve(child))
                .await
                .map_err(deadline)?
                .map_err(handshake)
        }
        McpServerSpec::Sse { url, .. } => {
            let transport = SseClientTransport::connect(url, tokens, timeout)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            tokio::time::timeout(timeout, handler.serve(transport))
                .await
                .map_err(deadline)?
                .map_err(handshake)
        }
        McpServerSpec::StreamableHttp { url, .. } => {
            reqwest::Url::parse(url).map_err(|e| connect_err(format!("bad URL {url:?}: {e}")))?;
            let served = match tokens {
                None => {
                    let transport = StreamableHttpClientTransport::from_uri(url.as_str());
                    tokio::time::timeout(timeout, handler.serve(transport)).await
                }
                Some(tokens) => {
                    let client = BearerClient::new(reqwest::Client::new(), tokens);
                    let transport = StreamableHttpClientTransport::with_client(
                        client,
                        StreamableHttpClientTransportConfig::with_uri(url.as_str()),
                    );
                    tokio::time::timeout(timeout, handler.serve(transport)).await
                }
            };
            served
                .map_err(deadline)?
                .map_err(|e| connect_err(format!("{url}: {}", init_reason(&e))))
        }
        McpServerSpec::Hosted(_) => Err(McpError::NotConnectable {
            server: name.to_string(),
            transport: "hosted".into(),
        }),
    }
}

/// The handshake error with its causes: rmcp's outer message ("send
/// initialize request") hides why, e.g. the OAuth failure or missing scope.
fn init_reason(e: &rmcp::service::ClientInitializeError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// A bare command name (no `/`) that is not on `PATH` but sits beside the
/// running executable (or, for a test or example binary in `deps/` or
/// `examples/`, one level up) is
/// taken from there: so `command = "parlor-mcp-orders"` works from a build
/// tree without installing anything.
pub fn resolve_command(command: &str) -> std::path::PathBuf {
    let bare = std::path::PathBuf::from(command);
    if command.contains('/') || on_path(command) {
        return bare;
    }
    let Ok(exe) = std::env::current_exe() else {
        return bare;
    };
    let dirs = exe.parent().into_iter().chain(
        exe.parent()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| n == "deps" || n == "examples")
            })
            .and_then(|d| d.parent()),
    );
    for dir in dirs {
        let candidate = dir.join(command);
        if candidate.is_file() {
            return candidate;
        }
    }
    bare
}

fn on_path(command: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}
