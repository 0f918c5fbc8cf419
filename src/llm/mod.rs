//! Planner language models: the shared chat vocabulary ([`chat`]), the
//! tool-choice grammar ([`grammar`]), the in-process llama.cpp backend
//! ([`local`]; [`prefix_store`] keeps its system prompt's evaluation on
//! disk; [`requantize`] rewrites its model files at set-up) and the
//! OpenAI-compatible ones ([`openai`]: Chat Completions;
//! [`openai_responses`]: the Responses API, for hosted MCP servers).
//!
//! A planner request is a conversation plus the tools on offer; the answer
//! is a [`Decision`]: say something, or call one tool. The planner stage
//! loops: call the tool, append its result, decide again.

pub mod backend;
pub mod chat;
pub mod grammar;
pub mod local;
pub mod openai;
pub mod openai_responses;
pub mod prefix_store;
pub mod requantize;

use std::path::PathBuf;

pub use backend::{HostedCall, LocalPlanner, ModelReply, ModelRequest, PlannerModel};
pub use chat::{ChatMessage, Decision, ToolCall, ToolChoice, ToolSpec, SAY};
pub use local::{GenerationStats, LocalLlm, LocalLlmOptions};
pub use openai::OpenAiPlanner;
pub use openai_responses::{HostedServer, ResponsesPlanner};

/// Why a planner model could not answer.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("model file {0} not found — run `bash models/setup.sh`")]
    ModelMissing(PathBuf),
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "the prompt ({prompt} tokens) plus up to {max_tokens} new tokens does not fit the \
         context of {context_len} tokens; raise context_len or shorten the conversation"
    )]
    ContextFull {
        prompt: usize,
        max_tokens: usize,
        context_len: usize,
    },
    #[error("llama.cpp failed: {0}")]
    Backend(String),
    #[error(transparent)]
    Grammar(#[from] grammar::GrammarBuildError),
    #[error(
        "the model was stopped at the token limit ({max_tokens}) before finishing: {output:?}"
    )]
    TokenLimit { max_tokens: usize, output: String },
    #[error(transparent)]
    Parse(#[from] grammar::ParseDecisionError),
    /// An OpenAI-compatible server refused the request or the connection
    /// failed; the message is the server's.
    #[error("the model server failed: {0}")]
    Remote(String),
    #[error("cancelled")]
    Cancelled,
}
