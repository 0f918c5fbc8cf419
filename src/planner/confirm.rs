//! Asking the caller before a sensitive tool runs (issue 5, item 7).
//!
//! A prompt injection can steer the model into calling a tool the caller
//! never asked for ("cancel every order"). What it cannot forge is the
//! caller's own answer on a channel the model does not write to. So once
//! untrusted text (a tool result, a resource) is in a session's context,
//! a tool the spec marks `sensitive` runs only after a [`Confirmer`] says
//! the person on the call approved that exact call. Where no person can
//! answer (a one-shot upload, an API caller), [`NoPerson`] refuses.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

/// One call waiting for the caller's yes or no.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfirmRequest {
    pub server: String,
    /// The tool as the model named it (`server__tool`).
    pub tool: String,
    pub arguments: Value,
}

/// The caller's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    Approved,
    Declined,
    /// Nobody answered: no person on this API, a timeout, a call that
    /// ended. Says why, for the model to relay.
    NoAnswer(String),
}

/// Asks the person behind a session to approve one tool call.
#[async_trait]
pub trait Confirmer: Send + Sync {
    async fn confirm(&self, request: ConfirmRequest) -> Confirmation;

    /// The longest [`Self::confirm`] waits for the person. A tool call's
    /// deadline is for the tool; the planner adds this to it for a call
    /// that may be asked about, so a person taking their time to decide
    /// does not use up the tool's own time.
    fn patience(&self) -> Duration {
        Duration::ZERO
    }
}

/// Where no person can confirm: every sensitive call is refused (once
/// untrusted text is in the context).
pub struct NoPerson;

#[async_trait]
impl Confirmer for NoPerson {
    async fn confirm(&self, _request: ConfirmRequest) -> Confirmation {
        Confirmation::NoAnswer("no person can confirm it on this connection".into())
    }
}

/// What the model is told when a sensitive call is not confirmed.
pub fn refusal(tool: &str, answer: &Confirmation) -> String {
    match answer {
        Confirmation::Approved => String::new(),
        Confirmation::Declined => format!(
            "Not done: the caller declined the call of {tool}. Do not retry it; ask the \
             caller what they want instead."
        ),
        Confirmation::NoAnswer(why) => format!(
            "Not done: {tool} changes things and needs the caller's confirmation, but {why}. \
             Tell the caller it was not done and how they can do it another way."
        ),
    }
}
