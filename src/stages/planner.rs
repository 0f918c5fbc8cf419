//! The planner stage: a final transcript in, the answer out as
//! [`Frame::ReplyDelta`]s while the model writes it (so speech can start on
//! the first sentence), tools called through the [`Planner`], each call
//! reported as a [`Frame::ToolCall`] once it has finished.
//!
//! One stage is one session: it keeps the conversation across turns. A turn
//! cancelled by barge-in stops the model at once; a turn that fails (model
//! down, timeout) says a short apology instead of going silent.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Stage, StageContext, StageError, StageIo};
use crate::frame::{Frame, TurnId};
use crate::planner::{History, Planner, PlannerError, PlannerEvent};

pub struct PlannerStage {
    planner: Planner,
    history: History,
}

impl PlannerStage {
    pub fn new(planner: Planner) -> Self {
        Self {
            planner,
            history: History::default(),
        }
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
        let planner = &self.planner;
        let history = &mut self.history;
        let work = async move {
            let result = planner.run_turn(history, text, &tx, &cancel).await;
            drop(tx);
            result
        };
        let forward = async {
            while let Some(event) = rx.recv().await {
                match event {
                    PlannerEvent::Text(text) => io.send(Frame::ReplyDelta { turn, text }).await?,
                    PlannerEvent::ToolStarted(call) => {
                        tracing::info!(message = "Tool call.", turn = %turn, tool = %call.name, arguments = %call.arguments)
                    }
                    PlannerEvent::ToolFinished(r) => {
                        tracing::info!(message = "Tool result.", turn = %turn, tool = %r.name, is_error = r.is_error, latency_ms = r.latency.as_secs_f64() * 1e3, bytes = r.output.len());
                        io.send(Frame::ToolCall {
                            turn,
                            record: Box::new(r),
                        })
                        .await?
                    }
                }
            }
            Ok::<_, StageError>(())
        };
        let (result, forwarded) = tokio::join!(work, forward);
        forwarded?;
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
