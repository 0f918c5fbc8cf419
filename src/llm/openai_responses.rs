//! The planner backend for OpenAI's Responses API, used when a planner has
//! hosted MCP servers: those go to the provider as `mcp` tools and the
//! provider calls them itself, within one request; parlor's own tools go as
//! function tools and come back as calls, as with Chat Completions.
//!
//! The request is built from async-openai's types; the event stream is read
//! as plain JSON (async-openai's `byot`) and only the events the planner
//! needs are looked at, so a provider that adds fields or event kinds does
//! not break a turn.

use async_openai::config::OpenAIConfig;
use async_openai::types::mcp::{
    MCPTool, MCPToolAllowedTools, MCPToolApprovalSetting, MCPToolRequireApproval,
};
use async_openai::types::responses::{
    CreateResponse, FunctionTool, InputParam, Tool, ToolChoiceOptions, ToolChoiceParam,
};
use async_openai::Client;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::backend::{until_cancelled, HostedCall, ModelReply, ModelRequest, PlannerModel};
use super::chat::{ChatMessage, ToolCall, ToolChoice, ToolSpec};
use super::openai::{client, remote_error, DEFAULT_MODEL};
use super::LlmError;

/// An MCP server the provider is to call, as the request names it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedServer {
    /// `server_label`: how the provider and its answers name the server.
    pub label: String,
    pub url: String,
    pub allowed_tools: Option<Vec<String>>,
    pub description: Option<String>,
    /// Bearer token for the server, passed to the provider (never logged).
    pub authorization: Option<String>,
}

/// A Responses endpoint, the model to ask, and the hosted servers to offer.
#[derive(Clone)]
pub struct ResponsesPlanner {
    client: Client<OpenAIConfig>,
    base_url: String,
    model: String,
    hosted: Vec<HostedServer>,
}

impl ResponsesPlanner {
    /// `base_url` ends in `/v1` (default: [`crate::spec::openai_base_url`]).
    pub fn new(
        base_url: Option<&str>,
        api_key: &str,
        model: Option<&str>,
        hosted: Vec<HostedServer>,
    ) -> Self {
        let (client, base_url) = client(base_url, api_key);
        Self {
            client,
            base_url,
            model: model.unwrap_or(DEFAULT_MODEL).to_string(),
            hosted,
        }
    }

    fn request(&self, request: ModelRequest<'_>) -> CreateResponse {
        let (instructions, input) = to_input(request.messages);
        let mut tools: Vec<Tool> = request.tools.iter().map(function_tool).collect();
        // Words only means no calls of any kind, hosted ones included.
        if request.choice != ToolChoice::SayOnly {
            tools.extend(self.hosted.iter().map(mcp_tool));
        }
        let choice = match request.choice {
            ToolChoice::Auto => ToolChoiceOptions::Auto,
            ToolChoice::SayOnly => ToolChoiceOptions::None,
            ToolChoice::Required => ToolChoiceOptions::Required,
        };
        CreateResponse {
            model: Some(self.model.clone()),
            instructions,
            input: InputParam::Items(
                serde_json::from_value(Value::Array(input))
                    .expect("input items are built in the Responses shape"),
            ),
            tool_choice: (!tools.is_empty()).then_some(ToolChoiceParam::Option(choice)),
            parallel_tool_calls: (!tools.is_empty()).then_some(true),
            tools: (!tools.is_empty()).then_some(tools),
            stream: Some(true),
            // The conversation lives in parlor's history, not the provider.
            store: Some(false),
            ..Default::default()
        }
    }
}

#[async_trait]
impl PlannerModel for ResponsesPlanner {
    fn describe(&self) -> String {
        let labels: Vec<_> = self.hosted.iter().map(|h| h.label.as_str()).collect();
        format!(
            "openai {} at {} (Responses API; hosted MCP: {})",
            self.model,
            self.base_url,
            if labels.is_empty() {
                "none".into()
            } else {
                labels.join(", ")
            }
        )
    }

    fn has_hosted_tools(&self) -> bool {
        !self.hosted.is_empty()
    }

    async fn respond(
        &self,
        request: ModelRequest<'_>,
        text: &UnboundedSender<String>,
        cancel: &CancellationToken,
    ) -> Result<ModelReply, LlmError> {
        let body = self.request(request);
        let work = async {
            let mut stream = self
                .client
                .responses()
                .create_stream_byot::<_, Value>(body)
                .await
                .map_err(remote_error)?;
            let mut reply = ModelReply::default();
            while let Some(event) = stream.next().await {
                let event = event.map_err(remote_error)?;
                if read_event(&event, &mut reply, text)? {
                    return Ok(reply);
                }
            }
            Err(LlmError::Remote(
                "the response stream ended before response.completed".into(),
            ))
        };
        until_cancelled(cancel, work).await
    }
}

/// The token counts of a finished response (zeros where the server gave
/// none).
fn usage(usage: &Value) -> crate::frame::Usage {
    let count = |key: &str| usage[key].as_u64().unwrap_or(0);
    crate::frame::Usage {
        input_text_tokens: count("input_tokens"),
        cached_input_text_tokens: usage["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap_or(0),
        output_text_tokens: count("output_tokens"),
        ..Default::default()
    }
}

/// Apply one stream event to `reply`; `Ok(true)` when the response is done.
fn read_event(
    event: &Value,
    reply: &mut ModelReply,
    text: &UnboundedSender<String>,
) -> Result<bool, LlmError> {
    match event["type"].as_str().unwrap_or_default() {
        "response.output_text.delta" => {
            if let Some(piece) = event["delta"].as_str().filter(|p| !p.is_empty()) {
                let _ = text.send(piece.to_string());
                reply.text.push_str(piece);
            }
        }
        "response.output_item.done" => read_item(&event["item"], reply)?,
        "response.completed" => {
            reply.usage = usage(&event["response"]["usage"]);
            return Ok(true);
        }
        "response.incomplete" => {
            reply.usage = usage(&event["response"]["usage"]);
            // Cut short (e.g. the token limit): what was said stands.
            tracing::warn!(
                reason = %event["response"]["incomplete_details"]["reason"],
                message = "The provider ended the response early."
            );
            return Ok(true);
        }
        "response.failed" => {
            return Err(LlmError::Remote(error_text(&event["response"]["error"])));
        }
        "error" => return Err(LlmError::Remote(error_text(event))),
        _ => {}
    }
    Ok(false)
}

fn read_item(item: &Value, reply: &mut ModelReply) -> Result<(), LlmError> {
    let field = |name: &str| item[name].as_str().unwrap_or_default().to_string();
    match item["type"].as_str().unwrap_or_default() {
        "function_call" => {
            let raw = field("arguments");
            reply.calls.push(ToolCall {
                id: field("call_id"),
                name: field("name"),
                arguments: parse_arguments(raw),
            });
        }
        "mcp_call" => {
            let error = match &item["error"] {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(
                    other["message"]
                        .as_str()
                        .map_or_else(|| other.to_string(), str::to_string),
                ),
            };
            reply.hosted.push(HostedCall {
                id: field("id"),
                server: field("server_label"),
                tool: field("name"),
                arguments: parse_arguments(field("arguments")),
                is_error: error.is_some(),
                output: error.unwrap_or_else(|| field("output")),
            });
        }
        "mcp_list_tools" => {
            if let Some(error) = item["error"].as_str() {
                return Err(LlmError::Remote(format!(
                    "the provider could not list the tools of hosted MCP server \"{}\": {error}",
                    field("server_label")
                )));
            }
        }
        "mcp_approval_request" => {
            // parlor sends require_approval "never"; a provider that asks
            // anyway has no one to ask.
            return Err(LlmError::Remote(format!(
                "the provider asked to approve {} on \"{}\"; parlor offers hosted tools \
                 without approval (narrow them with allowed_tools)",
                field("name"),
                field("server_label")
            )));
        }
        _ => {}
    }
    Ok(())
}

fn parse_arguments(raw: String) -> Value {
    if raw.trim().is_empty() {
        return json!({});
    }
    // Malformed arguments go on as a string: the tool loop reports them to
    // the model instead of failing the turn.
    serde_json::from_str(&raw).unwrap_or(Value::String(raw))
}

fn error_text(error: &Value) -> String {
    match error["message"].as_str() {
        Some(message) => match error["code"].as_str() {
            Some(code) => format!("{message} ({code})"),
            None => message.to_string(),
        },
        None => error.to_string(),
    }
}

fn function_tool(tool: &ToolSpec) -> Tool {
    Tool::Function(FunctionTool {
        name: tool.name.clone(),
        parameters: Some(tool.parameters.clone()),
        // Strict mode would require every MCP schema to be closed and fully
        // required; MCP servers' schemas are passed on as they are.
        strict: Some(false),
        description: Some(tool.description.clone()).filter(|d| !d.is_empty()),
        ..Default::default()
    })
}

fn mcp_tool(server: &HostedServer) -> Tool {
    Tool::Mcp(MCPTool {
        server_label: server.label.clone(),
        server_url: Some(server.url.clone()),
        server_description: server.description.clone(),
        allowed_tools: server.allowed_tools.clone().map(MCPToolAllowedTools::List),
        authorization: server.authorization.clone(),
        // No one is there to approve mid-turn (a voice call); which tools
        // may run at all is what allowed_tools is for.
        require_approval: Some(MCPToolRequireApproval::ApprovalSetting(
            MCPToolApprovalSetting::Never,
        )),
        ..Default::default()
    })
}

/// Our conversation as Responses input: system messages become
/// `instructions`, the rest input items (calls and their outputs paired by
/// `call_id`).
fn to_input(messages: &[ChatMessage]) -> (Option<String>, Vec<Value>) {
    let mut instructions: Vec<&str> = Vec::new();
    let mut input = Vec::with_capacity(messages.len());
    for message in messages {
        match message {
            ChatMessage::System { content } => instructions.push(content),
            ChatMessage::User { content } => {
                input.push(json!({"type": "message", "role": "user", "content": content}))
            }
            ChatMessage::Assistant { content } => {
                input.push(json!({"type": "message", "role": "assistant", "content": content}))
            }
            ChatMessage::ToolCall(call) => input.push(json!({
                "type": "function_call",
                "call_id": call.id,
                "name": call.name,
                "arguments": match &call.arguments {
                    Value::String(raw) => raw.clone(),
                    other => other.to_string(),
                },
            })),
            ChatMessage::ToolResult {
                call_id, content, ..
            } => input.push(json!({
                "type": "function_call_output",
                "call_id": call_id,
                "output": content,
            })),
        }
    }
    let instructions = (!instructions.is_empty()).then(|| instructions.join("\n\n"));
    (instructions, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner() -> ResponsesPlanner {
        ResponsesPlanner::new(
            Some("http://127.0.0.1:1/v1"),
            "",
            None,
            vec![HostedServer {
                label: "kb".into(),
                url: "https://kb.example.com/mcp".into(),
                allowed_tools: Some(vec!["search".into()]),
                description: None,
                authorization: Some("secret".into()),
            }],
        )
    }

    #[test]
    fn hosted_servers_go_as_mcp_tools_and_calls_as_items() {
        let messages = vec![
            ChatMessage::system("be brief"),
            ChatMessage::user("where is 1042?"),
            ChatMessage::ToolCall(ToolCall {
                id: "c1".into(),
                name: "orders__get_order".into(),
                arguments: json!({"order_id": 1042}),
            }),
            ChatMessage::tool_result("c1", "orders__get_order", "shipped"),
        ];
        let tools = [ToolSpec::new(
            "orders__get_order",
            "",
            json!({"type": "object"}),
        )];
        let body = serde_json::to_value(planner().request(ModelRequest {
            messages: &messages,
            tools: &tools,
            choice: ToolChoice::Auto,
        }))
        .unwrap();
        assert_eq!(body["instructions"], "be brief");
        assert_eq!(body["input"][0]["role"], "user");
        assert_eq!(body["input"][1]["type"], "function_call");
        assert_eq!(body["input"][1]["arguments"], "{\"order_id\":1042}");
        assert_eq!(body["input"][2]["type"], "function_call_output");
        assert_eq!(body["input"][2]["call_id"], "c1");
        assert_eq!(body["tools"][0]["type"], "function");
        let mcp = &body["tools"][1];
        assert_eq!(mcp["type"], "mcp");
        assert_eq!(mcp["server_label"], "kb");
        assert_eq!(mcp["server_url"], "https://kb.example.com/mcp");
        assert_eq!(mcp["allowed_tools"], json!(["search"]));
        assert_eq!(mcp["require_approval"], "never");
        assert_eq!(body["tool_choice"], "auto");
        assert_eq!(body["stream"], true);
        assert_eq!(body["store"], false);
    }

    #[test]
    fn words_only_offers_no_hosted_tools() {
        let body = serde_json::to_value(planner().request(ModelRequest {
            messages: &[ChatMessage::user("hi")],
            tools: &[],
            choice: ToolChoice::SayOnly,
        }))
        .unwrap();
        assert!(body.get("tools").is_none(), "{body:#}");
    }

    #[test]
    fn stream_events_give_text_calls_and_hosted_calls() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut reply = ModelReply::default();
        let events = [
            json!({"type": "response.created", "response": {}}),
            json!({"type": "response.output_item.done", "item": {"type": "mcp_call",
                "id": "mcp_1", "server_label": "kb", "name": "search",
                "arguments": "{\"query\":\"refund\"}", "output": "5 days", "error": null}}),
            json!({"type": "response.output_item.done", "item": {"type": "mcp_call",
                "id": "mcp_2", "server_label": "kb", "name": "search", "arguments": "{}",
                "output": null, "error": {"type": "mcp_tool_execution_error", "message": "boom"}}}),
            json!({"type": "response.output_text.delta", "delta": "Five "}),
            json!({"type": "response.output_text.delta", "delta": "days."}),
            json!({"type": "response.output_item.done", "item": {"type": "function_call",
                "call_id": "c9", "name": "orders__get_order", "arguments": "{bad"}}),
        ];
        for event in &events {
            assert!(!read_event(event, &mut reply, &tx).unwrap());
        }
        assert!(read_event(&json!({"type": "response.completed"}), &mut reply, &tx).unwrap());
        assert_eq!(reply.text, "Five days.");
        assert_eq!(rx.try_recv().unwrap(), "Five ");
        assert_eq!(reply.hosted.len(), 2);
        assert_eq!(reply.hosted[0].arguments, json!({"query": "refund"}));
        assert_eq!(reply.hosted[0].output, "5 days");
        assert!(reply.hosted[1].is_error);
        assert_eq!(reply.hosted[1].output, "boom");
        assert_eq!(reply.calls[0].arguments, json!("{bad"));
        let failed = json!({"type": "response.failed", "response": {"error":
            {"code": "server_error", "message": "overloaded"}}});
        let err = read_event(&failed, &mut reply, &tx).unwrap_err();
        assert!(
            err.to_string().contains("overloaded (server_error)"),
            "{err}"
        );
    }
}
