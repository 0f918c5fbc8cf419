//! Speech to text: turns each turn's speech into a transcript.
//!
//! Input: [`Frame::SpeechEnded`](crate::frame::Frame::SpeechEnded) with the
//! turn's 16 kHz mono audio, and before it any number of
//! [`Frame::SpeechPaused`](crate::frame::Frame::SpeechPaused) (the speech so
//! far, transcribed early; see [`run_stt`]). Output: a transcript that is
//! not final for each pause transcribed before the turn ended, one final
//! [`Frame::Transcript`](crate::frame::Frame::Transcript) per live turn with
//! speech in it (nothing for silence or a cancelled turn), then the frames
//! that followed, `EndOfTurn` included, unchanged. `SpeechPaused` and
//! `SpeechEnded` are consumed: the audio stops here (a live turn's
//! `SpeechEnded` is passed on too, so the edge learns of it at once).

pub mod openai;
pub mod whisper_local;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::frame::{Frame, TurnId, Usage, Utterance, PIPELINE_SAMPLE_RATE};
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

/// What a transcription job gives back.
type Transcribed = Result<Option<String>, SttError>;

/// A transcription started on a pause ([`Frame::SpeechPaused`]), before the
/// turn was over.
struct Early<'a> {
    turn: TurnId,
    speech_end: Duration,
    /// A child of the turn's token: cancels this job alone.
    cancel: CancellationToken,
    job: Pin<Box<dyn Future<Output = Transcribed> + Send + 'a>>,
    /// The job's result once it has finished.
    done: Option<Transcribed>,
}

impl Early<'_> {
    /// Whether `utterance` is the speech this job is transcribing: the same
    /// turn, with no speech after the pause.
    fn matches(&self, utterance: &Utterance) -> bool {
        self.turn == utterance.turn && self.speech_end == utterance.speech_end
    }

    /// The job's result, waiting for it if it is still running.
    async fn result(mut self) -> Transcribed {
        match self.done.take() {
            Some(result) => result,
            None => (&mut self.job).await,
        }
    }
}

impl Drop for Early<'_> {
    /// A job nobody will read stops (a dropped whisper job would otherwise
    /// run on, holding the model, on its blocking thread). Cancelling a
    /// finished job's token does nothing.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The stt stage's loop around any [`Transcriber`]: consumes
/// `SpeechPaused` and `SpeechEnded`, sends the turn's final `Transcript`,
/// passes everything else on. A pause starts the transcription early; the
/// end of the turn uses it when no speech came after the pause, and starts
/// again otherwise. A failed transcription costs its turn (a `TurnError`
/// says why), not the call.
pub async fn run_stt(
    transcriber: &impl Transcriber,
    mut io: StageIo,
    cx: StageContext,
) -> Result<(), StageError> {
    let mut early: Option<Early<'_>> = None;
    loop {
        let frame = match early.as_mut().filter(|e| e.done.is_none()) {
            Some(running) => {
                tokio::select! {
                    result = &mut running.job => {
                        // Words before the turn is over: the planner may
                        // start on them (it keeps its guess only if the
                        // final transcript is the same).
                        if let Ok(Some(text)) = &result {
                            if !text.is_empty() && cx.turns.is_live(running.turn) {
                                io.send_ahead(Frame::Transcript {
                                    turn: running.turn,
                                    text: text.clone(),
                                    is_final: false,
                                })
                                .await?;
                            }
                        }
                        running.done = Some(result);
                        continue;
                    }
                    frame = io.recv_until(&cx.shutdown) => frame,
                }
            }
            None => io.recv_until(&cx.shutdown).await,
        };
        let Some(frame) = frame else {
            break;
        };
        let utterance = match frame {
            Frame::SpeechPaused(utterance) => {
                // A newer pause supersedes the last one (dropping it cancels it).
                early = None;
                if cx.turns.is_live(utterance.turn) && check_rate(&utterance).is_ok() {
                    let cancel = cx.turns.token(utterance.turn).child_token();
                    early = Some(Early {
                        turn: utterance.turn,
                        speech_end: utterance.speech_end,
                        job: Box::pin(transcriber.transcribe(utterance, cancel.clone())),
                        cancel,
                        done: None,
                    });
                }
                continue;
            }
            Frame::SpeechEnded(utterance) => utterance,
            other => {
                // Not ours: passing it on must not start the turn's clock.
                io.forward(other).await?;
                continue;
            }
        };
        let turn = utterance.turn;
        let started_early = early.take().filter(|e| e.matches(&utterance));
        if !cx.turns.is_live(turn) {
            tracing::debug!(message = "Dropping the speech of a cancelled turn.", %turn);
            continue;
        }
        if let Err(e) = check_rate(&utterance) {
            return Err(StageError::failed("stt", e.to_string()));
        }
        // The end of speech goes on as well: the call's edge reports it as
        // soon as the VAD decided, not once the words are known (the
        // `/v1/realtime` route's `speech_stopped`, the caller's page).
        io.forward_consumed(Frame::SpeechEnded(utterance.clone()))
            .await?;
        let seconds = utterance.audio.duration().as_secs_f64();
        let result = match started_early {
            Some(job) => {
                tracing::debug!(message = "Using the transcription started at the pause.", %turn, finished = job.done.is_some());
                job.result().await
            }
            // The turn's token is a child of the shutdown token, so shutting
            // down stops a running transcription too.
            None => {
                transcriber
                    .transcribe(utterance, cx.turns.token(turn))
                    .await
            }
        };
        let text = match result {
            Ok(Some(text)) => {
                // Billed by the second of audio sent, words or not.
                io.add_usage(
                    turn,
                    Usage {
                        transcribed_seconds: seconds,
                        ..Usage::default()
                    },
                );
                text
            }
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

/// Every utterance comes at the pipeline's rate; anything else is a bug
/// upstream, not bad input.
fn check_rate(utterance: &Utterance) -> Result<(), SttError> {
    if utterance.audio.sample_rate == PIPELINE_SAMPLE_RATE {
        Ok(())
    } else {
        Err(SttError::SampleRate {
            expected: PIPELINE_SAMPLE_RATE,
            got: utterance.audio.sample_rate,
        })
    }
}
