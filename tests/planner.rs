//! The planner's tool loop.
//!
//! Faults a real model cannot produce on demand (a model that keeps calling
//! tools, one that fails, one that calls a tool that does not exist) come
//! from a scripted model; every tool runs on a real MCP server (the Python
//! SDK peer over stdio, parlor's own servers). The end-to-end tests use the
//! real local model.

use crate::support;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use parlor::llm::{
    ChatMessage, LlmError, ModelReply, ModelRequest, PlannerModel, ToolCall, ToolChoice,
};
use parlor::mcp::McpPool;
use parlor::planner::{History, Planner, PlannerError, PlannerEvent, PlannerOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the scripted model answers, request by request.
enum Step {
    Say(&'static str),
    Calls(Vec<(&'static str, Value)>),
    Fail(&'static str),
    /// Like `Say`, but while any tool result is longer than the limit the
    /// model's context is full (the step stays for the retry).
    SayIfFits(usize, &'static str),
}

/// A model that follows a script and records what it was asked.
#[derive(Default)]
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    seen: Mutex<Vec<(ToolChoice, Vec<ChatMessage>)>>,
}

impl Scripted {
    fn new(steps: Vec<Step>) -> Arc<Self> {
        Arc::new(Self {
            steps: Mutex::new(steps.into()),
            seen: Mutex::default(),
        })
    }

    fn choices(&self) -> Vec<ToolChoice> {
        self.seen.lock().unwrap().iter().map(|(c, _)| *c).collect()
    }

    fn last_messages(&self) -> Vec<ChatMessage> {
        self.seen.lock().unwrap().last().unwrap().1.clone()
    }
}

#[async_trait]
impl PlannerModel for Scripted {
    fn describe(&self) -> String {
        "scripted".into()
    }

    async fn respond(
        &self,
        request: ModelRequest<'_>,
        text: &mpsc::UnboundedSender<String>,
        _cancel: &CancellationToken,
    ) -> Result<ModelReply, LlmError> {
        self.seen
            .lock()
            .unwrap()
            .push((request.choice, request.messages.to_vec()));
        let step = self.steps.lock().unwrap().pop_front();
        let n = self.seen.lock().unwrap().len();
        let step = match step {
            Some(Step::SayIfFits(limit, words)) => {
                let longest = request
                    .messages
                    .iter()
                    .filter_map(|m| match m {
                        ChatMessage::ToolResult { content, .. } => Some(content.len()),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                if longest > limit {
                    self.steps
                        .lock()
                        .unwrap()
                        .push_front(Step::SayIfFits(limit, words));
                    return Err(LlmError::ContextFull {
                        prompt: 5000,
                        max_tokens: 256,
                        context_len: 4096,
                    });
                }
                Some(Step::Say(words))
            }
            other => other,
        };
        match step {
            Some(Step::Say(words)) => {
                for piece in words.split_inclusive(' ') {
                    let _ = text.send(piece.to_string());
                }
                Ok(ModelReply {
                    text: words.into(),
                    // A token a word, so a test can tell whose words were paid for.
                    usage: parlor::frame::Usage {
                        output_text_tokens: words.split_whitespace().count() as u64,
                        ..Default::default()
                    },
                    ..ModelReply::default()
                })
            }
            Some(Step::Calls(calls)) => Ok(ModelReply {
                text: String::new(),
                calls: calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, (name, arguments))| ToolCall {
                        id: format!("r{n}c{i}"),
                        name: name.into(),
                        arguments,
                    })
                    .collect(),
                ..ModelReply::default()
            }),
            Some(Step::Fail(why)) => Err(LlmError::Remote(why.into())),
            Some(Step::SayIfFits(..)) => unreachable!("answered above"),
            None => panic!("the script ran out at request {n}"),
        }
    }
}

async fn py_pool() -> Arc<McpPool> {
    let specs = BTreeMap::from([("py".to_string(), support::py_stdio_server())]);
    Arc::new(
        McpPool::connect(&specs, &["py".into()])
            .await
            .expect("connect the Python peer"),
    )
}

fn planner(model: Arc<Scripted>, pool: Arc<McpPool>, options: PlannerOptions) -> Planner {
    Planner::new(model, pool, "You are a test.", options)
}

struct Turn {
    result: Result<parlor::planner::TurnOutcome, PlannerError>,
    events: Vec<PlannerEvent>,
}

async fn turn(planner: &Planner, history: &mut History, question: &str) -> Turn {
    turn_with(planner, history, question, &CancellationToken::new()).await
}

async fn turn_with(
    planner: &Planner,
    history: &mut History,
    question: &str,
    cancel: &CancellationToken,
) -> Turn {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let result = planner.run_turn(history, question, &tx, cancel).await;
    drop(tx);
    let mut events = Vec::new();
    while let Some(e) = rx.recv().await {
        events.push(e);
    }
    Turn { result, events }
}

fn no_dangling_calls(history: &History) {
    let calls: Vec<_> = history
        .messages()
        .iter()
        .filter_map(|m| match m {
            ChatMessage::ToolCall(c) => Some(c.id.clone()),
            _ => None,
        })
        .collect();
    for id in calls {
        assert!(
            history
                .messages()
                .iter()
                .any(|m| matches!(m, ChatMessage::ToolResult { call_id, .. } if *call_id == id)),
            "call {id} has no result in {:#?}",
            history.messages()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_calls_run_together_and_their_results_reach_the_model() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![
        Step::Calls(vec![
            ("py__slow", json!({"seconds": 0.3})),
            ("py__add", json!({"a": 2, "b": 40})),
        ]),
        Step::Say("The sum is 42."),
    ]);
    let p = planner(model.clone(), pool, PlannerOptions::default());
    let mut history = History::default();
    let t = turn(&p, &mut history, "add 2 and 40").await;
    let outcome = t.result.expect("turn");
    assert_eq!(outcome.reply, "The sum is 42.");
    assert_eq!(outcome.tools.len(), 2);
    assert!(!outcome.tools[1].is_error, "{:?}", outcome.tools[1]);
    assert_eq!(outcome.tools[1].output.trim(), "42");
    // Both calls started before either finished: they ran at once.
    let kinds: Vec<&str> = t
        .events
        .iter()
        .filter_map(|e| match e {
            PlannerEvent::ToolStarted(_) => Some("start"),
            PlannerEvent::ToolFinished(_) => Some("finish"),
            PlannerEvent::Text(_) => Some("text"),
            PlannerEvent::Usage(_) => None,
        })
        .collect();
    assert_eq!(
        &kinds[..4],
        ["start", "start", "finish", "finish"],
        "{kinds:?}"
    );
    // The add call (fast) finished first, but the results reach the model in
    // call order, each paired with its call id.
    let results: Vec<(String, String)> = model
        .last_messages()
        .into_iter()
        .filter_map(|m| match m {
            ChatMessage::ToolResult {
                call_id, content, ..
            } => Some((call_id, content)),
            _ => None,
        })
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].0, "r1c0");
    // The model reads each result fenced as data (prompt-injection defence).
    assert_eq!(
        results[1],
        (
            "r1c1".to_string(),
            parlor::untrusted::fence("py__add", "42")
        )
    );
    assert!(results[1].1.contains("\n42\n"));
    // Text streamed in pieces, then the history holds the whole turn.
    let text: String = t
        .events
        .iter()
        .filter_map(|e| match e {
            PlannerEvent::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "The sum is 42.");
    assert_eq!(history.messages().len(), 6, "{:#?}", history.messages());
    no_dangling_calls(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_step_limit_forces_an_answer_in_words() {
    let pool = py_pool().await;
    let call = || Step::Calls(vec![("py__echo", json!({"text": "again"}))]);
    let model = Scripted::new(vec![
        call(),
        call(),
        Step::Say("I keep checking; let me stop here."),
    ]);
    let options = PlannerOptions {
        max_steps: 2,
        ..PlannerOptions::default()
    };
    let p = planner(model.clone(), pool, options);
    let mut history = History::default();
    let outcome = turn(&p, &mut history, "loop").await.result.expect("turn");
    assert_eq!(
        model.choices(),
        [ToolChoice::Auto, ToolChoice::Auto, ToolChoice::SayOnly]
    );
    assert!(outcome.hit_step_limit);
    assert_eq!(outcome.tools.len(), 2);
    assert_eq!(outcome.reply, "I keep checking; let me stop here.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_ignores_the_limit_gets_no_more_tool_runs() {
    let pool = py_pool().await;
    let call = || Step::Calls(vec![("py__echo", json!({"text": "again"}))]);
    let model = Scripted::new(vec![call(), call()]);
    let options = PlannerOptions {
        max_steps: 1,
        ..PlannerOptions::default()
    };
    let p = planner(model.clone(), pool, options);
    let mut history = History::default();
    let outcome = turn(&p, &mut history, "loop").await.result.expect("turn");
    assert_eq!(model.choices(), [ToolChoice::Auto, ToolChoice::SayOnly]);
    assert_eq!(
        outcome.tools.len(),
        1,
        "the second round of calls must not run"
    );
    assert!(outcome.hit_step_limit);
    no_dangling_calls(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_tool_failure_becomes_a_result_the_model_reads() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![
        Step::Calls(vec![
            ("py__fail", json!({"reason": "out of stock"})),
            ("py__no_such_tool", json!({})),
            ("py__add", Value::String("{\"a\": 1,".into())),
            ("py__slow", json!({"seconds": 5})),
            ("py__add", json!({"a": "two", "b": 1})),
        ]),
        Step::Say("Some of that failed."),
    ]);
    let options = PlannerOptions {
        call_timeout: Duration::from_millis(400),
        ..PlannerOptions::default()
    };
    let p = planner(model.clone(), pool, options);
    let mut history = History::default();
    let outcome = turn(&p, &mut history, "try everything")
        .await
        .result
        .expect("the turn survives");
    assert_eq!(outcome.reply, "Some of that failed.");
    let tools = &outcome.tools;
    assert!(tools.iter().all(|t| t.is_error), "{tools:#?}");
    assert!(tools[0].output.contains("fail"), "{}", tools[0].output);
    assert!(
        tools[1].output.contains("unknown tool"),
        "{}",
        tools[1].output
    );
    assert!(
        tools[2].output.contains("not valid JSON"),
        "{}",
        tools[2].output
    );
    assert!(
        tools[3].output.contains("no answer within"),
        "{}",
        tools[3].output
    );
    assert!(!tools[4].output.is_empty());
    // The model saw all five, as results of its calls.
    let results = model
        .last_messages()
        .iter()
        .filter(|m| matches!(m, ChatMessage::ToolResult { .. }))
        .count();
    assert_eq!(results, 5);
    no_dangling_calls(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_mid_call_is_a_tool_error_and_the_next_turn_reconnects() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![
        Step::Calls(vec![("py__crash", json!({}))]),
        Step::Say("That tool broke."),
        Step::Calls(vec![("py__add", json!({"a": 1, "b": 2}))]),
        Step::Say("Three."),
    ]);
    let p = planner(model.clone(), pool, PlannerOptions::default());
    let mut history = History::default();
    let first = turn(&p, &mut history, "crash").await.result.expect("turn");
    assert!(first.tools[0].is_error, "{:?}", first.tools[0]);
    let mut second = turn(&p, &mut history, "add").await.result.expect("turn");
    // Reconnection may take one backoff interval; a retry is the caller's.
    if second.tools[0].is_error {
        tokio::time::sleep(Duration::from_millis(500)).await;
        model.steps.lock().unwrap().extend([
            Step::Calls(vec![("py__add", json!({"a": 1, "b": 2}))]),
            Step::Say("Three."),
        ]);
        second = turn(&p, &mut history, "add").await.result.expect("turn");
    }
    assert!(!second.tools[0].is_error, "{:?}", second.tools[0]);
    assert_eq!(second.tools[0].output.trim(), "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_over_its_deadline_stops_and_the_session_goes_on() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![
        Step::Calls(vec![("py__slow", json!({"seconds": 5}))]),
        Step::Say("Hello again."),
    ]);
    let options = PlannerOptions {
        turn_timeout: Duration::from_millis(500),
        ..PlannerOptions::default()
    };
    let p = planner(model.clone(), pool, options);
    let mut history = History::default();
    let t = turn(&p, &mut history, "slow please").await;
    let err = t.result.expect_err("the deadline must stop the turn");
    assert!(matches!(err, PlannerError::TurnTimeout(_)), "{err}");
    assert!(!err.apology().is_empty());
    // The question stays, the unfinished call does not.
    assert_eq!(history.messages(), [ChatMessage::user("slow please")]);
    let next = turn(&p, &mut history, "hi")
        .await
        .result
        .expect("next turn");
    assert_eq!(next.reply, "Hello again.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_cancels_a_turn_waiting_on_a_tool() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![Step::Calls(vec![(
        "py__slow",
        json!({"seconds": 30}),
    )])]);
    let p = planner(model, pool, PlannerOptions::default());
    let mut history = History::default();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let t = tokio::time::timeout(
        Duration::from_secs(10),
        turn_with(&p, &mut history, "wait", &cancel),
    )
    .await
    .expect("cancellation must end the turn long before the tool's 30 s");
    assert!(matches!(t.result, Err(PlannerError::Cancelled)));
    no_dangling_calls(&history);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_model_fails_the_turn_with_a_reason_and_keeps_the_question() {
    let pool = py_pool().await;
    let model = Scripted::new(vec![Step::Fail("503 upstream overloaded")]);
    let p = planner(model, pool, PlannerOptions::default());
    let mut history = History::default();
    let err = turn(&p, &mut history, "hello")
        .await
        .result
        .expect_err("model failed");
    assert!(err.to_string().contains("503 upstream overloaded"), "{err}");
    assert_eq!(history.messages(), [ChatMessage::user("hello")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_within_its_budget_over_a_long_call() {
    let pool = py_pool().await;
    let mut steps = Vec::new();
    for _ in 0..12 {
        steps.push(Step::Calls(vec![(
            "py__echo",
            json!({"text": "x".repeat(200)}),
        )]));
        steps.push(Step::Say("Done with that one, anything else?"));
    }
    let model = Scripted::new(steps);
    let options = PlannerOptions {
        history_tokens: 300,
        ..PlannerOptions::default()
    };
    let p = planner(model.clone(), pool, options);
    let mut history = History::default();
    for n in 0..12 {
        turn(&p, &mut history, &format!("question {n}"))
            .await
            .result
            .expect("turn");
        assert!(
            history.estimated_tokens() <= 300,
            "turn {n}: {}",
            history.estimated_tokens()
        );
        no_dangling_calls(&history);
    }
    assert!(
        matches!(&history.messages()[0], ChatMessage::User { content } if content != "question 0"),
        "old turns must be gone"
    );
    // The model saw the system prompt first, then the kept history.
    let last = model.last_messages();
    assert!(matches!(&last[0], ChatMessage::System { content } if content == "You are a test."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stage_streams_reply_deltas_then_passes_the_end_of_turn_on() {
    use parlor::frame::Frame;
    let model = Scripted::new(vec![
        Step::Calls(vec![("py__add", json!({"a": 1, "b": 1}))]),
        Step::Say("One and one make two."),
        Step::Fail("connection refused"),
    ]);
    // Both turns are queued at once, so barge-in (which would cancel the
    // first when the second begins) is off, as when a file is played in.
    let mut running = start_stage_with(&model, PlannerOptions::default(), false).await;
    let input = running.input_handle();
    for question in ["what is one and one", "and now?"] {
        let turn = running.turns().begin();
        ask_stage(&input, turn, question).await;
    }
    drop(input);
    running.close_input();
    let mut frames = Vec::new();
    while let Some(f) = running.output().recv().await {
        frames.push(f);
    }
    let kinds: Vec<_> = frames.iter().map(|f| f.kind()).collect();
    // Turn 1: transcript, the finished tool call, the reply in pieces, end
    // of turn (with the planner's timing); turn 2: the model fails, the
    // caller hears an apology instead of silence.
    let first_end = kinds.iter().position(|k| *k == "end_of_turn").unwrap();
    assert_eq!(kinds[..2], ["transcript", "tool_call"], "{kinds:?}");
    let Frame::ToolCall { record, .. } = &frames[1] else {
        unreachable!()
    };
    assert_eq!(record.name, "py__add");
    assert!(
        !record.is_error && record.output.contains('2'),
        "{record:?}"
    );
    assert!(first_end > 3, "{kinds:?}");
    assert!(
        kinds[2..first_end].iter().all(|k| *k == "reply_delta"),
        "{kinds:?}"
    );
    let reply: String = frames[2..first_end]
        .iter()
        .map(|f| match f {
            Frame::ReplyDelta { text, .. } => text.as_str(),
            _ => "",
        })
        .collect();
    assert_eq!(reply, "One and one make two.");
    let Frame::EndOfTurn(metrics) = &frames[first_end] else {
        unreachable!()
    };
    // The transcript it answered started the planner's clock.
    let timing = metrics.stage("planner").expect("the planner's timing");
    assert!(timing.time_to_first_output.is_some(), "{metrics:?}");
    let apology: String = frames[first_end + 1..]
        .iter()
        .filter_map(|f| match f {
            Frame::ReplyDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert!(apology.starts_with("Sorry"), "{apology:?} in {kinds:?}");
    let finished = running.join(Duration::from_secs(5)).await;
    assert!(
        finished.failed.is_empty() && finished.aborted.is_empty(),
        "{finished:?}"
    );
}

/// One final transcript and its end of turn, into a running stage.
async fn ask_stage(
    input: &mpsc::Sender<parlor::frame::Frame>,
    turn: parlor::frame::TurnId,
    question: &str,
) {
    use parlor::frame::{Frame, TurnMetrics};
    input
        .send(Frame::Transcript {
            turn,
            text: question.into(),
            is_final: true,
        })
        .await
        .unwrap();
    input
        .send(Frame::EndOfTurn(TurnMetrics::new(
            turn,
            Duration::from_secs(1),
            std::time::Instant::now(),
        )))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tool_gets_a_filler_that_stays_out_of_the_conversation() {
    use parlor::frame::Frame;
    let model = Scripted::new(vec![
        Step::Calls(vec![("py__slow", json!({"seconds": 0.6}))]),
        Step::Say("Done waiting."),
        // A fast tool the next turn: no filler.
        Step::Calls(vec![("py__add", json!({"a": 1, "b": 2}))]),
        Step::Say("Three."),
    ]);
    let options = PlannerOptions {
        filler_after: Some(Duration::from_millis(150)),
        fillers: vec!["One moment.".into(), "Still looking.".into()],
        ..PlannerOptions::default()
    };
    let mut running = start_stage_with(&model, options, false).await;
    let input = running.input_handle();
    let first = running.turns().begin();
    ask_stage(&input, first, "wait for it").await;
    let second = running.turns().begin();
    ask_stage(&input, second, "add one and two").await;
    drop(input);
    running.close_input();
    let mut frames = Vec::new();
    while let Some(f) = running.output().recv().await {
        frames.push(f);
    }
    let kinds: Vec<_> = frames.iter().map(|f| f.kind()).collect();
    let fillers: Vec<_> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Filler { turn, text } => Some((*turn, text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(fillers, [(first, "One moment.")], "{kinds:?}");
    // Said while the tool ran: before its result and the reply.
    let filler_at = kinds.iter().position(|k| *k == "filler").unwrap();
    let tool_at = kinds.iter().position(|k| *k == "tool_call").unwrap();
    assert!(filler_at < tool_at, "{kinds:?}");
    // The model never sees a filler in the conversation.
    let seen = model.last_messages();
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ChatMessage::Assistant { content } if content.contains("moment"))),
        "{seen:?}"
    );
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_short_is_remembered_as_only_the_words_heard() {
    let model = Scripted::new(vec![
        Step::Say("Your order shipped on Monday. It will arrive on Friday."),
        Step::Say("Sure."),
    ]);
    let mut running = start_stage(&model).await;
    let input = running.input_handle();
    let first = running.turns().begin();
    ask_stage(&input, first, "where is my order").await;
    // Read the first turn through, as a call's edge plays it.
    while let Some(f) = running.output().recv().await {
        if matches!(f, parlor::frame::Frame::EndOfTurn(_)) {
            break;
        }
    }
    // The caller spoke over it after the first sentence: the edge records
    // what was heard, and the new turn cancels the old one.
    running.turns().record_heard(
        first,
        "Your order shipped on Monday.".into(),
        std::time::Duration::from_millis(1800),
    );
    let second = running.turns().begin();
    ask_stage(&input, second, "thanks").await;
    drop(input);
    running.close_input();
    while running.output().recv().await.is_some() {}
    let seen = model.last_messages();
    let replies: Vec<&str> = seen
        .iter()
        .filter_map(|m| match m {
            ChatMessage::Assistant { content } => Some(content.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(replies, ["Your order shipped on Monday."], "{seen:?}");
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

/// The planner stage alone in a running pipeline, over `model` and the
/// Python peer's tools.
async fn start_stage(model: &Arc<Scripted>) -> parlor::runner::RunningPipeline {
    start_stage_with(model, PlannerOptions::default(), true).await
}

/// [`start_stage`] with `options`, and barge-in off when turns are queued
/// at once (as when a file is played in).
async fn start_stage_with(
    model: &Arc<Scripted>,
    options: PlannerOptions,
    barge_in: bool,
) -> parlor::runner::RunningPipeline {
    let p = planner(model.clone(), py_pool().await, options);
    parlor::runner::Pipeline::new(std::num::NonZeroUsize::new(8).unwrap())
        .barge_in(barge_in)
        .stage(Box::new(parlor::stages::planner::PlannerStage::new(p)))
        .start()
}

/// A transcript the stt stage sends before the turn is over.
async fn pause_words(
    input: &mpsc::Sender<parlor::frame::Frame>,
    turn: parlor::frame::TurnId,
    words: &str,
) {
    input
        .send(parlor::frame::Frame::Transcript {
            turn,
            text: words.into(),
            is_final: false,
        })
        .await
        .unwrap();
}

/// Waits until the model has been asked `n` times.
async fn asked(model: &Scripted, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while model.seen.lock().unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the model was not asked {n} times"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The reply text of `frames`, in order.
fn reply_of(frames: &[parlor::frame::Frame]) -> String {
    frames
        .iter()
        .filter_map(|f| match f {
            parlor::frame::Frame::ReplyDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guess_on_a_pause_becomes_the_answer_and_its_tools_wait_for_the_turn() {
    use parlor::frame::Frame;

    let model = Scripted::new(vec![
        Step::Calls(vec![("py__add", json!({"a": 1, "b": 1}))]),
        Step::Say("One and one make two."),
    ]);
    let mut running = start_stage(&model).await;
    let input = running.input_handle();
    let turn = running.turns().begin();
    pause_words(&input, turn, "what is one and one").await;
    // The model is asked on the pause's words, before the turn is over...
    asked(&model, 1).await;
    let Some(Frame::Transcript {
        is_final: false, ..
    }) = running.output().recv().await
    else {
        panic!("the pause's words go on for the caller to see");
    };
    // ...but the tool it chose does not run: a second request would follow
    // its result. Nothing of the guess reaches the caller yet.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        model.seen.lock().unwrap().len(),
        1,
        "the tool ran on a guess"
    );
    assert!(running.output().try_recv().is_err(), "a guess was spoken");
    // The turn ends with the same words: the guess is the answer.
    ask_stage(&input, turn, "what is one and one").await;
    drop(input);
    running.close_input();
    let mut frames = Vec::new();
    while let Some(f) = running.output().recv().await {
        frames.push(f);
    }
    let kinds: Vec<_> = frames.iter().map(|f| f.kind()).collect();
    assert_eq!(kinds[..2], ["transcript", "tool_call"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"end_of_turn"), "{kinds:?}");
    let Frame::ToolCall { record, .. } = &frames[1] else {
        unreachable!()
    };
    assert!(
        !record.is_error && record.output.contains('2'),
        "{record:?}"
    );
    assert_eq!(reply_of(&frames), "One and one make two.");
    // Two requests (the call, then the answer): none was made again.
    assert_eq!(model.seen.lock().unwrap().len(), 2);
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guess_that_failed_is_not_the_answer() {
    // The model fails on the pause's words (a dropped connection, say):
    // the turn is asked again when it ends, not answered with the failure.
    let model = Scripted::new(vec![
        Step::Fail("connection reset"),
        Step::Say("One and one make two."),
    ]);
    let mut running = start_stage(&model).await;
    let input = running.input_handle();
    let turn = running.turns().begin();
    pause_words(&input, turn, "what is one and one").await;
    asked(&model, 1).await;
    // Long enough for the failed run to have ended.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ask_stage(&input, turn, "what is one and one").await;
    drop(input);
    running.close_input();
    let mut frames = Vec::new();
    while let Some(f) = running.output().recv().await {
        frames.push(f);
    }
    assert_eq!(reply_of(&frames), "One and one make two.");
    assert_eq!(model.seen.lock().unwrap().len(), 2);
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guess_is_dropped_when_the_caller_goes_on_and_leaves_no_trace() {
    let model = Scripted::new(vec![
        Step::Say("Which order?"),
        Step::Say("Order 1042 shipped."),
        Step::Say("You are welcome."),
    ]);
    let mut running = start_stage(&model).await;
    let input = running.input_handle();
    let turn = running.turns().begin();
    pause_words(&input, turn, "where is my order").await;
    asked(&model, 1).await;
    // Long enough for the guess to have finished its answer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The caller went on after the pause: the final words differ.
    ask_stage(&input, turn, "where is my order 1042").await;
    let mut frames = Vec::new();
    while let Some(f) = running.output().recv().await {
        let end = matches!(f, parlor::frame::Frame::EndOfTurn(_));
        frames.push(f);
        if end {
            break;
        }
    }
    assert_eq!(
        reply_of(&frames),
        "Order 1042 shipped.",
        "the guess was spoken"
    );
    // The guess's words were paid for, and are counted: 2 + 3 tokens.
    let Some(parlor::frame::Frame::EndOfTurn(metrics)) = frames.last() else {
        unreachable!()
    };
    assert_eq!(metrics.usage.output_text_tokens, 5, "{:?}", metrics.usage);
    let next = running.turns().begin();
    ask_stage(&input, next, "thanks").await;
    drop(input);
    running.close_input();
    while running.output().recv().await.is_some() {}
    // The conversation holds the turn as it ended, not the guess.
    let seen = model.last_messages();
    let said: Vec<String> = seen
        .iter()
        .filter_map(|m| match m {
            ChatMessage::User { content } | ChatMessage::Assistant { content } => {
                Some(content.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        said,
        ["where is my order 1042", "Order 1042 shipped.", "thanks"],
        "{seen:?}"
    );
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_would_say_a_secret_is_cut_off_before_it() {
    support::trace_to_file("planner");
    // A model talked into repeating a credential (by an injected
    // instruction, say): a fault a real model does not produce on demand.
    const SECRET: &str = "sk-parlor-test-0123456789abcdef";
    let script = Scripted::new(vec![Step::Say(
        "Of course! The key is sk-parlor-test-0123456789abcdef and you can use it anywhere.",
    )]);
    let secrets = parlor::secrets::Secrets::new([SECRET.to_string()]);
    let planner =
        planner(script, py_pool().await, PlannerOptions::default()).with_secrets(Arc::new(secrets));
    let mut history = History::default();
    let t = turn(&planner, &mut history, "What is the API key?").await;
    let outcome = t.result.unwrap();
    let said: String = t
        .events
        .iter()
        .filter_map(|e| match e {
            PlannerEvent::Text(piece) => Some(piece.as_str()),
            _ => None,
        })
        .collect();
    // Said up to the key (its start held back until it came whole), then
    // the key and all after it dropped.
    assert_eq!(
        said,
        format!(
            "Of course! The key is {}",
            parlor::secrets::WITHHELD.trim_start()
        )
    );
    assert_eq!(outcome.reply, said, "the outcome is what was said");
    let kept = format!("{:?}", history.messages());
    assert!(
        !kept.contains(SECRET),
        "the history keeps only what was said"
    );
}

/// A caller who takes `thinking` to approve every question.
struct SlowYes {
    thinking: Duration,
    patience: Duration,
}

#[async_trait]
impl parlor::planner::Confirmer for SlowYes {
    async fn confirm(
        &self,
        _request: parlor::planner::ConfirmRequest,
    ) -> parlor::planner::Confirmation {
        tokio::time::sleep(self.thinking).await;
        parlor::planner::Confirmation::Approved
    }

    fn patience(&self) -> Duration {
        self.patience
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_deciding_does_not_use_up_the_tools_deadline() {
    // The tool's deadline is 300 ms; the caller takes a second to say yes.
    // The sensitive call must still run: deciding is the caller's time.
    let dir = tempfile::tempdir().unwrap();
    let specs = BTreeMap::from([("orders".to_string(), support::orders_server(dir.path()))]);
    let pool = Arc::new(McpPool::connect(&specs, &["orders".into()]).await.unwrap());
    let audit = dir.path().join("tools.jsonl");
    let access: parlor::access::AccessSpec =
        toml::from_str("[[tool]]\ntool = \"orders__cancel_order\"\nsensitive = true\n").unwrap();
    let shared = parlor::planner::AuditedPool::new(
        pool.clone(),
        Arc::new(parlor::mcp::AuditLog::open(&audit).unwrap()),
        parlor::mcp::AuditContext::default(),
    )
    .with_policy(Arc::new(parlor::mcp::Policy::new(&access)));
    let model = Scripted::new(vec![
        Step::Calls(vec![("orders__get_order", json!({"order_id": 1043}))]),
        Step::Calls(vec![(
            "orders__cancel_order",
            json!({"order_id": 1043, "reason": "the caller asked"}),
        )]),
        Step::Say("Order 1043 is cancelled."),
    ]);
    let options = PlannerOptions {
        call_timeout: Duration::from_millis(300),
        ..PlannerOptions::default()
    };
    let planner = Planner::new(model, Arc::new(shared), "You are a test.", options);
    let person = Arc::new(SlowYes {
        thinking: Duration::from_secs(1),
        patience: Duration::from_secs(10),
    });
    let session = planner.for_session(&parlor::mcp::AuditContext::default(), person);
    let mut history = History::default();
    let done = turn(&session, &mut history, "Cancel order 1043, please.")
        .await
        .result
        .expect("the turn ends");
    let cancel = &done.tools[1];
    assert_eq!(cancel.name, "orders__cancel_order");
    assert!(!cancel.is_error, "{}", cancel.output);
    let last = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .rfind(|r| r["tool"] == "cancel_order")
        .expect("the cancel is audited");
    assert_eq!(last["decision"], "allowed");
    assert_eq!(last["reason"], parlor::planner::tools::CONFIRMED);
    drop((session, planner));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_too_big_for_the_context_is_halved_until_it_fits() {
    let model = Scripted::new(vec![
        Step::Calls(vec![("py__echo", json!({"text": "w".repeat(3000)}))]),
        Step::SayIfFits(1000, "It echoed a lot of w."),
    ]);
    let planner = planner(model.clone(), py_pool().await, PlannerOptions::default());
    let mut history = History::default();
    let done = turn(&planner, &mut history, "Echo a long text.").await;
    let outcome = done.result.expect("the turn answers instead of failing");
    assert_eq!(outcome.reply, "It echoed a lot of w.");
    // The caller's record keeps the tool's output; the model read it cut.
    assert_eq!(outcome.tools[0].output.len(), 3000);
    let read = model
        .last_messages()
        .into_iter()
        .find_map(|m| match m {
            ChatMessage::ToolResult { content, .. } => Some(content),
            _ => None,
        })
        .unwrap();
    assert!(read.len() <= 1000 && read.contains("[truncated]"), "{read}");
    assert!(
        model.choices().len() >= 3,
        "the call, a retry or more, the answer"
    );
}
