//! The planner: a caller's words in, an answer out, using tools.
//!
//! One turn is a loop: ask the model; if it calls tools, run them (in
//! parallel, each within its own deadline), append their results and ask
//! again; stop when it answers in words or the step limit is reached (the
//! last request then allows words only). Tool failures of every kind become
//! tool results the model can explain; the turn as a whole is bounded by a
//! deadline. Reply text streams out as it is written, so speech can start on
//! the first sentence.
//!
//! - [`tools`]: [`Toolbox`], what tools are called through (the MCP pool,
//!   audited when the spec has an `[audit]` table).
//! - [`history`]: the session's conversation within a token budget.
//! - [`setup`]: a [`Planner`] from a pipeline spec (model, MCP servers,
//!   system prompt).

pub mod confirm;
pub mod history;
pub mod setup;
pub mod tools;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::llm::{ChatMessage, LlmError, ModelRequest, PlannerModel, ToolCall, ToolChoice};
use crate::secrets::{LeakGuard, Secrets};
use crate::untrusted;
pub use confirm::{ConfirmRequest, Confirmation, Confirmer, NoPerson};
pub use history::History;
pub use tools::{AuditedPool, NoTools, ToolAnswer, Toolbox};

/// Limits of one turn.
#[derive(Debug, Clone)]
pub struct PlannerOptions {
    /// Model requests per turn that may call tools; one more request, words
    /// only, follows if the limit is reached.
    pub max_steps: usize,
    /// One tool call, from the planner's side (the MCP pool has its own
    /// deadline too; the shorter wins).
    pub call_timeout: Duration,
    /// The whole turn: every model request and tool call.
    pub turn_timeout: Duration,
    /// History kept between turns, in estimated tokens.
    pub history_tokens: usize,
    /// A tool result longer than this (bytes) is cut before the model sees it.
    pub max_result_bytes: usize,
    /// A tool call still running after this long gets a filler spoken;
    /// `None`: never.
    pub filler_after: Option<Duration>,
    /// What fillers say, taken in turn.
    pub fillers: Vec<String>,
    /// Start on a pause's early transcript (see `PlannerSpec::speculate`).
    pub speculate: bool,
}

impl Default for PlannerOptions {
    fn default() -> Self {
        Self {
            max_steps: 4,
            call_timeout: Duration::from_secs(15),
            turn_timeout: Duration::from_secs(60),
            history_tokens: 1500,
            max_result_bytes: 4000,
            filler_after: Some(Duration::from_millis(1200)),
            fillers: vec!["One moment.".into()],
            speculate: true,
        }
    }
}

/// What happens during a turn, in order, for whoever shows or speaks it.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannerEvent {
    /// A piece of the reply.
    Text(String),
    ToolStarted(ToolCall),
    ToolFinished(ToolRecord),
    /// What one model request of the turn consumed (tokens).
    Usage(crate::frame::Usage),
}

/// One tool call of a turn and how it went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolRecord {
    pub id: String,
    pub name: String,
    pub arguments: Value,
    pub is_error: bool,
    /// What the tool answered (or why it failed), as the model saw it.
    pub output: String,
    #[serde(serialize_with = "ser_ms")]
    pub latency: Duration,
    /// Run by the model provider (a hosted MCP server), not by parlor: the
    /// latency is not known and is zero.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub hosted: bool,
}

impl ToolRecord {
    /// A call the provider made to a hosted MCP server, named as parlor
    /// names pool tools (`server__tool`).
    fn hosted(call: crate::llm::HostedCall) -> Self {
        Self {
            id: call.id,
            name: format!("{}__{}", call.server, call.tool),
            arguments: call.arguments,
            is_error: call.is_error,
            output: call.output,
            latency: Duration::ZERO,
            hosted: true,
        }
    }
}

/// A finished turn.
#[derive(Debug, Clone, Serialize)]
pub struct TurnOutcome {
    /// Everything said to the caller.
    pub reply: String,
    pub tools: Vec<ToolRecord>,
    /// Model requests made.
    pub steps: usize,
    /// The step limit forced a words-only answer.
    pub hit_step_limit: bool,
    /// Tokens read and written, summed over the turn's model requests.
    pub usage: crate::frame::Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error("the turn took longer than {0:?} and was stopped")]
    TurnTimeout(Duration),
    #[error("the turn was cancelled")]
    Cancelled,
    #[error("the planner model failed: {0}")]
    Model(LlmError),
}

impl PlannerError {
    /// What to tell the caller instead of an answer.
    pub fn apology(&self) -> &'static str {
        match self {
            PlannerError::TurnTimeout(_) => "Sorry, that is taking too long. Please try again.",
            PlannerError::Cancelled => "",
            PlannerError::Model(_) => "Sorry, I can't answer right now. Please try again.",
        }
    }
}

/// A model, its tools and a system prompt. Shared by every session.
#[derive(Clone)]
pub struct Planner {
    model: Arc<dyn PlannerModel>,
    tools: Arc<dyn Toolbox>,
    system: String,
    options: PlannerOptions,
    /// Never said to a caller (see [`crate::secrets`]).
    secrets: Arc<Secrets>,
    /// A speculative run's tool calls wait until this fires (the turn it
    /// guessed is confirmed), so a guess never acts; `None`: they run at once.
    hold_tools: Option<CancellationToken>,
}

impl Planner {
    pub fn new(
        model: Arc<dyn PlannerModel>,
        tools: Arc<dyn Toolbox>,
        system: impl Into<String>,
        options: PlannerOptions,
    ) -> Self {
        Self {
            model,
            tools,
            system: system.into(),
            options,
            secrets: Arc::default(),
            hold_tools: None,
        }
    }

    /// Replies that would say one of `secrets` are cut off before it.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    /// This planner for a speculative run: it may think and write, but
    /// its tool calls wait until `confirmed` fires.
    pub fn holding_tools_until(mut self, confirmed: CancellationToken) -> Self {
        self.hold_tools = Some(confirmed);
        self
    }

    pub fn model(&self) -> &Arc<dyn PlannerModel> {
        &self.model
    }

    pub fn toolbox(&self) -> &Arc<dyn Toolbox> {
        &self.tools
    }

    /// This planner for one session of `caller`: same model and prompt,
    /// tools bound to the caller (their role, limits and audit identity).
    pub fn for_caller(&self, caller: &crate::mcp::AuditContext) -> Self {
        let mut planner = self.clone();
        if let Some(tools) = self.tools.for_caller(caller) {
            planner.tools = tools;
        }
        planner
    }

    /// [`Self::for_caller`] with a person who can confirm sensitive tool
    /// calls (a live call).
    pub fn for_session(
        &self,
        caller: &crate::mcp::AuditContext,
        confirmer: Arc<dyn Confirmer>,
    ) -> Self {
        let mut planner = self.clone();
        if let Some(tools) = self.tools.for_session(caller, confirmer) {
            planner.tools = tools;
        }
        planner
    }

    /// This planner with its toolbox replaced by `wrap(toolbox)` (a
    /// Realtime session puts the client's tools in front).
    pub fn with_tools(mut self, wrap: impl FnOnce(Arc<dyn Toolbox>) -> Arc<dyn Toolbox>) -> Self {
        self.tools = wrap(self.tools);
        self
    }

    pub fn system_prompt(&self) -> &str {
        &self.system
    }

    pub fn options(&self) -> &PlannerOptions {
        &self.options
    }

    /// Put the system prompt and tool schemas through the model once, so
    /// the first caller does not wait for them: a local model keeps them in
    /// its prefix cache (seconds on two cores), a remote one its own way.
    /// The throwaway turn stops at its first sign of an answer; nothing is
    /// kept and no tool runs.
    pub async fn warm_up(&self) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let watcher = tokio::spawn(async move {
            if rx.recv().await.is_some() {
                stop.cancel();
            }
        });
        let started = Instant::now();
        let _ = self
            .run_turn(&mut History::default(), "Hello.", &tx, &cancel)
            .await;
        drop(tx);
        let _ = watcher.await;
        tracing::info!(
            message = "Planner warmed up.",
            ms = started.elapsed().as_millis() as u64
        );
    }

    /// Answer `user` in the conversation `history`, reporting progress to
    /// `events`. The history gains the turn whatever happens (on failure,
    /// the question and any words already said), never a call without its
    /// result, and is trimmed to the budget.
    pub async fn run_turn(
        &self,
        history: &mut History,
        user: &str,
        events: &UnboundedSender<PlannerEvent>,
        cancel: &CancellationToken,
    ) -> Result<TurnOutcome, PlannerError> {
        let mut turn = vec![ChatMessage::user(user)];
        let mut outcome = TurnOutcome {
            reply: String::new(),
            tools: Vec::new(),
            steps: 0,
            hit_step_limit: false,
            usage: crate::frame::Usage::default(),
        };
        let turn_cancel = cancel.child_token();
        let work = self.tool_loop(history, &mut turn, &mut outcome, events, &turn_cancel);
        // Barge-in stops tool calls too, not only the model.
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(PlannerError::Cancelled),
            done = tokio::time::timeout(self.options.turn_timeout, work) => {
                done.unwrap_or(Err(PlannerError::TurnTimeout(self.options.turn_timeout)))
            }
        };
        turn_cancel.cancel();
        if result.is_err() {
            // Keep the question and what was already said; drop calls that
            // may lack results.
            turn.retain(|m| matches!(m, ChatMessage::User { .. }));
            if !outcome.reply.is_empty() {
                turn.push(ChatMessage::assistant(outcome.reply.clone()));
            }
        }
        history.push_turn(turn);
        history.trim_to(self.options.history_tokens);
        result.map(|()| outcome)
    }

    async fn tool_loop(
        &self,
        history: &History,
        turn: &mut Vec<ChatMessage>,
        outcome: &mut TurnOutcome,
        events: &UnboundedSender<PlannerEvent>,
        cancel: &CancellationToken,
    ) -> Result<(), PlannerError> {
        let specs = self.tools.specs().await;
        for step in 0..=self.options.max_steps {
            let last = step == self.options.max_steps;
            let no_tools = specs.is_empty() && !self.model.has_hosted_tools();
            let choice = if last || no_tools {
                ToolChoice::SayOnly
            } else {
                ToolChoice::Auto
            };
            outcome.steps += 1;
            let reply = loop {
                let mut messages = Vec::with_capacity(1 + history.messages().len() + turn.len());
                messages.push(ChatMessage::system(self.system.clone()));
                messages.extend_from_slice(history.messages());
                messages.extend_from_slice(turn);
                let request = ModelRequest {
                    messages: &messages,
                    tools: &specs,
                    choice,
                };
                match self.ask(request, events, cancel).await {
                    // A result too big for the model's context (a flooding
                    // tool, token-dense text under the byte cap): halve the
                    // longest and ask again rather than fail the turn.
                    Err(PlannerError::Model(LlmError::ContextFull { prompt, .. }))
                        if shrink_longest_result(turn, &outcome.tools) =>
                    {
                        tracing::warn!(
                            message =
                                "Prompt over the model's context; longest tool result halved.",
                            prompt_tokens = prompt
                        );
                    }
                    other => break other?,
                }
            };
            outcome.usage += reply.usage;
            for call in reply.hosted {
                let record = ToolRecord::hosted(call);
                let _ = events.send(PlannerEvent::ToolFinished(record.clone()));
                outcome.tools.push(record);
            }
            if !reply.text.is_empty() {
                outcome.reply.push_str(&reply.text);
                turn.push(ChatMessage::assistant(reply.text));
            }
            if reply.calls.is_empty() {
                return Ok(());
            }
            if last {
                // Asked for words only and got calls anyway (a remote model
                // may ignore tool_choice): end the turn without running them.
                outcome.hit_step_limit = true;
                tracing::warn!(
                    message = "Step limit reached; tool calls not run.",
                    calls = reply.calls.len()
                );
                return Ok(());
            }
            if step + 1 == self.options.max_steps {
                outcome.hit_step_limit = true;
            }
            let records = self.run_calls(&reply.calls, events).await;
            for (call, record) in reply.calls.into_iter().zip(&records) {
                turn.push(ChatMessage::ToolCall(call));
                // The caller sees the result as the tool gave it; the
                // model reads it cleaned and fenced as data (issue 5).
                turn.push(ChatMessage::tool_result(
                    record.id.clone(),
                    record.name.clone(),
                    untrusted::fence(&record.name, &record.output),
                ));
            }
            outcome.tools.extend(records);
        }
        Ok(())
    }

    /// One model request, its text forwarded to `events` as it arrives.
    async fn ask(
        &self,
        request: ModelRequest<'_>,
        events: &UnboundedSender<PlannerEvent>,
        cancel: &CancellationToken,
    ) -> Result<crate::llm::ModelReply, PlannerError> {
        let (text_tx, mut text_rx) = mpsc::unbounded_channel();
        let respond = async move {
            let reply = self.model.respond(request, &text_tx, cancel).await;
            drop(text_tx);
            reply
        };
        let forward = async {
            let mut guard = LeakGuard::new(&self.secrets);
            let mut said = String::new();
            while let Some(piece) = text_rx.recv().await {
                if let Some(safe) = guard.push(&piece) {
                    said.push_str(&safe);
                    let _ = events.send(PlannerEvent::Text(safe));
                }
            }
            if let Some(rest) = guard.finish() {
                said.push_str(&rest);
                let _ = events.send(PlannerEvent::Text(rest));
            }
            guard.tripped().then_some(said)
        };
        let (reply, withheld) = tokio::join!(respond, forward);
        let mut reply = reply.map_err(|e| match e {
            LlmError::Cancelled => PlannerError::Cancelled,
            other => PlannerError::Model(other),
        })?;
        let _ = events.send(PlannerEvent::Usage(reply.usage));
        if let Some(said) = withheld {
            // What the caller heard is all the history keeps, and nothing
            // the model asked for alongside runs.
            tracing::warn!(
                message = "Reply withheld: it contained a secret parlor holds.",
                dropped_calls = reply.calls.len()
            );
            reply.text = said;
            reply.calls.clear();
        }
        Ok(reply)
    }

    /// Run a step's calls at once, each within the call deadline; results in
    /// call order.
    async fn run_calls(
        &self,
        calls: &[ToolCall],
        events: &UnboundedSender<PlannerEvent>,
    ) -> Vec<ToolRecord> {
        if let Some(confirmed) = &self.hold_tools {
            // Cancelling the turn drops this wait with the rest of it.
            confirmed.cancelled().await;
        }
        let runs = calls.iter().map(|call| async move {
            let _ = events.send(PlannerEvent::ToolStarted(call.clone()));
            let started = Instant::now();
            let answer = match &call.arguments {
                Value::String(raw) => ToolAnswer::error(format!(
                    "tool \"{}\": the arguments are not valid JSON: {raw}",
                    call.name
                )),
                arguments => {
                    // The tool's deadline, plus any time it may spend
                    // waiting for the caller to approve it.
                    let deadline = self.options.call_timeout + self.tools.allowance(&call.name);
                    match tokio::time::timeout(
                        deadline,
                        self.tools.call(&call.name, arguments.clone()),
                    )
                    .await
                    {
                        Ok(answer) => answer,
                        Err(_) => ToolAnswer::error(format!(
                            "tool \"{}\": no answer within {:?}",
                            call.name, deadline
                        )),
                    }
                }
            };
            let record = ToolRecord {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                is_error: answer.is_error,
                output: cap(answer.text, self.options.max_result_bytes),
                latency: started.elapsed(),
                hosted: false,
            };
            let _ = events.send(PlannerEvent::ToolFinished(record.clone()));
            record
        });
        futures::future::join_all(runs).await
    }
}

/// Halves the longest tool result of this turn (cut from the tool's own
/// output in `records`, then fenced again, so the fence stays whole).
/// False when there is none, or it is already short.
fn shrink_longest_result(turn: &mut [ChatMessage], records: &[ToolRecord]) -> bool {
    /// Below this a result is not worth cutting further.
    const FLOOR: usize = 256;
    let longest = turn
        .iter_mut()
        .filter_map(|m| match m {
            ChatMessage::ToolResult {
                call_id, content, ..
            } => Some((call_id, content)),
            _ => None,
        })
        .max_by_key(|(_, content)| content.len());
    let Some((call_id, content)) = longest else {
        return false;
    };
    let Some(record) = records.iter().find(|r| r.id == *call_id) else {
        return false;
    };
    let target = content.len() / 2;
    if target < FLOOR {
        return false;
    }
    *content = untrusted::fence(&record.name, &cap(record.output.clone(), target));
    true
}

/// `text` cut to at most `max` bytes at a character boundary, marked.
/// `text` cut to `max` bytes at a character boundary, marked as cut.
pub(crate) fn cap(mut text: String, max: usize) -> String {
    const MARK: &str = " [truncated]";
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(MARK.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(MARK);
    text
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

#[cfg(test)]
mod tests {
    use super::cap;

    #[test]
    fn cap_cuts_at_a_character_boundary_and_marks_it() {
        assert_eq!(cap("short".into(), 100), "short");
        let long = "é".repeat(100);
        let cut = cap(long, 31);
        assert!(cut.len() <= 31, "{}", cut.len());
        assert!(cut.ends_with(" [truncated]"));
    }
}
