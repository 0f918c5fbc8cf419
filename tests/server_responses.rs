//! Hosted MCP end to end, with parlor as the host: `POST /v1/responses`
//! over real HTTP, answered by the real local model (Qwen2.5-Coder-0.5B),
//! calling parlor's knowledge server over Streamable HTTP; the planner's
//! Responses backend (async-openai) against it; and the official OpenAI
//! Python client.
//!
//! Needs `bash models/setup.sh`. One model server and one knowledge server
//! for the whole file; tests run one at a time (two cores, one model).

use crate::support;

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use parlor::llm::{HostedServer, ResponsesPlanner};
use parlor::planner::{History, NoTools, Planner, PlannerOptions};
use reqwest::StatusCode;
use serde_json::{json, Value};
use support::KnowledgeHttp;
use tokio_util::sync::CancellationToken;

const MODEL_ID: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";
const QUESTION: &str = "How long do refunds take?";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Servers {
    base: String,
    knowledge: KnowledgeHttp,
    /// The model server's audit log, where its MCP calls are recorded.
    audit: std::path::PathBuf,
}

/// The knowledge server, and the model server allowed to reach it (and
/// nothing else but a closed port on loopback, for the 424 test).
fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let knowledge = KnowledgeHttp::start();
        let path = support::model(&format!("{MODEL_ID}.gguf"));
        let llm = parlor::llm::LocalLlm::load(&path, Default::default()).expect("load the model");
        let audit = support::log_dir("server_responses").join("audit.jsonl");
        let log = parlor::mcp::AuditLog::open(&audit).expect("open the audit log");
        let state = parlor::server::AppState::new(parlor::server::ServedModel::new(llm, &path))
            .with_mcp_allow(vec![
                knowledge.url("/"),
                format!("http://127.0.0.1:{}/", closed_port()),
            ])
            .with_audit(std::sync::Arc::new(log));
        let base = support::serve_state(state);
        Servers {
            base,
            knowledge,
            audit,
        }
    })
}

/// A loopback port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    })
}

fn knowledge_tool(url: &str) -> Value {
    json!({
        "type": "mcp",
        "server_label": "kb",
        "server_url": url,
        "allowed_tools": ["search_knowledge"],
        "require_approval": "never",
    })
}

fn request(stream: bool) -> Value {
    json!({
        "model": MODEL_ID,
        "instructions": "You answer customers of a shop. Look facts up with the tools.",
        "input": QUESTION,
        "tools": [knowledge_tool(&servers().knowledge.url("/mcp"))],
        "stream": stream,
    })
}

async fn post(body: &Value) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", servers().base))
        .json(body)
        .send()
        .await
        .expect("POST /v1/responses");
    let status = r.status();
    (status, r.json().await.expect("a JSON body"))
}

fn item_types(output: &Value) -> Vec<&str> {
    output
        .as_array()
        .expect("output is an array")
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_calls_the_mcp_tool_and_answers() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (status, body) = post(&request(false)).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    let output = &body["output"];
    let types = item_types(output);
    assert_eq!(types.first(), Some(&"mcp_list_tools"), "{body:#}");
    assert_eq!(types.last(), Some(&"message"), "{body:#}");
    let listed = &output[0];
    assert_eq!(listed["server_label"], "kb");
    let names: Vec<&str> = listed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["search_knowledge"],
        "allowed_tools narrows the list"
    );
    let call = output
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "mcp_call")
        .unwrap_or_else(|| panic!("no mcp_call: {body:#}"));
    assert_eq!(call["server_label"], "kb");
    assert_eq!(call["name"], "search_knowledge");
    assert_eq!(call["status"], "completed", "{call:#}");
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    assert!(args["query"].is_string(), "{args}");
    // The output is the knowledge server's, so it can be checked exactly.
    let found = call["output"].as_str().unwrap().to_lowercase();
    assert!(found.contains("refund"), "{found}");
    let message = output.as_array().unwrap().last().unwrap();
    let text = message["content"][0]["text"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{message:#}");
    assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);

    // The call is in the server's audit log, this response its session,
    // and the chain verifies.
    let id = body["id"].as_str().unwrap();
    let log = std::fs::read_to_string(&servers().audit).unwrap();
    let records: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &Value| r["session"] == id)
        .collect();
    let decisions: Vec<_> = records.iter().map(|r| r["decision"].as_str()).collect();
    assert_eq!(decisions, [Some("calling"), Some("allowed")], "{log}");
    let record = &records[1];
    assert_eq!(record["decision"], "allowed", "{record}");
    assert_eq!(record["server"], "kb", "{record}");
    assert_eq!(record["tool"], "search_knowledge", "{record}");
    assert_eq!(record["principal"], "anonymous", "{record}");
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["audit", "verify"])
        .arg(&servers().audit)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_events_arrive_in_order_and_add_up_to_the_response() {
    let _one = ONE_AT_A_TIME.lock().await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", servers().base))
        .json(&request(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut raw = String::new();
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        raw.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    let events: Vec<Value> = raw
        .split("\n\n")
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{kinds:?}");
    }
    // Every item is announced, then finished, in output order.
    let added: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.added")
        .map(|e| e["output_index"].as_u64().unwrap())
        .collect();
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "response.output_item.done")
        .collect();
    assert_eq!(added, (0..done.len() as u64).collect::<Vec<_>>());
    let completed = &events.last().unwrap()["response"];
    let items: Vec<&Value> = done.iter().map(|e| &e["item"]).collect();
    assert_eq!(
        completed["output"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        items
    );
    assert!(
        item_types(&completed["output"]).contains(&"mcp_call"),
        "{kinds:?}"
    );
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    let message = completed["output"].as_array().unwrap().last().unwrap();
    assert_eq!(message["type"], "message");
    assert_eq!(message["content"][0]["text"], deltas.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_name_the_field_and_the_server() {
    let _one = ONE_AT_A_TIME.lock().await;
    let with_tool = |tool: Value| json!({"model": MODEL_ID, "input": QUESTION, "tools": [tool]});
    // Not on the allow-list: refused before anything is reached.
    let (status, body) = post(&with_tool(knowledge_tool("http://10.0.0.1/mcp"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"]["code"], "mcp_server_not_allowed");
    assert_eq!(body["error"]["param"], "tools[0].server_url");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--allow-mcp"));
    // Allowed, but nobody listens: 424 naming the server.
    let dead = format!("http://127.0.0.1:{}/mcp", closed_port());
    let (status, body) = post(&with_tool(knowledge_tool(&dead))).await;
    assert_eq!(status, StatusCode::FAILED_DEPENDENCY, "{body:#}");
    assert_eq!(body["error"]["type"], "external_connector_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("'kb'"));
    // Approval wanted: this server has no one to ask.
    let mut tool = knowledge_tool(&servers().knowledge.url("/mcp"));
    tool["require_approval"] = "always".into();
    let (status, body) = post(&with_tool(tool)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["error"]["param"], "tools[0].require_approval");
    // Not JSON at all.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/responses", servers().base))
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

/// The planner's Responses backend: the knowledge server is handed to the
/// "provider" (parlor's route), which calls it; the turn records the call.
#[tokio::test(flavor = "multi_thread")]
async fn the_planner_hands_hosted_servers_to_the_provider() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = servers();
    let model = ResponsesPlanner::new(
        Some(&format!("{}/v1", s.base)),
        "",
        Some(MODEL_ID),
        vec![HostedServer {
            label: "kb".into(),
            url: s.knowledge.url("/mcp"),
            allowed_tools: Some(vec!["search_knowledge".into()]),
            description: Some("The shop's help centre".into()),
            authorization: None,
        }],
    );
    let planner = Planner::new(
        Arc::new(model),
        Arc::new(NoTools),
        "You answer customers of a shop. Look facts up with the tools.",
        PlannerOptions::default(),
    );
    let (events, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut history = History::default();
    let outcome = planner
        .run_turn(&mut history, QUESTION, &events, &CancellationToken::new())
        .await
        .expect("the turn");
    let hosted: Vec<_> = outcome.tools.iter().filter(|t| t.hosted).collect();
    assert!(!hosted.is_empty(), "{outcome:#?}");
    assert_eq!(hosted[0].name, "kb__search_knowledge");
    assert!(!hosted[0].is_error, "{:?}", hosted[0]);
    assert!(hosted[0].output.to_lowercase().contains("refund"));
    assert!(!outcome.reply.trim().is_empty());
    drop(events);
    let mut streamed = String::new();
    while let Some(e) = seen.recv().await {
        if let parlor::planner::PlannerEvent::Text(t) = e {
            streamed.push_str(&t);
        }
    }
    assert_eq!(streamed, outcome.reply, "the reply streamed as it came");
    assert_eq!(outcome.steps, 1, "hosted calls need no extra model request");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_openai_python_client_works() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = servers();
    let output = tokio::process::Command::new(support::python())
        .arg(support::root().join("tests/peers/openai_responses_client.py"))
        .arg(format!("{}/v1", s.base))
        .arg(MODEL_ID)
        .arg(s.knowledge.url("/mcp"))
        .arg(QUESTION)
        .output()
        .await
        .expect("run the python client");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client failed: {stderr}");
    let seen: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(seen["status"], "completed", "{seen:#}");
    assert!(seen["item_types"]
        .as_array()
        .unwrap()
        .contains(&json!("mcp_call")));
    assert_eq!(seen["mcp_call"]["server_label"], "kb");
    assert!(!seen["output_text"].as_str().unwrap().is_empty());
    assert_eq!(seen["stream"]["first"], "response.created");
    assert_eq!(seen["stream"]["last"], "response.completed");
    assert_eq!(seen["stream"]["text"], seen["stream"]["final_text"]);
    assert_eq!(seen["not_allowed"], "BadRequestError");
}

#[test]
fn hosted_servers_need_the_openai_backend() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("p.toml");
    std::fs::write(
        &spec,
        r#"
name = "p"
[[stage]]
kind = "planner"
backend = "local"
mcp = ["kb"]
[mcp.kb]
transport = "hosted"
url = "ftp://kb/mcp"
allowed_tools = ["search_knowledge"]
"#,
    )
    .unwrap();
    let err = parlor::spec::PipelineSpec::load(&spec, dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("the local backend has no provider"), "{err}");
    assert!(err.contains("backend = \"openai\""), "{err}");
    assert!(err.contains("not an http(s) URL"), "{err}");
}
