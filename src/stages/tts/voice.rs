//! The voice contract: what the TTS stage and the `/v1/audio/speech` route
//! call, whichever synthesiser is behind it.
//!
//! Layout: [`Voice`] (text in, audio out through a channel), [`TtsError`],
//! [`load_voice`] (a spec to a voice); the backends are siblings:
//! [`super::piper`] (with [`super::phonemes`]), [`super::espeak`],
//! [`super::openai`].

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::frame::AudioChunk;
use crate::spec::{TtsBackend, TtsSpec};

/// What the fix is when a model file is missing.
pub(crate) const SETUP_FIX: &str = "run `bash models/setup.sh` from the project root";

/// Audio is sent in pieces of about this length, so a cancelled turn stops
/// within one piece of playback instead of at the end of a sentence.
pub(crate) const PIECE_MS: u32 = 100;

/// A synthesiser: text in, mono audio out.
#[async_trait::async_trait]
pub trait Voice: Send + Sync + 'static {
    /// Short stable name for logs ("piper", "espeak", "openai").
    fn name(&self) -> &'static str;
    /// Speak one chunk of text (a sentence or clause), sending mono f32 audio in [-1, 1]
    /// to `out` as it is made (any sample rate; the stage resamples). Returns Ok(()) promptly
    /// if `out` is closed (receiver gone = turn cancelled). Empty/whitespace text sends nothing.
    async fn speak(&self, text: &str, out: &mpsc::Sender<AudioChunk>) -> Result<(), TtsError> {
        self.speak_at(text, 1.0, out).await
    }

    /// [`Self::speak`] at `speed` times the voice's own rate (0.25 to 4;
    /// the `speed` of a `/v1/audio/speech` request). Every voice honours
    /// it: none may ignore a speed the caller asked for.
    async fn speak_at(
        &self,
        text: &str,
        speed: f32,
        out: &mpsc::Sender<AudioChunk>,
    ) -> Result<(), TtsError>;
}

/// Why text could not be turned into speech.
#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("Piper model file {} not found (fix: {SETUP_FIX}, or point the tts stage's `model` at a Piper .onnx file, or use backend = \"espeak\")", path.display())]
    ModelMissing { path: PathBuf },
    #[error("cannot read Piper voice config {}: {reason} (fix: the config is the model's path plus `.json`, as Piper ships it; {SETUP_FIX} to recreate it)", path.display())]
    BadConfig { path: PathBuf, reason: String },
    #[error("cannot load Piper model {}: {message} (fix: it must be a Piper VITS .onnx file; {SETUP_FIX} to recreate it)", path.display())]
    ModelLoad { path: PathBuf, message: String },
    /// onnxruntime is missing or unusable (the message has the fix).
    #[error("{0}")]
    Runtime(String),
    #[error("Piper inference failed: {0}")]
    Inference(String),
    #[error("espeak-ng is not installed or not on PATH (fix: `apt-get install espeak-ng`, or {SETUP_FIX})")]
    EspeakMissing,
    #[error("espeak-ng failed: {0}")]
    Espeak(String),
    #[error("cannot reach the speech server at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the speech server answered {status}: {message}")]
    Server { status: u16, message: String },
    #[error("the speech server's audio is unusable: {0}")]
    BadAudio(String),
}

/// Build the voice a validated tts spec describes. Blocking (loads a model): call from spawn_blocking.
/// Relative paths are resolved by the caller already (spec paths are relative to the cwd like the other stages).
///
/// # Errors
/// The backend's load errors: a missing or unreadable Piper model or config,
/// onnxruntime missing, espeak-ng not installed.
pub fn load_voice(spec: &TtsSpec) -> Result<Arc<dyn Voice>, TtsError> {
    Ok(match spec.backend {
        TtsBackend::Local => Arc::new(super::piper::PiperVoice::load(
            &spec.local_model(),
            &spec.onnxruntime,
            spec.speed,
        )?),
        TtsBackend::Espeak => Arc::new(super::espeak::EspeakVoice::new(
            spec.voice
                .as_deref()
                .unwrap_or(super::espeak::DEFAULT_VOICE),
            spec.speed,
        )?),
        TtsBackend::Openai => Arc::new(super::openai::OpenAiVoice::from_spec(spec)),
    })
}

/// Sends `samples` to `out` in pieces of [`PIECE_MS`]. Returns `false` when
/// the receiver is gone (the turn was cancelled): the caller stops.
pub(crate) async fn send_pieces(
    out: &mpsc::Sender<AudioChunk>,
    sample_rate: u32,
    samples: &[f32],
) -> bool {
    let piece = (sample_rate * PIECE_MS / 1000).max(1) as usize;
    for part in samples.chunks(piece) {
        if out
            .send(AudioChunk::new(sample_rate, part.to_vec()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}
