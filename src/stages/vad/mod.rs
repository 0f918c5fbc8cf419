//! Voice activity detection: turns a stream of audio frames into turns.
//!
//! # Layout
//! - [`SpeechDetector`]: one backend's job, the speech probability of a frame.
//!   - [`silero`]: Silero VAD through onnxruntime (a model file and a runtime
//!     library).
//!   - [`earshot`]: pure Rust, nothing to load.
//! - [`segmenter`]: the backend-independent state machine that turns
//!   probabilities into turns (threshold with hysteresis, minimum speech,
//!   end-of-turn silence, pre-roll, maximum turn length).
//! - [`VadStage`]: the pipeline stage around the two.
//!
//! The stage consumes `Frame::Audio` (it is the last stage that needs raw
//! input audio: the STT works from each turn's utterance) and forwards every
//! other frame unchanged. For each turn it sends
//! `SpeechStarted` once `min_speech_ms` of speech has been heard,
//! `SpeechPaused` with the speech so far each time the caller has been
//! silent for `early_stt_ms` (the stt stage starts on it early), then
//! `SpeechEnded` with the turn's audio and `EndOfTurn` when the caller has
//! been silent for `end_of_turn_ms`, the turn reaches `max_turn_s`, or the
//! input ends. While the call's edge says parlor is speaking
//! ([`crate::turns::Turns::is_playing`]), a turn needs `barge_in_min_ms` of
//! speech instead: the echo guard.

pub mod earshot;
pub mod segmenter;
pub mod silero;

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::frame::{AudioChunk, Frame, TurnId, TurnMetrics, Utterance, PIPELINE_SAMPLE_RATE};
use crate::spec::{VadBackend, VadSpec};

use super::{InlineStage, Stage, StageContext, StageError, StageIo};

pub use self::earshot::EarshotDetector;
pub use segmenter::{SegmentEvent, Segmenter, SegmenterConfig, SpeechSegment};
pub use silero::SileroDetector;

/// A voice activity detector for one 16 kHz audio stream. Stateful: frames
/// must be given in stream order.
pub trait SpeechDetector: Send {
    /// The number of samples [`Self::speech_probability`] takes.
    fn frame_len(&self) -> usize;

    /// The probability, in [0, 1], that `frame` (exactly
    /// [`Self::frame_len`] samples) contains speech.
    ///
    /// # Errors
    /// [`VadError::Inference`] when the backend fails.
    fn speech_probability(&mut self, frame: &[f32]) -> Result<f32, VadError>;

    /// Forget the stream so far.
    fn reset(&mut self);
}

/// Why a VAD could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error("{detail} (fix: run `bash models/setup.sh` from the project root, or set `onnxruntime` to the library's path)")]
    RuntimeMissing {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("{message} (fix: run `bash models/setup.sh` to fetch onnxruntime 1.24 or newer)")]
    RuntimeLoad {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("Silero model {} not found (fix: run `bash models/setup.sh` from the project root, or set `model`)", path.display())]
    ModelMissing { path: std::path::PathBuf },
    #[error("cannot load the Silero model {}: {message}", path.display())]
    ModelLoad {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("not a Silero VAD model: {0}")]
    UnexpectedModel(String),
    #[error("speech detection failed: {0}")]
    Inference(String),
}

/// The detector a spec asks for. Blocking: Silero loads a model.
///
/// # Errors
/// See [`SharedModel::load`]; earshot cannot fail.
pub fn detector(spec: &VadSpec) -> Result<Box<dyn SpeechDetector>, VadError> {
    SharedModel::load(spec)?.detector()
}

/// What every call's detector shares: the loaded model, if the backend has
/// one. Cheap to clone.
#[derive(Debug, Clone)]
pub enum SharedModel {
    Silero(Arc<silero::SileroModel>),
    Earshot,
}

impl SharedModel {
    /// Load what `spec`'s backend needs. Blocking.
    ///
    /// # Errors
    /// See [`silero::SileroModel::load`]; earshot cannot fail.
    pub fn load(spec: &VadSpec) -> Result<Self, VadError> {
        Ok(match spec.backend {
            VadBackend::Silero => Self::Silero(Arc::new(silero::SileroModel::load(
                &spec.model,
                &spec.onnxruntime,
            )?)),
            VadBackend::Earshot => Self::Earshot,
        })
    }

    /// A detector with its own stream state for one call.
    ///
    /// # Errors
    /// See [`SileroDetector::new`].
    pub fn detector(&self) -> Result<Box<dyn SpeechDetector>, VadError> {
        Ok(match self {
            Self::Silero(model) => Box::new(SileroDetector::new(model.clone())?),
            Self::Earshot => Box::new(EarshotDetector::new()),
        })
    }
}

/// Build the VAD stage a validated spec describes.
pub fn build(spec: &VadSpec) -> Result<Box<dyn Stage>, anyhow::Error> {
    let detector = detector(spec)?;
    Ok(Box::new(VadStage::new(
        SegmenterConfig::from_spec(spec),
        detector,
    )))
}

/// Audio is handed to the segmenter in slices of at most this many samples
/// (256 ms), so a big chunk from a file neither holds the runtime thread
/// for long nor delays a shutdown.
const SLICE: usize = 4_096;

/// The VAD pipeline stage: a task around a [`VadFront`], or the front
/// alone, run inline by the task that reads the caller's audio
/// ([`Stage::inline`]).
pub struct VadStage {
    front: Option<VadFront>,
}

impl VadStage {
    pub fn new(config: SegmenterConfig, detector: Box<dyn SpeechDetector>) -> Self {
        Self {
            front: Some(VadFront {
                segmenter: Segmenter::new(config, detector),
                events: Vec::with_capacity(4),
                turn: None,
            }),
        }
    }
}

#[async_trait]
impl Stage for VadStage {
    fn name(&self) -> &'static str {
        "vad"
    }

    async fn run(self: Box<Self>, mut io: StageIo, cx: StageContext) -> Result<(), StageError> {
        let mut front = self.front.expect("a VAD taken inline is not run");
        // Made once, not per frame: each new one registers with the
        // token's waiter list and leaves it again when a frame wins.
        let mut shutdown = pin!(cx.shutdown.cancelled());
        loop {
            let frame = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                frame = io.recv() => frame,
            };
            match frame {
                None => return front.finish(&mut io, &cx).await,
                Some(frame) => {
                    if !front.push(frame, &mut io, &cx).await? {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn inline(&mut self) -> Option<Box<dyn InlineStage>> {
        self.front
            .take()
            .map(|front| Box::new(front) as Box<dyn InlineStage>)
    }
}

/// The VAD's work on one call's audio, wherever it runs.
pub struct VadFront {
    segmenter: Segmenter,
    events: Vec<SegmentEvent>,
    /// The turn the caller is speaking, once it has started.
    turn: Option<TurnId>,
}

#[async_trait]
impl InlineStage for VadFront {
    async fn push(
        &mut self,
        frame: Frame,
        io: &mut StageIo,
        cx: &StageContext,
    ) -> Result<bool, StageError> {
        let chunk = match frame {
            Frame::Audio(chunk) => chunk,
            other => return send_or_forward(io, &cx.shutdown, other, false).await,
        };
        if chunk.sample_rate != PIPELINE_SAMPLE_RATE {
            return Err(StageError::failed(
                "vad",
                format!(
                    "audio at {} Hz; the pipeline runs at {PIPELINE_SAMPLE_RATE} Hz (resample before the VAD)",
                    chunk.sample_rate
                ),
            ));
        }
        let big = chunk.samples.len() > SLICE;
        self.segmenter.set_playing(cx.turns.is_playing());
        for slice in chunk.samples.chunks(SLICE) {
            self.segmenter
                .push(slice, &mut self.events)
                .map_err(|e| StageError::failed("vad", e.to_string()))?;
            if !emit(io, cx, &mut self.events, &mut self.turn).await? {
                return Ok(false);
            }
            if big {
                tokio::task::yield_now().await;
                if cx.shutdown.is_cancelled() {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    async fn finish(&mut self, io: &mut StageIo, cx: &StageContext) -> Result<(), StageError> {
        self.segmenter.finish(&mut self.events);
        emit(io, cx, &mut self.events, &mut self.turn).await?;
        Ok(())
    }
}

/// Turn segmenter events into frames. `Ok(false)` when shutdown came first.
async fn emit(
    io: &mut StageIo,
    cx: &StageContext,
    events: &mut Vec<SegmentEvent>,
    turn: &mut Option<TurnId>,
) -> Result<bool, StageError> {
    for event in events.drain(..) {
        match event {
            SegmentEvent::Started { at } => {
                let id = cx.turns.begin();
                *turn = Some(id);
                tracing::debug!(message = "Speech started.", turn = %id, at_ms = at.as_millis() as u64);
                if !send(io, &cx.shutdown, Frame::SpeechStarted { turn: id, at }).await? {
                    return Ok(false);
                }
            }
            SegmentEvent::Paused(segment) => {
                let Some(id) = *turn else {
                    continue;
                };
                tracing::debug!(message = "Speech paused.", turn = %id, speech_ms = segment.speech.as_millis() as u64);
                let utterance = utterance(id, segment, Instant::now());
                if !send(io, &cx.shutdown, Frame::SpeechPaused(utterance)).await? {
                    return Ok(false);
                }
            }
            SegmentEvent::Ended(segment) => {
                let ended_at = Instant::now();
                // The segmenter always starts a turn before ending one.
                let Some(id) = turn.take() else {
                    continue;
                };
                tracing::debug!(
                    message = "Speech ended.",
                    turn = %id,
                    speech_ms = segment.speech.as_millis() as u64,
                    forced = segment.forced,
                );
                let speech = segment.speech;
                let utterance = utterance(id, segment, ended_at);
                if !send(io, &cx.shutdown, Frame::SpeechEnded(utterance)).await? {
                    return Ok(false);
                }
                let metrics = TurnMetrics::new(id, speech, ended_at);
                if !send(io, &cx.shutdown, Frame::EndOfTurn(metrics)).await? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

fn utterance(turn: TurnId, segment: SpeechSegment, ended_at: Instant) -> Utterance {
    Utterance {
        turn,
        speech_end: segment.speech_end(),
        audio: Arc::new(AudioChunk::new(PIPELINE_SAMPLE_RATE, segment.audio)),
        start: segment.audio_start,
        ended_at,
    }
}

/// Send downstream unless shutdown comes first (`Ok(false)`): a full
/// channel must not keep the stage from stopping.
async fn send(
    io: &mut StageIo,
    shutdown: &CancellationToken,
    frame: Frame,
) -> Result<bool, StageError> {
    send_or_forward(io, shutdown, frame, true).await
}

/// [`send`] a frame the VAD made (`made`), or forward one it passes on.
async fn send_or_forward(
    io: &mut StageIo,
    shutdown: &CancellationToken,
    frame: Frame,
    made: bool,
) -> Result<bool, StageError> {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(false),
        sent = async {
            if made {
                io.send(frame).await
            } else {
                io.forward(frame).await
            }
        } => sent.map(|()| true),
    }
}
