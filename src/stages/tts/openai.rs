//! Any OpenAI-compatible `/v1/audio/speech` server: OpenAI itself, or
//! parlor's own `serve` with a local voice behind it.
//!
//! Asks for `response_format: "pcm"` (raw 24 kHz 16-bit little-endian mono)
//! because it needs no decoder and can be played as it arrives: each piece
//! of the response body goes downstream as soon as it is read.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::voice::{send_pieces, TtsError, Voice};
use crate::frame::AudioChunk;
use crate::spec::TtsSpec;

/// The rate of OpenAI's `pcm` format.
pub const PCM_RATE: u32 = 24_000;
pub const DEFAULT_MODEL: &str = "gpt-4o-mini-tts";
pub const DEFAULT_VOICE: &str = "alloy";

/// A server that does not answer within this is down or unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two pieces of the response: the first piece
/// waits for the server's first sentence, so it is generous.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of an error body kept for the message.
const MAX_ERROR_BODY: usize = 4096;

/// A voice on a speech server.
#[derive(Debug, Clone)]
pub struct OpenAiVoice {
    client: reqwest::Client,
    url: String,
    model: String,
    voice: String,
    instructions: Option<String>,
    speed: Option<f32>,
    /// `None`: no Authorization header (a local server needs none).
    api_key: Option<String>,
}

impl OpenAiVoice {
    /// A voice at `base_url` (`http://127.0.0.1:8080/v1`), no key, default
    /// speed.
    pub fn new(base_url: &str, model: &str, voice: &str) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            client,
            url: format!("{}/audio/speech", base_url.trim_end_matches('/')),
            model: model.to_string(),
            voice: voice.to_string(),
            instructions: None,
            speed: None,
            api_key: None,
        }
    }

    /// The voice a tts spec with `backend = "openai"` describes; the key is
    /// read from `api_key_env` now, and left out if it is unset or empty.
    pub fn from_spec(spec: &TtsSpec) -> Self {
        let mut voice = Self::new(
            &crate::spec::openai_base_url(spec.base_url.as_deref()),
            spec.model.as_deref().unwrap_or(DEFAULT_MODEL),
            spec.voice.as_deref().unwrap_or(DEFAULT_VOICE),
        );
        voice.instructions = spec.instructions.clone();
        // 1.0 is the server's default: leave it out for servers that do not
        // know the field.
        voice.speed = (spec.speed != 1.0).then_some(spec.speed);
        voice.api_key = std::env::var(&spec.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        voice
    }

    pub fn with_api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    pub fn with_speed(mut self, speed: f32) -> Self {
        self.speed = Some(speed);
        self
    }

    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = Some(instructions.into());
        self
    }

    /// The request for `text` at `speed` times the configured speed.
    fn body(&self, text: &str, speed: f32) -> Value {
        let mut body = json!({
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "response_format": "pcm",
        });
        if let Some(i) = &self.instructions {
            body["instructions"] = json!(i);
        }
        let speed = self.speed.unwrap_or(1.0) * speed;
        if speed != 1.0 {
            body["speed"] = json!(speed.clamp(0.25, 4.0));
        }
        body
    }

    async fn request(&self, text: &str, speed: f32) -> Result<reqwest::Response, TtsError> {
        let mut request = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(self.body(text, speed).to_string());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| TtsError::Connect {
            url: self.url.clone(),
            message: error_chain(&e),
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(TtsError::Server {
                status: status.as_u16(),
                message: error_message(&body[..body.len().min(MAX_ERROR_BODY)]),
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type.starts_with("application/json") || content_type.starts_with("text/") {
            return Err(TtsError::BadAudio(format!(
                "asked for raw PCM, got {content_type}"
            )));
        }
        Ok(response)
    }
}

/// The message of an OpenAI-shaped error body (`{"error": {"message"}}`),
/// or the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .or(Some(e))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// reqwest's own message says only "error sending request"; the cause
/// (connection refused, timed out) is further down the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

/// Turns little-endian 16-bit bytes into samples, keeping an odd last byte
/// in `carry` for the next piece (the body is split wherever the network
/// splits it).
pub fn pcm16_to_f32(carry: &mut Option<u8>, bytes: &[u8], out: &mut Vec<f32>) {
    let mut bytes = bytes;
    if let (Some(low), Some((&high, rest))) = (*carry, bytes.split_first()) {
        out.push(i16::from_le_bytes([low, high]) as f32 / 32_768.0);
        *carry = None;
        bytes = rest;
    }
    let pairs = bytes.chunks_exact(2);
    if let [last] = pairs.remainder() {
        *carry = Some(*last);
    }
    out.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]]) as f32 / 32_768.0));
}

#[async_trait::async_trait]
impl Voice for OpenAiVoice {
    fn name(&self) -> &'static str {
        "openai"
    }

    async fn speak_at(
        &self,
        text: &str,
        speed: f32,
        out: &mpsc::Sender<AudioChunk>,
    ) -> Result<(), TtsError> {
        if text.trim().is_empty() || out.is_closed() {
            return Ok(());
        }
        let response = tokio::select! {
            r = self.request(text, speed) => r?,
            () = out.closed() => return Ok(()),
        };
        let mut body = response.bytes_stream();
        let mut carry = None;
        let mut samples = Vec::new();
        loop {
            // Dropping the stream on cancel closes the connection, which
            // tells the server to stop synthesising.
            let piece = tokio::select! {
                piece = body.next() => piece,
                () = out.closed() => return Ok(()),
            };
            let Some(piece) = piece else { break };
            let piece = piece.map_err(|e| {
                TtsError::BadAudio(format!("the audio stream broke off: {}", error_chain(&e)))
            })?;
            samples.clear();
            pcm16_to_f32(&mut carry, &piece, &mut samples);
            if !samples.is_empty() && !send_pieces(out, PCM_RATE, &samples).await {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_splits_keep_every_sample() {
        let bytes: Vec<u8> = [1000i16, -2000, 32767, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        for split in [1, 3, 5, 7] {
            let (a, b) = bytes.split_at(split);
            let mut carry = None;
            let mut out = Vec::new();
            pcm16_to_f32(&mut carry, a, &mut out);
            pcm16_to_f32(&mut carry, b, &mut out);
            assert_eq!(carry, None);
            assert_eq!(
                out,
                [1000.0 / 32768.0, -2000.0 / 32768.0, 32767.0 / 32768.0, -1.0],
                "split at {split}"
            );
        }
    }

    #[test]
    fn openai_error_body_gives_its_message() {
        let body =
            br#"{"error": {"message": "Input is too long.", "type": "invalid_request_error"}}"#;
        assert_eq!(error_message(body), "Input is too long.");
        assert_eq!(error_message(b"Bad Gateway\n"), "Bad Gateway");
    }
}
