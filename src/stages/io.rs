//! A stage's two channel ends, with the stage's clock attached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{Receiver, Sender};
use tokio_util::sync::CancellationToken;

use super::StageError;
use crate::frame::{Frame, StageTiming, TurnId, Usage};

/// The input and output of one stage. `recv`, `send` and `forward` are the
/// only way a stage touches its channels, which lets this type keep the
/// stage's timings: time to first output per turn, and busy time (time not
/// spent waiting for input), appended to every `EndOfTurn` the stage passes.
///
/// Time to first output runs from the first frame of the turn the stage
/// *consumed* (received and did not [`forward`](Self::forward)) to the first
/// frame of the turn it *produced* ([`send`](Self::send)). So the STT's clock
/// starts at the utterance, not at the `SpeechStarted` it passed along, and
/// stops at its transcript, not at a frame it merely forwarded.
pub struct StageIo {
    name: Arc<str>,
    /// `None` for an inline stage, which is handed its frames.
    input: Option<Receiver<Frame>>,
    output: Sender<Frame>,
    clock: StageClock,
}

impl StageIo {
    pub fn new(name: impl Into<Arc<str>>, input: Receiver<Frame>, output: Sender<Frame>) -> Self {
        Self {
            name: name.into(),
            input: Some(input),
            output,
            clock: StageClock::default(),
        }
    }

    /// The io of an [`super::InlineStage`]: frames are handed to it, so it
    /// has an output only (its input reads as closed).
    pub fn output_only(name: impl Into<Arc<str>>, output: Sender<Frame>) -> Self {
        Self {
            name: name.into(),
            input: None,
            output,
            clock: StageClock::default(),
        }
    }

    /// An inline stage was handed `frame`: the clock as [`Self::recv`]
    /// leaves it. Pair with [`Self::handled`].
    pub fn handed(&mut self, frame: &Frame) {
        self.clock.settle_input();
        self.clock.busy();
        self.clock.received(frame.turn());
    }

    /// An inline stage is done with the frame it was handed: the clock as
    /// [`Self::recv`] leaves it while waiting.
    pub fn handled(&mut self) {
        self.clock.settle_input();
        self.clock.idle();
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next input frame, or `None` once the upstream has closed.
    /// Cancel-safe: it may be used in `tokio::select!`.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.clock.settle_input();
        self.clock.idle();
        let frame = match &mut self.input {
            Some(input) => input.recv().await,
            None => None,
        };
        self.clock.busy();
        if let Some(frame) = &frame {
            self.clock.received(frame.turn());
        }
        frame
    }

    /// The next input frame, or `None` once the upstream has closed *or*
    /// `shutdown` fires: the loop head of a stage with nothing to flush.
    pub async fn recv_until(&mut self, shutdown: &CancellationToken) -> Option<Frame> {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            frame = self.recv() => frame,
        }
    }

    /// Send a frame this stage produced downstream, waiting while the next
    /// stage is full (backpressure). An `EndOfTurn` gets this stage's timing
    /// appended.
    ///
    /// # Errors
    /// [`StageError::DownstreamClosed`] when the next stage has stopped.
    pub async fn send(&mut self, frame: Frame) -> Result<(), StageError> {
        self.clock.settle_input();
        if !matches!(frame, Frame::EndOfTurn(_)) {
            if let Some(turn) = frame.turn() {
                self.clock.first_output(turn);
            }
        }
        self.push(frame).await
    }

    /// Pass on the frame just received, unchanged: it neither starts nor
    /// stops this stage's clock (an `EndOfTurn` still gets the timing).
    ///
    /// # Errors
    /// [`StageError::DownstreamClosed`] when the next stage has stopped.
    pub async fn forward(&mut self, frame: Frame) -> Result<(), StageError> {
        self.clock.pending_input = None;
        self.push(frame).await
    }

    /// Pass on a copy of a frame this stage also consumed (the tts passes
    /// reply text on for display while it speaks it): it starts the stage's
    /// clock like any consumed frame, but is not an output of the stage.
    ///
    /// # Errors
    /// [`StageError::DownstreamClosed`] when the next stage has stopped.
    pub async fn forward_consumed(&mut self, frame: Frame) -> Result<(), StageError> {
        self.clock.settle_input();
        self.push(frame).await
    }

    /// Send a frame ahead of this stage's output proper for its turn (a
    /// transcript of a pause, which the final one may revise): it neither
    /// starts nor stops the clock, so time to first output stays the time
    /// to the frame the turn waits for.
    ///
    /// # Errors
    /// [`StageError::DownstreamClosed`] when the next stage has stopped.
    pub async fn send_ahead(&mut self, frame: Frame) -> Result<(), StageError> {
        self.push(frame).await
    }

    /// Count what this stage consumed for `turn` (tokens, seconds of
    /// audio, characters): added to the turn's `EndOfTurn` as it passes.
    pub fn add_usage(&mut self, turn: TurnId, usage: Usage) {
        self.clock.marks(turn).usage += usage;
    }

    async fn push(&mut self, mut frame: Frame) -> Result<(), StageError> {
        if let Frame::EndOfTurn(metrics) = &mut frame {
            let (timing, usage) =
                self.clock
                    .finish_turn(&self.name, metrics.turn, metrics.speech_ended_at);
            metrics.stages.push(timing);
            metrics.usage += usage;
        }
        self.output
            .send(frame)
            .await
            .map_err(|_| StageError::DownstreamClosed)
    }
}

/// Per-turn marks for the turns currently passing through one stage.
/// A stage rarely has more than two turns in flight, so a small vector beats
/// a map.
#[derive(Default)]
struct StageClock {
    turns: Vec<TurnMarks>,
    /// The last frame received, until the stage shows whether it consumed
    /// it (anything but `forward` next) or passed it on.
    pending_input: Option<(TurnId, Instant)>,
    busy_since: Option<Instant>,
    busy_total: Duration,
}

struct TurnMarks {
    turn: TurnId,
    first_input: Option<Instant>,
    first_output: Option<Instant>,
    usage: Usage,
}

impl StageClock {
    fn idle(&mut self) {
        if let Some(since) = self.busy_since.take() {
            self.busy_total += since.elapsed();
        }
    }

    fn busy(&mut self) {
        self.busy_since = Some(Instant::now());
    }

    fn marks(&mut self, turn: TurnId) -> &mut TurnMarks {
        match self.turns.iter().position(|m| m.turn == turn) {
            Some(i) => &mut self.turns[i],
            None => {
                // Turns that never got an EndOfTurn (cancelled) must not pile up.
                if self.turns.len() >= 16 {
                    self.turns.remove(0);
                }
                self.turns.push(TurnMarks {
                    turn,
                    first_input: None,
                    first_output: None,
                    usage: Usage::default(),
                });
                self.turns.last_mut().expect("just pushed")
            }
        }
    }

    fn received(&mut self, turn: Option<TurnId>) {
        self.pending_input = turn.map(|t| (t, Instant::now()));
    }

    /// The pending frame was consumed: it may be the turn's first input.
    fn settle_input(&mut self) {
        if let Some((turn, at)) = self.pending_input.take() {
            self.marks(turn).first_input.get_or_insert(at);
        }
    }

    fn first_output(&mut self, turn: TurnId) {
        let marks = self.marks(turn);
        marks.first_output.get_or_insert_with(Instant::now);
    }

    /// The stage's timing for `turn`, and what it consumed for it.
    fn finish_turn(
        &mut self,
        stage: &str,
        turn: TurnId,
        speech_ended_at: Instant,
    ) -> (StageTiming, Usage) {
        // Busy time up to now counts for this turn, even mid-frame.
        if let Some(since) = self.busy_since.replace(Instant::now()) {
            self.busy_total += since.elapsed();
        }
        let busy = std::mem::take(&mut self.busy_total);
        let marks = self
            .turns
            .iter()
            .position(|m| m.turn == turn)
            .map(|i| self.turns.remove(i));
        let (first_input, first_output, usage) = marks
            .map(|m| (m.first_input, m.first_output, m.usage))
            .unwrap_or((None, None, Usage::default()));
        let timing = StageTiming {
            stage: stage.to_string(),
            time_to_first_output: match (first_input, first_output) {
                (Some(i), Some(o)) => Some(o.saturating_duration_since(i)),
                _ => None,
            },
            first_output_after_speech_end: first_output
                .map(|o| o.saturating_duration_since(speech_ended_at)),
            busy,
        };
        (timing, usage)
    }
}
