//! The default pipeline's planner end to end: the local model (Qwen2.5
//! Coder 1.5B through llama.cpp) deciding, parlor's orders and knowledge
//! servers answering over stdio, the tool loop in between.
//!
//! Needs the models: `bash models/setup.sh`. Slow on two cores (each first
//! request evaluates ~1,200 prompt tokens), so the tests share one planner
//! and run one at a time.

use crate::support;

use parlor::planner::setup::{self, ConnectedPlanner};
use parlor::planner::{History, TurnOutcome};
use parlor::spec::PipelineSpec;
use tokio::sync::{mpsc, Mutex, OnceCell};
use tokio_util::sync::CancellationToken;

static PLANNER: OnceCell<Mutex<ConnectedPlanner>> = OnceCell::const_new();

async fn ask(history: &mut History, question: &str) -> TurnOutcome {
    let planner = PLANNER
        .get_or_init(|| async {
            let root = support::root();
            let spec = PipelineSpec::local_default(root).expect("the default spec");
            Mutex::new(
                setup::connect(&spec, root)
                    .await
                    .expect("connect the local planner"),
            )
        })
        .await
        .lock()
        .await;
    let (tx, _rx) = mpsc::unbounded_channel();
    let outcome = planner
        .planner
        .run_turn(history, question, &tx, &CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("{question}: {e}"));
    eprintln!("{question} -> {outcome:#?}");
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_question_is_answered_from_the_orders_server() {
    let mut history = History::default();
    let outcome = ask(&mut history, "Where is my order 1042?").await;
    let call = outcome.tools.first().expect("a tool call");
    assert_eq!(call.name, "orders__get_order");
    assert_eq!(call.arguments["order_id"].as_i64(), Some(1042));
    assert!(!call.is_error, "{}", call.output);
    // Order 1042 shipped with UPS, due on 2026-11-28 (pipelines/data/orders.sql).
    let reply = outcome.reply.to_lowercase();
    assert!(
        ["ups", "28", "shipped", "on its way"]
            .iter()
            .any(|fact| reply.contains(fact)),
        "the answer should carry a fact from the order: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_talk_gets_words_and_no_tool() {
    let mut history = History::default();
    let outcome = ask(&mut history, "Hi there! How are you today?").await;
    assert!(outcome.tools.is_empty(), "{:?}", outcome.tools);
    assert!(!outcome.reply.trim().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_question_is_answered_from_the_knowledge_server() {
    let mut history = History::default();
    let outcome = ask(&mut history, "How many days do I have to return an item?").await;
    let call = outcome.tools.first().expect("a tool call");
    assert_eq!(call.name, "knowledge__search_knowledge");
    assert!(!call.is_error, "{}", call.output);
    assert!(!outcome.reply.trim().is_empty());
}
