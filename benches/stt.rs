//! Speech-to-text speed, per clip:
//!
//! - `bare`: one `WhisperState::full` call from whisper-rs with the stage's
//!   settings — the floor — with whisper's full 30 s window (`full`,
//!   `audio_ctx = 1500`) and with the stage's default, automatic window
//!   (`default`, `whisper_local::auto_audio_ctx`: 1024 frames for turns
//!   under ~15 s);
//! - `stage`: the `whisper-local` stage with its default settings, driven
//!   through real channels and `StageIo` (spawn_blocking, the engine's
//!   mutex, frames) — the default bare call plus the stage's overhead;
//! - `faster-whisper`: the same tiny.en weights in their original
//!   CTranslate2 form, int8, through `benches/peers/faster_whisper_bench.py`
//!   in the venv models/setup.sh made — the peer.
//!
//! Criterion times bare and stage on two clips; then a side-by-side table
//! over the whole corpus (median of a few runs each) gives the ratios.
//! Needs `bash models/setup.sh`. Run: `cargo bench --bench stt`.
//! `PARLOR_BENCH_RUNS` (default 3) sets the table's runs per clip.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use parlor::frame::{AudioChunk, Frame, Utterance};
use parlor::stages::stt::whisper_local::{auto_audio_ctx, FULL_AUDIO_CTX};
use parlor::stages::stt::{WhisperEngine, WhisperLocal, WhisperSettings};
use parlor::stages::{Stage, StageContext, StageIo};
use parlor::turns::Turns;
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

/// Both sides get two threads: the size of the machines parlor runs on,
/// and what MODELS.md measured with.
const THREADS: usize = 2;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> PathBuf {
    let path = root().join("models/ggml-tiny.en.bin");
    assert!(
        path.is_file(),
        "{} missing: run `bash models/setup.sh`",
        path.display()
    );
    path
}

struct Clip {
    name: String,
    path: PathBuf,
    samples: Vec<f32>,
}

fn corpus() -> Vec<Clip> {
    let mut clips = Vec::new();
    for dir in ["librivox", "cards", "commands", "espeak"] {
        let dir = root().join("models/speech").join(dir);
        let mut wavs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}: run `bash models/setup.sh`", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wav"))
            .collect();
        wavs.sort();
        for path in wavs {
            let samples = hound::WavReader::open(&path)
                .unwrap()
                .samples::<i16>()
                .map(|s| f32::from(s.unwrap()) / 32_768.0)
                .collect();
            let stem = path.file_stem().unwrap().to_string_lossy();
            // "sense_and_sensibility_01_austen_64kb-0870" -> "0870"
            let short = stem.rsplit('-').next().unwrap_or(&stem).to_string();
            clips.push(Clip {
                name: format!("{}/{short}", dir.file_name().unwrap().to_string_lossy()),
                path,
                samples,
            });
        }
    }
    clips
}

/// whisper-rs on its own, with the parameters the stage uses.
struct Bare {
    state: WhisperState,
}

impl Bare {
    fn load() -> Self {
        whisper_rs::install_logging_hooks();
        let ctx = WhisperContext::new_with_params(model(), WhisperContextParameters::default())
            .expect("load model");
        Self {
            state: ctx.create_state().expect("state"),
        }
    }

    /// `audio_ctx`: the encoder window in 20 ms frames.
    fn transcribe(&mut self, samples: &[f32], audio_ctx: u32) -> String {
        let mut p = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        p.set_n_threads(THREADS as c_int);
        p.set_language(Some("en"));
        p.set_no_context(true);
        p.set_no_timestamps(true);
        p.set_single_segment(true);
        p.set_print_special(false);
        p.set_print_progress(false);
        p.set_print_realtime(false);
        p.set_print_timestamps(false);
        p.set_suppress_blank(true);
        p.set_suppress_nst(true);
        p.set_audio_ctx(audio_ctx as c_int);
        self.state.full(p, samples).expect("whisper full");
        self.state
            .as_iter()
            .map(|s| s.to_str_lossy().unwrap().into_owned())
            .collect::<String>()
            .trim()
            .to_string()
    }
}

/// The stage running on its own task, fed one turn at a time.
struct StageRig {
    input: mpsc::Sender<Frame>,
    output: mpsc::Receiver<Frame>,
    turns: Arc<Turns>,
    shutdown: CancellationToken,
}

impl StageRig {
    fn start(rt: &Runtime) -> Self {
        let settings = WhisperSettings {
            threads: THREADS,
            language: "en".into(),
            audio_ctx: None,
        };
        let stage = WhisperLocal::new(WhisperEngine::load(&model(), settings).expect("load model"));
        let (input, stage_in) = mpsc::channel(4);
        let (stage_out, output) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let turns = Arc::new(Turns::new(false, shutdown.clone()));
        let cx = StageContext {
            shutdown: shutdown.clone(),
            turns: turns.clone(),
        };
        let io = StageIo::new("stt", stage_in, stage_out);
        rt.spawn(Box::new(stage).run(io, cx));
        Self {
            input,
            output,
            turns,
            shutdown,
        }
    }

    /// One turn through the stage: utterance in, transcript out.
    async fn transcribe(&mut self, samples: &[f32]) -> String {
        let turn = self.turns.begin();
        let utterance = Utterance {
            turn,
            speech_end: Duration::from_secs_f64(samples.len() as f64 / 16_000.0),
            audio: Arc::new(AudioChunk::new(16_000, samples.to_vec())),
            start: Duration::ZERO,
            ended_at: Instant::now(),
        };
        self.input
            .send(Frame::SpeechEnded(utterance))
            .await
            .unwrap();
        loop {
            match self.output.recv().await {
                Some(Frame::Transcript { text, .. }) => return text,
                // The end of speech, passed on ahead of the words.
                Some(Frame::SpeechEnded(_)) => {}
                other => panic!("expected a transcript, got {:?}", other.map(|f| f.kind())),
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn criterion_benches(
    c: &mut Criterion,
    rt: &Runtime,
    bare: &mut Bare,
    rig: &mut StageRig,
    clips: &[Clip],
) {
    let mut group = c.benchmark_group("stt");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    // A short command and the longest sentence: whisper pads every clip to
    // its window (1024 frames by default for both), so length matters
    // little; two is enough here.
    for name in ["commands/goforward", "librivox/0870"] {
        let Some(clip) = clips.iter().find(|c| c.name == name) else {
            continue;
        };
        let ctx = auto_audio_ctx(clip.samples.len());
        group.bench_function(format!("bare/{name}"), |b| {
            b.iter(|| bare.transcribe(&clip.samples, ctx))
        });
        group.bench_function(format!("stage/{name}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        rig.transcribe(&clip.samples).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// faster-whisper's timings from the peer script, by clip path.
fn peer(clips: &[Clip], runs: usize) -> Result<serde_json::Value, String> {
    let cache = std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/parlor")))
        .ok_or("neither PARLOR_CACHE nor HOME is set")?;
    let python = cache.join("venv/bin/python");
    let ct2 = cache.join("extract/whisper-tiny.en-ct2");
    if !python.is_file() || !ct2.join("model.bin").is_file() {
        return Err(format!(
            "{} or {} missing: run `bash models/setup.sh`",
            python.display(),
            ct2.display()
        ));
    }
    let out = Command::new(&python)
        .arg(root().join("benches/peers/faster_whisper_bench.py"))
        .arg(&ct2)
        .arg(THREADS.to_string())
        .arg(runs.to_string())
        .args(clips.iter().map(|c| &c.path))
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "faster-whisper peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("peer output: {e}"))
}

fn side_by_side(rt: &Runtime, bare: &mut Bare, rig: &mut StageRig, clips: &[Clip]) {
    let runs: usize = std::env::var("PARLOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let peer = peer(clips, runs);
    if let Err(e) = &peer {
        eprintln!("faster-whisper column skipped: {e}");
    }
    println!(
        "\nper clip, median of {runs} runs, {THREADS} threads (ms); full = whisper's 30 s window, \
         default = the stage's automatic one; f-w/x > 1: parlor is faster\n\
         {:<18} {:>5}  {:>6} {:>7} {:>7} {:>8}  {:>7} {:>8} {:>9}  same text",
        "clip", "s", "full", "default", "stage", "overhead", "f-w int8", "f-w/full", "f-w/dflt"
    );
    let (mut sum_full, mut sum_default, mut sum_stage, mut sum_peer) = (0.0, 0.0, 0.0, 0.0);
    let (mut same, mut same_full) = (0, 0);
    for clip in clips {
        let ctx = auto_audio_ctx(clip.samples.len());
        let (mut full_ms, mut default_ms, mut stage_ms) = (Vec::new(), Vec::new(), Vec::new());
        let (mut text, mut text_full) = (String::new(), String::new());
        // Interleaved, so load on a shared machine hits all three alike.
        for _ in 0..runs {
            let t = Instant::now();
            text_full = bare.transcribe(&clip.samples, FULL_AUDIO_CTX);
            full_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            text = bare.transcribe(&clip.samples, ctx);
            default_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            rt.block_on(rig.transcribe(&clip.samples));
            stage_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (f, d, s) = (median(full_ms), median(default_ms), median(stage_ms));
        sum_full += f;
        sum_default += d;
        sum_stage += s;
        let peer_clip = peer.as_ref().ok().and_then(|p| {
            p["clips"]
                .as_array()?
                .iter()
                .find(|c| c["clip"].as_str() == Some(&*clip.path.to_string_lossy()))
                .cloned()
        });
        let (peer_ms, peer_text) = match &peer_clip {
            Some(c) => (
                c["median_ms"].as_f64().unwrap_or(f64::NAN),
                c["text"].as_str().unwrap_or(""),
            ),
            None => (f64::NAN, ""),
        };
        sum_peer += peer_ms;
        let same_text = peer_clip.is_some() && peer_text == text;
        same += usize::from(same_text);
        same_full += usize::from(peer_clip.is_some() && peer_text == text_full);
        println!(
            "{:<18} {:>5.1}  {f:>6.0} {d:>7.0} {s:>7.0} {:>+8.1}  {peer_ms:>7.0} {:>8.2} {:>9.2}  {}",
            clip.name,
            clip.samples.len() as f64 / 16_000.0,
            s - d,
            peer_ms / f,
            peer_ms / d,
            if same_text { "yes" } else { "no" },
        );
    }
    let n = clips.len() as f64;
    println!(
        "{:<18} {:>5}  {:>6.0} {:>7.0} {:>7.0} {:>+8.1}  {:>7.0} {:>8.2} {:>9.2}  {same}/{}",
        "mean",
        "",
        sum_full / n,
        sum_default / n,
        sum_stage / n,
        (sum_stage - sum_default) / n,
        sum_peer / n,
        sum_peer / sum_full,
        sum_peer / sum_default,
        clips.len()
    );
    println!(
        "same text as faster-whisper: default window {same}/{n}, full window {same_full}/{n}",
        n = clips.len()
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    // `cargo test --benches` runs each bench once as a smoke test: skip the
    // model work there.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let clips = corpus();
    let mut bare = Bare::load();
    let mut rig = StageRig::start(&rt);
    criterion_benches(&mut criterion, &rt, &mut bare, &mut rig, &clips);
    criterion.final_summary();
    side_by_side(&rt, &mut bare, &mut rig, &clips);
    rig.shutdown.cancel();
}
