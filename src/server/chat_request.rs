//! The `/v1/chat/completions` request as OpenAI clients send it, and its
//! translation into parlor's chat vocabulary ([`ChatMessage`], [`ToolSpec`],
//! [`ToolChoice`]).
//!
//! Unknown fields (`temperature`, `parallel_tool_calls`, `user`…) are
//! ignored, as a compatible server must: clients send them by default.
//! Fields whose shape varies (`content`, `tool_choice`) are read from a
//! [`Value`] by hand so an error names the field and what was expected,
//! instead of serde's "did not match any variant".

use std::collections::HashMap;

use crate::llm::chat::json_kind;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openai_error::ApiError;
use crate::llm::{ChatMessage, ToolCall, ToolChoice, ToolSpec};

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<WireMessage>,
    #[serde(default)]
    pub tools: Option<Vec<WireTool>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Deprecated by OpenAI in favour of `max_completion_tokens`; both work.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum WireMessage {
    System {
        content: Option<Value>,
    },
    Developer {
        content: Option<Value>,
    },
    User {
        content: Option<Value>,
    },
    Assistant {
        #[serde(default)]
        content: Option<Value>,
        #[serde(default)]
        tool_calls: Option<Vec<WireToolCall>>,
    },
    Tool {
        tool_call_id: String,
        content: Option<Value>,
    },
}

#[derive(Debug, Deserialize)]
pub struct WireToolCall {
    pub id: String,
    pub function: WireFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct WireFunctionCall {
    pub name: String,
    /// A JSON document in a string, as OpenAI sends it.
    pub arguments: String,
}

#[derive(Debug, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: WireFunction,
}

#[derive(Debug, Deserialize)]
pub struct WireFunction {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// A request translated, ready for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub messages: Vec<ChatMessage>,
    /// `None`: no tools on offer, plain chat (`LocalLlm::complete`).
    pub tools: Option<Vec<ToolSpec>>,
    pub choice: ToolChoice,
    /// The client's token limit, if it gave one.
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

impl ChatCompletionRequest {
    /// Check and translate everything but `model`.
    ///
    /// # Errors
    /// A 400 naming the field at fault.
    pub fn prepare(self) -> Result<Prepared, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` is empty; send at least one message.",
            )
            .with_code("empty_array"));
        }
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(n), _) => Some(("max_completion_tokens", n)),
            (None, Some(n)) => Some(("max_tokens", n)),
            (None, None) => None,
        };
        if let Some((field, 0)) = max_tokens {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be at least 1."),
            ));
        }
        let messages = messages(self.messages)?;
        let mut tools = tools(self.tools.unwrap_or_default())?;
        let choice = match self.tool_choice {
            None => ToolChoice::Auto,
            Some(v) => tool_choice(&v, &mut tools)?,
        };
        if choice == ToolChoice::Required && tools.is_empty() {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` requires a tool call but `tools` is empty; send tools or use \"auto\".",
            ));
        }
        Ok(Prepared {
            messages,
            tools: (!tools.is_empty()).then_some(tools),
            choice,
            max_tokens: max_tokens.map(|(_, n)| n as usize),
            stream: self.stream.unwrap_or(false),
            include_usage: self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        })
    }
}

fn messages(wire: Vec<WireMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::with_capacity(wire.len());
    // Tool names by call id, from earlier assistant turns.
    let mut calls: HashMap<String, String> = HashMap::new();
    for (i, message) in wire.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].{field}");
        match message {
            WireMessage::System { content } | WireMessage::Developer { content } => {
                out.push(ChatMessage::system(text(content, &at("content"))?));
            }
            WireMessage::User { content } => {
                out.push(ChatMessage::user(text(content, &at("content"))?));
            }
            WireMessage::Assistant {
                content,
                tool_calls,
            } => {
                let tool_calls = tool_calls.unwrap_or_default();
                let content = match content {
                    Some(Value::Null) | None if !tool_calls.is_empty() => String::new(),
                    c => text(c, &at("content"))?,
                };
                if !content.is_empty() || tool_calls.is_empty() {
                    out.push(ChatMessage::assistant(content));
                }
                for (j, call) in tool_calls.into_iter().enumerate() {
                    let arguments: Value =
                        serde_json::from_str(&call.function.arguments).map_err(|e| {
                            let field = at(&format!("tool_calls[{j}].function.arguments"));
                            ApiError::invalid(
                                &field,
                                format!("`{field}` is not a JSON document: {e}"),
                            )
                        })?;
                    calls.insert(call.id.clone(), call.function.name.clone());
                    out.push(ChatMessage::ToolCall(ToolCall {
                        id: call.id,
                        name: call.function.name,
                        arguments,
                    }));
                }
            }
            WireMessage::Tool {
                tool_call_id,
                content,
            } => {
                let Some(name) = calls.get(&tool_call_id) else {
                    let field = at("tool_call_id");
                    return Err(ApiError::invalid(
                        &field,
                        format!(
                            "`{field}` is {tool_call_id:?}, which no earlier assistant message's \
                             tool_calls has; a tool result must follow the call it answers."
                        ),
                    ));
                };
                out.push(ChatMessage::tool_result(
                    tool_call_id.clone(),
                    name.clone(),
                    text(content, &at("content"))?,
                ));
            }
        }
    }
    Ok(out)
}

/// A message's text: a string, or an array of `{"type": "text", "text"}`
/// parts joined (other part types are not supported by a text model). The
/// Responses API's `input_text` / `output_text` parts read the same way.
pub(super) fn text(content: Option<Value>, field: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (k, part) in parts.iter().enumerate() {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text" | "input_text" | "output_text"), Some(Value::String(t))) => {
                        out.push_str(t)
                    }
                    (Some("text" | "input_text" | "output_text"), _) => {
                        return Err(ApiError::invalid(
                            format!("{field}[{k}].text"),
                            format!("`{field}[{k}].text` must be a string."),
                        ))
                    }
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("{field}[{k}].type"),
                            format!(
                                "`{field}[{k}]` is a {} part; this server's model reads text \
                                 parts only (`{{\"type\": \"text\", \"text\": …}}`).",
                                kind.map_or("typeless".to_string(), |k| format!("{k:?}"))
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) => Err(ApiError::invalid(
            field,
            format!("`{field}` is missing; send a string or an array of text parts."),
        )
        .with_code("missing_required_parameter")),
        Some(other) => Err(ApiError::invalid(
            field,
            format!(
                "`{field}` must be a string or an array of text parts, not {}.",
                json_kind(&other)
            ),
        )
        .with_code("invalid_type")),
    }
}

fn tools(wire: Vec<WireTool>) -> Result<Vec<ToolSpec>, ApiError> {
    wire.into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!(
                        "`tools[{i}].type` is {:?}; only \"function\" tools are supported.",
                        tool.kind
                    ),
                ));
            }
            let f = tool.function;
            Ok(ToolSpec::new(
                f.name,
                f.description.unwrap_or_default(),
                f.parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            ))
        })
        .collect()
}

/// `"auto"`, `"none"`, `"required"`, or `{"type": "function", "function":
/// {"name"}}`. The last keeps only the named tool in `tools`: the local
/// model's [`ToolChoice`] has no "this one tool" choice, so the named tool
/// becomes the only one on offer (which also changes the prompt, so the
/// cached prefix of earlier requests is not reused).
fn tool_choice(value: &Value, tools: &mut Vec<ToolSpec>) -> Result<ToolChoice, ApiError> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::SayOnly),
            "required" => Ok(ToolChoice::Required),
            other => Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "`tool_choice` is {other:?}; use \"auto\", \"none\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": …}}}}."
                ),
            )),
        },
        Value::Object(_) => {
            let Some(name) = value.pointer("/function/name").and_then(Value::as_str) else {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` is an object without `function.name`.",
                ));
            };
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "`tool_choice` names the function {name:?}, which `tools` does not have."
                    ),
                ));
            }
            tools.retain(|t| t.name == name);
            Ok(ToolChoice::Required)
        }
        other => Err(ApiError::invalid(
            "tool_choice",
            format!(
                "`tool_choice` must be a string or an object, not {}.",
                json_kind(other)
            ),
        )
        .with_code("invalid_type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatCompletionRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn translates_a_tool_conversation() {
        let p = request(json!({
            "model": "m",
            "temperature": 0.2,
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": "Where is order 7?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_order", "arguments": "{\"order_id\": \"7\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "shipped"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_order"}}],
            "tool_choice": "none",
            "max_tokens": 50
        }))
        .prepare()
        .unwrap();
        assert_eq!(
            p.messages,
            vec![
                ChatMessage::system("Be brief."),
                ChatMessage::user("Where is order 7?"),
                ChatMessage::ToolCall(ToolCall {
                    id: "call_1".into(),
                    name: "get_order".into(),
                    arguments: json!({"order_id": "7"}),
                }),
                ChatMessage::tool_result("call_1", "get_order", "shipped"),
            ]
        );
        assert_eq!(p.choice, ToolChoice::SayOnly);
        assert_eq!(p.max_tokens, Some(50));
        assert_eq!(p.tools.unwrap()[0].parameters["type"], "object");
    }

    #[test]
    fn names_the_field_at_fault() {
        let e = request(json!({"model": "m", "messages": [
            {"role": "tool", "tool_call_id": "nope", "content": "x"}
        ]}))
        .prepare()
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));

        let e = request(json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}
        ]}))
        .prepare()
        .unwrap_err();
        assert!(e.message.contains("\"image_url\""), "{}", e.message);

        let e = request(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "a"}}],
            "tool_choice": {"type": "function", "function": {"name": "b"}}}),
        )
        .prepare()
        .unwrap_err();
        assert!(e.message.contains("\"b\""), "{}", e.message);
    }
}
