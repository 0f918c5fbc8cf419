//! The live-call protocol: what goes over `GET /v1/calls`' WebSocket.
//!
//! - Caller → parlor: binary frames of 16-bit little-endian mono PCM at the
//!   `sample_rate` the URL gave (20 ms a frame is usual; any length up to the
//!   server's message limit), and text frames holding a [`ClientMessage`].
//! - parlor → caller: text frames holding a [`ServerEvent`], and binary frames
//!   of reply audio (16-bit little-endian mono PCM at the `output_sample_rate`
//!   of `call.started`, 20 ms each). Binary frames belong to the turn of the
//!   last `reply.audio` or `filler` event.
//!
//! Events carry the turn they belong to; a caller shows them as they come.
//! On `barge_in` the caller drops whatever reply audio it has buffered.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An event parlor sends to the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    /// First event of every call.
    #[serde(rename = "call.started")]
    CallStarted {
        call_id: String,
        pipeline: String,
        input_sample_rate: u32,
        output_sample_rate: u32,
    },
    /// The VAD heard the caller start a turn (`at_ms` into the call's audio).
    #[serde(rename = "speech.started")]
    SpeechStarted { turn: u64, at_ms: u64 },
    /// The caller's turn is over; `speech_ms` of speech was heard.
    #[serde(rename = "speech.ended")]
    SpeechEnded { turn: u64, speech_ms: u64 },
    /// What the caller said.
    #[serde(rename = "transcript")]
    Transcript {
        turn: u64,
        text: String,
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// A tool call the planner made, once it finished.
    #[serde(rename = "tool_call")]
    ToolCall {
        turn: u64,
        server: String,
        tool: String,
        arguments: Value,
        is_error: bool,
        /// `None` for a call a hosted server made (not timed here).
        latency_ms: Option<f64>,
    },
    /// Reply text as the planner writes it.
    #[serde(rename = "reply.delta")]
    ReplyDelta { turn: u64, text: String },
    /// A filler is about to be spoken while a slow tool call runs.
    #[serde(rename = "filler")]
    Filler { turn: u64, text: String },
    /// The binary frames that follow speak `text` (a sentence or clause of
    /// the reply).
    #[serde(rename = "reply.audio")]
    ReplyAudio { turn: u64, text: String },
    /// The caller spoke over the reply: parlor stopped sending its audio.
    /// `played_ms` of it had played, and `heard` is the reply's text up to
    /// there, which is all the conversation keeps of it.
    #[serde(rename = "barge_in")]
    BargeIn {
        turn: u64,
        played_ms: u64,
        heard: String,
    },
    /// A sensitive tool call waits for the caller's approval: answer with
    /// a `tool.confirm` message carrying the same `id` within `timeout_ms`,
    /// or it is not done.
    #[serde(rename = "tool.confirm")]
    ToolConfirm {
        id: String,
        server: String,
        tool: String,
        arguments: Value,
        timeout_ms: u64,
    },
    /// A stage could not do its part of the turn; the call goes on.
    #[serde(rename = "turn.error")]
    TurnError {
        turn: u64,
        stage: String,
        message: String,
    },
    /// The turn is over and all its audio sent.
    #[serde(rename = "turn.done")]
    TurnDone {
        turn: u64,
        transcript: String,
        reply: String,
        /// Whether a barge-in cut the reply short.
        interrupted: bool,
        /// From the end of the caller's speech to the first reply audio
        /// sent; `None` if nothing was spoken.
        voice_to_voice_ms: Option<f64>,
        /// Each stage's timings (see `TurnMetrics`).
        stages: Value,
        /// What the turn consumed: tokens, seconds of audio, characters
        /// (what an API would bill; see `TurnMetrics`).
        #[serde(default)]
        usage: crate::frame::Usage,
    },
    /// Something the caller sent was wrong; the call goes on.
    #[serde(rename = "error")]
    Error { code: String, message: String },
    /// Last event: why the call ended. The socket closes after it.
    #[serde(rename = "call.ended")]
    CallEnded { reason: String },
}

impl ServerEvent {
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ServerEvent::Error {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A control message from the caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientMessage {
    /// No more audio: parlor finishes the turns in flight, sends the rest of
    /// their audio, then `call.ended` and closes.
    #[serde(rename = "end")]
    End,
    /// The caller's answer to a `tool.confirm` event.
    #[serde(rename = "tool.confirm")]
    Confirm { id: String, approve: bool },
}

impl ClientMessage {
    /// Read a text frame, with a message that says what was expected.
    ///
    /// # Errors
    /// A sentence for the caller's `error` event.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| {
            let shown: String = text.chars().take(60).collect();
            format!(
                "text frames carry JSON control messages ({{\"type\":\"end\"}}); \
                 audio goes in binary frames of 16-bit PCM. Could not read {shown:?}: {e}"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_with_dotted_types() {
        let event = ServerEvent::Transcript {
            turn: 2,
            text: "hi".into(),
            is_final: true,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "transcript", "turn": 2, "text": "hi", "final": true})
        );
        assert_eq!(serde_json::from_value::<ServerEvent>(json).unwrap(), event);
    }

    #[test]
    fn control_messages_and_what_is_not_one() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"end"}"#),
            Ok(ClientMessage::End)
        );
        let err = ClientMessage::parse("hello there").unwrap_err();
        assert!(err.contains("binary frames"), "{err}");
        assert!(ClientMessage::parse(r#"{"type":"dance"}"#).is_err());
        assert_eq!(
            ClientMessage::parse(r#"{"type":"tool.confirm","id":"c1","approve":true}"#),
            Ok(ClientMessage::Confirm {
                id: "c1".into(),
                approve: true
            })
        );
        assert!(ClientMessage::parse(r#"{"type":"tool.confirm","id":"c1"}"#).is_err());
    }
}
