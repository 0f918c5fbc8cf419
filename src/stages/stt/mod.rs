//! Speech to text: turns each turn's speech into a transcript.
//!
//! Input: [`Frame::SpeechEnded`](crate::frame::Frame::SpeechEnded) with the
//! turn's 16 kHz mono audio. Output: one final
//! [`Frame::Transcript`](crate::frame::Frame::Transcript) per live turn with
//! speech in it (nothing for silence or a cancelled turn), then the frames
//! that followed, `EndOfTurn` included, unchanged. `SpeechEnded` itself is
//! consumed: the audio stops here.

pub mod openai;
pub mod whisper_local;

use std::path::PathBuf;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::frame::{Frame, Utterance, PIPELINE_SAMPLE_RATE};
use crate::spec::{SttBackend, SttSpec};

use super::{Stage, StageContext, StageError, StageIo};

pub use openai::OpenAiStt;
pub use whisper_local::{WhisperEngine, WhisperLocal, WhisperSettings};

/// What the fix is when the model file is missing or unreadable.
const SETUP_FIX: &str = "run `bash models/setup.sh` from the project root";

/// Why speech could not be turned into text.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error("whisper model file {} not found (fix: {SETUP_FIX}, or point the stt stage's `model` at a ggml Whisper file)", path.display())]
    ModelMissing { path: PathBuf },
    #[error("cannot load whisper model file {}: {reason} (fix: it must be a whisper.cpp ggml file; {SETUP_FIX} to recreate models/ggml-tiny.en.bin)", path.display())]
    ModelLoad { path: PathBuf, reason: String },
    #[error("audio must be {expected} Hz mono, got {got} Hz")]
    SampleRate { expected: u32, got: u32 },
    #[error("whisper failed: {0}")]
    Whisper(String),
    /// The turn was cancelled while it was being transcribed.
    #[error("transcription cancelled")]
    Cancelled,
    /// The transcription server failed or could not be reached.
    #[error("transcription server {url}: {message}")]
    Remote { url: String, message: String },
}

/// Build the stt stage a validated spec describes. Loads the model, so it
/// blocks for up to a second or two: call from `spawn_blocking`.
pub fn build(spec: &SttSpec) -> Result<Box<dyn Stage>, SttError> {
    match spec.backend {
        SttBackend::WhisperLocal => Ok(Box::new(WhisperLocal::load(spec)?)),
        SttBackend::Openai => Ok(Box::new(OpenAiStt::from_spec(spec)?)),
    }
}

/// One backend's job: the words in one turn's speech.
#[async_trait]
pub trait Transcriber: Send + Sync + 'static {
    /// The text of `utterance` (16 kHz mono), "" for no words; `Ok(None)`
    /// as soon as `cancel` fires (the turn was cancelled).
    async fn transcribe(
        &self,
        utterance: Utterance,
        cancel: CancellationToken,
    ) -> Result<Option<String>, SttError>;
}

/// The stt stage's loop around any [`Transcriber`]: consumes
/// `SpeechEnded`, sends the turn's final `Transcript`, passes everything
/// else on. A failed transcription costs its turn (a `TurnError` says why),
/// not the call.
pub async fn run_stt(
    transcriber: &impl Transcriber,
    mut io: StageIo,
    cx: StageContext,
) -> Result<(), StageError> {
    while let Some(frame) = io.recv_until(&cx.shutdown).await {
        let Frame::SpeechEnded(utterance) = frame else {
            // Not ours: passing it on must not start the turn's clock.
            io.forward(frame).await?;
            continue;
        };
        let turn = utterance.turn;
        if !cx.turns.is_live(turn) {
            tracing::debug!(message = "Dropping the speech of a cancelled turn.", %turn);
            continue;
        }
        if utterance.audio.sample_rate != PIPELINE_SAMPLE_RATE {
            let e = SttError::SampleRate {
                expected: PIPELINE_SAMPLE_RATE,
                got: utterance.audio.sample_rate,
            };
            return Err(StageError::failed("stt", e.to_string()));
        }
        let seconds = utterance.audio.duration().as_secs_f64();
        // The turn's token is a child of the shutdown token, so shutting
        // down stops a running transcription too.
        let text = match transcriber
            .transcribe(utterance, cx.turns.token(turn))
            .await
        {
            Ok(Some(text)) => text,
            Ok(None) | Err(SttError::Cancelled) => {
                tracing::debug!(message = "Transcription cancelled with its turn.", %turn);
                continue;
            }
            Err(error) => {
                tracing::warn!(message = "Transcription failed.", %turn, %error);
                io.send(Frame::TurnError {
                    turn,
                    stage: "stt",
                    message: error.to_string(),
                })
                .await?;
                continue;
            }
        };
        // Cancelled right after the transcription finished: the text is stale.
        if !cx.turns.is_live(turn) {
            continue;
        }
        tracing::debug!(message = "Transcribed.", %turn, seconds, chars = text.len());
        if text.is_empty() {
            continue;
        }
        io.send(Frame::Transcript {
            turn,
            text,
            is_final: true,
        })
        .await?;
    }
    Ok(())
}
