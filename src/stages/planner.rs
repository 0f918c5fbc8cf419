//! The planner stage: a final transcript in, the answer out as
//! [`Frame::ReplyDelta`]s while the model writes it (so speech can start on
//! the first sentence), tools called through the [`Planner`], each call
//! reported as a [`Frame::ToolCall`] once it has finished.
//!
//! One stage is one session: it keeps the conversation across turns. A turn
//! cancelled by barge-in stops the model at once, and the conversation keeps
//! only the words of it the caller heard (the call's edge records them in
//! [`crate::turns::Turns`]); a turn that fails (model down, timeout) says a
//! short apology instead of going silent. A tool call still running after
//! `filler_after` gets a [`Frame::Filler`] ("One moment.") for the tts stage
//! to say, unless the reply has already begun; fillers stay out of the
//! conversation.
//!
//! A transcript that is not final (the stt stage's transcript of a pause,
//! before the turn is over) starts a *guess*: the model reads and starts
//! writing, its output held back, its tool calls held until the turn is
//! confirmed. If the final transcript is the same, the guess becomes the
//! answer, already under way; if the caller went on, it is thrown away
//! (with its copy of the conversation). So the end-of-turn silence that
//! keeps parlor from cutting a caller off is no longer all waiting.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Stage, StageContext, StageError, StageIo};
use crate::frame::{Frame, TurnId, Usage};
use crate::planner::{History, Planner, PlannerError, PlannerEvent, TurnOutcome};

pub struct PlannerStage {
    planner: Planner,
    history: History,
    /// The turn answered last, whose reply a barge-in may have cut short.
    last_turn: Option<TurnId>,
    /// Fillers said so far, to take the next one in turn.
    fillers_said: usize,
    /// An answer started on a pause's transcript, before the turn was over.
    guess: Option<Run>,
    /// What dropped guesses consumed (their model requests were paid for),
    /// counted into their turn's usage at the next chance.
    wasted: Vec<(TurnId, Usage)>,
}

/// One turn's planner run on its own task (so the stage can go on reading
/// frames while a guess runs), on a copy of the conversation that replaces
/// the stage's own once the run is used.
struct Run {
    turn: TurnId,
    text: String,
    events: mpsc::UnboundedReceiver<PlannerEvent>,
    task: AbortOnDropHandle<(History, Result<TurnOutcome, PlannerError>)>,
    /// Fired when the turn is confirmed: a guess's tool calls may run.
    confirmed: CancellationToken,
    /// Stops this run alone (a child of the turn's token).
    cancel: CancellationToken,
    /// The run ended in an error (the model failed, say): as a guess it is
    /// not kept, since the turn itself may well succeed.
    failed: Arc<AtomicBool>,
}

impl Drop for Run {
    /// A run nobody will use stops at once, freeing the model.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl PlannerStage {
    pub fn new(planner: Planner) -> Self {
        Self {
            planner,
            history: History::default(),
            last_turn: None,
            fillers_said: 0,
            guess: None,
            wasted: Vec::new(),
        }
    }

    /// Drops a guess nobody will use (stopping it), keeping the usage it
    /// reported. (A request cancelled mid-way reports none.)
    fn discard(&mut self, run: Option<Run>) {
        let Some(mut run) = run else {
            return;
        };
        while let Ok(event) = run.events.try_recv() {
            if let PlannerEvent::Usage(usage) = event {
                self.wasted.push((run.turn, usage));
            }
        }
    }

    /// Counts the dropped guesses' usage into their turns, before those
    /// turns' ends pass (a turn already over gets none).
    fn count_wasted(&mut self, io: &mut StageIo, cx: &StageContext) {
        for (turn, usage) in self.wasted.drain(..) {
            if cx.turns.is_live(turn) {
                io.add_usage(turn, usage);
            }
        }
    }

    /// The filler to say next, if fillers are on.
    fn next_filler(&self) -> Option<(std::time::Duration, String)> {
        if self.planner.toolbox().client_runs() {
            return None;
        }
        let options = self.planner.options();
        let after = options.filler_after?;
        let text = options
            .fillers
            .get(self.fillers_said % options.fillers.len().max(1))?;
        Some((after, text.clone()))
    }

    /// Start answering `text` for `turn`. A guess (`speculative`) holds its
    /// tool calls until [`Run::confirmed`] fires.
    fn start(&mut self, cx: &StageContext, turn: TurnId, text: &str, speculative: bool) -> Run {
        self.keep_heard(cx);
        let cancel = cx.turns.token(turn).child_token();
        let confirmed = CancellationToken::new();
        let planner = if speculative {
            self.planner.clone().holding_tools_until(confirmed.clone())
        } else {
            confirmed.cancel();
            self.planner.clone()
        };
        let mut history = self.history.clone();
        let (tx, events) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        let task = {
            let (text, cancel, failed) = (text.to_string(), cancel.clone(), failed.clone());
            tokio::spawn(async move {
                let result = planner.run_turn(&mut history, &text, &tx, &cancel).await;
                failed.store(result.is_err(), Ordering::Release);
                (history, result)
            })
        };
        Run {
            turn,
            text: text.to_string(),
            events,
            task: AbortOnDropHandle::new(task),
            confirmed,
            cancel,
            failed,
        }
    }

    /// If a barge-in cut the last reply short, keep only what the caller
    /// heard of it. True when the conversation changed.
    fn keep_heard(&mut self, cx: &StageContext) -> bool {
        let Some(heard) = self.last_turn.and_then(|t| cx.turns.take_heard(t)) else {
            return false;
        };
        tracing::debug!(message = "Reply cut short; keeping what was heard.", heard = %heard);
        self.history.keep_heard(&heard);
        true
    }

    /// A pause's transcript: guess the answer, unless the same guess is
    /// already running.
    fn guess(&mut self, cx: &StageContext, turn: TurnId, text: &str) {
        if self
            .guess
            .as_ref()
            .is_some_and(|g| g.turn == turn && g.text == text)
        {
            return;
        }
        // Dropping an older guess cancels it before the new one wants the model.
        let older = self.guess.take();
        self.discard(older);
        // A model with hosted MCP tools runs them inside its own request,
        // where no hold can reach: such a guess could act. No guess then.
        let may_guess =
            self.planner.options().speculate && !self.planner.model().has_hosted_tools();
        if may_guess && cx.turns.is_live(turn) && !text.trim().is_empty() {
            tracing::debug!(message = "Answering the pause's transcript ahead.", %turn);
            self.guess = Some(self.start(cx, turn, text, true));
        }
    }

    /// The run that answers the final `text`: the guess if it guessed
    /// right, else a fresh one.
    fn confirm(&mut self, cx: &StageContext, turn: TurnId, text: &str) -> Run {
        // A guess made before the last reply was trimmed to what was heard
        // answers a conversation that no longer is.
        let trimmed = self.keep_heard(cx);
        self.last_turn = Some(turn);
        match self.guess.take() {
            Some(guess)
                if guess.turn == turn
                    && guess.text == text
                    && !trimmed
                    && !guess.failed.load(Ordering::Acquire) =>
            {
                tracing::debug!(message = "The pause's guess stands.", %turn);
                guess.confirmed.cancel();
                guess
            }
            stale => {
                self.discard(stale);
                self.start(cx, turn, text, false)
            }
        }
    }

    /// Speak `run`'s answer: its events become frames, fillers are said
    /// while slow tools run, and its conversation becomes the stage's.
    async fn answer(&mut self, io: &mut StageIo, mut run: Run) -> Result<(), StageError> {
        let turn = run.turn;
        let mut filler = self.next_filler();
        let rx = &mut run.events;
        let forward = async {
            let mut replying = false;
            let mut tools_running = 0usize;
            let mut filler_due: Option<Instant> = None;
            let mut filler_said = false;
            loop {
                let event = match filler_due {
                    Some(due) => tokio::select! {
                        event = rx.recv() => event,
                        () = tokio::time::sleep_until(due) => {
                            filler_due = None;
                            if let Some((_, text)) = filler.take() {
                                filler_said = true;
                                io.send(Frame::Filler { turn, text }).await?;
                            }
                            continue;
                        }
                    },
                    None => rx.recv().await,
                };
                let Some(event) = event else {
                    break;
                };
                match event {
                    PlannerEvent::Text(text) => {
                        replying = true;
                        filler_due = None;
                        io.send(Frame::ReplyDelta { turn, text }).await?
                    }
                    PlannerEvent::Usage(usage) => io.add_usage(turn, usage),
                    PlannerEvent::ToolStarted(call) => {
                        tracing::info!(message = "Tool call.", turn = %turn, tool = %call.name, arguments = %call.arguments);
                        tools_running += 1;
                        if let (false, None, Some((after, _))) = (replying, filler_due, &filler) {
                            filler_due = Some(Instant::now() + *after);
                        }
                    }
                    PlannerEvent::ToolFinished(r) => {
                        tracing::info!(message = "Tool result.", turn = %turn, tool = %r.name, is_error = r.is_error, latency_ms = r.latency.as_secs_f64() * 1e3, bytes = r.output.len());
                        tools_running = tools_running.saturating_sub(1);
                        if tools_running == 0 {
                            filler_due = None;
                        }
                        io.send(Frame::ToolCall {
                            turn,
                            record: Box::new(r),
                        })
                        .await?
                    }
                }
            }
            Ok::<_, StageError>(filler_said)
        };
        if forward.await? {
            self.fillers_said += 1;
        }
        let result = match (&mut run.task).await {
            Ok((history, result)) => {
                self.history = history;
                result
            }
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(PlannerError::Cancelled),
        };
        match result {
            Ok(_) | Err(PlannerError::Cancelled) => Ok(()),
            Err(error) => {
                tracing::warn!(message = "Planner turn failed.", turn = %turn, %error);
                io.send(Frame::ReplyDelta {
                    turn,
                    text: error.apology().to_string(),
                })
                .await
            }
        }
    }
}

#[async_trait]
impl Stage for PlannerStage {
    fn name(&self) -> &'static str {
        "planner"
    }

    async fn run(mut self: Box<Self>, mut io: StageIo, cx: StageContext) -> Result<(), StageError> {
        loop {
            let frame = io.recv_until(&cx.shutdown).await;
            match frame {
                Some(Frame::Transcript {
                    turn,
                    text,
                    is_final: true,
                }) if cx.turns.is_live(turn) && !text.trim().is_empty() => {
                    let run = self.confirm(&cx, turn, &text);
                    self.count_wasted(&mut io, &cx);
                    io.forward_consumed(Frame::Transcript {
                        turn,
                        text,
                        is_final: true,
                    })
                    .await?;
                    tokio::select! {
                        biased;
                        _ = cx.shutdown.cancelled() => return Ok(()),
                        answered = self.answer(&mut io, run) => answered?,
                    }
                }
                Some(Frame::Transcript {
                    turn,
                    text,
                    is_final: false,
                }) => {
                    self.guess(&cx, turn, &text);
                    io.forward(Frame::Transcript {
                        turn,
                        text,
                        is_final: false,
                    })
                    .await?;
                }
                Some(Frame::EndOfTurn(metrics)) => {
                    // A turn that ended with no final transcript (its
                    // speech failed to transcribe) leaves no guess behind.
                    if self.guess.as_ref().is_some_and(|g| g.turn == metrics.turn) {
                        let unused = self.guess.take();
                        self.discard(unused);
                    }
                    self.count_wasted(&mut io, &cx);
                    io.forward(Frame::EndOfTurn(metrics)).await?;
                }
                Some(frame) => io.forward(frame).await?,
                None => return Ok(()),
            }
        }
    }
}
