//! Wires stages into a running pipeline.
//!
//! Every edge is a bounded `tokio::sync::mpsc` channel of the spec's
//! capacity; sends wait when the next stage is full, so a slow stage holds
//! the caller back instead of letting memory grow (audio and text must not
//! be dropped). The runner owns the shutdown token and the stage tasks, and
//! its [`RunningPipeline::shutdown`] drains within a deadline, naming the
//! stages that did not stop.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::frame::{Frame, PIPELINE_SAMPLE_RATE};
use crate::stages::{InlineStage, Stage, StageContext, StageError, StageIo};
use crate::turns::Turns;

/// Stages in order, ready to start.
pub struct Pipeline {
    stages: Vec<Box<dyn Stage>>,
    capacity: NonZeroUsize,
    barge_in: bool,
    input_rate: u32,
    inline_front: bool,
}

impl Pipeline {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self {
            stages: Vec::new(),
            capacity,
            barge_in: true,
            input_rate: PIPELINE_SAMPLE_RATE,
            inline_front: false,
        }
    }

    /// The rate the first stage takes audio at (16 kHz unless it says
    /// otherwise): the edges resample to it once.
    pub fn input_rate(mut self, rate: u32) -> Self {
        self.input_rate = rate;
        self
    }

    pub fn stage(mut self, stage: Box<dyn Stage>) -> Self {
        self.stages.push(stage);
        self
    }

    /// Whether a new turn cancels the turns still in flight. On for live
    /// calls; off when transcribing a file, which is read faster than real
    /// time, so turns overlap without anyone interrupting.
    pub fn barge_in(mut self, on: bool) -> Self {
        self.barge_in = on;
        self
    }

    /// Run the first stage in the task that feeds the pipeline, if it can
    /// run inline ([`crate::stages::InlineStage`]): the input is then
    /// [`RunningPipeline::take_front`], not a channel. For live calls,
    /// whose VAD would otherwise cost a task wake per 20 ms frame.
    pub fn inline_front(mut self, on: bool) -> Self {
        self.inline_front = on;
        self
    }

    /// Spawn one task per stage and connect them. Must be called inside a
    /// tokio runtime.
    pub fn start(mut self) -> RunningPipeline {
        let shutdown = CancellationToken::new();
        let turns = Arc::new(Turns::new(self.barge_in, shutdown.clone()));
        let cx = StageContext {
            shutdown: shutdown.clone(),
            turns: turns.clone(),
        };
        let capacity = self.capacity.get();
        let (input, mut upstream) = mpsc::channel(capacity);
        let mut tasks = Vec::with_capacity(self.stages.len());
        let inline = match self.stages.first_mut() {
            Some(first) if self.inline_front => first.inline().map(|stage| (first.name(), stage)),
            _ => None,
        };
        let (mut input, mut front) = (Some(input), None);
        if let Some((name, stage)) = inline {
            self.stages.remove(0);
            // The channel just made feeds the second stage instead.
            front = Some(InlineFront {
                stage,
                io: StageIo::output_only(name, input.take().expect("just made")),
                cx: cx.clone(),
                span: tracing::info_span!("stage", stage = name),
            });
        }
        for stage in self.stages {
            let (tx, rx) = mpsc::channel(capacity);
            let name = stage.name();
            let io = StageIo::new(name, upstream, tx);
            let span = tracing::info_span!("stage", stage = name);
            let cx = cx.clone();
            let handle = tokio::spawn(
                async move {
                    tracing::debug!(message = "Stage started.");
                    let result = stage.run(io, cx).await;
                    match &result {
                        Ok(()) | Err(StageError::DownstreamClosed) => {
                            tracing::debug!(message = "Stage stopped.")
                        }
                        Err(error) => tracing::error!(message = "Stage failed.", %error),
                    }
                    result
                }
                .instrument(span),
            );
            tasks.push((name, handle));
            upstream = rx;
        }
        RunningPipeline {
            input,
            front,
            output: upstream,
            tasks,
            shutdown,
            turns,
            input_rate: self.input_rate,
        }
    }
}

/// A started pipeline: push frames into `input`, read results from `output`.
/// Dropping it cancels every stage (a client that hung up must not leave
/// its call's work running with nobody to read the output).
pub struct RunningPipeline {
    input: Option<mpsc::Sender<Frame>>,
    front: Option<InlineFront>,
    output: mpsc::Receiver<Frame>,
    tasks: Vec<(&'static str, JoinHandle<Result<(), StageError>>)>,
    shutdown: CancellationToken,
    turns: Arc<Turns>,
    input_rate: u32,
}

/// How a pipeline ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// Stages that returned an error, with it.
    pub failed: Vec<(&'static str, String)>,
    /// Stages that did not stop within the drain deadline and were aborted.
    pub aborted: Vec<&'static str>,
}

impl Finished {
    /// The first stage failure as an error, for callers that want `?`.
    pub fn into_result(self) -> anyhow::Result<()> {
        if let Some((stage, error)) = self.failed.into_iter().next() {
            anyhow::bail!("{error} (stage {stage})");
        }
        if !self.aborted.is_empty() {
            anyhow::bail!("stages did not stop in time: {}", self.aborted.join(", "));
        }
        Ok(())
    }
}

impl RunningPipeline {
    /// Where frames go in. `None` after [`Self::close_input`].
    pub fn input(&self) -> Option<&mpsc::Sender<Frame>> {
        self.input.as_ref()
    }

    /// A second handle to the input, e.g. for a feeder task.
    pub fn input_handle(&self) -> mpsc::Sender<Frame> {
        self.input.clone().expect("input already closed")
    }

    /// The first stage, to run in the feeding task, when the pipeline was
    /// started with [`Pipeline::inline_front`] and that stage can run
    /// inline. The pipeline then has no input channel.
    pub fn take_front(&mut self) -> Option<InlineFront> {
        self.front.take()
    }

    /// Frames out of the last stage.
    pub fn output(&mut self) -> &mut mpsc::Receiver<Frame> {
        &mut self.output
    }

    /// The rate input audio is expected at.
    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    pub fn turns(&self) -> &Arc<Turns> {
        &self.turns
    }

    /// Say that no more input is coming: stages finish what they hold and
    /// stop in order, and the output ends after the last frame.
    pub fn close_input(&mut self) {
        self.input = None;
    }

    /// Wait for every stage to stop on its own (after [`Self::close_input`]
    /// and the output has been read to its end), at most `deadline`.
    pub async fn join(self, deadline: Duration) -> Finished {
        self.drain(deadline, false).await
    }

    /// Stop now: cancel every stage and every turn, then wait at most
    /// `deadline` for them, aborting and naming the ones still running.
    pub async fn shutdown(self, deadline: Duration) -> Finished {
        self.drain(deadline, true).await
    }

    async fn drain(mut self, deadline: Duration, cancel: bool) -> Finished {
        let tasks = std::mem::take(&mut self.tasks);
        self.input = None;
        self.front = None;
        if cancel {
            self.shutdown.cancel();
        }
        // Unread output would keep the last stage blocked on a full channel.
        let output = std::mem::replace(&mut self.output, mpsc::channel(1).1);
        drop(output);
        let mut finished = Finished::default();
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut handle) in tasks {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(Ok(()) | Err(StageError::DownstreamClosed))) => {}
                Ok(Ok(Err(error))) => finished.failed.push((name, error.to_string())),
                Ok(Err(join_error)) => finished.failed.push((name, join_error.to_string())),
                Err(_) => {
                    tracing::warn!(
                        message = "Stage did not stop in time; aborting.",
                        stage = name
                    );
                    handle.abort();
                    finished.aborted.push(name);
                }
            }
        }
        finished
    }
}

impl Drop for RunningPipeline {
    fn drop(&mut self) {
        // After `join` every stage has stopped already and this is a no-op.
        self.shutdown.cancel();
    }
}

/// A pipeline's first stage run by the task that feeds the pipeline
/// ([`Pipeline::inline_front`]). Dropping it closes the pipeline's input
/// without [`Self::finish`]: what the stage still holds is lost.
pub struct InlineFront {
    stage: Box<dyn InlineStage>,
    io: StageIo,
    cx: StageContext,
    span: tracing::Span,
}

impl InlineFront {
    /// Hand the stage one frame; it sends what that makes on, waiting while
    /// the next stage is full. `Ok(false)` once the pipeline is shutting
    /// down.
    ///
    /// # Errors
    /// The stage's failure (logged here as a spawned stage's would be), or
    /// [`StageError::DownstreamClosed`].
    pub async fn push(&mut self, frame: Frame) -> Result<bool, StageError> {
        self.io.handed(&frame);
        let pushed = self
            .stage
            .push(frame, &mut self.io, &self.cx)
            .instrument(self.span.clone())
            .await;
        self.io.handled();
        self.log_failure(pushed)
    }

    /// The input has ended: the stage sends what it still holds, and the
    /// next stage sees the end of its input after it.
    ///
    /// # Errors
    /// As [`Self::push`].
    pub async fn finish(mut self) -> Result<(), StageError> {
        let finished = self
            .stage
            .finish(&mut self.io, &self.cx)
            .instrument(self.span.clone())
            .await;
        self.log_failure(finished)
    }

    fn log_failure<T>(&self, result: Result<T, StageError>) -> Result<T, StageError> {
        if let Err(error @ StageError::Failed { .. }) = &result {
            self.span
                .in_scope(|| tracing::error!(message = "Stage failed.", %error));
        }
        result
    }
}
