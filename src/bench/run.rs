//! One task as a live call: its audio played in real time over the
//! WebSocket to a served pipeline, and what came back, scored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::barge::{self, BargeInSample};
use super::metrics::{facts_present, MadeCall, ToolScore, WordErrors};
use super::tasks::{Dataset, Task};
use crate::audio::{decode_file, resample, DecodeLimits};
use crate::frame::{AudioChunk, Usage};
use crate::live::client::{play_file, PlayOptions};
use crate::live::ServerEvent;
use crate::stages::stt::{WhisperEngine, WhisperSettings};

/// Everything measured on one task's call.
#[derive(Debug, Clone, Serialize)]
pub struct TurnResult {
    pub task: String,
    /// Which round (`--repeat`), from 0.
    pub round: usize,
    /// How the task's audio was made (`piper@1.2`, `human`...).
    pub speech: String,
    pub noise_snr_db: Option<f32>,
    /// What the pipeline heard (every turn of the call, joined).
    pub transcript: String,
    pub word_errors: WordErrors,
    pub calls: Vec<MadeCall>,
    pub tools: ToolScore,
    /// The reply text the planner wrote.
    pub reply: String,
    /// The reply audio as the local Whisper hears it back.
    pub heard: String,
    /// Each of the task's facts, found in `heard` or not.
    pub facts: Vec<bool>,
    /// A reply was spoken and every fact is in it.
    pub success: bool,
    /// End of the caller's speech (the VAD's decision) to the first reply
    /// audio sent, for the call's first spoken turn.
    pub voice_to_voice_ms: Option<f64>,
    /// Each stage's first output after the end of speech, same turn.
    pub stage_first_output_ms: BTreeMap<String, f64>,
    /// What the call's turns consumed (tokens, seconds of audio,
    /// characters), summed over its `turn.done` events.
    pub usage: Usage,
    /// CPU seconds (user + system) of the parlor process during the call:
    /// server and caller, not the MCP servers' child processes.
    pub cpu_s: f64,
    /// The parlor process's peak resident memory so far (getrusage).
    pub peak_rss_mib: f64,
    /// Why the call failed, if it did (the turn then scores nothing).
    pub error: Option<String>,
    /// With `--barge-in`: a second call of the task in which the caller
    /// talks over the reply (see [`barge`]).
    pub barge_in: Option<BargeInSample>,
}

impl TurnResult {
    /// A task's result before anything was measured: no transcript, no
    /// reply, every fact missing.
    pub fn empty(task: &Task, round: usize) -> Self {
        Self {
            task: task.id.clone(),
            round,
            speech: task.speech.label(),
            noise_snr_db: task.noise.map(|n| n.snr_db),
            transcript: String::new(),
            word_errors: WordErrors::default(),
            calls: Vec::new(),
            tools: ToolScore::default(),
            reply: String::new(),
            heard: String::new(),
            facts: vec![false; task.facts.len()],
            success: false,
            voice_to_voice_ms: None,
            stage_first_output_ms: BTreeMap::new(),
            usage: Usage::default(),
            cpu_s: 0.0,
            peak_rss_mib: 0.0,
            error: None,
            barge_in: None,
        }
    }

    /// Score what the pipeline heard and the tools it called against the
    /// task (the reply's facts are scored by [`Played::hear`]).
    pub fn score(&mut self, task: &Task) {
        self.word_errors = WordErrors::between(&task.text, &self.transcript);
        self.tools = ToolScore::score(&task.expect_tools, &self.calls);
    }
}

/// Hears reply audio back with Whisper tiny.en, as the voice tests do.
pub struct Hearer {
    engine: WhisperEngine,
}

impl Hearer {
    /// # Errors
    /// A missing or unloadable model (the message has the fix).
    pub fn load(model: &Path) -> Result<Self, String> {
        let settings = WhisperSettings {
            threads: 2,
            language: "en".into(),
            audio_ctx: None,
        };
        WhisperEngine::load(model, settings)
            .map(|engine| Self { engine })
            .map_err(|e| e.to_string())
    }

    /// What Whisper hears in `samples` at `rate`; empty for no audio.
    pub fn hear(&mut self, samples: &[f32], rate: u32) -> String {
        if samples.is_empty() {
            return String::new();
        }
        // Whisper's window is 30 s; a longer reply is heard in pieces.
        let Ok(at16) = resample(samples, rate, 16_000) else {
            return String::new();
        };
        at16.chunks(16_000 * 29)
            .filter_map(|piece| self.engine.transcribe(piece, None).ok())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// CPU seconds used by this process so far, and its peak RSS in MiB.
pub fn rusage() -> (f64, f64) {
    rusage_of(libc::RUSAGE_SELF)
}

/// The same for the child processes that have ended and been waited for:
/// their CPU summed, and the largest one's peak RSS, which Linux carries
/// over from the parent at fork and across exec (so a child of this big
/// process reports at least its size: read a child's memory elsewhere).
pub fn rusage_children() -> (f64, f64) {
    rusage_of(libc::RUSAGE_CHILDREN)
}

fn rusage_of(who: libc::c_int) -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0, // KiB on Linux
    )
}

/// A task's call, scored but for what the reply said.
#[derive(Debug)]
pub struct Played {
    pub result: TurnResult,
    /// The reply audio, at `reply_rate`.
    pub reply: Vec<f32>,
    pub reply_rate: u32,
}

impl Played {
    /// A call that produced no reply audio (it failed before any).
    pub fn unheard(result: TurnResult) -> Self {
        Self {
            result,
            reply: Vec::new(),
            reply_rate: 0,
        }
    }

    /// Hear the reply back with Whisper and score its facts. Done after
    /// every call of a run has ended, so Whisper's CPU neither counts
    /// against a call nor slows the calls still running.
    pub fn hear(self, task: &Task, hearer: &mut Hearer) -> TurnResult {
        let mut result = self.result;
        result.heard = hearer.hear(&self.reply, self.reply_rate.max(1));
        result.facts = facts_present(&result.heard, &task.facts);
        result.success = !result.heard.trim().is_empty() && result.facts.iter().all(|&f| f);
        result
    }
}

/// Play `task` into a call at `url` (`ws://…/v1/calls`) and score what
/// the call showed ([`Played::hear`] scores the reply); with `barge_in`,
/// call it again and talk over the reply (see [`barge`]).
pub async fn run_task(
    url: &str,
    data: &Dataset,
    task: &Task,
    round: usize,
    barge_in: bool,
) -> Played {
    let mut result = TurnResult::empty(task, round);
    let audio = match decode_file(data.audio_path(task), &DecodeLimits::default()) {
        Ok(audio) => audio,
        Err(e) => {
            result.error = Some(format!("{}: {e}", data.audio_path(task).display()));
            return Played::unheard(result);
        }
    };
    let (cpu_before, _) = rusage();
    let mut played = play_and_score(url, task, &audio, result, cpu_before).await;
    if barge_in {
        played.result.barge_in = Some(barge::measure(url, &audio).await);
    }
    played
}

/// The scored call of [`run_task`].
async fn play_and_score(
    url: &str,
    task: &Task,
    audio: &AudioChunk,
    mut result: TurnResult,
    cpu_before: f64,
) -> Played {
    let mut transcripts = Vec::new();
    let mut replies = Vec::new();
    let mut errors = Vec::new();
    let recording = play_file(url, audio, &PlayOptions::default(), |event| match event {
        ServerEvent::Transcript {
            text,
            is_final: true,
            ..
        } => transcripts.push(text.trim().to_string()),
        ServerEvent::ToolCall {
            server,
            tool,
            arguments,
            ..
        } => result.calls.push(MadeCall {
            server: server.clone(),
            tool: tool.clone(),
            arguments: arguments.clone(),
        }),
        ServerEvent::TurnError { stage, message, .. } => errors.push(format!("{stage}: {message}")),
        ServerEvent::TurnDone {
            reply,
            voice_to_voice_ms,
            stages,
            usage,
            ..
        } => {
            replies.push(reply.trim().to_string());
            result.usage += *usage;
            if result.voice_to_voice_ms.is_none() && voice_to_voice_ms.is_some() {
                result.voice_to_voice_ms = *voice_to_voice_ms;
                for s in stages.as_array().into_iter().flatten() {
                    if let (Some(name), Some(ms)) = (
                        s["stage"].as_str(),
                        s["first_output_after_speech_end"].as_f64(),
                    ) {
                        result.stage_first_output_ms.insert(name.to_string(), ms);
                    }
                }
            }
        }
        _ => {}
    })
    .await;
    let (cpu_after, peak) = rusage();
    result.cpu_s = cpu_after - cpu_before;
    result.peak_rss_mib = peak;
    let recording = match recording {
        Ok(r) => r,
        Err(e) => {
            result.error = Some(e.to_string());
            return Played::unheard(result);
        }
    };
    if !errors.is_empty() {
        result.error = Some(errors.join("; "));
    }
    result.transcript = transcripts.join(" ");
    result.score(task);
    result.reply = replies.join(" ");
    Played {
        result,
        reply: recording.audio,
        reply_rate: recording.output_rate,
    }
}
