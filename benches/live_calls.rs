//! Live calls against a real `parlor serve` (a child process, default local
//! pipeline), over its WebSocket, as a caller would make them:
//!
//! 1. **Memory per idle call**: the server's resident memory before and
//!    after `PARLOR_BENCH_IDLE_CALLS` (default 100) calls are opened and left
//!    quiet, divided by their number. It counts everything a call holds
//!    server-side: its socket and buffers, its stages' tasks and channels,
//!    its VAD state.
//! 2. **Voice-to-voice latency**: short spoken questions (espeak-ng, 16 kHz)
//!    sent in real time as 20 ms frames; for each turn, from the end of the
//!    caller's speech (the VAD's decision) to the first reply audio sent on
//!    the socket (`turn.done`'s `voice_to_voice_ms`), with each stage's
//!    first output after the end of speech. `PARLOR_BENCH_RUNS` (default 2)
//!    rounds over the questions; p50 and p95 over all turns.
//!
//!    Also the wait the caller feels: from the end of the question's speech
//!    (its last voiced sample, as sent) to the first reply audio received,
//!    which includes the VAD's end-of-turn silence.
//!
//! `PARLOR_BENCH_PIPELINE` names the spec to serve (default: the embedded
//! local one), e.g. `pipelines/local-fast.toml`; `PARLOR_BENCH_QUESTIONS=chat`
//! asks small talk instead of shop questions (for a spec without tools,
//! such as `benches/pipelines/chat-fast.toml`).
//!
//! `PARLOR_BENCH_PEERS=pipecat` adds Pipecat 1.14 side by side (issue 6):
//! after parlor's turns, the same questions go as WAV files to
//! benches/peers/pipecat_v2v.py, a Pipecat pipeline of the same models
//! (Silero VAD, stop `PARLOR_BENCH_PIPECAT_STOP` s, default 0.2; Whisper
//! tiny.en; the planner model through this server's
//! `/v1/chat/completions`; Piper), played at the same live pace; a table
//! gives both p50/p95 and the ratio. Needs `bash benches/peers/setup.sh`.
//!
//! Needs `bash models/setup.sh` and espeak-ng. Run: `cargo bench --bench
//! live_calls`.

#[path = "support/mod.rs"]
mod support;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use parlor::frame::AudioChunk;
use parlor::live::client::{self, PlayOptions};
use parlor::live::ServerEvent;
use support::{env_usize, espeak, percentile, trailing_silence, Served};

const QUESTIONS: &[&str] = &[
    "Where is my order 1042?",
    "What is the status of order 1043?",
    "Do you ship to Canada?",
    "How long do refunds take?",
    "Hello, who am I speaking to?",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let idle_calls = env_usize("PARLOR_BENCH_IDLE_CALLS", 100);
    let runs = env_usize("PARLOR_BENCH_RUNS", 2);
    let spec = std::env::var("PARLOR_BENCH_PIPELINE").ok();
    let mut served = Served::start(spec.as_deref().map(std::path::Path::new), idle_calls + 2);
    served.ready().await;

    // 1. Memory per idle call.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = served.rss_kib();
    let mut calls = Vec::with_capacity(idle_calls);
    for _ in 0..idle_calls {
        let (tx, mut rx) = client::connect(&served.url()).await.expect("open a call");
        // Read call.started so the call is fully set up.
        let _ = rx.next().await;
        calls.push((tx, rx));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = served.rss_kib();
    let per_call = (after.saturating_sub(before)) as f64 / idle_calls as f64;
    println!(
        "idle calls: {idle_calls}, server RSS {before} KiB -> {after} KiB: {per_call:.1} KiB per idle call"
    );
    drop(calls);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 2. Voice-to-voice latency, live-paced.
    let mut spoken = Vec::new();
    let questions = match std::env::var("PARLOR_BENCH_QUESTIONS").as_deref() {
        Ok("chat") => support::CHAT,
        _ => QUESTIONS,
    };
    for q in questions {
        spoken.push((q, espeak(q).await));
    }
    let mut v2v = Vec::new();
    let mut felt = Vec::new();
    let mut stages: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for run in 0..runs {
        for (question, audio) in &spoken {
            let mut done = None;
            let recording = client::play_file(&served.url(), audio, &PlayOptions::default(), |e| {
                if let ServerEvent::TurnDone {
                    voice_to_voice_ms,
                    stages,
                    transcript,
                    reply,
                    ..
                } = e
                {
                    done = Some((
                        *voice_to_voice_ms,
                        stages.clone(),
                        transcript.clone(),
                        reply.clone(),
                    ));
                }
            })
            .await
            .expect("the call runs");
            let Some((Some(ms), timings, transcript, reply)) = done else {
                println!("run {run}: {question:?}: no spoken reply");
                continue;
            };
            let caller_ms = match (recording.file_sent_at, recording.first_audio_at) {
                (Some(sent), Some(heard)) => {
                    let trailing = trailing_silence(audio);
                    let waited = heard.saturating_duration_since(sent) + trailing;
                    Some(waited.as_secs_f64() * 1e3)
                }
                _ => None,
            };
            // Each stage's first output in this turn, so a slow turn shows
            // which stage its time went to.
            let mut this_turn = Vec::new();
            for s in timings.as_array().into_iter().flatten() {
                if let (Some(name), Some(at)) = (
                    s["stage"].as_str(),
                    s["first_output_after_speech_end"].as_f64(),
                ) {
                    stages.entry(name.to_string()).or_default().push(at);
                    this_turn.push(format!("{name} {at:.0}"));
                }
            }
            println!(
                "run {run}: {question:?}: {ms:.0} ms after the VAD's decision, {} ms after the caller stopped ({}); heard {transcript:?} -> {reply:?}",
                caller_ms.map_or("?".into(), |c| format!("{c:.0}")),
                this_turn.join(", ")
            );
            v2v.push(ms);
            felt.extend(caller_ms);
        }
    }
    v2v.sort_by(f64::total_cmp);
    if v2v.is_empty() {
        println!("no turns were answered aloud");
        return;
    }
    println!(
        "\nvoice to voice over the WebSocket, {} turns: p50 {:.0} ms, p95 {:.0} ms",
        v2v.len(),
        percentile(&v2v, 50.0),
        percentile(&v2v, 95.0)
    );
    felt.sort_by(f64::total_cmp);
    if !felt.is_empty() {
        println!(
            "as the caller feels it (end of speech to first audio received, end-of-turn silence included): p50 {:.0} ms, p95 {:.0} ms",
            percentile(&felt, 50.0),
            percentile(&felt, 95.0)
        );
    }
    println!("| stage | first output after end of speech, p50 (ms) |\n|---|---|");
    for (name, mut at) in stages {
        at.sort_by(f64::total_cmp);
        println!("| {name} | {:.0} |", percentile(&at, 50.0));
    }

    if std::env::var("PARLOR_BENCH_PEERS").is_ok_and(|p| p.split(',').any(|p| p == "pipecat")) {
        pipecat_column(&served, &spoken, runs, &felt, &v2v);
    }
}

/// Pipecat's turns on the same questions (benches/peers/pipecat_v2v.py),
/// with this server's chat route as its LLM, then one table of both.
/// Run after parlor's turns so the two never share the CPU.
fn pipecat_column(
    served: &Served,
    spoken: &[(&&str, AudioChunk)],
    runs: usize,
    felt: &[f64],
    v2v: &[f64],
) {
    let cache = std::env::var_os("PARLOR_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/parlor"),
        PathBuf::from,
    );
    let python = cache.join("peers-venv/bin/python");
    if !python.exists() {
        println!(
            "\npipecat: no peer venv at {}; make it with `bash benches/peers/setup.sh` (skipped)",
            python.display()
        );
        return;
    }
    // The exact samples parlor heard, as 16 kHz 16-bit WAVs.
    let dir = tempfile::tempdir().expect("a temp dir");
    let wavs: Vec<PathBuf> = spoken
        .iter()
        .enumerate()
        .map(|(i, (_, audio))| {
            let path = dir.path().join(format!("q{i}.wav"));
            parlor::audio::write_wav(&path, audio).expect("write a question");
            path
        })
        .collect();
    let stop = std::env::var("PARLOR_BENCH_PIPECAT_STOP").unwrap_or_else(|_| "0.2".into());
    println!("\npipecat 1.14, same questions, Silero stop {stop} s:");
    let mut child = Command::new(&python)
        .arg("benches/peers/pipecat_v2v.py")
        .args(["--url", &format!("http://{}", served.addr)])
        .args(["--runs", &runs.to_string(), "--stop-secs", &stop])
        .args(&wavs)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the pipecat peer");
    let (mut caller, mut vad) = (Vec::new(), Vec::new());
    // Blocking reads: nothing else runs on this runtime meanwhile.
    let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        let Ok(turn) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if turn.get("summary").is_some() {
            continue;
        }
        let question = turn["question"]
            .as_str()
            .and_then(|q| q.strip_prefix('q')?.parse::<usize>().ok())
            .and_then(|i| spoken.get(i))
            .map_or("?", |(q, _)| **q);
        let ms = |key: &str| turn[key].as_f64();
        println!(
            "pipecat run {}: {question:?}: {} ms after the VAD's decision, {} ms after the caller stopped -> {}",
            turn["run"],
            ms("vad_ms").map_or("?".into(), |v| format!("{v:.0}")),
            ms("caller_ms").map_or("?".into(), |v| format!("{v:.0}")),
            turn["reply"]
        );
        caller.extend(ms("caller_ms"));
        vad.extend(ms("vad_ms"));
    }
    let status = child.wait().expect("the pipecat peer ran");
    if !status.success() || caller.is_empty() {
        println!("pipecat: no answered turns ({status})");
        return;
    }
    caller.sort_by(f64::total_cmp);
    vad.sort_by(f64::total_cmp);
    println!(
        "\n| voice to voice (ms) | parlor p50 | parlor p95 | pipecat p50 | pipecat p95 | pipecat / parlor p50 |\n|---|---|---|---|---|---|"
    );
    for (what, ours, theirs) in [
        ("end of speech -> first audio", felt, &caller[..]),
        ("VAD decision -> first audio", v2v, &vad[..]),
    ] {
        let (p50, p95) = (percentile(ours, 50.0), percentile(ours, 95.0));
        let (q50, q95) = (percentile(theirs, 50.0), percentile(theirs, 95.0));
        println!(
            "| {what} | {p50:.0} | {p95:.0} | {q50:.0} | {q95:.0} | {:.2}x |",
            q50 / p50
        );
    }
    println!(
        "({} parlor turns, {} pipecat turns; parlor's first audio is received on the WebSocket, Pipecat's leaves its Piper service in-process)",
        felt.len(),
        caller.len()
    );
}
