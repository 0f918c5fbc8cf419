//! The planner's view of a language model: one request (a conversation and
//! the tools on offer) gives one [`ModelReply`] (text, tool calls, or both),
//! with the text streamed as it is written. Implemented by the in-process
//! llama.cpp model ([`LocalPlanner`]) and by any OpenAI-compatible server
//! ([`super::openai::OpenAiPlanner`]), so the tool loop in
//! [`crate::planner`] does not know which one it talks to.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::chat::{ChatMessage, Decision, ToolCall, ToolChoice, ToolSpec};
use super::local::LocalLlm;
use super::LlmError;

/// One request to a planner model.
#[derive(Debug, Clone, Copy)]
pub struct ModelRequest<'a> {
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolSpec],
    pub choice: ToolChoice,
}

/// What the model answered: words for the caller, tool calls to run, or (from
/// models that do both) words first and then calls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelReply {
    pub text: String,
    pub calls: Vec<ToolCall>,
    /// Calls the provider already made to hosted MCP servers while
    /// answering (Responses API): for the record, nothing left to run.
    pub hosted: Vec<HostedCall>,
    /// Tokens the request read and wrote, as the model counted them (zero
    /// when a server does not say).
    pub usage: crate::frame::Usage,
}

/// A hosted MCP tool call the provider ran.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedCall {
    pub id: String,
    /// The server's label (its name in the spec).
    pub server: String,
    pub tool: String,
    pub arguments: serde_json::Value,
    pub is_error: bool,
    /// The tool's output, or its error.
    pub output: String,
}

/// A language model the planner can drive.
#[async_trait]
pub trait PlannerModel: Send + Sync {
    /// For logs and `parlor ask`: which model, where.
    fn describe(&self) -> String;

    /// Whether the model brings tools of its own (hosted MCP servers the
    /// provider calls), so a request with no tools from parlor may still
    /// call some.
    fn has_hosted_tools(&self) -> bool {
        false
    }

    /// Answer `request`. Reply text is sent to `text` piece by piece as the
    /// model writes it (a closed receiver is not an error). `cancel` stops
    /// the request early with [`LlmError::Cancelled`] (barge-in, turn
    /// timeout).
    async fn respond(
        &self,
        request: ModelRequest<'_>,
        text: &UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<ModelReply, LlmError>;
}

/// The in-process model as a [`PlannerModel`]. One llama.cpp context serves
/// one request at a time: concurrent requests queue on its lock (each on a
/// blocking-pool thread), which also keeps the prefix cache warm for the
/// conversation that uses it most.
#[derive(Clone)]
pub struct LocalPlanner {
    llm: Arc<Mutex<LocalLlm>>,
    name: String,
    next_call: Arc<AtomicU64>,
}

impl LocalPlanner {
    pub fn new(llm: LocalLlm, name: impl Into<String>) -> Self {
        Self::shared(Arc::new(Mutex::new(llm)), name)
    }

    /// A planner over a context someone else also uses (the
    /// `/v1/chat/completions` route and a pipeline in one process).
    pub fn shared(llm: Arc<Mutex<LocalLlm>>, name: impl Into<String>) -> Self {
        Self {
            llm,
            name: name.into(),
            next_call: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn llm(&self) -> &Arc<Mutex<LocalLlm>> {
        &self.llm
    }
}

/// Whether the local model answers in plain text rather than choosing
/// under the tool-choice grammar: nothing to choose but saying, and no tool
/// call in the conversation (a model shown calls and results in its history
/// but asked without the tool prompt tends to answer in their JSON, which
/// would be spoken).
fn answers_in_plain_text(messages: &[ChatMessage], tools: &[ToolSpec], choice: ToolChoice) -> bool {
    let called_tools = messages
        .iter()
        .any(|m| matches!(m, ChatMessage::ToolCall(_) | ChatMessage::ToolResult { .. }));
    tools.is_empty() && choice != ToolChoice::Required && !called_tools
}

#[async_trait]
impl PlannerModel for LocalPlanner {
    fn describe(&self) -> String {
        format!("local {}", self.name)
    }

    async fn respond(
        &self,
        request: ModelRequest<'_>,
        text: &UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<ModelReply, LlmError> {
        let llm = self.llm.clone();
        let messages = request.messages.to_vec();
        let tools = request.tools.to_vec();
        let choice = request.choice;
        let text = text.clone();
        let cancel = cancel.clone();
        let decision = tokio::task::spawn_blocking(move || {
            if cancel.is_cancelled() {
                return Err(LlmError::Cancelled);
            }
            let mut llm = llm.lock().unwrap_or_else(|e| e.into_inner());
            let on_piece = |piece: &str| {
                let _ = text.send(piece.to_string());
                if cancel.is_cancelled() {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            };
            let decision = if answers_in_plain_text(&messages, &tools, choice) {
                // Nothing to choose from but saying: plain text, without
                // the tool-choice prompt and the JSON wrapper the grammar
                // would force and escape (the first word comes sooner;
                // `cargo bench --bench llm`).
                let text = llm.complete(&messages, on_piece)?;
                if llm.last_stats().hit_token_limit {
                    tracing::warn!(
                        tokens = llm.last_stats().generated_tokens,
                        "the local planner's answer reached its token limit and is cut off"
                    );
                }
                Decision::Say(text)
            } else {
                llm.decide_with(&messages, &tools, choice, on_piece)?
            };
            let stats = llm.last_stats();
            // Where a slow first word went: a long uncached suffix (history
            // that fell out of the cache) or a slow machine.
            tracing::debug!(
                prompt_tokens = stats.prompt_tokens,
                reused_tokens = stats.reused_tokens,
                first_token_ms = stats.time_to_first_token.as_secs_f64() * 1e3,
                generated_tokens = stats.generated_tokens,
                tokens_per_second = stats.tokens_per_second(),
                "local planner request"
            );
            let usage = crate::frame::Usage {
                input_text_tokens: stats.prompt_tokens as u64,
                cached_input_text_tokens: stats.reused_tokens as u64,
                output_text_tokens: stats.generated_tokens as u64,
                ..Default::default()
            };
            Ok::<_, LlmError>((decision, usage))
        })
        .await
        .map_err(|e| LlmError::Backend(format!("the model thread panicked: {e}")))??;
        let (decision, usage) = decision;
        Ok(match decision {
            Decision::Say(text) => ModelReply {
                text,
                usage,
                ..ModelReply::default()
            },
            Decision::Call { name, arguments } => ModelReply {
                text: String::new(),
                calls: vec![ToolCall {
                    id: format!("call_{}", self.next_call.fetch_add(1, Ordering::Relaxed)),
                    name,
                    arguments,
                }],
                usage,
                ..ModelReply::default()
            },
        })
    }
}

/// Run a model request until it finishes or `cancel` fires, whichever is
/// first; dropping the request closes its stream.
pub(super) async fn until_cancelled<T>(
    cancel: &CancellationToken,
    work: impl std::future::Future<Output = Result<T, LlmError>>,
) -> Result<T, LlmError> {
    tokio::select! {
        _ = cancel.cancelled() => Err(LlmError::Cancelled),
        result = work => result,
    }
}
