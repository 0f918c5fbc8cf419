//! Opening a client WebSocket, with a bearer key when there is one: the
//! live-call client and the Realtime client differ in what they say once
//! connected, not in how they connect.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A client WebSocket, over TLS for `wss://`.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why [`dial`] got no socket; each client words it for its own callers.
#[derive(Debug)]
pub(crate) enum DialError {
    /// A bad URL or key, or nothing answering there.
    Unreachable(String),
    /// The server answered the upgrade with an HTTP error (a wrong key, a
    /// wrong path, no room), and its body.
    Refused { status: u16, body: String },
}

/// How much a read asks the socket for. tungstenite zeroes this much of
/// its buffer before every read: at its 128 KiB default that memset was a
/// quarter of a live caller's CPU (perf, 1,000 callers sending 20 ms
/// frames). A live call's audio and events come in pieces of a few KiB;
/// a larger message (a Realtime server's base64 audio delta) is still read
/// whole, in more reads.
const READ_BUFFER: usize = 8 * 1024;

/// Connect to `url`, sending `key` (unless empty) as `Authorization: Bearer`.
pub(crate) async fn dial(url: &str, key: Option<&str>) -> Result<Socket, DialError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| DialError::Unreachable(e.to_string()))?;
    if let Some(key) = key.filter(|k| !k.is_empty()) {
        let value = format!("Bearer {key}").parse().map_err(|_| {
            DialError::Unreachable("the API key is not a valid header value".into())
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    // No Nagle (`true`): a caller's 20 ms frames and a Realtime client's
    // small events should leave when written, not wait for an ACK.
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => DialError::Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            },
            other => DialError::Unreachable(other.to_string()),
        })?;
    Ok(socket)
}
