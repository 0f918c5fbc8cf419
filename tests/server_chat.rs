//! `POST /v1/chat/completions` over real HTTP, answered by the real local
//! model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M): plain chat, structured tool
//! calls, a tool-result follow-up, streaming, every error shape, a client
//! that goes away mid-stream, and the official OpenAI Python client.
//!
//! Needs `bash models/setup.sh` (the model and the venv with `openai`).
//! One server for the whole file, on 127.0.0.1:0 in a thread of its own;
//! tests run one at a time (two cores, one model).

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use parlor::llm::{LocalLlm, LocalLlmOptions};
use parlor::server::{serve, AppState, ServedModel};
use reqwest::StatusCode;
use serde_json::{json, Value};

const MODEL_ID: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";

/// Async, since the guard is held across awaits.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Server {
    base: String,
    state: AppState,
}

async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The server, started on first use; it lives as long as the test process.
fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let options = LocalLlmOptions {
            threads: 2,
            context_len: 2048,
            max_tokens: 160,
            ..LocalLlmOptions::default()
        };
        let (base, state) = support::start_chat_server(&format!("{MODEL_ID}.gguf"), options);
        Server { base, state }
    })
}

fn url(path: &str) -> String {
    format!("{}{path}", server().base)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn tasks() -> Value {
    let text =
        std::fs::read_to_string(root().join("benches/tasks/planner_questions.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The question set's tools in OpenAI's shape.
fn tools() -> Value {
    let tools: Vec<Value> = tasks()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| json!({"type": "function", "function": t}))
        .collect();
    Value::Array(tools)
}

fn with_tools(question: &str) -> Value {
    json!({
        "model": MODEL_ID,
        "messages": [
            {"role": "system", "content": tasks()["system"]},
            {"role": "user", "content": question},
        ],
        "tools": tools(),
        "temperature": 0.7,
        "parallel_tool_calls": false,
    })
}

async fn post_raw(body: Vec<u8>, content_type: &str) -> (StatusCode, Value) {
    let response = client()
        .post(url("/v1/chat/completions"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("send");
    let status = response.status();
    let bytes = response.bytes().await.expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, value)
}

async fn post(body: &Value) -> (StatusCode, Value) {
    post_raw(serde_json::to_vec(body).unwrap(), "application/json").await
}

/// What a stream sent: each `data:` payload, parsed, plus whether it ended
/// with `[DONE]`.
struct Streamed {
    chunks: Vec<Value>,
    done: bool,
    first_content_after: Option<Duration>,
    total: Duration,
}

impl Streamed {
    fn content(&self) -> String {
        self.chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    fn finish_reason(&self) -> Option<&str> {
        self.chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str())
    }
}

async fn post_stream(body: &Value) -> Streamed {
    let started = Instant::now();
    let response = client()
        .post(url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut out = Streamed {
        chunks: Vec::new(),
        done: false,
        first_content_after: None,
        total: Duration::ZERO,
    };
    while let Some(bytes) = stream.next().await {
        buffer.push_str(std::str::from_utf8(&bytes.expect("stream")).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event
                .trim_end()
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!out.done, "data after [DONE]: {data}");
            if data == "[DONE]" {
                out.done = true;
                continue;
            }
            let chunk: Value = serde_json::from_str(data).expect("chunk is JSON");
            if out.first_content_after.is_none()
                && chunk["choices"][0]["delta"]["content"].is_string()
            {
                out.first_content_after = Some(started.elapsed());
            }
            out.chunks.push(chunk);
        }
    }
    assert!(buffer.trim().is_empty(), "trailing bytes: {buffer:?}");
    out.total = started.elapsed();
    out
}

#[tokio::test]
async fn plain_chat_answers_in_openai_shape() {
    let _guard = one_at_a_time().await;
    let started = Instant::now();
    let (status, body) = post(&json!({
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Say hello to Ada "},
            {"type": "text", "text": "in one short sentence."}
        ]}],
        "temperature": 0.2,
    }))
    .await;
    println!("plain chat in {:?}: {body}", started.elapsed());
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(body["model"], MODEL_ID);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.to_lowercase().contains("ada"), "{content:?}");
    assert!(choice["message"].get("tool_calls").is_none());
    let usage = &body["usage"];
    let (p, c) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(p > 10 && c > 0, "{usage}");
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), p + c);
}

#[tokio::test]
async fn concurrent_requests_queue_for_the_model() {
    let _guard = one_at_a_time().await;
    let ask = |n: u32| {
        post_owned(json!({"model": MODEL_ID, "max_tokens": 24, "messages": [
            {"role": "user", "content": format!("What is {n} plus {n}? Answer with the number.")}
        ]}))
    };
    let (a, b, c) = tokio::join!(ask(2), ask(20), ask(200));
    for ((status, body), want) in [(a, "4"), (b, "40"), (c, "400")] {
        assert_eq!(status, StatusCode::OK, "{body}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(content.contains(want), "{content:?} should contain {want}");
    }
}

async fn post_owned(body: Value) -> (StatusCode, Value) {
    post(&body).await
}

#[tokio::test]
async fn health_and_model_list() {
    let _guard = one_at_a_time().await;
    let (status, health) = get_json(&url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let (status, models) = get_json(&url("/v1/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL_ID);
    assert_eq!(models["data"][0]["object"], "model");
}

#[tokio::test]
async fn an_order_question_is_a_structured_tool_call() {
    let _guard = one_at_a_time().await;
    let started = Instant::now();
    let (status, body) = post(&with_tools("Where is order 1042?")).await;
    println!("tool call in {:?}: {body}", started.elapsed());
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null(), "{body}");
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "orders__get_order");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"order_id": "1042"}));
}

#[tokio::test]
async fn small_talk_is_content_not_a_tool_call() {
    let _guard = one_at_a_time().await;
    let (status, body) = post(&with_tools("hi, how are you?")).await;
    println!("{body}");
    assert_eq!(status, StatusCode::OK, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert!(choice["message"].get("tool_calls").is_none(), "{body}");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(!content.trim().is_empty());
    assert!(
        !content.contains('{'),
        "tool JSON leaked into content: {content:?}"
    );
}

/// The conversation an OpenAI client sends back after running the tool.
fn after_tool_result(tool_choice: &str) -> Value {
    let mut body = with_tools("Where is order 1042?");
    let messages = body["messages"].as_array_mut().unwrap();
    messages.push(
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": "call_abc", "type": "function",
            "function": {"name": "orders__get_order", "arguments": "{\"order_id\": \"1042\"}"}
        }]}),
    );
    messages.push(json!({"role": "tool", "tool_call_id": "call_abc",
        "content": "{\"order_id\": \"1042\", \"status\": \"shipped\", \"carrier\": \"DHL\", \"expected_delivery\": \"Friday\"}"}));
    body["tool_choice"] = json!(tool_choice);
    body
}

#[tokio::test]
async fn a_tool_result_follow_up_answers_from_the_result() {
    let _guard = one_at_a_time().await;
    // "auto": left alone the 0.5B model re-issues the same call; the server
    // answers in words instead of repeating it.
    for choice in ["auto", "none"] {
        let (status, body) = post(&after_tool_result(choice)).await;
        println!("tool_choice {choice}: {body}");
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        let content = body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert!(
            ["friday", "shipped", "dhl"]
                .iter()
                .any(|f| content.contains(f)),
            "the answer should use the tool result: {content:?}"
        );
    }
}

#[tokio::test]
async fn streaming_matches_the_non_streaming_answer() {
    let _guard = one_at_a_time().await;
    for mut request in [
        json!({"model": MODEL_ID, "messages": [
            {"role": "user", "content": "Name three colours of the rainbow."}
        ]}),
        with_tools("hi, how are you?"),
    ] {
        // Greedy decoding repeats itself only from the same KV-cache state:
        // a prompt evaluated partly from the cache (after another request)
        // can give slightly different logits than one evaluated from its
        // own cache, and a near-tie flips ("Red, Blue, Green." vs "Red,
        // Yellow, Blue."). The first request puts this prompt in the cache;
        // the next two then start from the same state.
        let (status, warm) = post(&request).await;
        assert_eq!(status, StatusCode::OK, "{warm}");
        let (status, whole) = post(&request).await;
        assert_eq!(status, StatusCode::OK, "{whole}");
        let expected = whole["choices"][0]["message"]["content"].as_str().unwrap();

        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
        let streamed = post_stream(&request).await;
        println!(
            "streamed {} chunks, first text after {:?}, all in {:?}: {:?}",
            streamed.chunks.len(),
            streamed.first_content_after,
            streamed.total,
            streamed.content()
        );
        assert!(streamed.done, "no [DONE]");
        let first = &streamed.chunks[0];
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
        let id = first["id"].as_str().unwrap();
        assert!(streamed.chunks.iter().all(|c| c["id"] == id));
        // Several content deltas: streamed as generated, not one buffer.
        let deltas = streamed
            .chunks
            .iter()
            .filter(|c| c["choices"][0]["delta"]["content"].is_string())
            .count();
        assert!(deltas > 3, "{deltas} content deltas");
        assert_eq!(streamed.content(), expected);
        assert_eq!(streamed.finish_reason(), Some("stop"));
        let last = streamed.chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"], whole["usage"]);
    }
}

#[tokio::test]
async fn a_tool_call_streams_as_one_structured_delta() {
    let _guard = one_at_a_time().await;
    let mut request = with_tools("Has order 9001 shipped yet?");
    request["stream"] = json!(true);
    let streamed = post_stream(&request).await;
    println!("{:#?}", streamed.chunks);
    assert!(streamed.done);
    assert_eq!(streamed.content(), "", "a call streams no content");
    assert_eq!(streamed.finish_reason(), Some("tool_calls"));
    let calls: Vec<&Value> = streamed
        .chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["index"], 0);
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "orders__get_order");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"order_id": "9001"}));
    assert!(
        streamed.chunks.iter().all(|c| c.get("usage").is_none()),
        "usage only when asked"
    );
}

/// One error case: the status, `error.type`, `error.code`, and words the
/// message must contain.
async fn expect_error(
    (status, body): (StatusCode, Value),
    want_status: u16,
    want_code: &str,
    says: &[&str],
) {
    println!("{status}: {body}");
    assert_eq!(status.as_u16(), want_status, "{body}");
    let error = &body["error"];
    let want_type = if want_status >= 500 {
        "server_error"
    } else {
        "invalid_request_error"
    };
    assert_eq!(error["type"], want_type, "{body}");
    assert_eq!(error["code"], want_code, "{body}");
    let message = error["message"].as_str().unwrap();
    for word in says {
        assert!(
            message.contains(word),
            "{message:?} should mention {word:?}"
        );
    }
}

#[tokio::test]
async fn errors_come_in_openai_shape() {
    let _guard = one_at_a_time().await;
    let user = json!([{"role": "user", "content": "hi"}]);

    expect_error(
        post_raw(b"{\"model\": ".to_vec(), "application/json").await,
        400,
        "invalid_json",
        &["JSON"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": "hi"})).await,
        400,
        "invalid_type",
        &["messages", "invalid type"],
    )
    .await;
    expect_error(
        post(&json!({"messages": user})).await,
        400,
        "missing_required_parameter",
        &["model"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": [{"role": "robot", "content": "x"}]})).await,
        400,
        "invalid_type",
        &["robot"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": []})).await,
        400,
        "empty_array",
        &["messages"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": [
            {"role": "user", "content": "Where is order 7?"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "orders__get_order", "arguments": "{order_id: 7"}}]}
        ], "tools": tools()}))
        .await,
        400,
        "invalid_value",
        &["messages[1].tool_calls[0].function.arguments", "not a JSON"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": [
            {"role": "user", "content": "Where is order 7?"},
            {"role": "tool", "tool_call_id": "call_nowhere", "content": "shipped"}
        ]}))
        .await,
        400,
        "invalid_value",
        &["messages[1].tool_call_id", "call_nowhere"],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ]}))
        .await,
        400,
        "invalid_value",
        &["messages[0].content[0]", "image_url"],
    )
    .await;
    // Tool sets the grammar cannot be built for.
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": user, "tools": [
            {"type": "function", "function": {"name": "say", "parameters": {"type": "object"}}}
        ]}))
        .await,
        400,
        "invalid_value",
        &["\"say\""],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": user, "tools": [
            {"type": "function", "function": {"name": "lookup"}},
            {"type": "function", "function": {"name": "lookup"}}
        ]}))
        .await,
        400,
        "invalid_value",
        &["\"lookup\""],
    )
    .await;
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": user, "tool_choice": "required"})).await,
        400,
        "invalid_value",
        &["tool_choice", "tools"],
    )
    .await;
    expect_error(
        post(&json!({"model": "gpt-4o-mini", "messages": user})).await,
        404,
        "model_not_found",
        &["gpt-4o-mini", MODEL_ID],
    )
    .await;
    let big = "x".repeat(3 * 1024 * 1024);
    expect_error(
        post(&json!({"model": MODEL_ID, "messages": [{"role": "user", "content": big}]})).await,
        413,
        "request_too_large",
        &["length limit"],
    )
    .await;
    // Too long for the 2048-token context, streaming or not.
    let long = "Tell me about the weather in all the towns of Europe. ".repeat(250);
    let mut request = json!({"model": MODEL_ID, "messages": [{"role": "user", "content": long}]});
    expect_error(
        post(&request).await,
        400,
        "context_length_exceeded",
        &["context of 2048 tokens"],
    )
    .await;
    request["stream"] = json!(true);
    expect_error(
        post(&request).await,
        400,
        "context_length_exceeded",
        &["context of 2048 tokens"],
    )
    .await;

    let (status, body) = get_json(&url("/v1/chat/completions")).await;
    expect_error((status, body), 405, "method_not_allowed", &["GET"]).await;
    let (status, body) = get_json(&url("/v1/embeddings")).await;
    expect_error((status, body), 404, "unknown_url", &["/v1/embeddings"]).await;

    // The file name is accepted as the model too, and the server still
    // answers after all that.
    let (status, body) = post(
        &json!({"model": format!("{MODEL_ID}.gguf"), "messages": user,
        "max_tokens": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");

    // A `say` decision cut at the limit: the words so far, never the
    // decision's JSON. (The JSON the grammar forces is not sampled and
    // not counted: five tokens reach into the words.)
    let mut request = with_tools("hi, how are you?");
    request["max_completion_tokens"] = json!(5);
    let (status, body) = post(&request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.is_empty() && !content.contains('{'), "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
}

/// GET `url`: the status and the body as JSON.
async fn get_json(url: &str) -> (StatusCode, Value) {
    let response = client().get(url).send().await.unwrap();
    let status = response.status();
    (
        status,
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
    )
}

#[tokio::test]
async fn a_client_that_goes_away_stops_generation() {
    let _guard = one_at_a_time().await;
    let cancelled_before = server().state.model.cancelled_total();
    let request = json!({"model": MODEL_ID, "stream": true, "max_tokens": 160, "messages": [
        {"role": "user", "content": "Count from 1 to 100, one number per line."}
    ]});
    let response = client()
        .post(url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&request).unwrap())
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    let mut received = 0;
    while received < 3 {
        received += stream.next().await.unwrap().unwrap().len().min(1);
    }
    let dropped_at = Instant::now();
    drop(stream);

    // The counter moves only when the model stops mid-answer (a finished
    // answer does not count), so this fails if generation ran to its end.
    let deadline = dropped_at + Duration::from_secs(60);
    while server().state.model.cancelled_total() == cancelled_before {
        assert!(Instant::now() < deadline, "generation was not stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "generation stopped {:?} after the client left",
        dropped_at.elapsed()
    );
    let (status, _) = post(&json!({"model": MODEL_ID, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]}))
    .await;
    assert_eq!(status, StatusCode::OK);
}

fn python() -> PathBuf {
    let cache = std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/parlor")
        });
    let p = cache.join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run bash models/setup.sh",
        p.display()
    );
    p
}

#[tokio::test]
async fn the_official_openai_python_client_works() {
    let _guard = one_at_a_time().await;
    let output = tokio::process::Command::new(python())
        .arg(root().join("tests/peers/openai_client.py"))
        .arg(url("/v1"))
        .arg(MODEL_ID)
        .arg(root().join("benches/tasks/planner_questions.json"))
        .output()
        .await
        .expect("run the python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {}: {stdout}\n{stderr}",
        output.status
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    println!("{seen:#}");

    let call = &seen["tool_call"];
    assert_eq!(call["finish_reason"], "tool_calls");
    assert!(call["content"].is_null());
    assert_eq!(call["name"], "orders__get_order");
    assert_eq!(call["arguments"], json!({"order_id": "1042"}));
    assert!(call["usage_total"].as_u64().unwrap() > 0);

    let stream = &seen["stream"];
    assert!(
        stream["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("ada"),
        "{stream}"
    );
    assert_eq!(stream["finish_reason"], "stop");
    assert!(stream["chunks"].as_u64().unwrap() > 3);
    assert!(stream["usage_total"].as_u64().unwrap() > 0);

    let errors = &seen["errors"];
    assert_eq!(errors["not_found"]["status"], 404, "{errors}");
    assert_eq!(errors["not_found"]["code"], "model_not_found");
    assert!(errors["not_found"]["message"]
        .as_str()
        .unwrap()
        .contains("no-such-model"));
    assert_eq!(errors["bad_request"]["status"], 400, "{errors}");
    assert_eq!(errors["bad_request"]["code"], "empty_array");
    assert_eq!(errors["bad_request"]["param"], "messages");
}

#[tokio::test]
async fn parlor_serve_runs_until_sigterm() {
    let _guard = one_at_a_time().await;
    use tokio::io::AsyncBufReadExt;

    let missing = tokio::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--model", "models/no-such-model.gguf"])
        .current_dir(root())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("models/no-such-model.gguf not found") && stderr.contains("setup.sh"),
        "{stderr}"
    );

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("serve prints its address")
        .unwrap()
        .unwrap();
    println!("{line}");
    // Without --model, the default pipeline's planner model.
    const DEFAULT_PLANNER: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";
    assert!(line.contains(DEFAULT_PLANNER), "{line}");
    let base = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let (status, models) = get_json(&format!("{base}/models")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(models["data"][0]["id"], DEFAULT_PLANNER);

    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("serve stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_full_queue_answers_503_until_a_place_frees() {
    let _guard = one_at_a_time().await;
    let path = root().join(format!("models/{MODEL_ID}.gguf"));
    let llm = LocalLlm::load(
        &path,
        LocalLlmOptions {
            threads: 2,
            context_len: 512,
            max_tokens: 160,
            ..LocalLlmOptions::default()
        },
    )
    .unwrap();
    let model = std::sync::Arc::new(ServedModel::new(llm, &path).with_queue_limit(1));
    let state = AppState::shared(model.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(listener, state, std::future::pending()));

    // One long request holds the only place.
    let holder = model
        .generate(parlor::server::chat_request::Prepared {
            messages: vec![parlor::llm::ChatMessage::user(
                "Count from 1 to 100, one number per line.",
            )],
            tools: None,
            choice: parlor::llm::ToolChoice::Auto,
            max_tokens: None,
            stream: true,
            include_usage: false,
        })
        .unwrap();
    assert_eq!(model.in_flight(), 1);
    let hi = json!({"model": MODEL_ID, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]});
    let send = || async {
        let response = client()
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&hi).unwrap())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        (status, body)
    };
    expect_error(
        send().await,
        503,
        "server_overloaded",
        &["busy", "queue is full (1 running or waiting)"],
    )
    .await;

    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(60);
    while model.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the place was not given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = send().await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
