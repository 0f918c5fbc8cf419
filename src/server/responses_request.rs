//! The `/v1/responses` request as OpenAI clients send it, translated into
//! parlor's chat vocabulary plus the MCP servers the server is to call
//! (the Responses API's `mcp` tool: "hosted" MCP, with parlor as the host).
//!
//! As with chat completions, fields a text model has no use for
//! (`temperature`, `store`, `reasoning`…) are ignored, and fields whose
//! shape varies are read by hand so an error names the field at fault.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::chat_request::text;
use super::openai_error::ApiError;
use crate::llm::chat::json_kind;
use crate::llm::{ChatMessage, ToolCall, ToolChoice, ToolSpec};

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Value,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
}

/// An MCP server the request asks this server to call.
#[derive(Debug, Clone, PartialEq)]
pub struct McpToolRequest {
    pub label: String,
    pub url: String,
    /// Only these of its tools (by the server's own names).
    pub allowed_tools: Option<Vec<String>>,
}

/// A request translated, ready for the tool loop.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedResponse {
    pub instructions: Option<String>,
    pub messages: Vec<ChatMessage>,
    /// Function tools: the client runs these; a call ends the response.
    pub functions: Vec<ToolSpec>,
    /// MCP servers: this server runs their tools within the response.
    pub mcp: Vec<McpToolRequest>,
    pub choice: ToolChoice,
    pub max_tokens: Option<usize>,
    pub stream: bool,
}

impl ResponsesRequest {
    /// Check and translate everything but `model`.
    ///
    /// # Errors
    /// A 400 naming the field at fault.
    pub fn prepare(self) -> Result<PreparedResponse, ApiError> {
        let mut messages = Vec::new();
        if let Some(instructions) = &self.instructions {
            messages.push(ChatMessage::system(instructions.clone()));
        }
        messages.extend(input(self.input)?);
        if !messages
            .iter()
            .any(|m| matches!(m, ChatMessage::User { .. }))
        {
            return Err(ApiError::invalid(
                "input",
                "`input` has no user message; send a string or at least one message with role \
                 \"user\".",
            ));
        }
        let (functions, mcp) = tools(self.tools.unwrap_or_default())?;
        let choice = match &self.tool_choice {
            None => ToolChoice::Auto,
            Some(value) => tool_choice(value)?,
        };
        Ok(PreparedResponse {
            instructions: self.instructions,
            messages,
            functions,
            mcp,
            choice,
            max_tokens: self.max_output_tokens.map(|n| n as usize),
            stream: self.stream.unwrap_or(false),
        })
    }
}

/// `input`: a string (one user message) or a list of items.
fn input(value: Value) -> Result<Vec<ChatMessage>, ApiError> {
    let items = match value {
        Value::String(s) => return Ok(vec![ChatMessage::user(s)]),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "`input` must be a string or an array of items, not {}.",
                    json_kind(&other)
                ),
            )
            .with_code("invalid_type"))
        }
    };
    let mut out = Vec::with_capacity(items.len());
    // Tool names by call id, so an output can name the tool it answers.
    let mut calls: HashMap<String, String> = HashMap::new();
    for (i, mut item) in items.into_iter().enumerate() {
        let at = |field: &str| format!("input[{i}].{field}");
        let string = |item: &Value, field: &str| -> Result<String, ApiError> {
            item[field].as_str().map(str::to_string).ok_or_else(|| {
                let field = at(field);
                ApiError::invalid(&field, format!("`{field}` must be a string."))
            })
        };
        let kind = item["type"].as_str().unwrap_or("message").to_string();
        match kind.as_str() {
            "message" => {
                let content = text(item.get_mut("content").map(Value::take), &at("content"))?;
                match item["role"].as_str() {
                    Some("user") => out.push(ChatMessage::user(content)),
                    Some("assistant") => out.push(ChatMessage::assistant(content)),
                    Some("system" | "developer") => out.push(ChatMessage::system(content)),
                    _ => {
                        let field = at("role");
                        return Err(ApiError::invalid(
                            &field,
                            format!(
                                "`{field}` must be \"user\", \"assistant\", \"system\" or \
                                 \"developer\"."
                            ),
                        ));
                    }
                }
            }
            "function_call" => {
                let (id, name) = (string(&item, "call_id")?, string(&item, "name")?);
                let arguments = arguments(&string(&item, "arguments")?, &at("arguments"))?;
                calls.insert(id.clone(), name.clone());
                out.push(ChatMessage::ToolCall(ToolCall {
                    id,
                    name,
                    arguments,
                }));
            }
            "function_call_output" => {
                let id = string(&item, "call_id")?;
                let Some(name) = calls.get(&id) else {
                    let field = at("call_id");
                    return Err(ApiError::invalid(
                        &field,
                        format!(
                            "`{field}` is {id:?}, which no earlier function_call item has; an \
                             output must follow the call it answers."
                        ),
                    ));
                };
                let output = text(item.get_mut("output").map(Value::take), &at("output"))?;
                out.push(ChatMessage::tool_result(id, name.clone(), output));
            }
            // A hosted call from an earlier response, echoed back: the
            // model sees it as the call and result it was.
            "mcp_call" => {
                let (id, label, tool) = (
                    string(&item, "id")?,
                    string(&item, "server_label")?,
                    string(&item, "name")?,
                );
                let name = format!("{label}__{tool}");
                let arguments = arguments(&string(&item, "arguments")?, &at("arguments"))?;
                let output = match (&item["output"], &item["error"]) {
                    (Value::String(out), _) => out.clone(),
                    (_, Value::Null) => String::new(),
                    (_, error) => format!("error: {error}"),
                };
                out.push(ChatMessage::ToolCall(ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                    arguments,
                }));
                out.push(ChatMessage::tool_result(id, name, output));
            }
            // Records of earlier responses that carry nothing for the model.
            "mcp_list_tools" | "reasoning" => {}
            other => {
                let field = at("type");
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "`{field}` is {other:?}; this server reads message, function_call, \
                         function_call_output and mcp_call items (it stores no earlier \
                         responses to refer to)."
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn arguments(raw: &str, field: &str) -> Result<Value, ApiError> {
    if raw.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(raw)
        .map_err(|e| ApiError::invalid(field, format!("`{field}` is not a JSON document: {e}")))
}

fn tools(wire: Vec<Value>) -> Result<(Vec<ToolSpec>, Vec<McpToolRequest>), ApiError> {
    let (mut functions, mut mcp) = (Vec::new(), Vec::new());
    for (i, tool) in wire.into_iter().enumerate() {
        let at = |field: &str| format!("tools[{i}].{field}");
        let string = |field: &str| -> Result<String, ApiError> {
            tool[field].as_str().map(str::to_string).ok_or_else(|| {
                let field = at(field);
                ApiError::invalid(&field, format!("`{field}` must be a string."))
                    .with_code("missing_required_parameter")
            })
        };
        match tool["type"].as_str() {
            Some("function") => functions.push(ToolSpec::new(
                string("name")?,
                tool["description"].as_str().unwrap_or_default(),
                match &tool["parameters"] {
                    Value::Null => json!({"type": "object", "properties": {}}),
                    schema => schema.clone(),
                },
            )),
            Some("mcp") => {
                let label = string("server_label")?;
                if label.is_empty() || label.contains("__") {
                    let field = at("server_label");
                    return Err(ApiError::invalid(
                        &field,
                        format!(
                            "`{field}` must be a non-empty name without \"__\" (tools are named \
                             label__tool)."
                        ),
                    ));
                }
                let url = string("server_url")?;
                match &tool["require_approval"] {
                    Value::String(s) if s == "never" => {}
                    _ => {
                        let field = at("require_approval");
                        return Err(ApiError::invalid(
                            &field,
                            format!(
                                "`{field}` must be \"never\": this server runs MCP tools within \
                                 the response and has no one to ask for approval; limit the \
                                 tools with allowed_tools instead."
                            ),
                        ));
                    }
                }
                for field in ["authorization", "headers"] {
                    if !tool[field].is_null() {
                        let field = at(field);
                        return Err(ApiError::invalid(
                            &field,
                            format!(
                                "`{field}` is not supported: this server reaches MCP servers \
                                 without credentials."
                            ),
                        ));
                    }
                }
                mcp.push(McpToolRequest {
                    label,
                    url,
                    allowed_tools: allowed_tools(&tool["allowed_tools"], &at("allowed_tools"))?,
                });
            }
            other => {
                let field = at("type");
                return Err(ApiError::invalid(
                    &field,
                    format!(
                        "`{field}` is {}; this server supports \"function\" and \"mcp\" tools.",
                        other.map_or("missing".to_string(), |k| format!("{k:?}"))
                    ),
                ));
            }
        }
    }
    Ok((functions, mcp))
}

/// `["a", "b"]` or `{"tool_names": ["a", "b"]}`; absent means all.
fn allowed_tools(value: &Value, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    let list = match value {
        Value::Null => return Ok(None),
        Value::Object(filter) => filter.get("tool_names").unwrap_or(&Value::Null),
        list => list,
    };
    let names: Option<Vec<String>> = list.as_array().and_then(|names| {
        names
            .iter()
            .map(|n| n.as_str().map(str::to_string))
            .collect()
    });
    names.map(Some).ok_or_else(|| {
        ApiError::invalid(
            field,
            format!("`{field}` must be a list of tool names or {{\"tool_names\": [...]}}."),
        )
    })
}

/// `"auto"`, `"none"` or `"required"`.
fn tool_choice(value: &Value) -> Result<ToolChoice, ApiError> {
    match value.as_str() {
        Some("auto") => Ok(ToolChoice::Auto),
        Some("none") => Ok(ToolChoice::SayOnly),
        Some("required") => Ok(ToolChoice::Required),
        _ => Err(ApiError::invalid(
            "tool_choice",
            format!(
                "`tool_choice` is {value}; this server supports \"auto\", \"none\" and \
                 \"required\"."
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(body: Value) -> Result<PreparedResponse, ApiError> {
        serde_json::from_value::<ResponsesRequest>(body)
            .unwrap()
            .prepare()
    }

    #[test]
    fn translates_items_and_tools() {
        let p = prepare(json!({
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "where is 1042?"},
                {"type": "function_call", "call_id": "c1", "name": "lookup",
                 "arguments": "{\"id\":1042}"},
                {"type": "function_call_output", "call_id": "c1", "output": "shipped"},
                {"type": "mcp_call", "id": "m1", "server_label": "kb", "name": "search",
                 "arguments": "{}", "output": "5 days"},
                {"type": "message", "role": "assistant",
                 "content": [{"type": "output_text", "text": "It shipped."}]},
                {"type": "mcp_list_tools", "id": "l1", "server_label": "kb", "tools": []},
            ],
            "tools": [
                {"type": "function", "name": "lookup", "parameters": {"type": "object"}},
                {"type": "mcp", "server_label": "kb", "server_url": "http://127.0.0.1:1/mcp",
                 "require_approval": "never", "allowed_tools": {"tool_names": ["search"]}},
            ],
            "tool_choice": "required",
            "stream": true,
            "temperature": 0.1,
        }))
        .unwrap();
        assert_eq!(p.messages[0], ChatMessage::system("Be brief."));
        assert_eq!(p.messages[1], ChatMessage::user("where is 1042?"));
        assert!(
            matches!(&p.messages[2], ChatMessage::ToolCall(c) if c.arguments == json!({"id": 1042}))
        );
        assert_eq!(
            p.messages[3],
            ChatMessage::tool_result("c1", "lookup", "shipped")
        );
        assert_eq!(
            p.messages[5],
            ChatMessage::tool_result("m1", "kb__search", "5 days")
        );
        assert_eq!(p.messages[6], ChatMessage::assistant("It shipped."));
        assert_eq!(p.messages.len(), 7);
        assert_eq!(p.functions[0].name, "lookup");
        assert_eq!(p.mcp[0].allowed_tools, Some(vec!["search".to_string()]));
        assert_eq!(p.choice, ToolChoice::Required);
        assert!(p.stream);
    }

    #[test]
    fn names_the_field_at_fault() {
        let cases = [
            (json!({"model": "m", "input": 3}), "input"),
            (
                json!({"model": "m", "input": [{"role": "assistant", "content": "hi"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": "q"},
                    {"type": "function_call_output", "call_id": "nope", "output": "x"}]}),
                "input[1].call_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": "q", "tools": [{"type": "mcp",
                    "server_label": "kb", "server_url": "http://x/mcp"}]}),
                "tools[0].require_approval",
            ),
            (
                json!({"model": "m", "input": "q", "tools": [{"type": "mcp",
                    "server_label": "kb", "server_url": "http://x/mcp",
                    "require_approval": "never", "authorization": "t"}]}),
                "tools[0].authorization",
            ),
            (
                json!({"model": "m", "input": "q", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "q", "tool_choice": {"type": "mcp"}}),
                "tool_choice",
            ),
        ];
        for (body, param) in cases {
            let e = prepare(body.clone()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
    }
}
