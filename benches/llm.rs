//! Local planner: time to first token on the same turn, cold (empty KV
//! cache: the whole prompt — system prompt, tool schemas, question — is
//! evaluated) against with prefix reuse (the system prompt and tools are
//! cached from the previous turn; only the question is evaluated). Also a
//! follow-up turn after a tool result, and generation speed.
//!
//! Then tool selection over the whole question set (the decision's tool
//! against the expected one, `say` for small talk), and the time to the
//! first spoken word of a `say` answer with the grammar's forced text fed
//! in batches against sampled token by token.
//!
//! Uses the question set in benches/tasks/planner_questions.json and the
//! default pipeline's Qwen2.5-Coder-1.5B-Instruct Q4_K_M on 2 threads
//! (`PARLOR_BENCH_MODEL=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf` for the
//! 0.5B). Needs `bash models/setup.sh`. Run: `cargo bench --bench llm`.
//! `PARLOR_BENCH_RUNS` (default 3) sets the runs per question,
//! `PARLOR_BENCH_QUESTIONS` how many questions the timing table uses
//! (default all).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use parlor::llm::{ChatMessage, LlmError, LocalLlm, LocalLlmOptions, ToolChoice, ToolSpec};
use serde_json::Value;

const THREADS: usize = 2;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Time to first token of one request. The request stops after that
/// token (a one-token limit), so only the first token is paid for.
fn ttft(
    llm: &mut LocalLlm,
    messages: &[ChatMessage],
    tools: &[ToolSpec],
) -> (Duration, usize, usize) {
    llm.options_mut().max_tokens = 1;
    match llm.decide(messages, tools, |_| {}) {
        Ok(_) | Err(LlmError::TokenLimit { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    let s = llm.last_stats();
    (s.time_to_first_token, s.prompt_tokens, s.reused_tokens)
}

/// What a first-word timing hands the model: stop at the first piece.
type OnText<'a> = &'a mut dyn FnMut(&str) -> ControlFlow<()>;

/// Time to the first streamed piece of `ask(llm, question, way, ...)` for
/// each question `runs` times, the `true` way and the `false` way
/// alternating (so drift on a shared machine hits both alike).
fn first_words_side_by_side(
    llm: &mut LocalLlm,
    questions: &[&str],
    runs: usize,
    ask: impl Fn(&mut LocalLlm, &str, bool, OnText<'_>) -> Result<(), LlmError>,
) -> (Vec<Duration>, Vec<Duration>) {
    let mut times = (Vec::new(), Vec::new());
    for _ in 0..2 {
        for way in [true, false] {
            for q in questions {
                for _ in 0..runs {
                    let started = std::time::Instant::now();
                    let mut first = None;
                    let mut on_text = |_: &str| {
                        first.get_or_insert_with(|| started.elapsed());
                        ControlFlow::Break(())
                    };
                    // A stopped request is an error by design; only the
                    // time to its first piece counts.
                    ask(llm, q, way, &mut on_text).ok();
                    if way { &mut times.0 } else { &mut times.1 }.extend(first);
                }
            }
        }
    }
    times
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models").join(
        std::env::var("PARLOR_BENCH_MODEL")
            .unwrap_or_else(|_| "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf".into()),
    );
    assert!(
        model.exists(),
        "{} missing: run `bash models/setup.sh`",
        model.display()
    );
    let set: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("benches/tasks/planner_questions.json")).unwrap(),
    )
    .unwrap();
    let tools: Vec<ToolSpec> = serde_json::from_value(set["tools"].clone()).unwrap();
    let system = set["system"].as_str().unwrap();
    let expected: Vec<(&str, &str)> = set["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["question"].as_str().unwrap(),
                q["expect"].as_str().unwrap(),
            )
        })
        .collect();
    let questions: Vec<&str> = expected.iter().map(|(q, _)| *q).collect();
    // PARLOR_BENCH_QUESTIONS limits the table to the first N questions.
    let limit: usize = std::env::var("PARLOR_BENCH_QUESTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let questions: Vec<&str> = questions.into_iter().take(limit).collect();
    let runs: usize = std::env::var("PARLOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);

    let mut llm = LocalLlm::load(
        &model,
        LocalLlmOptions {
            threads: THREADS,
            context_len: 2048,
            ..LocalLlmOptions::default()
        },
    )
    .expect("load model");
    let convo = |q: &str| vec![ChatMessage::system(system), ChatMessage::user(q)];

    // Warm up (page the weights in, let the CPU settle).
    ttft(&mut llm, &convo(questions[0]), &tools);

    println!(
        "Local planner {}, time to first token on the same turn ({runs} runs per question, median)",
        model.file_stem().unwrap().to_string_lossy()
    );
    println!(
        "{:<55} {:>8} {:>10} {:>7} {:>7}",
        "question", "cold ms", "cached ms", "ratio", "tokens"
    );
    let (mut all_cold, mut all_warm) = (Vec::new(), Vec::new());
    for (i, q) in questions.iter().enumerate() {
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        let mut shape = (0, 0);
        for _ in 0..runs {
            llm.clear_cache();
            let (t, prompt, reused) = ttft(&mut llm, &convo(q), &tools);
            assert_eq!(reused, 0);
            cold.push(t);
            // The previous turn was another question: its system prompt
            // and tools are in the cache, the question is not.
            let other = questions[(i + 1) % questions.len()];
            ttft(&mut llm, &convo(other), &tools);
            let (t, _, reused) = ttft(&mut llm, &convo(q), &tools);
            warm.push(t);
            shape = (prompt, reused);
        }
        let (c, w) = (median(cold.clone()), median(warm.clone()));
        all_cold.extend(cold);
        all_warm.extend(warm);
        println!(
            "{:<55} {:>8.1} {:>10.1} {:>6.1}x {:>3}/{:<3}",
            q,
            ms(c),
            ms(w),
            ms(c) / ms(w),
            shape.1,
            shape.0
        );
    }
    let (c, w) = (median(all_cold), median(all_warm));
    println!(
        "ALL (median)                                            {:>8.1} {:>10.1} {:>6.1}x",
        ms(c),
        ms(w),
        ms(c) / ms(w)
    );

    // A follow-up after a tool result: the cache holds the conversation up
    // to the model's own call; only the result is new.
    let mut messages = convo("Where is my order 1042?");
    llm.options_mut().max_tokens = 96;
    llm.clear_cache();
    let call = llm.decide(&messages, &tools, |_| {}).expect("decide");
    messages.push(call.to_message("call-1"));
    messages.push(ChatMessage::tool_result(
        "call-1",
        call.name(),
        r#"{"order_id": "1042", "status": "shipped", "carrier": "DHL", "expected_delivery": "Friday"}"#,
    ));
    let mut follow = Vec::new();
    let mut follow_cold = Vec::new();
    for _ in 0..runs {
        // Re-establish the cache as it is right after the call.
        llm.clear_cache();
        llm.options_mut().max_tokens = 96;
        llm.decide(&messages[..2], &tools, |_| {}).expect("decide");
        follow.push(ttft(&mut llm, &messages, &tools).0);
        llm.clear_cache();
        follow_cold.push(ttft(&mut llm, &messages, &tools).0);
    }
    let (fc, fw) = (median(follow_cold), median(follow));
    println!(
        "after a tool result: cold {:.1} ms, cached {:.1} ms ({:.1}x)",
        ms(fc),
        ms(fw),
        ms(fc) / ms(fw)
    );

    // Tool selection over the whole set, and generation speed: whole
    // decisions, cached prefix.
    llm.options_mut().max_tokens = 96;
    let (mut tokens, mut secs, mut right) = (0usize, 0.0, 0);
    for (q, expect) in &expected {
        let decision = llm.decide(&convo(q), &tools, |_| {}).expect("decide");
        right += usize::from(decision.name() == *expect);
        let s = llm.last_stats();
        tokens += s.generated_tokens.saturating_sub(1);
        secs += s.generation_time.as_secs_f64();
    }
    println!(
        "tool selection: {right}/{} right (the expected tool, or say for small talk)",
        expected.len()
    );
    // The same with the forced text sampled: batching it must not change
    // what the model decides.
    llm.options_mut().forced_text = false;
    let sampled_right = expected
        .iter()
        .filter(|(q, expect)| {
            llm.decide(&convo(q), &tools, |_| {})
                .is_ok_and(|d| d.name() == *expect)
        })
        .count();
    llm.options_mut().forced_text = true;
    println!(
        "tool selection with the forced text sampled token by token: {sampled_right}/{} right",
        expected.len()
    );
    println!(
        "generation: {:.1} tokens/s over {} questions (greedy, grammar-constrained)",
        tokens as f64 / secs,
        expected.len()
    );

    // Time to the first spoken word of a `say` answer, with the text the
    // grammar forces fed in batches and sampled token by token, side by
    // side on the same small-talk questions (cached prefix).
    let small_talk: Vec<&str> = expected
        .iter()
        .filter(|(_, expect)| *expect == "say")
        .map(|(q, _)| *q)
        .collect();
    let first_word = |llm: &mut LocalLlm, q: &str, forced: bool, on_text: OnText<'_>| {
        llm.options_mut().forced_text = forced;
        llm.options_mut().max_tokens = 96;
        llm.decide_with(&convo(q), &tools, ToolChoice::Auto, on_text)
            .map(drop)
    };
    let (with, without) = first_words_side_by_side(&mut llm, &small_talk, runs, first_word);
    llm.options_mut().forced_text = true;
    if !with.is_empty() && !without.is_empty() {
        let (w, wo) = (median(with), median(without));
        println!(
            "first spoken word of a say answer ({} small-talk questions): forced text batched {:.1} ms, sampled {:.1} ms ({:.2}x)",
            small_talk.len(),
            ms(w),
            ms(wo),
            ms(wo) / ms(w)
        );
    }

    // A pipeline with no tools (small talk only): the planner then asks
    // for plain text, not a `say` decision under the tool-choice prompt
    // and grammar. Time to the first word both ways, side by side.
    let no_tools = |llm: &mut LocalLlm, q: &str, plain: bool, on_text: OnText<'_>| {
        if plain {
            llm.complete(&convo(q), on_text).map(drop)
        } else {
            llm.decide_with(&convo(q), &[], ToolChoice::Auto, on_text)
                .map(drop)
        }
    };
    let (plain, say) = first_words_side_by_side(&mut llm, &small_talk, runs, no_tools);
    if !plain.is_empty() && !say.is_empty() {
        let (p, s) = (median(plain), median(say));
        println!(
            "no tools, first spoken word ({} small-talk questions): plain text {:.1} ms, a say decision {:.1} ms ({:.2}x)",
            small_talk.len(),
            ms(p),
            ms(s),
            ms(s) / ms(p)
        );
    }
}
