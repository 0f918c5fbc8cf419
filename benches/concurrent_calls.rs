//! Concurrent live calls (issue 6): how many calls a real `parlor serve`
//! carries on 2 cores before the latency it adds to a turn grows, and what
//! an idle call costs in memory.
//!
//! The pipeline's stt, planner and tts are the `openai` backends pointed at
//! a **local fixed-latency upstream** in this process, on a thread and
//! runtime of its own: a tiny axum server that answers `/v1/audio/transcriptions`, `/v1/chat/completions`
//! (streamed) and `/v1/audio/speech` after fixed delays. It stands in for
//! remote APIs, so what is measured is parlor's own overhead per turn:
//! **added latency = voice_to_voice_ms − (STT + LLM + TTS upstream delays)**.
//! The VAD is earshot (no model), so every call's VAD state is real.
//!
//! 1. **Idle memory**: server RSS before and after `PARLOR_BENCH_IDLE_CALLS`
//!    (default 1000) calls are opened and left quiet (within the server's
//!    30 s idle timeout), divided by their number.
//! 2. **Ramp**: for each N in `PARLOR_BENCH_CALLS` (default
//!    `10,50,100,250,500,1000`), N calls each stream 20 ms frames in real
//!    time: a spoken question (espeak-ng), then silence until the reply is
//!    done, four times over. Their starts are spread evenly over one such
//!    turn (`PARLOR_BENCH_STAGGER_MS` to choose another spread), so turns
//!    arrive at an even rate, as from callers who did not all dial in the
//!    same second; only the middle two turns of each call are counted, which
//!    run while all N calls are open (the first and last overlap the ramp up
//!    and down). Per N: p50
//!    and p99 added latency (and its p99 at each of stt, planner and tts's
//!    first output, to show where a tail builds up), turns answered,
//!    errors, server RSS and CPU, how long the server's threads (and the
//!    upstream's) waited for a core each time they ran, and the callers'
//!    frame-send lateness. The ramp stops after two steps over
//!    20 ms p99 or any error.
//!
//! The callers run in this process on the same 2 cores as the server, so
//! their CPU is counted against the machine, not the server.
//! `PARLOR_BENCH_CALLERS=nice:10` runs them (not the upstream) at a lower
//! priority than the server, and `PARLOR_BENCH_CALLERS=idle` on Linux's
//! `SCHED_IDLE` (a core only when nothing else wants it), as callers on
//! other machines would be: the server's figures then show its own
//! capacity, and the callers' frame lateness shows what they gave up for
//! it. The default, `same`, leaves them at the server's priority.
//!
//! Needs espeak-ng and an open-files limit above twice the largest N
//! (`ulimit -n 4096`). Run: `cargo bench --bench concurrent_calls`.
//! Writes `target/concurrent_calls.json`.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use parlor::audio::pcm16_le_bytes;
use parlor::frame::AudioChunk;
use parlor::live::client::{self, CallerRx, CallerTx, Incoming};
use parlor::live::ServerEvent;
use serde_json::json;
use support::{env_usize, espeak, percentile, Served};
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;

/// Upstream delays: what a remote STT, LLM (first token) and TTS (first
/// audio) would cost. Subtracted from voice-to-voice to get parlor's share.
const STT_DELAY: Duration = Duration::from_millis(50);
const LLM_FIRST_TOKEN_DELAY: Duration = Duration::from_millis(100);
const TTS_FIRST_AUDIO_DELAY: Duration = Duration::from_millis(50);
const UPSTREAM_MS: f64 = STAGE_UPSTREAM[STAGES - 1].1.as_secs_f64() * 1e3;
/// Each API stage and the upstream delays up to its first output: what is
/// left of its `first_output_after_speech_end` is parlor's share so far.
/// Shows where in the chain the added latency accrues.
const STAGE_UPSTREAM: [(&str, Duration); STAGES] = [
    ("stt", STT_DELAY),
    ("planner", STT_DELAY.saturating_add(LLM_FIRST_TOKEN_DELAY)),
    (
        "tts",
        STT_DELAY
            .saturating_add(LLM_FIRST_TOKEN_DELAY)
            .saturating_add(TTS_FIRST_AUDIO_DELAY),
    ),
];
const STAGES: usize = 3;

const TRANSCRIPT: &str = "What is the capital of France?";
const REPLY: &str = "The capital of France is Paris.";
/// Reply audio length: 0.5 s of 24 kHz 16-bit PCM (OpenAI's `pcm`).
const REPLY_PCM_BYTES: usize = 24_000;

const QUESTION: &str = "What is the capital of France?";
const FRAME_SAMPLES: usize = 320; // 20 ms at 16 kHz
const TURNS_PER_CALL: usize = 4;
/// The turns of a call that are counted: every call is open during them.
const COUNTED_TURNS: std::ops::Range<usize> = 1..TURNS_PER_CALL - 1;
/// A turn that has not ended this long after its question was sent failed.
const TURN_TIMEOUT: Duration = Duration::from_secs(15);
/// Over this p99 added latency a step counts as overloaded.
const BUDGET_MS: f64 = 20.0;

// ---------------------------------------------------------------- upstream

/// The fixed-latency upstream: its `/v1` base URL, and the id of the one
/// thread it runs on.
struct Upstream {
    base_url: String,
    thread: libc::pid_t,
}

/// Starts the upstream on a thread and runtime of its own, apart from the
/// callers', so that `yield_to_the_server` can leave it at the server's
/// priority: it stands in for remote APIs, and a reply it was too starved
/// to send on time would count against parlor's added latency.
fn start_upstream() -> Upstream {
    let (started, upstream) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the upstream's runtime");
            runtime.block_on(async move {
                let app = Router::new()
                    .route("/v1/audio/transcriptions", post(transcribe))
                    .route("/v1/chat/completions", post(chat))
                    .route("/v1/audio/speech", post(speech));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                // SAFETY: gettid takes no arguments and cannot fail.
                let thread = unsafe { libc::gettid() };
                started
                    .send(Upstream {
                        base_url: format!("http://{addr}/v1"),
                        thread,
                    })
                    .unwrap();
                // Streamed tokens leave as written, as from a real API.
                let listener = listener.tap_io(|tcp| {
                    // A connection reset before this is the caller's loss, not the upstream's.
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, app).await.unwrap();
            });
        })
        .expect("start the upstream's thread");
    upstream.recv().expect("the upstream started")
}

/// How late the upstream's delays ended, in ms: the timer's ms grain plus
/// any wait for its thread to get a core. Part of the added latency that is
/// the bench's, not parlor's; reported per step.
static UPSTREAM_LATENESS: std::sync::Mutex<Vec<f32>> = std::sync::Mutex::new(Vec::new());

/// The upstream's fixed delay, and what it overran by.
async fn upstream_delay(delay: Duration) {
    let start = Instant::now();
    tokio::time::sleep(delay).await;
    let late = start.elapsed().saturating_sub(delay).as_secs_f32() * 1e3;
    UPSTREAM_LATENESS.lock().unwrap().push(late);
}

/// The body (a multipart WAV) is read and ignored: the transcript is fixed.
async fn transcribe(_body: Bytes) -> axum::Json<serde_json::Value> {
    upstream_delay(STT_DELAY).await;
    axum::Json(json!({ "text": TRANSCRIPT }))
}

/// A streamed chat completion (the planner always asks `stream: true`): one
/// content chunk after the first-token delay, then a finish chunk and
/// `[DONE]`, in the server-sent-event shape async-openai parses.
async fn chat(_body: Bytes) -> Response {
    upstream_delay(LLM_FIRST_TOKEN_DELAY).await;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
        })
    };
    let body = format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(json!({ "role": "assistant", "content": REPLY }), None),
        chunk(json!({}), Some("stop")),
    );
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}

/// Raw 24 kHz PCM (the tts backend asks `response_format: "pcm"`), quiet.
async fn speech(_body: Bytes) -> Response {
    upstream_delay(TTS_FIRST_AUDIO_DELAY).await;
    Response::builder()
        .header(CONTENT_TYPE, "audio/pcm")
        .body(Body::from(vec![0u8; REPLY_PCM_BYTES]))
        .unwrap()
}

/// The pipeline under test: earshot, then the three openai backends at the
/// upstream, no MCP servers.
fn write_spec(base_url: &str) -> std::path::PathBuf {
    let spec = format!(
        r#"name = "concurrent-calls-bench"

[[stage]]
kind = "vad"
backend = "earshot"
end_of_turn_ms = 200
# Transcribing on the pause would hide the STT's 50 ms inside the end of
# turn; off, so voice to voice - 200 ms is parlor's own cost.
early_stt_ms = 0

[[stage]]
kind = "stt"
backend = "openai"
model = "whisper-1"
base_url = "{base_url}"

[[stage]]
kind = "planner"
backend = "openai"
model = "bench"
base_url = "{base_url}"
# A guess on the pause would start the LLM before the end of the turn and
# hide its 100 ms: voice to voice - 200 ms would then not be parlor's cost.
speculate = false

[[stage]]
kind = "tts"
backend = "openai"
base_url = "{base_url}"
sample_rate = 24000
"#
    );
    let path = std::env::temp_dir().join(format!("parlor-concurrent-{}.toml", std::process::id()));
    std::fs::write(&path, spec).unwrap();
    path
}

// ------------------------------------------------------------------ server

/// User plus system CPU time of a process so far, in seconds (fields 14
/// and 15 of /proc/<pid>/stat, in clock ticks of 1/100 s on Linux). `pid`
/// may be `self`: the callers and the upstream in this process.
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Time the threads of `pid` spent runnable but waiting for a core, and
/// how many times they were put on one, summed over its threads (from
/// `/proc/<pid>/task/*/schedstat`; a thread that ended is not counted).
/// Tells a tail made by the machine (threads waiting for a CPU) from one
/// made by parlor (tasks waiting in its own queues).
fn run_queue(pid: &str) -> RunQueue {
    let mut total = RunQueue::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return total;
    };
    for task in tasks.flatten() {
        let thread = thread_run_queue(&task.path());
        total.waited_ns += thread.waited_ns;
        total.slices += thread.slices;
    }
    total
}

/// One thread's [`run_queue`] figures, from its `/proc/.../task/<tid>` dir.
fn thread_run_queue(task: &std::path::Path) -> RunQueue {
    let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
    let fields: Vec<u64> = stat
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    match fields[..] {
        [_, waited_ns, slices] => RunQueue { waited_ns, slices },
        _ => RunQueue::default(),
    }
}

#[derive(Default, Clone, Copy)]
struct RunQueue {
    waited_ns: u64,
    slices: u64,
}

impl RunQueue {
    /// Mean wait for a core per time a thread was put on one, in µs.
    fn mean_wait_us_since(self, before: RunQueue) -> f64 {
        let waited = self.waited_ns.saturating_sub(before.waited_ns) as f64 / 1e3;
        waited / self.slices.saturating_sub(before.slices).max(1) as f64
    }

    /// Total wait for a core over `seconds`, as a share of one thread's time.
    fn wait_pct_since(self, before: RunQueue, seconds: f64) -> f64 {
        self.waited_ns.saturating_sub(before.waited_ns) as f64 / 1e9 / seconds * 100.0
    }
}

// ------------------------------------------------------------------ caller

/// The question as 20 ms binary frames, encoded once and shared by every
/// call (`Bytes` clones are reference counts), plus a second of the line's
/// hiss for the silence after it, cycled.
///
/// The whole line carries a hiss at `PARLOR_BENCH_LINE_DBFS` (RMS, default
/// -70: a quiet room on a headset), as a real line does: digital silence
/// would flatter the VAD's quiet floor (`quiet_dbfs`, default -60), and a
/// louder setting (-50) shows the cost of a noisy line, where the detector
/// runs on every frame.
struct Frames {
    question: Vec<Bytes>,
    silence: Vec<Bytes>,
}

impl Frames {
    fn new(question: &AudioChunk) -> Self {
        let dbfs = std::env::var("PARLOR_BENCH_LINE_DBFS")
            .ok()
            .and_then(|v| v.parse::<f32>().ok())
            .unwrap_or(-70.0);
        let mut hiss = Hiss::new(10f32.powf(dbfs / 20.0));
        let mut encode = |samples: &[f32]| {
            let mut frame: Vec<f32> = samples.iter().map(|s| s + hiss.next()).collect();
            frame.resize_with(FRAME_SAMPLES, || hiss.next());
            Bytes::from(pcm16_le_bytes(&frame))
        };
        let question = question
            .samples
            .chunks(FRAME_SAMPLES)
            .map(&mut encode)
            .collect();
        let silence = (0..50).map(|_| encode(&[])).collect();
        Self { question, silence }
    }

    /// Over how long call starts are spread: one turn (the question, about
    /// a second to answer, the reply's half second), unless
    /// `PARLOR_BENCH_STAGGER_MS` says otherwise.
    fn stagger(&self) -> Duration {
        let turn = Duration::from_millis(20 * self.question.len() as u64 + 1_500);
        std::env::var("PARLOR_BENCH_STAGGER_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(turn, Duration::from_millis)
    }

    /// The `n`th frame of a turn: the question, then the hiss.
    fn get(&self, n: usize) -> Bytes {
        match self.question.get(n) {
            Some(frame) => frame.clone(),
            None => self.silence[(n - self.question.len()) % self.silence.len()].clone(),
        }
    }
}

/// Uniform white noise of a given RMS, from a fixed seed (xorshift), so
/// every run sends the same line.
struct Hiss {
    state: u32,
    /// Uniform on [-a, a] has RMS a/√3.
    amplitude: f32,
}

impl Hiss {
    fn new(rms: f32) -> Self {
        Self {
            state: 0x9e37_79b9,
            amplitude: rms * 3f32.sqrt(),
        }
    }

    fn next(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        (self.state as f32 / u32::MAX as f32 * 2.0 - 1.0) * self.amplitude
    }
}

/// What one call saw.
#[derive(Default)]
struct CallResult {
    added_ms: Vec<f64>,
    /// Per stage of `STAGE_UPSTREAM`, the added latency at its first output.
    stage_added_ms: [Vec<f64>; STAGES],
    errors: Vec<String>,
    /// How late each frame went out after its 20 ms tick was due.
    lateness_ms: Vec<f32>,
}

async fn open_call(url: &str) -> Result<(CallerTx, CallerRx), String> {
    let (tx, mut rx) = client::connect(url).await.map_err(|e| e.to_string())?;
    match rx.next().await {
        Ok(Some(Incoming::Event(ServerEvent::CallStarted { .. }))) => Ok((tx, rx)),
        other => Err(format!("no call.started: {other:?}")),
    }
}

/// One caller: waits `delay` (the stagger), then `TURNS_PER_CALL` times
/// sends the question and silence, in real time, until `turn.done`.
async fn run_call(url: String, frames: std::sync::Arc<Frames>, delay: Duration) -> CallResult {
    let mut result = CallResult::default();
    tokio::time::sleep(delay).await;
    let (mut tx, mut rx) = match open_call(&url).await {
        Ok(call) => call,
        Err(e) => {
            result.errors.push(e);
            return result;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    // Delay, not Burst: a late caller does not catch up with a flood.
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for turn in 0..TURNS_PER_CALL {
        let counted = COUNTED_TURNS.contains(&turn);
        if let Err(e) = one_turn(&mut tx, &mut rx, &frames, &mut tick, counted, &mut result).await {
            result.errors.push(e);
            break;
        }
    }
    let _ = tx.end().await;
    result
}

/// Streams the question then silence, reading events as they come, until
/// the turn's `turn.done`. A turn not `counted` adds only its errors.
async fn one_turn(
    tx: &mut CallerTx,
    rx: &mut CallerRx,
    frames: &Frames,
    tick: &mut tokio::time::Interval,
    counted: bool,
    result: &mut CallResult,
) -> Result<(), String> {
    let started = Instant::now();
    let mut next = 0;
    loop {
        tokio::select! {
            due = tick.tick() => {
                result.lateness_ms.push(due.elapsed().as_secs_f32() * 1e3);
                let frame = frames.get(next);
                next += 1;
                tx.raw(Message::Binary(frame)).await.map_err(|e| e.to_string())?;
                if started.elapsed() > TURN_TIMEOUT {
                    return Err("turn timed out".into());
                }
            }
            incoming = rx.next() => match incoming {
                Ok(Some(Incoming::Event(ServerEvent::TurnDone { voice_to_voice_ms, stages, .. }))) => {
                    match voice_to_voice_ms {
                        Some(_) if !counted => {}
                        Some(ms) => {
                            record_stages(&stages, &mut result.stage_added_ms);
                            result.added_ms.push(ms - UPSTREAM_MS);
                        }
                        None => result.errors.push("turn.done without audio".into()),
                    }
                    return Ok(());
                }
                Ok(Some(Incoming::Event(ServerEvent::TurnError { stage, message, .. }))) => {
                    result.errors.push(format!("turn.error {stage}: {message}"));
                }
                Ok(Some(Incoming::Event(ServerEvent::CallEnded { reason }))) => {
                    return Err(format!("call ended: {reason}"));
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("socket closed".into()),
                Err(e) => return Err(e.to_string()),
            },
        }
    }
}

/// Adds each API stage's added latency at its first output, from a
/// `turn.done`'s `stages` (a list of `{stage, first_output_after_speech_end}`).
fn record_stages(stages: &serde_json::Value, into: &mut [Vec<f64>; STAGES]) {
    let Some(stages) = stages.as_array() else {
        return;
    };
    for ((name, upstream_ms), added) in STAGE_UPSTREAM.iter().zip(into.iter_mut()) {
        let first_output = stages
            .iter()
            .find(|s| s["stage"] == *name)
            .and_then(|s| s["first_output_after_speech_end"].as_f64());
        if let Some(ms) = first_output {
            added.push(ms - upstream_ms.as_secs_f64() * 1e3);
        }
    }
}

// ------------------------------------------------------------------- steps

/// One ramp step's figures.
struct Step {
    calls: usize,
    turns: usize,
    errors: usize,
    first_error: Option<String>,
    p50_ms: f64,
    p99_ms: f64,
    /// p99 added latency at each API stage's first output.
    stage_p99_ms: [f64; STAGES],
    /// p50 added latency at each API stage's first output.
    stage_p50_ms: [f64; STAGES],
    lateness_p99_ms: f64,
    rss_kib: u64,
    /// Server RSS growth over the step's start, per call.
    rss_per_call_kib: f64,
    cpu_pct: f64,
    /// The bench process's own CPU (callers plus upstream), same scale.
    bench_cpu_pct: f64,
    /// The server's threads: mean wait for a core each time one ran (µs),
    /// and their summed wait as a share of one thread's time.
    server_wait_us: f64,
    server_wait_pct: f64,
    /// The same for the upstream's one thread.
    upstream_wait_us: f64,
    /// p99 of how late the upstream's fixed delays ended (ms).
    upstream_late_p99_ms: f64,
}

async fn ramp_step(
    served: &Served,
    upstream: &std::path::Path,
    frames: &std::sync::Arc<Frames>,
    calls: usize,
) -> Step {
    let rss_before = served.rss_kib();
    let cpu_before = cpu_s(&served.pid().to_string());
    let bench_cpu_before = cpu_s("self");
    let queue_before = run_queue(&served.pid().to_string());
    let upstream_before = thread_run_queue(upstream);
    UPSTREAM_LATENESS.lock().unwrap().clear();
    let wall = Instant::now();
    let mut tasks = Vec::with_capacity(calls);
    let stagger = frames.stagger();
    for i in 0..calls {
        // Starts spread over a turn so turns do not align.
        let delay = stagger.mul_f64(i as f64 / calls as f64);
        tasks.push(tokio::spawn(run_call(served.url(), frames.clone(), delay)));
    }
    // Memory while all calls are up: sampled once the last has started.
    let rss_sampler = async {
        tokio::time::sleep(stagger + Duration::from_secs(1)).await;
        served.rss_kib()
    };
    let (results, rss_kib) = tokio::join!(futures::future::join_all(tasks), rss_sampler);
    let seconds = wall.elapsed().as_secs_f64();
    let cpu_pct = (cpu_s(&served.pid().to_string()) - cpu_before) / seconds * 100.0;
    let bench_cpu_pct = (cpu_s("self") - bench_cpu_before) / seconds * 100.0;
    let queue = run_queue(&served.pid().to_string());
    let mut added = Vec::new();
    let mut lateness = Vec::new();
    let mut errors = Vec::new();
    let mut stage_added: [Vec<f64>; STAGES] = Default::default();
    for r in results {
        let r = r.expect("caller task");
        added.extend(r.added_ms);
        for (all, call) in stage_added.iter_mut().zip(r.stage_added_ms) {
            all.extend(call);
        }
        lateness.extend(r.lateness_ms.into_iter().map(f64::from));
        errors.extend(r.errors);
    }
    added.sort_by(f64::total_cmp);
    lateness.sort_by(f64::total_cmp);
    let mut upstream_late: Vec<f64> = std::mem::take(&mut *UPSTREAM_LATENESS.lock().unwrap())
        .into_iter()
        .map(f64::from)
        .collect();
    upstream_late.sort_by(f64::total_cmp);
    for a in &mut stage_added {
        a.sort_by(f64::total_cmp);
    }
    let stage_p99_ms = stage_added.each_ref().map(|a| percentile(a, 99.0));
    let stage_p50_ms = stage_added.each_ref().map(|a| percentile(a, 50.0));
    Step {
        calls,
        turns: added.len(),
        errors: errors.len(),
        first_error: errors.into_iter().next(),
        p50_ms: percentile(&added, 50.0),
        p99_ms: percentile(&added, 99.0),
        stage_p99_ms,
        stage_p50_ms,
        lateness_p99_ms: percentile(&lateness, 99.0),
        rss_kib,
        rss_per_call_kib: rss_kib.saturating_sub(rss_before) as f64 / calls as f64,
        cpu_pct,
        bench_cpu_pct,
        server_wait_us: queue.mean_wait_us_since(queue_before),
        server_wait_pct: queue.wait_pct_since(queue_before, seconds),
        upstream_wait_us: thread_run_queue(upstream).mean_wait_us_since(upstream_before),
        upstream_late_p99_ms: percentile(&upstream_late, 99.0),
    }
}

/// The callers' priority against the server's (`PARLOR_BENCH_CALLERS`).
#[derive(Clone, Copy, Debug)]
enum CallerPriority {
    /// The server's: they compete for the cores on equal terms.
    Same,
    /// A nice value above the server's 0.
    Nice(i32),
    /// `SCHED_IDLE`: a core only when no thread at normal priority wants it.
    Idle,
}

impl CallerPriority {
    fn from_env() -> Self {
        let value = std::env::var("PARLOR_BENCH_CALLERS").unwrap_or_default();
        match value.as_str() {
            "" | "same" => Self::Same,
            "idle" => Self::Idle,
            other => match other.strip_prefix("nice:").and_then(|n| n.parse().ok()) {
                Some(nice) => Self::Nice(nice),
                None => panic!("PARLOR_BENCH_CALLERS is same, idle or nice:N, not {other:?}"),
            },
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Same => "at the server's priority".into(),
            Self::Nice(n) => format!("at nice {n}"),
            Self::Idle => "at SCHED_IDLE".into(),
        }
    }
}

/// Lower the callers' priority below the server's, which keeps nice 0:
/// every thread of this process but the upstream's (Linux keeps a
/// priority per thread, and threads started later inherit their
/// creator's). Callers on the far side of a network take none of the
/// server's CPU; on one machine, with the same priority, they take what the
/// server would use at the knee. Their own lateness is reported per step,
/// so what this costs them stays in view.
fn yield_to_the_server(priority: CallerPriority, upstream: libc::pid_t) {
    let tasks = std::fs::read_dir("/proc/self/task").expect("list this process's threads");
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if tid == upstream {
            continue;
        }
        let result = match priority {
            CallerPriority::Same => return,
            // SAFETY: setpriority reads only its arguments.
            CallerPriority::Nice(nice) => unsafe {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
            },
            CallerPriority::Idle => {
                let param = libc::sched_param { sched_priority: 0 };
                // SAFETY: param outlives the call, which only reads it.
                unsafe { libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param) }
            }
        };
        if result != 0 {
            let error = std::io::Error::last_os_error();
            // A blocking-pool thread may have idled out since the listing.
            if error.raw_os_error() != Some(libc::ESRCH) {
                panic!("{priority:?} for thread {tid}: {error}");
            }
        }
    }
    println!(
        "callers {}, the server and the upstream at nice 0",
        priority.describe()
    );
}

/// RSS before and after `n` quiet calls; KiB per call.
async fn idle_memory(served: &Served, n: usize) -> (u64, u64, f64) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = served.rss_kib();
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        calls.push(open_call(&served.url()).await.expect("open an idle call"));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = served.rss_kib();
    drop(calls);
    tokio::time::sleep(Duration::from_secs(2)).await;
    (
        before,
        after,
        after.saturating_sub(before) as f64 / n as f64,
    )
}

fn ramp_sizes() -> Vec<usize> {
    std::env::var("PARLOR_BENCH_CALLS")
        .unwrap_or_else(|_| "10,50,100,250,500,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

fn print_table(steps: &[Step]) {
    println!(
        "\n| calls | turns | errors | added p50 (ms) | added p99 (ms) | caller frame lateness p99 (ms) | server RSS (MiB) | RSS growth per call (KiB) | server CPU (% of one core) | callers + upstream CPU (%) | server threads' wait for a core (µs per run, % of one thread) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for s in steps {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}, {:.1} % |",
            s.calls,
            s.turns,
            s.errors,
            s.p50_ms,
            s.p99_ms,
            s.lateness_p99_ms,
            s.rss_kib as f64 / 1024.0,
            s.rss_per_call_kib,
            s.cpu_pct,
            s.bench_cpu_pct,
            s.server_wait_us,
            s.server_wait_pct
        );
    }
}

fn write_json(
    idle: (usize, u64, u64, f64),
    steps: &[Step],
    best: Option<usize>,
    callers: CallerPriority,
) {
    let steps: Vec<_> = steps
        .iter()
        .map(|s| {
            json!({
                "calls": s.calls, "turns": s.turns, "errors": s.errors,
                "first_error": s.first_error,
                "added_p50_ms": s.p50_ms, "added_p99_ms": s.p99_ms,
                "added_p99_ms_at_first_output": STAGE_UPSTREAM
                    .iter()
                    .zip(s.stage_p99_ms)
                    .map(|((stage, _), ms)| (stage.to_string(), json!(ms)))
                    .collect::<serde_json::Map<_, _>>(),
                "added_p50_ms_at_first_output": STAGE_UPSTREAM
                    .iter()
                    .zip(s.stage_p50_ms)
                    .map(|((stage, _), ms)| (stage.to_string(), json!(ms)))
                    .collect::<serde_json::Map<_, _>>(),
                "caller_lateness_p99_ms": s.lateness_p99_ms,
                "server_rss_kib": s.rss_kib, "rss_per_call_kib": s.rss_per_call_kib, "server_cpu_pct": s.cpu_pct, "bench_cpu_pct": s.bench_cpu_pct,
                "server_wait_for_core_us_per_run": s.server_wait_us, "server_wait_for_core_pct": s.server_wait_pct,
                "upstream_wait_for_core_us_per_run": s.upstream_wait_us,
                "upstream_delay_late_p99_ms": s.upstream_late_p99_ms,
            })
        })
        .collect();
    let report = json!({
        "upstream_ms": { "stt": STT_DELAY.as_millis() as u64, "llm_first_token": LLM_FIRST_TOKEN_DELAY.as_millis() as u64, "tts_first_audio": TTS_FIRST_AUDIO_DELAY.as_millis() as u64 },
        "idle": { "calls": idle.0, "rss_before_kib": idle.1, "rss_after_kib": idle.2, "kib_per_call": idle.3 },
        "ramp": steps,
        "largest_calls_under_budget": best,
        "budget_ms": BUDGET_MS,
        "callers": callers.describe(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("concurrent_calls.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", path.display());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let idle_calls = env_usize("PARLOR_BENCH_IDLE_CALLS", 1000);
    let sizes = ramp_sizes();
    let most = sizes.iter().copied().max().unwrap_or(0).max(idle_calls);
    let upstream = start_upstream();
    let spec = write_spec(&upstream.base_url);
    let mut served = Served::start(Some(&spec), most + 16);
    served.ready().await;
    let callers = CallerPriority::from_env();
    yield_to_the_server(callers, upstream.thread);
    println!(
        "upstream: STT {STT_DELAY:?}, LLM first token {LLM_FIRST_TOKEN_DELAY:?}, TTS first audio {TTS_FIRST_AUDIO_DELAY:?}; \
         added latency = voice to voice - {UPSTREAM_MS} ms. Callers and server share the same 2 cores \
         (callers {}).",
        callers.describe()
    );

    let (before, after, per_call) = idle_memory(&served, idle_calls).await;
    println!(
        "idle calls (earshot VAD): {idle_calls}, server RSS {before} KiB -> {after} KiB: {per_call:.1} KiB per idle call"
    );

    let frames = std::sync::Arc::new(Frames::new(&espeak(QUESTION).await));
    let upstream_task = std::path::PathBuf::from(format!("/proc/self/task/{}", upstream.thread));
    let mut steps = Vec::new();
    let mut over = 0;
    for calls in sizes {
        let step = ramp_step(&served, &upstream_task, &frames, calls).await;
        println!(
            "{calls} calls: {} turns, {} errors{}, added p50 {:.1} ms p99 {:.1} ms \
             (p50/p99 at the first output of {}), server CPU {:.0}%, callers + upstream CPU {:.0}%, \
             server threads waited {:.0} µs for a core per run ({:.1}% of one thread), \
             the upstream {:.0} µs (its delays ended {:.1} ms late at p99)",
            step.turns,
            step.errors,
            step.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})")),
            step.p50_ms,
            step.p99_ms,
            STAGE_UPSTREAM
                .iter()
                .zip(step.stage_p50_ms.iter().zip(step.stage_p99_ms))
                .map(|((stage, _), (p50, p99))| format!("{stage} {p50:.1}/{p99:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            step.cpu_pct,
            step.bench_cpu_pct,
            step.server_wait_us,
            step.server_wait_pct,
            step.upstream_wait_us,
            step.upstream_late_p99_ms
        );
        let errors = step.errors > 0;
        // NaN (no turn answered) counts as over budget.
        let within = step.p99_ms <= BUDGET_MS;
        over += usize::from(!within);
        steps.push(step);
        if errors || over >= 2 {
            println!(
                "stopping the ramp ({})",
                if errors {
                    "errors"
                } else {
                    "two steps over budget"
                }
            );
            break;
        }
        // Let the previous step's calls close before the next opens.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let best = steps
        .iter()
        .filter(|s| s.errors == 0 && s.p99_ms <= BUDGET_MS)
        .map(|s| s.calls)
        .max();
    print_table(&steps);
    match best {
        Some(n) => {
            println!("largest N with p99 added latency <= {BUDGET_MS} ms and no errors: {n}")
        }
        None => println!("no step stayed within {BUDGET_MS} ms p99 without errors"),
    }
    write_json((idle_calls, before, after, per_call), &steps, best, callers);
    let _ = std::fs::remove_file(spec);
}
