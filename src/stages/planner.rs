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

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Stage, StageContext, StageError, StageIo};
use crate::frame::{Frame, TurnId};
use crate::planner::{History, Planner, PlannerError, PlannerEvent};

pub struct PlannerStage {
    planner: Planner,
    history: History,
    /// The turn answered last, whose reply a barge-in may have cut short.
    last_turn: Option<TurnId>,
    /// Fillers said so far, to take the next one in turn.
    fillers_said: usize,
}

impl PlannerStage {
    pub fn new(planner: Planner) -> Self {
        Self {
            planner,
            history: History::default(),
            last_turn: None,
            fillers_said: 0,
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

    async fn answer(
        &mut self,
        io: &mut StageIo,
        cx: &StageContext,
        turn: TurnId,
        text: &str,
    ) -> Result<(), StageError> {
        let cancel = cx.turns.token(turn);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut filler = self.next_filler();
        let planner = &self.planner;
        let history = &mut self.history;
        let work = async move {
            let result = planner.run_turn(history, text, &tx, &cancel).await;
            drop(tx);
            result
        };
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
        let (result, forwarded) = tokio::join!(work, forward);
        if forwarded? {
            self.fillers_said += 1;
        }
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
                    if let Some(heard) = self.last_turn.and_then(|t| cx.turns.take_heard(t)) {
                        tracing::debug!(message = "Reply cut short; keeping what was heard.", turn = %turn, heard = %heard);
                        self.history.keep_heard(&heard);
                    }
                    self.last_turn = Some(turn);
                    io.forward_consumed(Frame::Transcript {
                        turn,
                        text: text.clone(),
                        is_final: true,
                    })
                    .await?;
                    tokio::select! {
                        biased;
                        _ = cx.shutdown.cancelled() => return Ok(()),
                        answered = self.answer(&mut io, &cx, turn, &text) => answered?,
                    }
                }
                Some(frame) => io.forward(frame).await?,
                None => return Ok(()),
            }
        }
    }
}
