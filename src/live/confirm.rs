//! Sensitive tool calls confirmed by the person on a live call: the
//! [`Confirmer`] a call's planner asks (see `planner::confirm`).
//!
//! The question goes out as a `tool.confirm` event and the answer comes
//! back as a `tool.confirm` message with the same id, on the call's own
//! socket: a channel the model cannot write to. No answer within the
//! timeout, or a call that ends first, is a no.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::protocol::ServerEvent;
use crate::planner::{ConfirmRequest, Confirmation, Confirmer};

/// How long a caller has to answer by default.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// One call's pending questions.
pub struct LiveConfirmer {
    events: mpsc::Sender<ServerEvent>,
    pending: Mutex<HashMap<String, oneshot::Sender<bool>>>,
    next_id: AtomicU64,
    timeout: Duration,
}

/// Why an answer was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no tool call is waiting for confirmation with id {0:?} (answered already, timed out, or never asked)")]
pub struct UnknownConfirmation(pub String);

impl LiveConfirmer {
    /// A confirmer and the events it asks with, for the call's carrier to
    /// send to the caller.
    pub fn new(timeout: Duration) -> (Arc<Self>, mpsc::Receiver<ServerEvent>) {
        let (events, asked) = mpsc::channel(4);
        let confirmer = Arc::new(Self {
            events,
            pending: Mutex::default(),
            next_id: AtomicU64::new(1),
            timeout,
        });
        (confirmer, asked)
    }

    /// The caller's answer to question `id`.
    ///
    /// # Errors
    /// [`UnknownConfirmation`] when nothing waits on `id`.
    pub fn answer(&self, id: &str, approve: bool) -> Result<(), UnknownConfirmation> {
        let waiting = self.pending.lock().expect("not poisoned").remove(id);
        match waiting {
            // A send fails only when the question was dropped meanwhile
            // (its turn was cancelled): the answer is moot, not wrong.
            Some(tx) => {
                let _ = tx.send(approve);
                Ok(())
            }
            None => Err(UnknownConfirmation(id.to_string())),
        }
    }
}

/// Forgets a question however its wait ends (answer, timeout, a turn
/// cancelled by barge-in that drops the waiting future).
struct Asked<'a> {
    confirmer: &'a LiveConfirmer,
    id: String,
}

impl Drop for Asked<'_> {
    fn drop(&mut self) {
        self.confirmer
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
    }
}

#[async_trait]
impl Confirmer for LiveConfirmer {
    async fn confirm(&self, request: ConfirmRequest) -> Confirmation {
        let id = format!("confirm_{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("not poisoned")
            .insert(id.clone(), tx);
        let _asked = Asked {
            confirmer: self,
            id: id.clone(),
        };
        let event = ServerEvent::ToolConfirm {
            id,
            server: request.server,
            tool: request.tool,
            arguments: request.arguments,
            timeout_ms: self.timeout.as_millis() as u64,
        };
        if self.events.send(event).await.is_err() {
            return Confirmation::NoAnswer("the call has ended".into());
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(true)) => Confirmation::Approved,
            Ok(Ok(false)) => Confirmation::Declined,
            Ok(Err(_)) => Confirmation::NoAnswer("the call has ended".into()),
            Err(_) => Confirmation::NoAnswer(format!(
                "the caller did not answer within {}",
                shown(self.timeout)
            )),
        }
    }

    fn patience(&self) -> Duration {
        self.timeout
    }
}

/// "30 s", or "250 ms" under a second.
fn shown(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request() -> ConfirmRequest {
        ConfirmRequest {
            server: "orders".into(),
            tool: "orders__cancel_order".into(),
            arguments: json!({"order_id": "A1001"}),
        }
    }

    async fn asked_id(asked: &mut mpsc::Receiver<ServerEvent>) -> String {
        match asked.recv().await.expect("a question") {
            ServerEvent::ToolConfirm { id, tool, .. } => {
                assert_eq!(tool, "orders__cancel_order");
                id
            }
            other => panic!("not a question: {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_callers_answer_decides_and_is_taken_once() {
        let (confirmer, mut asked) = LiveConfirmer::new(Duration::from_secs(30));
        for approve in [true, false] {
            let waiting = tokio::spawn({
                let confirmer = confirmer.clone();
                async move { confirmer.confirm(request()).await }
            });
            let id = asked_id(&mut asked).await;
            confirmer.answer(&id, approve).unwrap();
            let expected = if approve {
                Confirmation::Approved
            } else {
                Confirmation::Declined
            };
            assert_eq!(waiting.await.unwrap(), expected);
            // A second answer to the same question is refused.
            assert_eq!(
                confirmer.answer(&id, true),
                Err(UnknownConfirmation(id.clone()))
            );
        }
        assert!(confirmer.answer("confirm_99", true).is_err());
    }

    #[tokio::test]
    async fn silence_is_a_no() {
        let (confirmer, mut asked) = LiveConfirmer::new(Duration::from_millis(100));
        let waiting = tokio::spawn({
            let confirmer = confirmer.clone();
            async move { confirmer.confirm(request()).await }
        });
        let id = asked_id(&mut asked).await;
        let answer = waiting.await.unwrap();
        assert!(
            matches!(&answer, Confirmation::NoAnswer(why) if why.contains("within 100 ms")),
            "{answer:?}"
        );
        // Too late: the question is gone.
        assert!(confirmer.answer(&id, true).is_err());
    }

    #[tokio::test]
    async fn a_call_that_ended_cannot_approve() {
        let (confirmer, asked) = LiveConfirmer::new(Duration::from_secs(30));
        drop(asked);
        assert_eq!(
            confirmer.confirm(request()).await,
            Confirmation::NoAnswer("the call has ended".into())
        );
    }
}
