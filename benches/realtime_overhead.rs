//! The realtime stage's cost over the chained pipeline it wraps (issue 7):
//! the same spoken questions, in one run, turn by turn alternately
//!
//! - **chained**: a live call to `parlor serve` on the local pipeline
//!   (Silero, Whisper, the local planner with its MCP tools, Piper);
//! - **realtime**: a live call to a second `parlor serve` on
//!   `pipelines/local-realtime.toml`, whose realtime stage speaks the
//!   Realtime protocol to the first server's `/v1/realtime`: the same
//!   pipeline, one protocol hop and one more live-call edge away.
//!
//! Both are voice-to-voice as the caller's server measures it (`turn.done`'s
//! `voice_to_voice_ms`: end of speech to first reply audio sent). The model
//! time differs from turn to turn by far more than the protocol costs, so
//! the overhead is isolated per realtime turn: the backend measures its own
//! voice-to-voice for the very turn it served (its `/metrics` histogram,
//! read before and after the call), and the overhead is the front's figure
//! minus the backend's. Both clocks start at the same moment: the route
//! sends `speech_stopped` when its VAD decides the turn is over (the stt
//! stage passes the end of speech on before transcribing), and the front's
//! clock starts when the stage receives it, so only that event's hop
//! (loopback, well under a millisecond) is not counted; the way back (reply
//! audio through the route, the stage, the front's call edge and its
//! socket) is.
//!
//! `PARLOR_BENCH_RUNS` (default 2) rounds over the questions. Needs
//! `bash models/setup.sh` and espeak-ng. Run: `cargo bench --bench
//! realtime_overhead`.

#[path = "support/mod.rs"]
mod support;

use parlor::live::client::{self, PlayOptions};
use parlor::live::ServerEvent;
use support::{env_usize, espeak, percentile, Served};

const QUESTIONS: &[&str] = &[
    "Where is my order 1042?",
    "Do you ship to Canada?",
    "How long do refunds take?",
    "Hello, who am I speaking to?",
];

/// The backend's voice-to-voice histogram: (sum in seconds, count).
async fn backend_v2v(served: &Served) -> (f64, u64) {
    let text = reqwest::get(format!("http://{}/metrics", served.addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("parlor_voice_to_voice_seconds_sum "),
        value("parlor_voice_to_voice_seconds_count ") as u64,
    )
}

/// One live call; its first turn's voice-to-voice in ms, if it spoke.
async fn v2v_of(url: &str, audio: &parlor::frame::AudioChunk) -> Option<f64> {
    let mut v2v = None;
    client::play_file(url, audio, &PlayOptions::default(), |e| {
        if let ServerEvent::TurnDone {
            voice_to_voice_ms: Some(ms),
            ..
        } = e
        {
            v2v.get_or_insert(*ms);
        }
    })
    .await
    .expect("the call runs");
    v2v
}

fn summary(name: &str, mut ms: Vec<f64>) -> String {
    ms.sort_by(f64::total_cmp);
    if ms.is_empty() {
        return format!("| {name} | 0 | - | - | - |");
    }
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    format!(
        "| {name} | {} | {:.1} | {:.1} | {:.1} |",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 90.0),
        mean
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env_usize("PARLOR_BENCH_RUNS", 2);
    let mut backend = Served::start(None, 8);
    backend.ready().await;

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = std::fs::read_to_string(root.join("pipelines/local-realtime.toml"))
        .expect("pipelines/local-realtime.toml");
    let dir = tempfile::tempdir().expect("a temp dir");
    let spec = dir.path().join("local-realtime.toml");
    std::fs::write(
        &spec,
        shipped.replace(
            "ws://127.0.0.1:8080/v1/realtime",
            &format!("ws://{}/v1/realtime", backend.addr),
        ),
    )
    .expect("write the spec");
    let mut front = Served::start(Some(&spec), 8);
    front.ready().await;

    let mut spoken = Vec::new();
    for q in QUESTIONS {
        spoken.push((q, espeak(q).await));
    }
    let (mut chained, mut realtime, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        for (question, audio) in &spoken {
            let direct = v2v_of(&backend.url(), audio).await;
            let (sum_before, count_before) = backend_v2v(&backend).await;
            let through = v2v_of(&front.url(), audio).await;
            let (sum_after, count_after) = backend_v2v(&backend).await;
            let inner = (count_after == count_before + 1).then_some((sum_after - sum_before) * 1e3);
            println!(
                "run {run}: {question:?}: chained {} ms, realtime {} ms (backend's own {} ms)",
                direct.map_or("-".into(), |v| format!("{v:.1}")),
                through.map_or("-".into(), |v| format!("{v:.1}")),
                inner.map_or("-".into(), |v| format!("{v:.1}")),
            );
            chained.extend(direct);
            realtime.extend(through);
            if let (Some(outer), Some(inner)) = (through, inner) {
                overhead.push(outer - inner);
            }
        }
    }
    println!(
        "\n| voice to voice | turns | p50 (ms) | p90 (ms) | mean (ms) |\n|---|---|---|---|---|"
    );
    println!("{}", summary("chained (local.toml)", chained.clone()));
    println!(
        "{}",
        summary("realtime stage → /v1/realtime", realtime.clone())
    );
    println!(
        "{}",
        summary("overhead, per turn (front − backend)", overhead)
    );
    if !chained.is_empty() && !realtime.is_empty() {
        chained.sort_by(f64::total_cmp);
        realtime.sort_by(f64::total_cmp);
        println!(
            "\nrealtime / chained p50: {:.3}",
            percentile(&realtime, 50.0) / percentile(&chained, 50.0)
        );
    }
}
