//! The stage contract and the stage kinds.
//!
//! A stage is a task that reads frames from one bounded channel and writes
//! frames to the next ([`Stage::run`]). It sees its channels only through
//! [`StageIo`], which records the stage's per-turn timings as frames pass
//! and appends them to each turn's [`crate::frame::TurnMetrics`], so no stage
//! has to time itself.
//!
//! Layout: one folder per kind, one file per backend beside its siblings
//! (`stt/whisper_local.rs`); `build` turns a validated spec into a stage.

pub mod onnx;
pub mod passthrough;
pub mod planner;
pub mod realtime;
pub mod stt;
pub mod tts;
pub mod vad;

mod io;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::frame::Frame;
use crate::spec::StageSpec;
use crate::turns::Turns;
use std::sync::Arc;

pub use io::StageIo;

/// Why a stage stopped early.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The next stage is gone (pipeline shutting down): not a failure of this
    /// stage, and cheap, because it is the normal way a chain unwinds.
    #[error("the next stage has stopped")]
    DownstreamClosed,
    #[error("stage {stage}: {message}")]
    Failed {
        stage: &'static str,
        message: String,
    },
}

impl StageError {
    pub fn failed(stage: &'static str, message: impl Into<String>) -> Self {
        StageError::Failed {
            stage,
            message: message.into(),
        }
    }
}

/// What the runner hands every stage besides its channels.
#[derive(Clone)]
pub struct StageContext {
    /// Cancelled when the whole pipeline shuts down.
    pub shutdown: CancellationToken,
    /// Turn ids and per-turn cancellation (barge-in).
    pub turns: Arc<Turns>,
}

/// One step of a pipeline. Implementations do one job and talk to the rest
/// only through frames.
#[async_trait]
pub trait Stage: Send + 'static {
    /// A short stable name for logs and metrics ("vad", "stt", ...).
    fn name(&self) -> &'static str;

    /// Consume input frames until the input closes or `cx.shutdown` fires,
    /// writing results downstream. Must forward frames it does not handle,
    /// and must forward [`crate::frame::Frame::EndOfTurn`] only after its
    /// own output for that turn.
    async fn run(self: Box<Self>, io: StageIo, cx: StageContext) -> Result<(), StageError>;

    /// This stage as an [`InlineStage`], for a pipeline that runs its first
    /// stage in the task that feeds it ([`crate::runner::Pipeline::inline_front`]).
    /// `None` (the default) for a stage that needs a task of its own. After
    /// `Some`, the runner drops the stage without running it.
    fn inline(&mut self) -> Option<Box<dyn InlineStage>> {
        None
    }
}

/// A stage that can run inside the task that produces its input, handed one
/// frame at a time instead of reading a channel: for a cheap step whose
/// state is per call and which turns most frames into nothing (the VAD
/// over a live call's 20 ms frames). In a task of its own such a stage
/// costs a channel send and a task wake per frame; inline it costs neither.
/// Vector runs its stateless transforms inside the source's task for the
/// same reason.
///
/// Sends still wait on the next stage (backpressure reaches the producer
/// directly), and return early when `cx.shutdown` fires.
#[async_trait]
pub trait InlineStage: Send {
    /// Take one input frame. `Ok(false)` when the pipeline is shutting down.
    async fn push(
        &mut self,
        frame: Frame,
        io: &mut StageIo,
        cx: &StageContext,
    ) -> Result<bool, StageError>;

    /// The input has ended: send what is still held.
    async fn finish(&mut self, io: &mut StageIo, cx: &StageContext) -> Result<(), StageError>;
}

/// Why a spec's stage could not be made into a running stage.
#[derive(Debug, thiserror::Error)]
#[error("stage {index} ({kind}): {message}")]
pub struct BuildError {
    pub index: usize,
    pub kind: &'static str,
    pub message: String,
}

/// Build the stage a validated spec describes, loading its models.
/// Blocking (model loads take up to seconds): call from `spawn_blocking`.
pub fn build(index: usize, spec: &StageSpec) -> Result<Box<dyn Stage>, BuildError> {
    let err = |message: String| BuildError {
        index,
        kind: spec.kind(),
        message,
    };
    match spec {
        StageSpec::Vad(vad) => vad::build(vad).map_err(|e| err(e.to_string())),
        StageSpec::Stt(stt) => stt::build(stt).map_err(|e| err(e.to_string())),
        StageSpec::Planner(_) => Err(err(
            "the planner connects to its model and MCP servers asynchronously: build it with \
             planner::setup::connect and stages::planner::PlannerStage"
                .into(),
        )),
        StageSpec::Tts(tts) => tts::load_voice(tts)
            .map(|voice| Box::new(tts::TtsStage::new(voice, tts.sample_rate)) as Box<dyn Stage>)
            .map_err(|e| err(e.to_string())),
        StageSpec::Realtime(_) => Err(err(
            "the realtime stage connects to its server and MCP servers asynchronously: load \
             the pipeline with loaded::LoadedPipeline"
                .into(),
        )),
    }
}
