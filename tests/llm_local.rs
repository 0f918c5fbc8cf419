//! The local planner model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M through
//! llama.cpp) on a fixed question set, the correctness of prefix KV-cache
//! reuse, and a multi-turn conversation with a tool result.
//!
//! Needs the model: `bash models/setup.sh`. Tests share one process-wide
//! copy of the weights and run one at a time (two cores).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use parlor::llm::{
    ChatMessage, Decision, LlmError, LocalLlm, LocalLlmOptions, ToolChoice, ToolSpec,
};
use serde_json::Value;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

fn load() -> LocalLlm {
    let path = model_path();
    assert!(
        path.exists(),
        "{} is missing: run bash models/setup.sh",
        path.display()
    );
    LocalLlm::load(
        &path,
        LocalLlmOptions {
            threads: 2,
            context_len: 2048,
            max_tokens: 96,
            ..LocalLlmOptions::default()
        },
    )
    .expect("load the planner model")
}

struct QuestionSet {
    system: String,
    tools: Vec<ToolSpec>,
    questions: Vec<Question>,
}

struct Question {
    question: String,
    expect: String,
    arguments: Vec<(String, Value)>,
}

fn question_set() -> QuestionSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tasks/planner_questions.json");
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let tools = serde_json::from_value(raw["tools"].clone()).unwrap();
    let questions = raw["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| Question {
            question: q["question"].as_str().unwrap().to_string(),
            expect: q["expect"].as_str().unwrap().to_string(),
            arguments: q
                .get("arguments")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
        .collect();
    QuestionSet {
        system: raw["system"].as_str().unwrap().to_string(),
        tools,
        questions,
    }
}

/// Whether `got` satisfies the check (`equals` or `contains_any`).
fn argument_ok(check: &Value, got: Option<&Value>) -> bool {
    let Some(got) = got.and_then(Value::as_str) else {
        return false;
    };
    let got = got.trim().to_lowercase();
    if let Some(want) = check.get("equals").and_then(Value::as_str) {
        return got == want.trim().to_lowercase();
    }
    if let Some(any) = check.get("contains_any").and_then(Value::as_array) {
        return any
            .iter()
            .filter_map(Value::as_str)
            .any(|w| got.contains(&w.to_lowercase()));
    }
    false
}

fn conversation(set: &QuestionSet, question: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::system(set.system.clone()),
        ChatMessage::user(question),
    ]
}

#[test]
fn question_set_accuracy() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let set = question_set();
    let mut llm = load();
    let (mut tool_ok, mut args_checked, mut args_ok) = (0, 0, 0);
    let (mut small_talk, mut small_talk_ok) = (0, 0);
    let (mut tokens, mut gen_secs) = (0usize, 0.0f64);
    for q in &set.questions {
        let mut streamed = String::new();
        let decision = llm
            .decide(&conversation(&set, &q.question), &set.tools, |t| {
                streamed.push_str(t)
            })
            // The grammar makes every output parse; an error here is a bug.
            .unwrap_or_else(|e| panic!("{:?}: {e}", q.question));
        let stats = llm.last_stats().clone();
        tokens += stats.generated_tokens.saturating_sub(1);
        gen_secs += stats.generation_time.as_secs_f64();
        let right_tool = decision.name() == q.expect;
        tool_ok += usize::from(right_tool);
        if q.expect == "say" {
            small_talk += 1;
            small_talk_ok += usize::from(right_tool);
        }
        let mut args_mark = String::new();
        if let Decision::Call { arguments, .. } = &decision {
            if right_tool {
                args_checked += 1;
                let all = q
                    .arguments
                    .iter()
                    .all(|(k, check)| argument_ok(check, arguments.get(k)));
                args_ok += usize::from(all);
                args_mark = if all { " args ok" } else { " ARGS WRONG" }.into();
            }
        }
        if let Decision::Say(text) = &decision {
            assert_eq!(
                &streamed, text,
                "streamed say text differs from the decision"
            );
        }
        println!(
            "{} {:<55} -> {:?}{args_mark}  [ttft {:>4} ms, {} of {} prompt tokens cached]",
            if right_tool { "ok  " } else { "MISS" },
            q.question,
            decision,
            stats.time_to_first_token.as_millis(),
            stats.reused_tokens,
            stats.prompt_tokens,
        );
    }
    let n = set.questions.len();
    let tool_acc = tool_ok as f64 / n as f64;
    let args_acc = args_ok as f64 / args_checked.max(1) as f64;
    println!(
        "tool selection {tool_ok}/{n} ({:.0}%), arguments {args_ok}/{args_checked} ({:.0}%), \
         small talk -> say {small_talk_ok}/{small_talk}; generation {:.1} tokens/s",
        tool_acc * 100.0,
        args_acc * 100.0,
        tokens as f64 / gen_secs.max(1e-9)
    );
    // Thresholds from what the 0.5B model measured here (2 threads,
    // greedy): tool selection 13/20 (14/20 when the order_id description
    // said "e.g. 1042", which the model then copied), arguments 9/9 of the
    // right calls, small talk 4/5. Its misses: knowledge questions and
    // "who am I talking to" sent to get_order, one find_orders sent to
    // get_order. A bigger model (1.5B) is the fix, not the prompt. The bars
    // sit just under the measurement so a regression shows.
    assert!(
        tool_acc >= 0.60,
        "tool selection accuracy {tool_acc:.2} < 0.60"
    );
    assert!(args_acc >= 0.90, "argument accuracy {args_acc:.2} < 0.90");
    assert!(
        small_talk_ok * 5 >= small_talk * 4,
        "small talk answered with say only {small_talk_ok}/{small_talk}"
    );
}

#[test]
fn prefix_reuse_gives_the_same_output_as_a_cold_run() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let set = question_set();
    let mut llm = load();
    let first = conversation(&set, "Has order 9001 shipped yet?");
    let second = conversation(&set, "Please cancel order 1042, I ordered it by mistake.");

    llm.decide(&first, &set.tools, |_| {}).unwrap();
    let warm = llm.decide(&second, &set.tools, |_| {}).unwrap();
    let warm_stats = llm.last_stats().clone();
    assert!(
        warm_stats.reused_tokens * 10 >= warm_stats.prompt_tokens * 8,
        "the system prompt and tools should come from the cache: {warm_stats:?}"
    );

    llm.clear_cache();
    let cold = llm.decide(&second, &set.tools, |_| {}).unwrap();
    let cold_stats = llm.last_stats().clone();
    assert_eq!(cold_stats.reused_tokens, 0);
    assert_eq!(warm, cold, "prefix reuse changed the decision");
    assert_eq!(warm_stats.generated_tokens, cold_stats.generated_tokens);

    // The same request twice: all but the last prompt token reused.
    let again = llm.decide(&second, &set.tools, |_| {}).unwrap();
    assert_eq!(again, cold);
    assert_eq!(
        llm.last_stats().reused_tokens,
        llm.last_stats().prompt_tokens - 1
    );
    println!(
        "cold ttft {} ms, warm ttft {} ms ({} of {} tokens reused)",
        cold_stats.time_to_first_token.as_millis(),
        warm_stats.time_to_first_token.as_millis(),
        warm_stats.reused_tokens,
        warm_stats.prompt_tokens
    );
}

/// A context made in another "process" (a fresh context, as after a
/// restart) reads the system turn another one stored, and decides exactly
/// as an evaluation would; a damaged file is evaluated again and replaced.
#[test]
fn a_stored_system_turn_is_read_by_a_fresh_context_and_a_damaged_one_replaced() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let set = question_set();
    let dir = tempfile::tempdir().unwrap();
    let stored = || {
        LocalLlm::load(
            model_path(),
            LocalLlmOptions {
                threads: 2,
                context_len: 2048,
                max_tokens: 96,
                prefix_store: Some(dir.path().to_path_buf()),
                ..LocalLlmOptions::default()
            },
        )
        .unwrap()
    };
    let question = conversation(&set, "Please cancel order 1042, I ordered it by mistake.");
    let kv_files = || -> Vec<PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };

    // The first start evaluates the system turn and stores it.
    let mut first = stored();
    let evaluated = first.decide(&question, &set.tools, |_| {}).unwrap();
    assert_eq!(first.last_stats().reused_tokens, 0);
    let files = kv_files();
    assert_eq!(files.len(), 1, "{files:?}");
    drop(first);

    // The next reads it: most of the prompt is not evaluated, and the
    // decision is the same as the evaluated one's.
    let mut second = stored();
    let read = second.decide(&question, &set.tools, |_| {}).unwrap();
    let stats = second.last_stats().clone();
    assert!(
        stats.reused_tokens * 10 >= stats.prompt_tokens * 7,
        "the system turn should come from the file: {stats:?}"
    );
    assert_eq!(
        read, evaluated,
        "the stored system turn changed the decision"
    );
    drop(second);

    // A file cut short (a crash mid-write by something else) is refused,
    // evaluated again, and written anew.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() / 2]).unwrap();
    let mut third = stored();
    let recovered = third.decide(&question, &set.tools, |_| {}).unwrap();
    assert_eq!(third.last_stats().reused_tokens, 0);
    assert_eq!(recovered, evaluated);
    assert_eq!(std::fs::read(&files[0]).unwrap().len(), bytes.len());
    println!(
        "first token {} ms after evaluating, {} ms after reading {} of {} tokens from a {} MB file",
        third.last_stats().time_to_first_token.as_millis(),
        stats.time_to_first_token.as_millis(),
        stats.reused_tokens,
        stats.prompt_tokens,
        bytes.len() / 1_000_000
    );
}

#[test]
fn multi_turn_conversation_reuses_the_cache() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let set = question_set();
    let mut llm = load();
    let mut messages = conversation(&set, "Where is my order 1042?");

    let call = llm.decide(&messages, &set.tools, |_| {}).unwrap();
    let Decision::Call { name, arguments } = &call else {
        panic!("expected a tool call, got {call:?}");
    };
    assert_eq!(name, "orders__get_order");
    assert_eq!(arguments["order_id"], "1042");
    let after_call = llm.cached_tokens();

    messages.push(call.to_message("call-1"));
    messages.push(ChatMessage::tool_result(
        "call-1",
        "orders__get_order",
        r#"{"order_id": "1042", "status": "shipped", "carrier": "DHL", "expected_delivery": "Friday"}"#,
    ));
    // After a tool result the planner asks for words only: left free, the
    // 0.5B model calls the same tool again (measured: it re-issued
    // get_order 1042). The tools stay in the prompt, so the cache holds.
    let mut spoken = String::new();
    let answer = llm
        .decide_with(&messages, &set.tools, ToolChoice::SayOnly, |t| {
            spoken.push_str(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let stats = llm.last_stats().clone();
    println!("after the tool result: {answer:?} ({stats:?})");
    // Everything up to the model's own call was already evaluated; the
    // re-rendered call may tokenize slightly differently at its end.
    assert!(
        stats.reused_tokens + 8 >= after_call,
        "turn 2 reused {} tokens, the cache held {after_call}",
        stats.reused_tokens
    );
    let Decision::Say(text) = &answer else {
        panic!("expected an answer after the tool result, got {answer:?}");
    };
    assert_eq!(&spoken, text);
    assert!(
        text.to_lowercase().contains("friday") || text.to_lowercase().contains("shipped"),
        "the answer should use the tool result: {text:?}"
    );

    messages.push(answer.to_message(""));
    let before = llm.cached_tokens();
    messages.push(ChatMessage::user("Thanks, that's all."));
    let bye = llm.decide(&messages, &set.tools, |_| {}).unwrap();
    let stats = llm.last_stats().clone();
    println!("turn 3: {bye:?} ({stats:?})");
    assert!(matches!(bye, Decision::Say(_)), "{bye:?}");
    assert!(
        stats.reused_tokens + 8 >= before,
        "{stats:?}, cache held {before}"
    );
    // `{"name":` and `", "arguments": {"text":` were fed, not sampled.
    assert!(stats.forced_tokens >= 8, "{stats:?}");
}

#[test]
fn say_only_and_plain_completion() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let set = question_set();
    let mut llm = load();
    let d = llm
        .decide_with(
            &conversation(&set, "Where is my order 1042?"),
            &set.tools,
            ToolChoice::SayOnly,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(matches!(d, Decision::Say(_)), "{d:?}");

    llm.options_mut().max_tokens = 24;
    let mut streamed = String::new();
    let text = llm
        .complete(&[ChatMessage::user("Say hello in three words.")], |t| {
            streamed.push_str(t);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert!(!text.trim().is_empty());
    assert_eq!(streamed, text);

    // Cancelling from the callback stops the request.
    let err = llm
        .complete(&[ChatMessage::user("Count from one to twenty.")], |_| {
            std::ops::ControlFlow::Break(())
        })
        .unwrap_err();
    assert!(matches!(err, LlmError::Cancelled), "{err}");
}

#[test]
fn a_missing_model_says_how_to_get_it() {
    let err = LocalLlm::load("models/no-such-model.gguf", LocalLlmOptions::default()).unwrap_err();
    assert!(err.to_string().contains("models/setup.sh"), "{err}");
}

/// `parlor requantize`: a rewritten model loads and still answers, the file
/// appears whole or not at all, and a bad source or target is named.
#[test]
fn a_requantized_model_loads_and_answers() {
    use parlor::llm::requantize::{requantize, Quantization};
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // q4_0 rather than the IQ4_NL that models/setup.sh makes: seconds, not
    // a minute, through the same call. The IQ4_NL file is checked below.
    let target = dir.path().join("q4_0.gguf");
    requantize(&model_path(), &target, Quantization::Q4_0, 2).expect("requantize");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["q4_0.gguf"], "no partial file left behind");
    let smaller = std::fs::metadata(&target).unwrap().len();
    assert!(smaller < std::fs::metadata(model_path()).unwrap().len());

    let made_by_setup = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/qwen2.5-coder-0.5b-instruct-iq4_nl.gguf");
    for path in [target.as_path(), made_by_setup.as_path()] {
        let mut llm = LocalLlm::load(
            path,
            LocalLlmOptions {
                threads: 2,
                context_len: 512,
                max_tokens: 24,
                ..LocalLlmOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
        let text = llm
            .complete(
                &[
                    ChatMessage::system("Answer in one short sentence."),
                    ChatMessage::user("What is the capital of France?"),
                ],
                |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap();
        assert!(text.contains("Paris"), "{}: {text:?}", path.display());
    }

    let err = requantize(
        Path::new("models/no-such-model.gguf"),
        &dir.path().join("x.gguf"),
        Quantization::Q4_0,
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no-such-model.gguf"), "{err}");
    let err = requantize(
        &model_path(),
        &dir.path().join("no/such/dir/x.gguf"),
        Quantization::Q4_0,
        2,
    )
    .unwrap_err();
    assert!(err.to_string().contains("re-quantize"), "{err}");
}

/// With no tools to offer, the planner asks the model for plain text: no
/// tool-choice prompt (so fewer input tokens than a `say` decision would
/// take) and no JSON in the reply, streamed as it is written.
#[test]
fn with_no_tools_the_planner_asks_for_plain_text() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let messages = [
        ChatMessage::system("You are a friendly voice assistant. Answer in one short sentence."),
        ChatMessage::user("What is the capital of France?"),
    ];
    let (
        planner,
        PromptTokens {
            plain: plain_prompt,
            say: say_prompt,
        },
    ) = planner_for(&messages);
    let (reply, streamed) = answer_without_tools(&planner, &messages);
    assert!(reply.calls.is_empty());
    assert!(reply.text.contains("Paris"), "{:?}", reply.text);
    assert!(!reply.text.contains('{'), "plain words: {:?}", reply.text);
    assert_eq!(streamed.trim(), reply.text.trim(), "streamed as written");
    assert_eq!(reply.usage.input_text_tokens as usize, plain_prompt);
    assert!(
        plain_prompt < say_prompt,
        "the plain prompt ({plain_prompt} tokens) leaves out the tool-choice one ({say_prompt})"
    );
}

/// A conversation that already holds a tool call and its result is still
/// answered through `say`, even with no tools left to offer: shown calls in
/// its history without the tool prompt, the model would answer in their
/// JSON, and that would be spoken.
#[test]
fn after_a_tool_call_the_planner_answers_through_say_even_with_no_tools_left() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let call = parlor::llm::ToolCall {
        id: "call_1".into(),
        name: "weather".into(),
        arguments: serde_json::json!({"city": "Paris"}),
    };
    let messages = [
        ChatMessage::system("You are a friendly voice assistant. Answer in one short sentence."),
        ChatMessage::user("What is the weather in Paris?"),
        ChatMessage::ToolCall(call),
        ChatMessage::ToolResult {
            call_id: "call_1".into(),
            name: "weather".into(),
            content: "Sunny, 21 degrees Celsius.".into(),
        },
    ];
    let (
        planner,
        PromptTokens {
            say: say_prompt, ..
        },
    ) = planner_for(&messages);
    let (reply, streamed) = answer_without_tools(&planner, &messages);
    assert!(reply.calls.is_empty());
    assert_eq!(
        reply.usage.input_text_tokens as usize, say_prompt,
        "asked under the tool-choice prompt"
    );
    assert!(reply.text.contains("21"), "{:?}", reply.text);
    assert!(!streamed.contains('{'), "no JSON is spoken: {streamed:?}");
}

/// The prompt `messages` make, in tokens, asked for plain text and asked
/// for a `say` decision with no tools.
struct PromptTokens {
    plain: usize,
    say: usize,
}

/// The 0.5B model as a planner, and the sizes of the prompts `messages`
/// would make.
fn planner_for(messages: &[ChatMessage]) -> (parlor::llm::LocalPlanner, PromptTokens) {
    let llm = load();
    let tokens = PromptTokens {
        plain: llm.count_tokens(&parlor::llm::local::render_prompt(messages, None)),
        say: llm.count_tokens(&parlor::llm::local::render_prompt(
            messages,
            Some((&[], ToolChoice::Auto)),
        )),
    };
    (parlor::llm::LocalPlanner::new(llm, "qwen 0.5b"), tokens)
}

/// Ask `planner` to answer `messages` with no tools on offer: the reply and
/// the text it streamed.
fn answer_without_tools(
    planner: &parlor::llm::LocalPlanner,
    messages: &[ChatMessage],
) -> (parlor::llm::ModelReply, String) {
    use parlor::llm::{ModelRequest, PlannerModel};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reply = runtime
        .block_on(planner.respond(
            ModelRequest {
                messages,
                tools: &[],
                choice: ToolChoice::Auto,
            },
            &tx,
            &tokio_util::sync::CancellationToken::new(),
        ))
        .expect("an answer");
    let mut streamed = String::new();
    while let Ok(piece) = rx.try_recv() {
        streamed.push_str(&piece);
    }
    (reply, streamed)
}
