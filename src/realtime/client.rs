//! The client end of the Realtime protocol: a WebSocket to a Realtime
//! server (OpenAI's, or parlor's own `/v1/realtime`), client events out,
//! server events in.
//!
//! Reading is lenient, as a client of a growing protocol must be: an event
//! of a type parlor does not act on (`rate_limits.updated`,
//! `output_audio_buffer.started`...) is skipped, and so is a known type
//! whose shape has moved on, with a warning, so one odd event never ends a
//! call. The carrier knows nothing of stages; `stages/realtime.rs` drives it.

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::events::{ClientEvent, ServerEvent};
use crate::dial::{dial, DialError, Socket};

/// Why the server could not be reached or stopped answering.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Realtime server at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the Realtime server at {url} refused the connection (HTTP {status}): {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the Realtime connection failed: {0}")]
    Socket(String),
}

/// Sends client events.
pub struct RealtimeTx {
    sink: SplitSink<Socket, Message>,
}

/// Receives server events.
pub struct RealtimeRx {
    stream: SplitStream<Socket>,
}

/// Open a session at `url` (the model already in its query), with `key` as
/// the bearer token when there is one.
///
/// # Errors
/// [`ClientError::Connect`] for a bad URL or a server that is not there,
/// [`ClientError::Refused`] for an HTTP answer other than the upgrade (a
/// wrong key, a wrong path), with the server's body.
pub async fn connect(
    url: &str,
    key: Option<&str>,
) -> Result<(RealtimeTx, RealtimeRx), ClientError> {
    let socket = dial(url, key).await.map_err(|e| match e {
        DialError::Unreachable(message) => ClientError::Connect {
            url: url.to_string(),
            message,
        },
        DialError::Refused { status, body } => ClientError::Refused {
            url: url.to_string(),
            status,
            body,
        },
    })?;
    let (sink, stream) = socket.split();
    Ok((RealtimeTx { sink }, RealtimeRx { stream }))
}

impl RealtimeTx {
    /// Send one client event.
    ///
    /// # Errors
    /// [`ClientError::Socket`] when the connection is gone.
    pub async fn send(&mut self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event).expect("client events serialize");
        self.sink
            .send(Message::text(text))
            .await
            .map_err(|e| ClientError::Socket(e.to_string()))
    }

    /// Close the connection politely (best effort).
    pub async fn close(mut self) {
        let _ = self.sink.send(Message::Close(None)).await;
        let _ = self.sink.close().await;
    }
}

impl RealtimeRx {
    /// The next server event parlor acts on; `Ok(None)` once the server
    /// has closed the connection. Cancel-safe.
    ///
    /// # Errors
    /// [`ClientError::Socket`] when the connection broke.
    pub async fn next(&mut self) -> Result<Option<ServerEvent>, ClientError> {
        loop {
            let message = match self.stream.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Socket(e.to_string())),
                Some(Ok(message)) => message,
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => return Ok(None),
                // Pings are answered by tungstenite; the protocol has no
                // binary messages.
                _ => continue,
            };
            if let Some(event) = read_event(&text) {
                return Ok(Some(event));
            }
        }
    }
}

/// One server event, or `None` for one parlor does not act on.
fn read_event(text: &str) -> Option<ServerEvent> {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => {
            tracing::warn!(message = "Realtime server sent text that is not JSON; skipped.", error = %e);
            return None;
        }
    };
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    let kind = kind.to_string();
    match serde_json::from_value::<ServerEvent>(value) {
        Ok(event) => Some(event),
        Err(e) => {
            // An unknown type fails with "unknown variant"; only a known
            // type that no longer reads is worth a warning.
            if !e.to_string().contains("unknown variant") {
                tracing::warn!(message = "Realtime server event did not read; skipped.", kind = %kind, error = %e);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_events_are_skipped_and_known_ones_read() {
        assert!(
            read_event(r#"{"type":"rate_limits.updated","event_id":"e1","rate_limits":[]}"#)
                .is_none()
        );
        assert!(read_event("not json").is_none());
        let event = read_event(
            r#"{"type":"input_audio_buffer.speech_started","event_id":"e2","audio_start_ms":120,"item_id":"item_1"}"#,
        );
        assert_eq!(
            event,
            Some(ServerEvent::SpeechStarted {
                audio_start_ms: 120,
                item_id: "item_1".into()
            })
        );
        // A known type missing a field the stage needs is skipped, not fatal.
        assert!(read_event(r#"{"type":"response.output_audio.delta","event_id":"e3"}"#).is_none());
    }
}
