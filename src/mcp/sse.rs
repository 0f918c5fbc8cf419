//! The legacy HTTP+SSE client transport (MCP 2024-11-05), which rmcp 3.x no
//! longer ships.
//!
//! The client opens `GET <url>` as a `text/event-stream`. The server's first
//! event is `endpoint`, whose data is the URL (often relative, with a session
//! id in the query) to which the client POSTs each JSON-RPC message. Every
//! message from the server arrives on the stream as a `message` event.
//!
//! One task reads the stream and forwards messages through a bounded channel;
//! when the stream ends (server gone) the channel closes and rmcp sees the
//! transport as closed. POSTs run concurrently, each with a deadline.
//!
//! With a [`TokenSource`], the GET and every POST carry its bearer token; a
//! 401 is retried once with a new token.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use reqwest::Url;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::Transport;
use rmcp::RoleClient;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::oauth::{OAuthError, TokenSource};

/// Messages buffered from the stream before the reader waits for rmcp.
const INBOX_CAPACITY: usize = 64;

#[derive(Debug, Error)]
pub enum SseError {
    #[error("bad URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("GET {url}: {source}")]
    Get {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status} (is this an MCP SSE endpoint?)")]
    GetStatus { url: String, status: u16 },
    #[error("GET {url}: content type {content_type:?}, expected text/event-stream")]
    NotEventStream { url: String, content_type: String },
    #[error("{url}: no `endpoint` event within {after:?}")]
    NoEndpoint { url: String, after: Duration },
    #[error("{url}: stream ended before the `endpoint` event")]
    ClosedEarly { url: String },
    #[error("{url}: the server announced {endpoint} for its messages, another origin than the one allowed; refused (parlor posts only to the allowed server, with its token)")]
    ForeignEndpoint { url: String, endpoint: String },
    #[error("POST {url}: {source}")]
    Post {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("POST {url}: HTTP {status}: {body}")]
    PostStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("OAuth: {0}")]
    OAuth(#[from] OAuthError),
    #[error("{url}: the server rejected a freshly issued access token (HTTP 401)")]
    TokenRejected { url: String },
    #[error("{url}: the server requires scope \"{scope}\", which the access token does not have (403 insufficient_scope; add it to `scopes` in [mcp.NAME.oauth] and to the client's registration)")]
    InsufficientScope { url: String, scope: String },
    #[error("encode message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A client transport over the legacy HTTP+SSE protocol.
pub struct SseClientTransport {
    http: reqwest::Client,
    endpoint: Url,
    inbox: mpsc::Receiver<ServerJsonRpcMessage>,
    reader: JoinHandle<()>,
    post_timeout: Duration,
    tokens: Option<Arc<TokenSource>>,
}

/// Sends the request `build` makes, with a bearer token from `tokens` if
/// any; on a 401, once more with a new token. A 401 after that and a 403
/// `insufficient_scope` become [`SseError`]s that say so.
async fn send_authorized(
    tokens: Option<&TokenSource>,
    url: &str,
    build: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Result<reqwest::Response, reqwest::Error>, SseError> {
    let Some(tokens) = tokens else {
        return Ok(build().send().await);
    };
    let token = tokens.token().await?;
    let mut response = build()
        .bearer_auth(secrecy::ExposeSecret::expose_secret(&token))
        .send()
        .await;
    if matches!(&response, Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED) {
        tracing::info!(message = "Access token rejected (401); getting a new one.", %url);
        let fresh = tokens.after_rejection(&token).await?;
        response = build()
            .bearer_auth(secrecy::ExposeSecret::expose_secret(&fresh))
            .send()
            .await;
    }
    if let Ok(r) = &response {
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SseError::TokenRejected { url: url.into() });
        }
        if r.status() == reqwest::StatusCode::FORBIDDEN {
            let scope = r
                .headers()
                .get_all(reqwest::header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| super::oauth::challenge_param(v, "scope"));
            if let Some(scope) = scope {
                return Err(SseError::InsufficientScope {
                    url: url.into(),
                    scope,
                });
            }
        }
    }
    Ok(response)
}

impl SseClientTransport {
    /// Opens the event stream at `url` and waits (up to `timeout`) for the
    /// server to announce its POST endpoint.
    ///
    /// # Errors
    /// A bad URL, a refused connection, a non-2xx answer, a body that is not
    /// an event stream, or no `endpoint` event in time.
    pub async fn connect(
        url: &str,
        tokens: Option<Arc<TokenSource>>,
        timeout: Duration,
    ) -> Result<Self, SseError> {
        let base = Url::parse(url).map_err(|e| SseError::BadUrl {
            url: url.into(),
            reason: e.to_string(),
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .build()
            .map_err(|source| SseError::Get {
                url: url.into(),
                source,
            })?;
        let get = send_authorized(tokens.as_deref(), url, || {
            http.get(base.clone()).header("accept", "text/event-stream")
        });
        let response = match tokio::time::timeout(timeout, get).await {
            Ok(r) => r?.map_err(|source| SseError::Get {
                url: url.into(),
                source,
            })?,
            Err(_) => {
                return Err(SseError::NoEndpoint {
                    url: url.into(),
                    after: timeout,
                })
            }
        };
        if !response.status().is_success() {
            return Err(SseError::GetStatus {
                url: url.into(),
                status: response.status().as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if !content_type.starts_with("text/event-stream") {
            return Err(SseError::NotEventStream {
                url: url.into(),
                content_type,
            });
        }
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let (inbox_tx, inbox) = mpsc::channel(INBOX_CAPACITY);
        let reader = tokio::spawn(read_stream(
            response.bytes_stream(),
            endpoint_tx,
            inbox_tx,
            url.to_string(),
        ));
        let endpoint = match tokio::time::timeout(timeout, endpoint_rx).await {
            Ok(Ok(e)) => e,
            Ok(Err(_)) => {
                reader.abort();
                return Err(SseError::ClosedEarly { url: url.into() });
            }
            Err(_) => {
                reader.abort();
                return Err(SseError::NoEndpoint {
                    url: url.into(),
                    after: timeout,
                });
            }
        };
        let endpoint = resolve_endpoint(&base, &endpoint)?;
        tracing::debug!(message = "SSE endpoint announced.", %endpoint);
        Ok(Self {
            http,
            endpoint,
            inbox,
            reader,
            post_timeout: timeout,
            tokens,
        })
    }

    /// Deadline for each POST (default: the connect timeout).
    pub fn with_post_timeout(mut self, timeout: Duration) -> Self {
        self.post_timeout = timeout;
        self
    }

    /// Where messages are POSTed.
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }
}

impl Drop for SseClientTransport {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads the event stream: the first `endpoint` event goes to `endpoint_tx`,
/// every `message` event (parsed) to `inbox`. Ends when the stream ends, the
/// receiver is gone, or a read fails.
async fn read_stream<B: AsRef<[u8]>>(
    mut body: impl futures::Stream<Item = reqwest::Result<B>> + Unpin,
    endpoint_tx: oneshot::Sender<String>,
    inbox: mpsc::Sender<ServerJsonRpcMessage>,
    url: String,
) {
    let mut endpoint_tx = Some(endpoint_tx);
    let mut parser = SseParser::default();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(message = "SSE stream broke.", %url, error = %e);
                return;
            }
        };
        for event in parser.feed(chunk.as_ref()) {
            match event.event.as_deref().unwrap_or("message") {
                "endpoint" => {
                    if let Some(tx) = endpoint_tx.take() {
                        let _ = tx.send(event.data);
                    }
                }
                "message" => match serde_json::from_str::<ServerJsonRpcMessage>(&event.data) {
                    Ok(m) => {
                        if inbox.send(m).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(message = "Unparseable SSE message dropped.", %url, error = %e)
                    }
                },
                other => tracing::debug!(message = "SSE event ignored.", %url, event = other),
            }
        }
    }
    tracing::debug!(message = "SSE stream ended.", %url);
}

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// An incremental `text/event-stream` parser (the WHATWG rules parlor needs:
/// `event`, `data` lines joined by `\n`, comments, CR/LF/CRLF line ends).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    last_was_cr: bool,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' && self.last_was_cr {
                self.last_was_cr = false;
                continue;
            }
            self.last_was_cr = b == b'\r';
            if b == b'\n' || b == b'\r' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&String::from_utf8_lossy(&line), &mut out);
            } else {
                self.line.push(b);
            }
        }
        out
    }

    fn line_done(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: self.event.take(),
                    data,
                });
            }
            self.event = None;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

impl Transport<RoleClient> for SseClientTransport {
    type Error = SseError;

    fn name() -> Cow<'static, str> {
        "legacy-sse".into()
    }

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send + 'static {
        let http = self.http.clone();
        let url = self.endpoint.clone();
        let timeout = self.post_timeout;
        let tokens = self.tokens.clone();
        async move {
            let body = serde_json::to_vec(&item)?;
            let response = send_authorized(tokens.as_deref(), url.as_str(), || {
                http.post(url.clone())
                    .header("content-type", "application/json")
                    .timeout(timeout)
                    .body(body.clone())
            })
            .await?
            .map_err(|source| SseError::Post {
                url: url.to_string(),
                source,
            })?;
            let status = response.status();
            if !status.is_success() {
                let body = response.text().await.unwrap_or_default();
                return Err(SseError::PostStatus {
                    url: url.to_string(),
                    status: status.as_u16(),
                    body: body.chars().take(200).collect(),
                });
            }
            Ok(())
        }
    }

    fn receive(
        &mut self,
    ) -> impl std::future::Future<Output = Option<ServerJsonRpcMessage>> + Send {
        self.inbox.recv()
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.reader.abort();
        self.inbox.close();
        Ok(())
    }
}

/// Where the server said to POST, resolved against the stream's URL. It
/// must be the same origin (scheme, host and port): the allow-list and the
/// bearer token are for that server, and a hostile one must not be able to
/// send parlor's messages, token included, elsewhere.
fn resolve_endpoint(base: &Url, announced: &str) -> Result<Url, SseError> {
    let endpoint = base.join(announced.trim()).map_err(|e| SseError::BadUrl {
        url: announced.to_string(),
        reason: e.to_string(),
    })?;
    if endpoint.origin() != base.origin() {
        return Err(SseError::ForeignEndpoint {
            url: base.to_string(),
            endpoint: endpoint.to_string(),
        });
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_endpoint_must_be_the_streams_origin() {
        let base = Url::parse("http://127.0.0.1:8931/sse").unwrap();
        let ok = resolve_endpoint(&base, " /messages?session=1\n").unwrap();
        assert_eq!(ok.as_str(), "http://127.0.0.1:8931/messages?session=1");
        let same = resolve_endpoint(&base, "http://127.0.0.1:8931/m").unwrap();
        assert_eq!(same.path(), "/m");
        for foreign in [
            "http://evil.example/messages",
            "https://127.0.0.1:8931/messages",
            "http://127.0.0.1:9999/messages",
            "//evil.example/messages",
        ] {
            let err = resolve_endpoint(&base, foreign).unwrap_err();
            assert!(
                matches!(err, SseError::ForeignEndpoint { .. }),
                "{foreign}: {err}"
            );
            assert!(err.to_string().contains("another origin"), "{err}");
        }
    }

    #[test]
    fn parses_split_events_and_line_ends() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: endpoint\r\ndata: /messages?s").is_empty());
        let ev = p.feed(b"=1\r\n\r\n: ping\n\ndata: {\"a\":1}\ndata: x\n\n");
        assert_eq!(
            ev,
            vec![
                SseEvent {
                    event: Some("endpoint".into()),
                    data: "/messages?s=1".into()
                },
                SseEvent {
                    event: None,
                    data: "{\"a\":1}\nx".into()
                },
            ]
        );
        let ev = p.feed(b"event: message\rdata:y\r\r");
        assert_eq!(ev[0].data, "y");
    }
}
