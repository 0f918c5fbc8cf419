//! `parlor bench --peers pipecat`: the same tasks through Pipecat, scored
//! like parlor's own pipelines, so the report has a Pipecat row measured
//! in the same run (issue 8's anchor comparison).
//!
//! `benches/peers/pipecat_tasks.py` (in the peers venv made by
//! `benches/peers/setup.sh`) builds Pipecat's usual cascade from the same
//! parts as the parlor pipeline it stands beside: Silero VAD with the same
//! end-of-turn silence, faster-whisper tiny.en, Pipecat's OpenAI LLM
//! service pointed at that pipeline's own model on parlor's
//! `/v1/chat/completions`, the pipeline's stdio MCP servers through
//! Pipecat's MCP client, and the same Piper voice. It plays each task in
//! real time and prints a JSON line per task; this module turns the lines
//! into [`TurnResult`]s and hears the reply audio back with the same
//! Whisper as every other row.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use indicatif::ProgressBar;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::metrics::MadeCall;
use super::run::{rusage, rusage_children, Hearer, Played, TurnResult};
use super::tasks::Dataset;
use super::{PipelineRun, RunOptions};
use crate::audio::{decode_file, DecodeLimits};
use crate::frame::Usage;
use crate::spec::{McpServerSpec, ModelBackend, PipelineSpec, StageSpec};

/// The peer script, from the project root.
pub const PIPECAT_SCRIPT: &str = "benches/peers/pipecat_tasks.py";
/// The row's name in the report.
pub const PIPECAT: &str = "pipecat";

/// How to run the Pipecat peer beside a parlor pipeline.
#[derive(Debug, Clone)]
pub struct PipecatPeer {
    python: PathBuf,
    /// `--mcp`: the pipeline's stdio MCP servers, commands resolved.
    mcp: Value,
    instructions: Option<PathBuf>,
    /// The VAD's end-of-turn silence, as Silero's `stop_secs`.
    stop_secs: f64,
}

impl PipecatPeer {
    /// The peer for `spec`, whose local planner model Pipecat will call.
    ///
    /// # Errors
    /// A message with the fix: no peers venv, no local planner, or an MCP
    /// server Pipecat cannot reach the way parlor does.
    pub fn for_spec(spec: &PipelineSpec) -> Result<Self, String> {
        let planner = spec.stages.iter().find_map(|s| match s {
            StageSpec::Planner(p) if p.backend == ModelBackend::Local => Some(p),
            _ => None,
        });
        let Some(planner) = planner else {
            return Err(format!(
                "--peers pipecat calls the model of the first pipeline's local planner through \
                 /v1/chat/completions; {} has none: put a pipeline with a local planner first",
                spec.source.display()
            ));
        };
        let python = peers_python();
        if !python.is_file() {
            return Err(format!(
                "--peers pipecat: no peer venv at {}; make it with `bash benches/peers/setup.sh`",
                python.display()
            ));
        }
        let mut mcp = serde_json::Map::new();
        for name in &planner.mcp {
            match spec.mcp.get(name) {
                Some(McpServerSpec::Stdio { command, args, env }) => {
                    let command = crate::mcp::transport::resolve_command(command);
                    let env = env
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), crate::spec::expand_env(v)?)))
                        .collect::<Result<std::collections::BTreeMap<_, _>, String>>()
                        .map_err(|why| format!("MCP server {name}: {why}"))?;
                    mcp.insert(
                        name.clone(),
                        json!({"command": command, "args": args, "env": env}),
                    );
                }
                _ => {
                    return Err(format!(
                        "--peers pipecat starts the planner's MCP servers itself, over stdio; \
                         {name} in {} is not a stdio server",
                        spec.source.display()
                    ))
                }
            }
        }
        let stop_ms = spec.stages.iter().find_map(|s| match s {
            StageSpec::Vad(v) => Some(v.end_of_turn_ms),
            _ => None,
        });
        Ok(Self {
            python,
            mcp: Value::Object(mcp),
            instructions: planner.instructions.clone(),
            stop_secs: f64::from(stop_ms.unwrap_or(400)) / 1000.0,
        })
    }

    /// Play the tasks through Pipecat, its LLM on `chat_url`
    /// (`http://host:port`), its reply audio kept in `out`.
    ///
    /// # Errors
    /// The script could not start, or ended with an error (its log's tail
    /// is in the message; the whole log is `out/pipecat.log`).
    pub async fn run(
        &self,
        chat_url: &str,
        data: &Dataset,
        options: RunOptions,
        out: &Path,
        hearer: &mut Hearer,
        progress: &ProgressBar,
    ) -> Result<PipelineRun, String> {
        let replies = out.join("pipecat-replies");
        std::fs::create_dir_all(&replies).map_err(|e| format!("{}: {e}", replies.display()))?;
        let log_path = out.join("pipecat.log");
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut command = tokio::process::Command::new(&self.python);
        command
            .arg(PIPECAT_SCRIPT)
            .args(["--url", chat_url])
            .arg("--tasks")
            .arg(&data.dir)
            .args(["--limit", &options.limit.to_string()])
            .args(["--repeat", &options.repeat.to_string()])
            .arg("--out")
            .arg(&replies)
            .args(["--mcp", &self.mcp.to_string()])
            .args(["--stop-secs", &self.stop_secs.to_string()])
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(instructions) = &self.instructions {
            command.arg("--instructions").arg(instructions);
        }
        let (cpu_before, _) = rusage();
        let (children_before, _) = rusage_children();
        let mut child = command
            .spawn()
            .map_err(|e| format!("{}: {e}", self.python.display()))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut played = Vec::new();
        let mut peak_rss_mib = 0.0;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(Summary { summary }) = serde_json::from_str::<Summary>(&line) {
                peak_rss_mib = summary.peak_rss_mib.unwrap_or(0.0);
                continue;
            }
            let Ok(turn) = serde_json::from_str::<PeerTurn>(&line) else {
                continue; // not a result line
            };
            let Some(task) = data.tasks.iter().find(|t| t.id == turn.task) else {
                continue;
            };
            progress.set_message(task.id.clone());
            if let Some(e) = &turn.error {
                progress.println(format!("pipecat {}: {e}", task.id));
            }
            progress.inc(1);
            played.push((task, turn.into_played(task)));
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        let (cpu_after, _) = rusage();
        let (children_after, _) = rusage_children();
        if !status.success() {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "the Pipecat peer failed ({status}); the end of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            ));
        }
        // Pipecat's process (and the MCP servers it started) plus parlor's
        // chat route serving its model: the whole cost of its turns.
        let cpu_s = (cpu_after - cpu_before) + (children_after - children_before);
        let turns = played.len().max(1) as f64;
        progress.set_message("hearing Pipecat's replies back");
        let results = played
            .into_iter()
            .map(|(task, mut p)| {
                p.result.cpu_s = cpu_s / turns;
                // Pipecat's own process: its VAD, Whisper and Piper (the
                // model it calls is in parlor's process, as for parlor's
                // rows, but not counted here).
                p.result.peak_rss_mib = peak_rss_mib;
                p.hear(task, hearer)
            })
            .collect();
        Ok(PipelineRun { results, cpu_s })
    }
}

/// `~/.cache/parlor/peers-venv/bin/python` (or under `PARLOR_CACHE`).
fn peers_python() -> PathBuf {
    let cache = std::env::var_os("PARLOR_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/parlor"),
        PathBuf::from,
    );
    cache.join("peers-venv/bin/python")
}

/// The script's last line.
#[derive(Debug, Deserialize)]
struct Summary {
    summary: PeerSummary,
}

#[derive(Debug, Deserialize)]
struct PeerSummary {
    peak_rss_mib: Option<f64>,
}

/// One line of `pipecat_tasks.py`'s output.
#[derive(Debug, Deserialize)]
struct PeerTurn {
    task: String,
    round: usize,
    transcript: String,
    calls: Vec<MadeCall>,
    reply: String,
    reply_wav: Option<PathBuf>,
    voice_to_voice_ms: Option<f64>,
    #[serde(default)]
    stages: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    usage: Usage,
    error: Option<String>,
}

impl PeerTurn {
    fn into_played(self, task: &super::tasks::Task) -> Played {
        let mut result = TurnResult::empty(task, self.round);
        result.transcript = self.transcript;
        result.calls = self.calls;
        result.reply = self.reply;
        result.voice_to_voice_ms = self.voice_to_voice_ms;
        result.stage_first_output_ms = self
            .stages
            .into_iter()
            .filter_map(|(stage, ms)| Some((stage, ms?)))
            .collect();
        result.usage = self.usage;
        result.error = self.error;
        result.score(task);
        let Some(wav) = self.reply_wav else {
            return Played::unheard(result);
        };
        match decode_file(&wav, &DecodeLimits::default()) {
            Ok(audio) => Played {
                result,
                reply: audio.samples,
                reply_rate: audio.sample_rate,
            },
            Err(e) => {
                result.error = Some(format!("{}: {e}", wav.display()));
                Played::unheard(result)
            }
        }
    }
}
