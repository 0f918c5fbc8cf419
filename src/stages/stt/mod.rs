//! Speech to text: turns each turn's speech into a transcript.
//!
//! Input: [`Frame::SpeechEnded`](crate::frame::Frame::SpeechEnded) with the
//! turn's 16 kHz mono audio. Output: one final
//! [`Frame::Transcript`](crate::frame::Frame::Transcript) per live turn with
//! speech in it (nothing for silence or a cancelled turn), then the frames
//! that followed, `EndOfTurn` included, unchanged. `SpeechEnded` itself is
//! consumed: the audio stops here.

pub mod whisper_local;

use std::path::PathBuf;

use crate::spec::{SttBackend, SttSpec};

use super::Stage;

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
    #[error("the {0} speech-to-text backend is not available in this build yet")]
    NotAvailable(&'static str),
}

/// Build the stt stage a validated spec describes. Loads the model, so it
/// blocks for up to a second or two: call from `spawn_blocking`.
pub fn build(spec: &SttSpec) -> Result<Box<dyn Stage>, SttError> {
    match spec.backend {
        SttBackend::WhisperLocal => Ok(Box::new(WhisperLocal::load(spec)?)),
        SttBackend::Openai => Err(SttError::NotAvailable("openai")),
    }
}
