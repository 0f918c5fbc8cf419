//! The OpenAI-compatible planner backend (async-openai) against parlor's
//! own `/v1/chat/completions` over real HTTP, backed by the real local
//! model (Qwen2.5-Coder-1.5B), with parlor's MCP servers as the tools.
//!
//! Needs `bash models/setup.sh`. One server for the whole file; tests run
//! one at a time (two cores, one model).

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use parlor::llm::{ChatMessage, LlmError, ModelRequest, OpenAiPlanner, PlannerModel, ToolChoice};
use parlor::mcp::McpPool;
use parlor::planner::{History, Planner, PlannerError, PlannerOptions, Toolbox, TurnOutcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MODEL: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m";

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn base_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let options = parlor::llm::LocalLlmOptions {
            threads: 2,
            max_tokens: 160,
            ..Default::default()
        };
        let (root, _state) = support::start_chat_server(&format!("{MODEL}.gguf"), options);
        format!("{root}/v1")
    })
}

fn backend() -> OpenAiPlanner {
    OpenAiPlanner::new(Some(base_url()), "unused", Some(MODEL))
}

async fn shop_pool(dir: &std::path::Path) -> Arc<McpPool> {
    let specs = BTreeMap::from([
        ("orders".to_string(), support::orders_server(dir)),
        ("knowledge".to_string(), support::knowledge_server()),
    ]);
    Arc::new(
        McpPool::connect(&specs, &["orders".into(), "knowledge".into()])
            .await
            .expect("connect parlor's MCP servers"),
    )
}

fn shop_prompt() -> String {
    std::fs::read_to_string(support::root().join("pipelines/prompts/shop.md")).unwrap()
}

async fn ask(question: &str, max_steps: usize) -> TurnOutcome {
    let dir = tempfile::tempdir().unwrap();
    let pool = shop_pool(dir.path()).await;
    let options = PlannerOptions {
        max_steps,
        turn_timeout: std::time::Duration::from_secs(600),
        ..PlannerOptions::default()
    };
    let planner = Planner::new(Arc::new(backend()), pool, shop_prompt(), options);
    let (tx, _rx) = mpsc::unbounded_channel();
    let outcome = planner
        .run_turn(
            &mut History::default(),
            question,
            &tx,
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{question}: {e}"));
    eprintln!("{question} -> {outcome:#?}");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_structured_calls_and_streamed_text_over_http() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = shop_pool(dir.path()).await;
    let tools = pool.specs().await;
    let model = backend();
    let cancel = CancellationToken::new();

    let messages = vec![
        ChatMessage::system(shop_prompt()),
        ChatMessage::user("Where is my order 1042?"),
    ];
    let (tx, _rx) = mpsc::unbounded_channel();
    let request = ModelRequest {
        messages: &messages,
        tools: &tools,
        choice: ToolChoice::Auto,
    };
    let reply = model.respond(request, &tx, &cancel).await.expect("a reply");
    assert!(reply.text.is_empty(), "{reply:?}");
    assert_eq!(reply.calls.len(), 1, "{reply:?}");
    assert_eq!(reply.calls[0].name, "orders__get_order");
    assert_eq!(reply.calls[0].arguments["order_id"].as_i64(), Some(1042));
    assert!(!reply.calls[0].id.is_empty());
    // The route reports the request's token counts (stream_options.include_usage).
    assert!(reply.usage.input_text_tokens > 0, "{:?}", reply.usage);
    assert!(reply.usage.output_text_tokens > 0, "{:?}", reply.usage);

    // tool_choice "none": words only, streamed in more than one piece.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let request = ModelRequest {
        messages: &messages,
        tools: &tools,
        choice: ToolChoice::SayOnly,
    };
    let reply = model.respond(request, &tx, &cancel).await.expect("a reply");
    drop(tx);
    let mut pieces = Vec::new();
    while let Some(p) = rx.recv().await {
        pieces.push(p);
    }
    assert!(reply.calls.is_empty(), "{reply:?}");
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(pieces.concat(), reply.text);
    assert!(reply.usage.output_text_tokens > 0, "{:?}", reply.usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_loop_answers_an_order_question_with_the_looked_up_fact() {
    let _one = ONE_AT_A_TIME.lock().await;
    let outcome = ask("Where is my order 1042?", 2).await;
    let call = outcome.tools.first().expect("a tool call");
    assert_eq!(call.name, "orders__get_order");
    assert!(!call.is_error, "{}", call.output);
    let reply = outcome.reply.to_lowercase();
    assert!(
        ["ups", "28", "shipped", "on its way"]
            .iter()
            .any(|f| reply.contains(f)),
        "the answer should carry a fact from order 1042: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_for_two_servers_uses_both() {
    let _one = ONE_AT_A_TIME.lock().await;
    let outcome = ask(
        "What does your help center say about returns, and where is my order 1042?",
        3,
    )
    .await;
    let servers: std::collections::BTreeSet<&str> = outcome
        .tools
        .iter()
        .filter(|t| !t.is_error)
        .filter_map(|t| t.name.split_once("__").map(|(s, _)| s))
        .collect();
    assert_eq!(
        servers,
        ["knowledge", "orders"].into(),
        "{:#?}",
        outcome.tools
    );
    assert!(!outcome.reply.trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_reach_the_caller_with_the_servers_message() {
    let _one = ONE_AT_A_TIME.lock().await;
    let messages = vec![ChatMessage::user("hi")];
    let request = ModelRequest {
        messages: &messages,
        tools: &[],
        choice: ToolChoice::Auto,
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();

    // A model the server does not have: its OpenAI-shaped 404 comes through.
    let wrong = OpenAiPlanner::new(Some(base_url()), "unused", Some("gpt-9"));
    let err = wrong
        .respond(request, &tx, &cancel)
        .await
        .expect_err("unknown model");
    assert!(matches!(err, LlmError::Remote(_)), "{err:?}");
    assert!(err.to_string().contains("gpt-9"), "{err}");

    // Nobody listening: the planner fails the turn with a reason, no panic.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = OpenAiPlanner::new(Some(&format!("http://127.0.0.1:{port}/v1")), "", None);
    let planner = Planner::new(
        Arc::new(down),
        Arc::new(parlor::planner::NoTools),
        "test",
        PlannerOptions::default(),
    );
    let (events, _rx) = mpsc::unbounded_channel();
    let err = planner
        .run_turn(&mut History::default(), "hello", &events, &cancel)
        .await
        .expect_err("no server");
    assert!(
        matches!(err, PlannerError::Model(LlmError::Remote(_))),
        "{err:?}"
    );
}
