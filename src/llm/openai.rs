//! The planner backend for OpenAI's Chat Completions API and every server
//! that speaks it (parlor's own `/v1/chat/completions`, vLLM, llama.cpp's
//! server, ...), through `async-openai`, streaming.

use std::collections::BTreeMap;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestToolMessage,
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, ChatCompletionTool,
    ChatCompletionToolChoiceOption, ChatCompletionTools, CreateChatCompletionRequest, FunctionCall,
    FunctionObject, ToolChoiceOptions,
};

use async_openai::Client;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use super::backend::{until_cancelled, ModelReply, ModelRequest, PlannerModel};
use super::chat::{ChatMessage, ToolCall, ToolChoice, ToolSpec};
use super::LlmError;

/// The model when a spec names none.
pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";

/// A Chat Completions endpoint and the model to ask.
#[derive(Clone)]
pub struct OpenAiPlanner {
    client: Client<OpenAIConfig>,
    base_url: String,
    model: String,
}

impl OpenAiPlanner {
    /// `base_url` ends in `/v1` (default: [`crate::spec::openai_base_url`]);
    /// `api_key` may be empty for servers that need none.
    pub fn new(base_url: Option<&str>, api_key: &str, model: Option<&str>) -> Self {
        let (client, base_url) = client(base_url, api_key);
        Self {
            client,
            base_url,
            model: model.unwrap_or(DEFAULT_MODEL).to_string(),
        }
    }

    fn request(&self, request: ModelRequest<'_>) -> CreateChatCompletionRequest {
        let offer_tools = !request.tools.is_empty();
        CreateChatCompletionRequest {
            model: self.model.clone(),
            messages: to_openai_messages(request.messages),
            stream: Some(true),
            // The last chunk then carries the request's token counts (for
            // the cost estimate); servers that ignore it just send none.
            stream_options: Some(ChatCompletionStreamOptions {
                include_usage: Some(true),
                ..Default::default()
            }),
            tools: offer_tools.then(|| request.tools.iter().map(to_openai_tool).collect()),
            tool_choice: offer_tools.then_some(ChatCompletionToolChoiceOption::Mode(match request
                .choice
            {
                ToolChoice::Auto => ToolChoiceOptions::Auto,
                ToolChoice::SayOnly => ToolChoiceOptions::None,
                ToolChoice::Required => ToolChoiceOptions::Required,
            })),
            parallel_tool_calls: offer_tools.then_some(true),
            ..Default::default()
        }
    }
}

#[async_trait]
impl PlannerModel for OpenAiPlanner {
    fn describe(&self) -> String {
        format!("openai {} at {}", self.model, self.base_url)
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
                .chat()
                .create_stream(body)
                .await
                .map_err(remote_error)?;
            let mut reply = ReplyBuilder::default();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(remote_error)?;
                if let Some(usage) = &chunk.usage {
                    reply.usage = crate::frame::Usage {
                        input_text_tokens: u64::from(usage.prompt_tokens),
                        cached_input_text_tokens: usage
                            .prompt_tokens_details
                            .as_ref()
                            .and_then(|d| d.cached_tokens)
                            .map_or(0, u64::from),
                        output_text_tokens: u64::from(usage.completion_tokens),
                        ..Default::default()
                    };
                }
                for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
                    if let Some(piece) = choice.delta.content.filter(|p| !p.is_empty()) {
                        let _ = text.send(piece.clone());
                        reply.text.push_str(&piece);
                    }
                    for call in choice.delta.tool_calls.into_iter().flatten() {
                        let slot = reply.calls.entry(call.index).or_default();
                        if let Some(id) = call.id {
                            slot.id = id;
                        }
                        if let Some(f) = call.function {
                            slot.name.push_str(f.name.as_deref().unwrap_or(""));
                            slot.arguments
                                .push_str(f.arguments.as_deref().unwrap_or(""));
                        }
                    }
                }
            }
            reply.finish()
        };
        until_cancelled(cancel, work).await
    }
}

/// Tool calls arrive in pieces keyed by index: the id and name first, the
/// arguments as a JSON string split across chunks.
#[derive(Default)]
struct ReplyBuilder {
    text: String,
    usage: crate::frame::Usage,
    calls: BTreeMap<u32, PartialCall>,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl ReplyBuilder {
    fn finish(self) -> Result<ModelReply, LlmError> {
        let calls = self
            .calls
            .into_values()
            .map(|c| {
                let arguments = if c.arguments.trim().is_empty() {
                    Value::Object(Default::default())
                } else {
                    // Malformed arguments are passed on as a string: the
                    // tool loop reports them to the model as a tool error
                    // rather than failing the whole turn.
                    serde_json::from_str(&c.arguments).unwrap_or(Value::String(c.arguments))
                };
                ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments,
                }
            })
            .collect();
        Ok(ModelReply {
            text: self.text,
            calls,
            usage: self.usage,
            ..ModelReply::default()
        })
    }
}

/// A client for `base_url` (default: [`crate::spec::openai_base_url`]),
/// and the base URL it uses, for messages.
pub(super) fn client(base_url: Option<&str>, api_key: &str) -> (Client<OpenAIConfig>, String) {
    let base_url = crate::spec::openai_base_url(base_url);
    let config = OpenAIConfig::new()
        .with_api_key(api_key)
        .with_api_base(&base_url);
    (Client::with_config(config), base_url)
}

pub(super) fn remote_error(e: OpenAIError) -> LlmError {
    LlmError::Remote(match e {
        OpenAIError::ApiError(api) => api.to_string(),
        other => other.to_string(),
    })
}

fn to_openai_tool(tool: &ToolSpec) -> ChatCompletionTools {
    ChatCompletionTools::Function(ChatCompletionTool {
        function: FunctionObject {
            name: tool.name.clone(),
            description: Some(tool.description.clone()).filter(|d| !d.is_empty()),
            parameters: Some(tool.parameters.clone()),
            strict: None,
        },
    })
}

/// Our conversation in Chat Completions messages: an assistant's text and
/// the tool calls that follow it become one assistant message, as the API
/// expects parallel calls to arrive.
fn to_openai_messages(messages: &[ChatMessage]) -> Vec<ChatCompletionRequestMessage> {
    let mut out: Vec<ChatCompletionRequestMessage> = Vec::with_capacity(messages.len());
    for message in messages {
        match message {
            ChatMessage::System { content } => {
                out.push(ChatCompletionRequestSystemMessage::from(content.as_str()).into())
            }
            ChatMessage::User { content } => {
                out.push(ChatCompletionRequestUserMessage::from(content.as_str()).into())
            }
            ChatMessage::Assistant { content } => {
                out.push(ChatCompletionRequestAssistantMessage::from(content.as_str()).into())
            }
            ChatMessage::ToolCall(call) => {
                let call =
                    ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                        id: call.id.clone(),
                        function: FunctionCall {
                            name: call.name.clone(),
                            arguments: match &call.arguments {
                                Value::String(raw) => raw.clone(),
                                other => other.to_string(),
                            },
                        },
                    });
                match out.last_mut() {
                    Some(ChatCompletionRequestMessage::Assistant(a)) => {
                        a.tool_calls.get_or_insert_with(Vec::new).push(call)
                    }
                    _ => out.push(
                        ChatCompletionRequestAssistantMessage {
                            tool_calls: Some(vec![call]),
                            ..Default::default()
                        }
                        .into(),
                    ),
                }
            }
            ChatMessage::ToolResult {
                call_id, content, ..
            } => out.push(
                ChatCompletionRequestToolMessage {
                    content: content.as_str().into(),
                    tool_call_id: call_id.clone(),
                }
                .into(),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_and_parallel_calls_become_one_assistant_message() {
        let messages = vec![
            ChatMessage::user("check 1 and 2"),
            ChatMessage::assistant("Let me look."),
            ChatMessage::ToolCall(ToolCall {
                id: "a".into(),
                name: "get_order".into(),
                arguments: json!({"order_id": 1}),
            }),
            ChatMessage::ToolCall(ToolCall {
                id: "b".into(),
                name: "get_order".into(),
                arguments: json!({"order_id": 2}),
            }),
            ChatMessage::tool_result("a", "get_order", "shipped"),
            ChatMessage::tool_result("b", "get_order", "pending"),
        ];
        let wire = serde_json::to_value(to_openai_messages(&messages)).unwrap();
        assert_eq!(wire.as_array().unwrap().len(), 4, "{wire:#}");
        assert_eq!(wire[1]["role"], "assistant");
        assert_eq!(wire[1]["content"], "Let me look.");
        assert_eq!(wire[1]["tool_calls"][1]["id"], "b");
        assert_eq!(
            wire[1]["tool_calls"][0]["function"]["arguments"],
            "{\"order_id\":1}"
        );
        assert_eq!(wire[3]["role"], "tool");
        assert_eq!(wire[3]["tool_call_id"], "b");
    }

    #[test]
    fn a_call_after_a_tool_result_starts_a_new_assistant_message() {
        let call = |id: &str| {
            ChatMessage::ToolCall(ToolCall {
                id: id.into(),
                name: "t".into(),
                arguments: json!({}),
            })
        };
        let messages = vec![
            ChatMessage::user("q"),
            call("a"),
            ChatMessage::tool_result("a", "t", "r"),
            call("b"),
        ];
        let wire = serde_json::to_value(to_openai_messages(&messages)).unwrap();
        assert_eq!(wire.as_array().unwrap().len(), 4, "{wire:#}");
        assert_eq!(wire[3]["tool_calls"][0]["id"], "b");
    }

    #[test]
    fn split_arguments_are_joined_and_bad_json_is_kept_for_the_model() {
        let mut b = ReplyBuilder::default();
        b.calls.insert(
            0,
            PartialCall {
                id: "x".into(),
                name: "t".into(),
                arguments: "{\"a\":".to_string() + "1}",
            },
        );
        b.calls.insert(
            1,
            PartialCall {
                id: "y".into(),
                name: "t".into(),
                arguments: "{oops".into(),
            },
        );
        let reply = b.finish().unwrap();
        assert_eq!(reply.calls[0].arguments, json!({"a": 1}));
        assert_eq!(reply.calls[1].arguments, json!("{oops"));
    }
}
