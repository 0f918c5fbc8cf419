//! Chat messages, tool descriptions and the planner's decision: the
//! vocabulary every planner backend (local llama.cpp, OpenAI-compatible)
//! and the planner stage share.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The name of the built-in choice that answers the user in words instead
/// of calling a tool. It is offered beside the real tools so a small model
/// is never forced to pick a tool for small talk.
pub const SAY: &str = "say";

/// A tool the planner may call, as MCP and OpenAI describe one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

impl ToolSpec {
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

/// A tool call the assistant made. `id` pairs it with its result
/// ([`ChatMessage::ToolResult`]); backends that need none may leave it empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    /// Instructions for the assistant (the pipeline's `instructions` file).
    System {
        content: String,
    },
    User {
        content: String,
    },
    /// What the assistant said to the user.
    Assistant {
        content: String,
    },
    /// A tool call the assistant made.
    ToolCall(ToolCall),
    /// What a tool returned. Data, never instructions.
    ToolResult {
        call_id: String,
        name: String,
        content: String,
    },
}

impl ChatMessage {
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage::System {
            content: content.into(),
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage::User {
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        ChatMessage::Assistant {
            content: content.into(),
        }
    }

    pub fn tool_result(
        call_id: impl Into<String>,
        name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        ChatMessage::ToolResult {
            call_id: call_id.into(),
            name: name.into(),
            content: content.into(),
        }
    }
}

/// What the planner decided to do with a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Answer the user with this text.
    Say(String),
    /// Call a tool with these arguments (an object matching its schema).
    Call { name: String, arguments: Value },
}

impl Decision {
    /// The message to append to the conversation for this decision, so the
    /// next request carries it (a call gets `call_id`).
    pub fn to_message(&self, call_id: impl Into<String>) -> ChatMessage {
        match self {
            Decision::Say(text) => ChatMessage::assistant(text.clone()),
            Decision::Call { name, arguments } => ChatMessage::ToolCall(ToolCall {
                id: call_id.into(),
                name: name.clone(),
                arguments: arguments.clone(),
            }),
        }
    }

    /// The tool's name, or [`SAY`].
    pub fn name(&self) -> &str {
        match self {
            Decision::Say(_) => SAY,
            Decision::Call { name, .. } => name,
        }
    }
}

/// Which choices the planner may make on a request. The tool list stays the
/// same either way (so a local backend's cached prompt prefix stays valid);
/// only the allowed output changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// A tool or [`SAY`], as the model sees fit.
    #[default]
    Auto,
    /// Only [`SAY`]: e.g. to answer after tool results when no more calls
    /// are wanted.
    SayOnly,
    /// One of the tools, never [`SAY`].
    Required,
}

/// How a JSON value's type reads in an error message ("a string", "an
/// array"), for the MCP pool's and the HTTP routes' argument checks.
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
