//! The `openai` stt backend: each turn's speech sent to any
//! `/v1/audio/transcriptions` server (OpenAI's whisper-1 or
//! gpt-4o-transcribe, parlor's own route, a third-party server) as a WAV in
//! a multipart form, the text taken from its JSON answer.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{run_stt, SttError, Transcriber};
use crate::audio::wav_bytes;
use crate::frame::Utterance;
use crate::spec::SttSpec;
use crate::stages::{Stage, StageContext, StageError, StageIo};

/// A turn is at most 30 s of speech; a server slower than this is down.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one transcription server. Cheap to share between calls.
#[derive(Debug)]
pub struct OpenAiTranscriber {
    http: reqwest::Client,
    url: String,
    model: String,
    language: String,
    api_key: Option<String>,
}

impl OpenAiTranscriber {
    /// From a validated spec: `base_url` (default OpenAI's), `model`,
    /// `language`, the key from `api_key_env` (none sent when unset, for a
    /// local server).
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn from_spec(spec: &SttSpec) -> Result<Self, SttError> {
        let base = crate::spec::openai_base_url(spec.base_url.as_deref());
        let url = format!("{base}/audio/transcriptions");
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| SttError::Remote {
                url: url.clone(),
                message: format!("cannot build an HTTP client: {e}"),
            })?;
        Ok(Self {
            http,
            url,
            model: spec.model.clone(),
            language: spec.language.clone(),
            api_key: std::env::var(&spec.api_key_env)
                .ok()
                .filter(|k| !k.is_empty()),
        })
    }

    /// The words in 16 kHz mono `samples`.
    ///
    /// # Errors
    /// [`SttError::Remote`] with the server's own message for a non-2xx
    /// answer, or why it could not be reached or understood.
    pub async fn transcribe_samples(&self, samples: &[f32]) -> Result<String, SttError> {
        let remote = |message: String| SttError::Remote {
            url: self.url.clone(),
            message,
        };
        let chunk =
            crate::frame::AudioChunk::new(crate::frame::PIPELINE_SAMPLE_RATE, samples.to_vec());
        let wav = wav_bytes(&chunk).map_err(|e| remote(e.to_string()))?;
        let file = reqwest::multipart::Part::bytes(wav)
            .file_name("turn.wav")
            .mime_str("audio/wav")
            .map_err(|e| remote(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.model.clone())
            .text("language", self.language.clone())
            .text("response_format", "json");
        let mut request = self.http.post(&self.url).multipart(form);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .send()
            .await
            .map_err(|e| remote(format!("unreachable: {e}")))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| remote(format!("the answer broke off: {e}")))?;
        let json: serde_json::Value = serde_json::from_slice(&body).map_err(|_| {
            remote(format!(
                "answered {status} with something that is not JSON: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        })?;
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            return Err(remote(format!("{status}: {message}")));
        }
        let text = json["text"]
            .as_str()
            .ok_or_else(|| remote(format!("the answer has no `text`: {json}")))?;
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// The `openai` stt stage.
pub struct OpenAiStt {
    client: Arc<OpenAiTranscriber>,
}

impl OpenAiStt {
    /// # Errors
    /// See [`OpenAiTranscriber::from_spec`].
    pub fn from_spec(spec: &SttSpec) -> Result<Self, SttError> {
        Ok(Self::shared(Arc::new(OpenAiTranscriber::from_spec(spec)?)))
    }

    /// A stage on a client other calls use too.
    pub fn shared(client: Arc<OpenAiTranscriber>) -> Self {
        Self { client }
    }
}

#[async_trait]
impl Transcriber for OpenAiStt {
    async fn transcribe(
        &self,
        utterance: Utterance,
        cancel: CancellationToken,
    ) -> Result<Option<String>, SttError> {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Ok(None),
            text = self.client.transcribe_samples(&utterance.audio.samples) => text.map(Some),
        }
    }
}

#[async_trait]
impl Stage for OpenAiStt {
    fn name(&self) -> &'static str {
        "stt"
    }

    async fn run(self: Box<Self>, io: StageIo, cx: StageContext) -> Result<(), StageError> {
        run_stt(&*self, io, cx).await
    }
}
