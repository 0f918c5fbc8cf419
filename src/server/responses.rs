//! `POST /v1/responses`, OpenAI's Responses API answered by the local model,
//! with the `mcp` tool: parlor is the *host* of hosted MCP. The request names
//! MCP servers by URL; this route connects to them, lists their tools
//! (`mcp_list_tools` items), lets the model call them within the one
//! response (`mcp_call` items), and answers in words (`message`) or with a
//! call of one of the client's own functions (`function_call`).
//!
//! So the planner's Responses backend (and any Responses client) can use
//! hosted MCP against a machine without internet. Connecting to URLs a
//! client names is a door into the network this server sits in: only URLs
//! under the prefixes given to `parlor serve --allow-mcp` are reached.
//!
//! A client's server is as untrusted as any other. Its tools pass the same
//! gate as the pipeline's (descriptions scanned and pinned on first use: a
//! poisoned tool or a rug pull mid-response is quarantined, never
//! offered); its results reach the model size-capped and fenced as data;
//! and when the server's pipeline keeps an audit log, every call is
//! recorded there (the request's caller, the response id as session)
//! before the model reads the result, with arguments that carry a secret
//! of the pipeline refused.
//!
//! A whole `response`, or with `"stream": true` the Responses server-sent
//! events (`response.created`, `response.output_item.added/done`,
//! `response.output_text.delta`…, `response.completed`). A failure after
//! the stream started is an `error` event followed by `response.failed`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::chat_request::Prepared;
use super::openai_error::ApiError;
use super::responses_request::{McpToolRequest, PreparedResponse, ResponsesRequest};
use super::served_model::{Event, Reply, ServedModel, Usage};
use super::AppState;
use crate::access::Caller;
use crate::llm::{ChatMessage, LlmError, ToolCall, ToolChoice, ToolSpec};
use crate::mcp::allow::under_prefix;
use crate::mcp::{Gate, McpPool, ToolInfo};
use crate::planner::{AuditedPool, PlannerOptions, Toolbox};
use crate::spec::McpServerSpec;
use crate::untrusted;

/// Model requests that may call MCP tools within one response; one more,
/// words only, follows if the model is still calling.
const MAX_MCP_STEPS: usize = 4;

/// One MCP tool call, from this server's side.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// SSE events buffered towards the client (backpressure beyond).
const SSE_QUEUE: usize = 16;

/// Ids unique within this process (`resp_…`, `msg_…`, `mcp_…`).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:016x}", NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

pub async fn responses(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<ResponsesRequest>, JsonRejection>,
) -> Response {
    let caller = caller.map(|Extension(c)| c).unwrap_or_default();
    match answer(state, caller, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn answer(
    state: AppState,
    caller: Caller,
    body: Result<Json<ResponsesRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    if !state.model.answers_to(&request.model) {
        return Err(ApiError::model_not_found(&request.model, state.model.id()));
    }
    let request = request.prepare()?;
    check_allowed(&request.mcp, &state.mcp_allow)?;
    if state.model.is_full() {
        return Err(ApiError::busy(state.model.busy()));
    }
    let (pool, mcp_tools) = connect(&request.mcp).await?;
    let mut run = Run::new(state.model.clone(), request, mcp_tools);
    if let Some(pool) = pool {
        run.use_pool(Arc::new(pool), &state, caller).await;
    }
    if !run.request.stream {
        return run.finish(None).await.map(|r| Json(r).into_response());
    }
    let (tx, rx) = mpsc::channel(SSE_QUEUE);
    tokio::spawn(async move {
        let events = Emitter::new(tx.clone());
        let _ = run.finish(Some(events)).await;
    });
    Ok(Sse::new(ReceiverStream::new(rx)).into_response())
}

/// Refuse MCP servers outside the allow-list before connecting to anything.
fn check_allowed(mcp: &[McpToolRequest], allow: &[String]) -> Result<(), ApiError> {
    for (i, server) in mcp.iter().enumerate() {
        if !allow.iter().any(|prefix| under_prefix(&server.url, prefix)) {
            return Err(ApiError::invalid(
                format!("tools[{i}].server_url"),
                format!(
                    "MCP server {} ({}) is not allowed here; the server's operator allows MCP \
                     servers with `parlor serve --allow-mcp URL_PREFIX`{}.",
                    server.label,
                    server.url,
                    if allow.is_empty() {
                        " (none are allowed now)".to_string()
                    } else {
                        format!(" (allowed now: {})", allow.join(", "))
                    }
                ),
            )
            .with_code("mcp_server_not_allowed"));
        }
    }
    Ok(())
}

/// Connect to the request's MCP servers and list their tools (only the
/// allowed ones). Any failure is a 424 naming the server.
async fn connect(
    mcp: &[McpToolRequest],
) -> Result<(Option<McpPool>, Vec<(McpToolRequest, Vec<ToolInfo>)>), ApiError> {
    if mcp.is_empty() {
        return Ok((None, Vec::new()));
    }
    let specs: BTreeMap<String, McpServerSpec> = mcp
        .iter()
        .map(|m| {
            (
                m.label.clone(),
                McpServerSpec::StreamableHttp {
                    url: m.url.clone(),
                    oauth: None,
                },
            )
        })
        .collect();
    let names: Vec<String> = specs.keys().cloned().collect();
    let pool = McpPool::connect(&specs, &names)
        .await
        .map_err(|e| ApiError::mcp_unreachable(&names.join(", "), e))?
        .with_gate(Gate::first_use_only());
    let tools = pool.tools().await;
    let mut listed = Vec::new();
    for server in mcp {
        let mine: Vec<ToolInfo> = tools
            .iter()
            .filter(|t| t.server == server.label)
            .filter(|t| {
                server
                    .allowed_tools
                    .as_ref()
                    .is_none_or(|allowed| allowed.contains(&t.tool))
            })
            .cloned()
            .collect();
        listed.push((server.clone(), mine));
    }
    Ok((Some(pool), listed))
}

/// Server-sent events of one streamed response, numbered in order.
struct Emitter {
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
    sequence: u64,
}

impl Emitter {
    fn new(tx: mpsc::Sender<Result<SseEvent, Infallible>>) -> Self {
        Self { tx, sequence: 0 }
    }

    /// Send one event; [`Gone`] when the client has gone.
    async fn send(&mut self, kind: &str, mut payload: Value) -> Result<(), Gone> {
        payload["type"] = kind.into();
        payload["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        self.tx
            .send(Ok(SseEvent::default()
                .event(kind)
                .data(payload.to_string())))
            .await
            .map_err(|_| Gone)
    }
}

/// The client went away mid-stream.
struct Gone;

/// Send one event if the response is streamed (a whole response has none).
async fn emit(events: &mut Option<Emitter>, kind: &str, payload: Value) -> Result<(), Gone> {
    match events {
        Some(e) => e.send(kind, payload).await,
        None => Ok(()),
    }
}

/// One response being answered.
struct Run {
    model: Arc<ServedModel>,
    request: PreparedResponse,
    /// The request's MCP sessions (closed when the response is done).
    pool: Option<Arc<McpPool>>,
    /// The pool as the model's calls go through it: audited when the
    /// server keeps an audit log.
    tools: Option<Arc<dyn Toolbox>>,
    listed: Vec<(McpToolRequest, Vec<ToolInfo>)>,
    id: String,
    created_at: u64,
    output: Vec<Value>,
    usage: Usage,
}

impl Run {
    fn new(
        model: Arc<ServedModel>,
        request: PreparedResponse,
        listed: Vec<(McpToolRequest, Vec<ToolInfo>)>,
    ) -> Self {
        Self {
            model,
            request,
            pool: None,
            tools: None,
            listed,
            id: new_id("resp"),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            output: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// Call the MCP tools through `pool`: audited in the server's log as
    /// `caller`, this response being the session, when there is a log.
    async fn use_pool(&mut self, pool: Arc<McpPool>, state: &AppState, caller: Caller) {
        let tools: Arc<dyn Toolbox> = match &state.audit {
            Some(log) => {
                let caller = Caller {
                    session: Some(self.id.clone()),
                    ..caller
                };
                let audited = AuditedPool::new(pool.clone(), log.clone(), caller)
                    .with_secrets(state.secrets.clone());
                // The gate judged the list before this toolbox existed:
                // what it withheld goes on record now.
                audited.record_quarantines().await;
                Arc::new(audited)
            }
            None => pool.clone(),
        };
        self.pool = Some(pool);
        self.tools = Some(tools);
    }

    /// Answer, emitting events if streaming; the final `response` object.
    /// The MCP sessions are closed whatever happens.
    async fn finish(mut self, mut events: Option<Emitter>) -> Result<Value, ApiError> {
        let result = self.answer(&mut events).await;
        // The toolbox holds the pool too: let go of it first.
        self.tools = None;
        if let Some(pool) = self.pool.take().and_then(Arc::into_inner) {
            pool.shutdown().await;
        }
        match result {
            Ok(Ok(())) => {
                let response = self.body("completed");
                let completed = json!({"response": response});
                let _ = emit(&mut events, "response.completed", completed).await;
                Ok(response)
            }
            Ok(Err(e)) => {
                let mut failed = self.body("failed");
                failed["error"] = json!({"code": e.code, "message": e.message});
                if emit(&mut events, "error", e.body()["error"].clone())
                    .await
                    .is_ok()
                {
                    let failed = json!({"response": failed});
                    let _ = emit(&mut events, "response.failed", failed).await;
                }
                Err(e)
            }
            Err(Gone) => Err(ApiError::server_error()),
        }
    }

    /// The tool loop. `Err(Gone)`: the streaming client left; `Ok(Err)`: a
    /// failure to report.
    async fn answer(&mut self, events: &mut Option<Emitter>) -> Result<Result<(), ApiError>, Gone> {
        let created = json!({"response": self.body("in_progress")});
        emit(events, "response.created", created).await?;
        let mut mcp_names: HashMap<String, (String, String)> = HashMap::new();
        let mut tools: Vec<ToolSpec> = self.request.functions.clone();
        for (server, listed) in self.listed.clone() {
            let item = json!({
                "type": "mcp_list_tools",
                "id": new_id("mcpl"),
                "server_label": server.label,
                "tools": listed.iter().map(|t| json!({
                    "name": t.tool,
                    "description": t.description,
                    "input_schema": t.input_schema,
                    "annotations": null,
                })).collect::<Vec<_>>(),
            });
            self.push_item(events, item).await?;
            for t in listed {
                mcp_names.insert(t.name.clone(), (server.label.clone(), t.tool.clone()));
                tools.push(ToolSpec::new(
                    t.name,
                    t.description.unwrap_or_default(),
                    t.input_schema,
                ));
            }
        }
        let mut messages = self.request.messages.clone();
        for step in 0..=MAX_MCP_STEPS {
            let choice = match step {
                0 => self.request.choice,
                s if s == MAX_MCP_STEPS => ToolChoice::SayOnly,
                _ if self.request.choice == ToolChoice::SayOnly => ToolChoice::SayOnly,
                _ => ToolChoice::Auto,
            };
            let prepared = Prepared {
                messages: messages.clone(),
                tools: (!tools.is_empty()).then(|| tools.clone()),
                choice,
                max_tokens: self.request.max_tokens,
                stream: true,
                include_usage: false,
            };
            let answer = match self.generate(prepared, events).await? {
                Ok(answer) => answer,
                Err(e) => return Ok(Err(e)),
            };
            match answer {
                Reply::Text(_) => return Ok(Ok(())),
                Reply::Call { name, arguments } => match mcp_names.get(&name) {
                    Some((label, tool)) => {
                        let call_id = new_id("mcp");
                        let result = self
                            .call_mcp(events, &call_id, label, tool, &name, &arguments)
                            .await?;
                        messages.push(ChatMessage::ToolCall(ToolCall {
                            id: call_id.clone(),
                            name: name.clone(),
                            arguments,
                        }));
                        messages.push(ChatMessage::tool_result(call_id, name, result));
                    }
                    None => {
                        let item = json!({
                            "type": "function_call",
                            "id": new_id("fc"),
                            "call_id": new_id("call"),
                            "name": name,
                            "arguments": arguments.to_string(),
                            "status": "completed",
                        });
                        self.push_item(events, item).await?;
                        return Ok(Ok(()));
                    }
                },
            }
        }
        Ok(Ok(()))
    }

    /// One model request. Text is streamed into a `message` item as it
    /// comes; the reply is returned once finished.
    async fn generate(
        &mut self,
        prepared: Prepared,
        events: &mut Option<Emitter>,
    ) -> Result<Result<Reply, ApiError>, Gone> {
        let mut rx = match self.model.generate(prepared) {
            Ok(rx) => rx,
            Err(busy) => return Ok(Err(ApiError::busy(busy))),
        };
        let item_id = new_id("msg");
        let index = self.output.len();
        // The fields every text event of this item carries, plus its own.
        let text_event = |own: Value| {
            let mut event = json!({"item_id": item_id, "output_index": index, "content_index": 0});
            if let (Some(event), Value::Object(own)) = (event.as_object_mut(), own) {
                event.extend(own);
            }
            event
        };
        let mut opened = false;
        loop {
            match rx.recv().await {
                Some(Event::Text(piece)) => {
                    if events.is_none() {
                        continue;
                    }
                    if !opened {
                        opened = true;
                        open_message(events, &item_id, index).await?;
                        let part = json!({"type": "output_text", "text": "", "annotations": []});
                        let added = text_event(json!({"part": part}));
                        emit(events, "response.content_part.added", added).await?;
                    }
                    let delta = text_event(json!({"delta": piece, "logprobs": []}));
                    emit(events, "response.output_text.delta", delta).await?;
                }
                Some(Event::Finished(Ok(answer))) => {
                    self.usage.prompt_tokens += answer.usage.prompt_tokens;
                    self.usage.cached_tokens += answer.usage.cached_tokens;
                    self.usage.completion_tokens += answer.usage.completion_tokens;
                    if let Reply::Text(text) = &answer.reply {
                        if !opened {
                            open_message(events, &item_id, index).await?;
                        }
                        let part = json!({"type": "output_text", "text": text, "annotations": []});
                        let done = text_event(json!({"text": text, "logprobs": []}));
                        emit(events, "response.output_text.done", done).await?;
                        let done = text_event(json!({"part": part}));
                        emit(events, "response.content_part.done", done).await?;
                        let item = message(&item_id, text, "completed");
                        self.done_item(events, index, item).await?;
                    }
                    return Ok(Ok(answer.reply));
                }
                Some(Event::Finished(Err(LlmError::Cancelled))) | None => return Err(Gone),
                Some(Event::Finished(Err(e))) => return Ok(Err(ApiError::from(&e))),
            }
        }
    }

    /// Run one MCP tool call as an `mcp_call` item (the client sees the
    /// tool's own text); the text the model will read: capped, and fenced
    /// as data.
    async fn call_mcp(
        &mut self,
        events: &mut Option<Emitter>,
        id: &str,
        label: &str,
        tool: &str,
        name: &str,
        arguments: &Value,
    ) -> Result<String, Gone> {
        let index = self.output.len();
        let mut item = json!({
            "type": "mcp_call",
            "id": id,
            "server_label": label,
            "name": tool,
            "arguments": arguments.to_string(),
            "output": null,
            "error": null,
            "status": "in_progress",
        });
        let added = json!({"output_index": index, "item": item});
        emit(events, "response.output_item.added", added).await?;
        let tools = self.tools.as_ref().expect("MCP tools come from the pool");
        let answer =
            match tokio::time::timeout(CALL_TIMEOUT, tools.call(name, arguments.clone())).await {
                Ok(answer) => answer,
                Err(_) => crate::planner::ToolAnswer::error(format!(
                    "tool \"{tool}\" on \"{label}\": no answer within {CALL_TIMEOUT:?}"
                )),
            };
        let (field, status) = if answer.is_error {
            ("error", "failed")
        } else {
            ("output", "completed")
        };
        item[field] = answer.text.clone().into();
        item["status"] = status.into();
        self.done_item(events, index, item).await?;
        let max = PlannerOptions::default().max_result_bytes;
        Ok(untrusted::fence(
            name,
            &crate::planner::cap(answer.text, max),
        ))
    }

    /// Add a finished item (announcing it first when streaming).
    async fn push_item(&mut self, events: &mut Option<Emitter>, item: Value) -> Result<(), Gone> {
        let index = self.output.len();
        let added = json!({"output_index": index, "item": item});
        emit(events, "response.output_item.added", added).await?;
        self.done_item(events, index, item).await
    }

    async fn done_item(
        &mut self,
        events: &mut Option<Emitter>,
        index: usize,
        item: Value,
    ) -> Result<(), Gone> {
        let done = json!({"output_index": index, "item": item});
        emit(events, "response.output_item.done", done).await?;
        self.output.push(item);
        Ok(())
    }

    /// The `response` object as it stands.
    fn body(&self, status: &str) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model.id(),
            "instructions": self.request.instructions,
            "output": self.output,
            "parallel_tool_calls": true,
            "tool_choice": match self.request.choice {
                ToolChoice::Auto => "auto",
                ToolChoice::SayOnly => "none",
                ToolChoice::Required => "required",
            },
            "tools": [],
            "store": false,
            "error": null,
            "incomplete_details": null,
            "metadata": {},
            "text": {"format": {"type": "text"}},
            "usage": {
                "input_tokens": self.usage.prompt_tokens,
                "input_tokens_details": {"cached_tokens": self.usage.cached_tokens},
                "output_tokens": self.usage.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.usage.prompt_tokens + self.usage.completion_tokens,
            },
        })
    }
}

/// Announce the `message` item the model's words go into.
async fn open_message(
    events: &mut Option<Emitter>,
    item_id: &str,
    index: usize,
) -> Result<(), Gone> {
    let added = json!({"output_index": index, "item": message(item_id, "", "in_progress")});
    emit(events, "response.output_item.added", added).await
}

fn message(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "completed" {
        json!([{"type": "output_text", "text": text, "annotations": []}])
    } else {
        json!([])
    };
    json!({"type": "message", "id": id, "role": "assistant", "status": status, "content": content})
}

#[cfg(test)]
mod tests {
    use super::under_prefix;

    #[test]
    fn allowed_prefixes_compare_origin_and_path_not_text() {
        let allowed = [
            ("http://127.0.0.1:8931/mcp", "http://127.0.0.1:8931/"),
            ("http://127.0.0.1:8931/mcp", "http://127.0.0.1:8931"),
            ("https://kb.example.com/mcp", "https://KB.example.com:443/"),
            (
                "https://kb.example.com/tools/mcp",
                "https://kb.example.com/tools",
            ),
            (
                "https://kb.example.com/tools",
                "https://kb.example.com/tools/",
            ),
        ];
        for (url, prefix) in allowed {
            assert!(under_prefix(url, prefix), "{url} under {prefix}");
        }
        let refused = [
            (
                "http://kb.example.com.evil.org/mcp",
                "http://kb.example.com",
            ),
            ("http://127.0.0.1:89310/mcp", "http://127.0.0.1:8931"),
            ("https://127.0.0.1:8931/mcp", "http://127.0.0.1:8931/"),
            (
                "https://kb.example.com/toolsx/mcp",
                "https://kb.example.com/tools",
            ),
            ("http://user@10.0.0.1/mcp", "http://127.0.0.1/"),
            ("/mcp", "http://127.0.0.1/"),
            ("not a url", "http://127.0.0.1/"),
        ];
        for (url, prefix) in refused {
            assert!(!under_prefix(url, prefix), "{url} refused by {prefix}");
        }
    }
}
