//! The one local model the server answers with, and the queue in front of it.
//!
//! [`LocalLlm`] is blocking and holds one conversation's KV cache, so it
//! sits behind an async mutex: requests wait their turn (in arrival order,
//! tokio's mutex is fair) and each runs on a blocking thread. Text comes
//! back through a bounded channel as it is generated; when the receiver is
//! dropped (the client went away), the next piece of text stops the model.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

use super::chat_request::Prepared;
use crate::llm::{ChatMessage, Decision, LlmError, LocalLlm, ToolChoice};

/// Text pieces buffered between the model and the HTTP response. Full: the
/// model waits for the client (backpressure), it never buffers without limit.
const EVENTS: usize = 64;

/// Requests admitted at once (running or waiting) unless
/// [`ServedModel::with_queue_limit`] says otherwise. A request takes about a
/// second on two cores, so the last of 32 waits half a minute: more would
/// only time out in the client.
pub const QUEUE_LIMIT: usize = 32;

/// The model's queue is full; the client should retry later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the model's queue is full ({limit} running or waiting); retry shortly")]
pub struct Busy {
    pub limit: usize,
}

/// What the model sends back for one request, in order: text pieces (of a
/// plain answer or a `say` decision), then exactly one `Finished`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Finished(Result<Answer, LlmError>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub reply: Reply,
    pub finish: FinishReason,
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Text(String),
    Call { name: String, arguments: Value },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    /// Cut at the token limit.
    Length,
    ToolCalls,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Of `prompt_tokens`, those the model's prefix cache already held
    /// (OpenAI's `cached_tokens`).
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// The served model: its id, the model itself, and counters.
#[derive(Debug)]
pub struct ServedModel {
    id: String,
    /// Other names a request may use: the file name, the path it was
    /// loaded from, and any the operator gave (`--model-alias`).
    aliases: Vec<String>,
    llm: Arc<Mutex<LocalLlm>>,
    cancelled: AtomicU64,
    /// Requests admitted and not finished; at most `queue_limit`, so a
    /// burst gets quick 503s instead of an ever longer wait.
    in_flight: Arc<AtomicUsize>,
    queue_limit: usize,
}

/// Holds one place in the queue; gives it back when dropped.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServedModel {
    /// Serve `llm`, loaded from `path`. Its id is the file name without
    /// `.gguf` (`qwen2.5-coder-0.5b-instruct-q4_k_m`).
    pub fn new(llm: LocalLlm, path: &Path) -> Self {
        let id = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into());
        let mut aliases = vec![path.display().to_string()];
        if let Some(name) = path.file_name() {
            aliases.push(name.to_string_lossy().into_owned());
        }
        Self {
            id,
            aliases,
            llm: Arc::new(Mutex::new(llm)),
            cancelled: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            queue_limit: QUEUE_LIMIT,
        }
    }

    /// Also answer to `names` (an OpenAI model name, so a client written
    /// for OpenAI needs no change).
    pub fn with_aliases(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.aliases.extend(names);
        self
    }

    /// Admit at most `limit` requests at once (running or waiting).
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Whether a new request would be turned away now.
    pub fn is_full(&self) -> bool {
        self.in_flight() >= self.queue_limit
    }

    /// The error a turned-away request gets.
    pub fn busy(&self) -> Busy {
        Busy {
            limit: self.queue_limit,
        }
    }

    /// Requests running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The id `/v1/models` lists.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a request's `model` means this model: its id, file name,
    /// the path it was loaded from, or an alias.
    pub fn answers_to(&self, name: &str) -> bool {
        name == self.id || self.aliases.iter().any(|a| a == name)
    }

    /// Requests stopped because their client went away.
    pub fn cancelled_total(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Queue `request`; its [`Event`]s arrive on the receiver. Dropping the
    /// receiver withdraws a queued request and stops a running one at its
    /// next piece of text (a tool call, which streams nothing, runs to its
    /// end: calls are a few dozen tokens).
    ///
    /// # Errors
    /// [`Busy`] when the queue already holds `queue_limit` requests.
    pub fn generate(self: &Arc<Self>, request: Prepared) -> Result<mpsc::Receiver<Event>, Busy> {
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.queue_limit).then_some(n + 1)
            })
            .map(|_| Admitted(Arc::clone(&self.in_flight)))
            .map_err(|_| Busy {
                limit: self.queue_limit,
            })?;
        let (tx, rx) = mpsc::channel(EVENTS);
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _admitted = admitted;
            let mut llm = tokio::select! {
                llm = Arc::clone(&this.llm).lock_owned() => llm,
                () = tx.closed() => {
                    this.cancelled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let worker = tokio::task::spawn_blocking(move || {
                let result = run(&mut llm, &request, &tx);
                if matches!(result, Err(LlmError::Cancelled)) {
                    this.cancelled.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(message = "Client went away; generation stopped.");
                }
                let _ = tx.blocking_send(Event::Finished(result));
            });
            if let Err(e) = worker.await {
                tracing::error!(error = %e, message = "Generation thread failed.");
            }
        });
        Ok(rx)
    }
}

/// Run one request on the model, streaming text to `tx`.
fn run(
    llm: &mut LocalLlm,
    request: &Prepared,
    tx: &mpsc::Sender<Event>,
) -> Result<Answer, LlmError> {
    if tx.is_closed() {
        return Err(LlmError::Cancelled);
    }
    let server_limit = llm.options().max_tokens;
    let limit = request
        .max_tokens
        .map_or(server_limit, |n| n.min(server_limit));
    llm.options_mut().max_tokens = limit;
    let mut streamed = String::new();
    let mut on_text = |text: &str| {
        streamed.push_str(text);
        match tx.blocking_send(Event::Text(text.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    };
    let mut spent = 0;
    let result = match &request.tools {
        None => llm
            .complete(&request.messages, &mut on_text)
            .map(Decision::Say),
        Some(tools) => {
            match llm.decide_with(&request.messages, tools, request.choice, &mut on_text) {
                Ok(call)
                    if request.choice == ToolChoice::Auto && repeats(&call, &request.messages) =>
                {
                    // The small model tends to re-issue the call whose result
                    // it was just given (measured on 0.5B: get_order 1042
                    // again). An identical call cannot tell it anything new:
                    // answer in words instead.
                    tracing::debug!(
                        tool = call.name(),
                        message = "Repeated tool call; answering in words."
                    );
                    spent = llm.last_stats().generated_tokens;
                    llm.decide_with(&request.messages, tools, ToolChoice::SayOnly, &mut on_text)
                }
                other => other,
            }
        }
    };
    llm.options_mut().max_tokens = server_limit;
    let stats = llm.last_stats();
    let usage = Usage {
        prompt_tokens: stats.prompt_tokens,
        cached_tokens: stats.reused_tokens,
        completion_tokens: stats.generated_tokens + spent,
    };
    let at_limit = stats.generated_tokens >= limit;
    let (reply, finish) = match result {
        Ok(Decision::Say(text)) if at_limit => (Reply::Text(text), FinishReason::Length),
        Ok(Decision::Say(text)) => (Reply::Text(text), FinishReason::Stop),
        Ok(Decision::Call { name, arguments }) => {
            (Reply::Call { name, arguments }, FinishReason::ToolCalls)
        }
        // A decision cut short: what was said so far, as OpenAI returns a
        // truncated answer.
        Err(LlmError::TokenLimit { .. }) => (Reply::Text(streamed), FinishReason::Length),
        Err(e) => return Err(e),
    };
    tracing::info!(
        prompt_tokens = stats.prompt_tokens,
        reused_tokens = stats.reused_tokens,
        completion_tokens = usage.completion_tokens,
        first_token_ms = stats.time_to_first_token.as_millis() as u64,
        finish_reason = finish.as_str(),
        message = "Chat completion generated."
    );
    Ok(Answer {
        reply,
        finish,
        usage,
    })
}

/// Whether `decision` is a tool call the conversation already holds, with
/// the same arguments, and whose result it already has.
fn repeats(decision: &Decision, messages: &[ChatMessage]) -> bool {
    let Decision::Call { name, arguments } = decision else {
        return false;
    };
    messages.iter().any(|m| match m {
        ChatMessage::ToolCall(c) if c.name == *name && c.arguments == *arguments => messages
            .iter()
            .any(|r| matches!(r, ChatMessage::ToolResult { call_id, .. } if *call_id == c.id)),
        _ => false,
    })
}
