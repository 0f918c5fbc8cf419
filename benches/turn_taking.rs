//! End of turn, early transcription and the planner's guess, A/B (issue 6).
//!
//! The same spec is served several times at once (each a `parlor serve`
//! child), each copy with other turn-taking settings, and the same spoken
//! questions go to each in turn as live calls, rotating which copy goes
//! first, so every variant meets the same machine load. Per variant:
//!
//! - **felt**: from the end of the caller's words (the last voiced sample
//!   sent) to the first reply audio received: what a caller waits, the
//!   end-of-turn silence included;
//! - **after the decision**: from the VAD's end-of-turn decision to the
//!   first reply audio sent (`voice_to_voice_ms`).
//!
//! A variant is `END/EARLY/GUESS[/FLOOR[/WINDOW]]`: the vad's
//! `end_of_turn_ms`, its `early_stt_ms` (0: transcribe only once the turn
//! is over), the planner's `speculate` (`on`/`off`) and, optionally, the
//! vad's `quiet_dbfs` (-100: the detector alone decides where speech ends)
//! and the stt's Whisper `audio_ctx` (`auto`: picked per utterance); the
//! spec's own value for what is left out or `-`. Each turn's transcript is
//! printed, so a faster variant that mishears shows.
//! `PARLOR_BENCH_VARIANTS` lists them, comma-separated (default below); `PARLOR_BENCH_PIPELINE` is the spec
//! (default `benches/pipelines/chat-fast.toml`, with small talk; set
//! `PARLOR_BENCH_QUESTIONS=shop` for a spec with the shop's tools);
//! `PARLOR_BENCH_RUNS` rounds over the questions (default 2). Results also
//! go to `<target>/turn_taking.json`.
//!
//! Needs `bash models/setup.sh` and espeak-ng. Run: `cargo bench --bench
//! turn_taking`.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};

use parlor::live::client::{self, PlayOptions};
use parlor::live::ServerEvent;
use support::{env_usize, espeak, percentile, trailing_silence, Served};

const DEFAULT_VARIANTS: &str = "200/0/off,200/100/off,200/100/on,600/100/off,600/100/on";

const SHOP: &[&str] = &[
    "Where is my order 1042?",
    "Do you ship to Canada?",
    "How long do refunds take?",
];

/// One set of turn-taking settings.
#[derive(Clone, Debug)]
struct Variant {
    end_of_turn_ms: u32,
    early_stt_ms: u32,
    speculate: bool,
    quiet_dbfs: Option<i64>,
    /// `Some(None)`: the automatic window; `None`: the spec's own.
    audio_ctx: Option<Option<i64>>,
}

impl Variant {
    fn parse(text: &str) -> Self {
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (end, early, guess, floor, window) = match parts[..] {
            [end, early, guess] => (end, early, guess, None, None),
            [end, early, guess, floor] => (end, early, guess, Some(floor), None),
            [end, early, guess, floor, window] => (end, early, guess, Some(floor), Some(window)),
            _ => panic!(
                "a variant is END/EARLY/GUESS[/FLOOR[/WINDOW]], e.g. 600/100/on; got {text:?}"
            ),
        };
        let floor = floor.filter(|f| *f != "-");
        Self {
            end_of_turn_ms: end.parse().expect("END in milliseconds"),
            early_stt_ms: early.parse().expect("EARLY in milliseconds"),
            speculate: match guess {
                "on" => true,
                "off" => false,
                other => panic!("GUESS is on or off, got {other:?}"),
            },
            quiet_dbfs: floor.map(|f| f.parse().expect("FLOOR in dBFS, e.g. -60")),
            audio_ctx: match window {
                None | Some("-") => None,
                Some("auto") => Some(None),
                Some(n) => Some(Some(n.parse().expect("WINDOW is auto or frames, e.g. 768"))),
            },
        }
    }

    fn label(&self) -> String {
        format!(
            "end {} ms, early stt {}, guess {}",
            self.end_of_turn_ms,
            if self.early_stt_ms == 0 {
                "off".to_string()
            } else {
                format!("{} ms", self.early_stt_ms)
            },
            if self.speculate { "on" } else { "off" }
        ) + &self
            .quiet_dbfs
            .map_or(String::new(), |f| format!(", quiet floor {f} dBFS"))
            + &match self.audio_ctx {
                None => String::new(),
                Some(None) => ", window auto".to_string(),
                Some(Some(n)) => format!(", window {n}"),
            }
    }

    /// `base` with this variant's settings, written where `serve` can read
    /// it (its paths stay relative to the project root).
    fn write_spec(&self, base: &Path, dir: &Path, index: usize) -> PathBuf {
        let text = std::fs::read_to_string(base).expect("read the base spec");
        let mut spec: toml::Table = text.parse().expect("the base spec is TOML");
        let stages = spec
            .get_mut("stage")
            .and_then(|s| s.as_array_mut())
            .expect("[[stage]]s");
        for stage in stages.iter_mut().filter_map(|s| s.as_table_mut()) {
            match stage.get("kind").and_then(|k| k.as_str()) {
                Some("vad") => {
                    stage.insert(
                        "end_of_turn_ms".into(),
                        i64::from(self.end_of_turn_ms).into(),
                    );
                    stage.insert("early_stt_ms".into(), i64::from(self.early_stt_ms).into());
                    if let Some(floor) = self.quiet_dbfs {
                        stage.insert("quiet_dbfs".into(), (floor as f64).into());
                    }
                }
                Some("planner") => {
                    stage.insert("speculate".into(), self.speculate.into());
                }
                Some("stt") => match self.audio_ctx {
                    Some(Some(frames)) => {
                        stage.insert("audio_ctx".into(), frames.into());
                    }
                    Some(None) => {
                        stage.remove("audio_ctx");
                    }
                    None => {}
                },
                _ => {}
            }
        }
        let path = dir.join(format!("turn-taking-{index}.toml"));
        std::fs::write(&path, toml::to_string(&spec).unwrap()).unwrap();
        path
    }
}

/// What one variant's turns measured.
#[derive(Default)]
struct Measured {
    felt: Vec<f64>,
    after_decision: Vec<f64>,
    unanswered: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = std::env::var("PARLOR_BENCH_PIPELINE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("benches/pipelines/chat-fast.toml"));
    let variants: Vec<Variant> = std::env::var("PARLOR_BENCH_VARIANTS")
        .unwrap_or_else(|_| DEFAULT_VARIANTS.into())
        .split(',')
        .map(Variant::parse)
        .collect();
    let runs = env_usize("PARLOR_BENCH_RUNS", 2);
    let questions = match std::env::var("PARLOR_BENCH_QUESTIONS").as_deref() {
        Ok("shop") => SHOP,
        _ => support::CHAT,
    };
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    std::fs::create_dir_all(&target).unwrap();

    println!("serving {} variants of {}", variants.len(), base.display());
    let mut servers: Vec<Served> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| Served::start(Some(&v.write_spec(&base, &target, i)), 4))
        .collect();
    for served in &mut servers {
        served.ready().await;
    }
    let mut spoken = Vec::new();
    for q in questions {
        spoken.push((*q, espeak(q).await));
    }
    // One throwaway turn each: the first turn of a server reads its prompt cold.
    for served in &servers {
        let _ = ask(served, &spoken[0].1).await;
    }

    let mut measured: Vec<Measured> = variants.iter().map(|_| Measured::default()).collect();
    let mut round = 0;
    for run in 0..runs {
        for (question, audio) in &spoken {
            for k in 0..servers.len() {
                let i = (round + k) % servers.len();
                match ask(&servers[i], audio).await {
                    Some((felt, after, heard)) => {
                        println!(
                            "run {run}: {question:?} [{}]: felt {felt:.0} ms, {after:.0} ms after the decision; heard {heard:?}",
                            variants[i].label()
                        );
                        measured[i].felt.push(felt);
                        measured[i].after_decision.push(after);
                    }
                    None => {
                        println!(
                            "run {run}: {question:?} [{}]: no spoken reply",
                            variants[i].label()
                        );
                        measured[i].unanswered += 1;
                    }
                }
            }
            round += 1;
        }
    }

    let baseline = measured.first().map(|m| median(&m.felt));
    println!(
        "\n| variant | turns | felt p50 (ms) | felt p90 (ms) | after the decision p50 (ms) | felt p50 / first |"
    );
    println!("|---|---|---|---|---|---|");
    let mut json = Vec::new();
    for (v, m) in variants.iter().zip(&mut measured) {
        m.felt.sort_by(f64::total_cmp);
        m.after_decision.sort_by(f64::total_cmp);
        let felt50 = percentile(&m.felt, 50.0);
        let ratio = baseline.map_or(f64::NAN, |b| felt50 / b);
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
            v.label(),
            m.felt.len(),
            felt50,
            percentile(&m.felt, 90.0),
            percentile(&m.after_decision, 50.0),
            ratio
        );
        json.push(serde_json::json!({
            "end_of_turn_ms": v.end_of_turn_ms,
            "early_stt_ms": v.early_stt_ms,
            "speculate": v.speculate,
            "quiet_dbfs": v.quiet_dbfs,
            "audio_ctx": v.audio_ctx.map(|w| w.map_or("auto".to_string(), |n| n.to_string())),
            "turns": m.felt.len(),
            "unanswered": m.unanswered,
            "felt_ms": m.felt,
            "after_decision_ms": m.after_decision,
        }));
    }
    let out = target.join("turn_taking.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    println!("\nwritten to {}", out.display());
}

/// One question as a live call: (felt, after the decision) in ms and the
/// final transcript, or `None` when no reply was spoken.
async fn ask(served: &Served, audio: &parlor::frame::AudioChunk) -> Option<(f64, f64, String)> {
    let mut after = None;
    let mut transcripts = Vec::new();
    let recording = client::play_file(&served.url(), audio, &PlayOptions::default(), |e| match e {
        ServerEvent::TurnDone {
            voice_to_voice_ms, ..
        } => after = after.or(*voice_to_voice_ms),
        ServerEvent::Transcript {
            text,
            is_final: true,
            ..
        } => transcripts.push(text.clone()),
        _ => {}
    })
    .await
    .expect("the call runs");
    let sent = recording.file_sent_at?;
    let heard = recording.first_audio_at?;
    let felt = heard.saturating_duration_since(sent) + trailing_silence(audio);
    Some((felt.as_secs_f64() * 1e3, after?, transcripts.join(" / ")))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 50.0)
}
