//! The spoken task dataset (`benches/tasks/tasks.json`): what each task
//! says, the audio that says it, how that audio was made, and what a good
//! answer does.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{ExpectedCall, Fact};

/// The dataset file inside a tasks directory.
pub const TASKS_FILE: &str = "tasks.json";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    #[allow(dead_code)] // for people reading the file
    about: Option<String>,
    tasks: Vec<Task>,
}

/// One caller turn.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Unique, used in reports.
    pub id: String,
    /// What is said: the reference transcript for WER.
    pub text: String,
    /// 16 kHz mono WAV, relative to the tasks directory.
    pub audio: PathBuf,
    /// How the audio was made (make_audio.rs reads this).
    pub speech: Speech,
    /// Noise mixed into the audio, if any.
    #[serde(default)]
    pub noise: Option<Noise>,
    /// Tool calls a good planner makes; empty for small talk.
    #[serde(default)]
    pub expect_tools: Vec<ExpectedCall>,
    /// Facts the spoken answer must contain, all of them.
    #[serde(default)]
    pub facts: Vec<Fact>,
}

/// Where a task's audio comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "engine", rename_all = "snake_case", deny_unknown_fields)]
pub enum Speech {
    /// parlor's Piper voice (en_US-joe-medium) at `speed`.
    Piper { speed: f32 },
    /// espeak-ng's `voice` at `speed` (1.0 = 175 words a minute).
    Espeak { voice: String, speed: f32 },
    /// A real recording, copied from `source` (relative to the project
    /// root; models/setup.sh fetches these).
    Recording { source: PathBuf },
}

impl Speech {
    /// A short label for reports: `piper@1.2`, `espeak en-gb@1.15`, `human`.
    pub fn label(&self) -> String {
        match self {
            Speech::Piper { speed } => format!("piper@{speed}"),
            Speech::Espeak { voice, speed } => format!("espeak {voice}@{speed}"),
            Speech::Recording { .. } => "human".into(),
        }
    }
}

/// White noise at a signal-to-noise ratio, from a fixed seed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noise {
    pub snr_db: f32,
    pub seed: u64,
}

/// Why a dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("{} is not a valid task file: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// Every problem found, one per line.
    #[error("{} has problems:\n{}", path.display(), problems.join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The tasks directory; task audio paths are relative to it.
    pub dir: PathBuf,
    pub tasks: Vec<Task>,
}

impl Dataset {
    /// Read `dir/tasks.json`, checking every task (unique non-empty ids,
    /// text, known servers) before failing. `check_audio` also requires
    /// each audio file to exist (off for make_audio, which writes them).
    ///
    /// # Errors
    /// [`TasksError`] naming the file and each problem (`Task "x": ...`).
    pub fn load(dir: &Path, check_audio: bool) -> Result<Self, TasksError> {
        let path = dir.join(TASKS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| TasksError::Read {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let file: TaskFile = serde_json::from_str(&text).map_err(|e| TasksError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut problems = Vec::new();
        let mut seen = BTreeSet::new();
        if file.tasks.is_empty() {
            problems.push("no tasks".to_string());
        }
        for task in &file.tasks {
            let name = format!("Task {:?}", task.id);
            if task.id.trim().is_empty() {
                problems.push("a task has an empty id".into());
            } else if !seen.insert(task.id.clone()) {
                problems.push(format!("{name}: the id is used twice"));
            }
            if task.text.trim().is_empty() {
                problems.push(format!("{name}: `text` is empty"));
            }
            for call in &task.expect_tools {
                if call.server.is_empty() || call.tool.is_empty() {
                    problems.push(format!("{name}: an expected call lacks a server or tool"));
                }
            }
            if task
                .facts
                .iter()
                .any(|f| f.iter().all(|s| s.trim().is_empty()))
            {
                problems.push(format!("{name}: a fact has no spelling"));
            }
            if check_audio && !dir.join(&task.audio).is_file() {
                problems.push(format!(
                    "{name}: audio {} is missing (run `cargo run --release --example make_audio`)",
                    dir.join(&task.audio).display()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(TasksError::Invalid { path, problems });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tasks: file.tasks,
        })
    }

    pub fn audio_path(&self, task: &Task) -> PathBuf {
        self.dir.join(&task.audio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TASKS_FILE),
            r#"{"tasks": [
                {"id": "a", "text": "hi", "audio": "a.wav", "speech": {"engine": "piper", "speed": 1.0}},
                {"id": "a", "text": " ", "audio": "b.wav", "speech": {"engine": "espeak", "voice": "en-us", "speed": 1.0},
                 "facts": [[""]]}
            ]}"#,
        )
        .unwrap();
        let err = Dataset::load(dir.path(), true).unwrap_err().to_string();
        for want in [
            "Task \"a\": audio",
            "Task \"a\": the id is used twice",
            "Task \"a\": `text` is empty",
            "Task \"a\": a fact has no spelling",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
    }

    #[test]
    fn an_unknown_engine_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(TASKS_FILE),
            r#"{"tasks": [{"id": "a", "text": "hi", "audio": "a.wav", "speech": {"engine": "sam"}}]}"#,
        )
        .unwrap();
        let err = Dataset::load(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("unknown variant `sam`"), "{err}");
    }

    /// The shipped dataset: at least 40 tasks, every audio file present,
    /// small talk and real recordings among them, and every expected call
    /// aimed at a tool parlor's example servers have.
    #[test]
    fn the_shipped_dataset_is_complete() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/tasks");
        let data = Dataset::load(&dir, true).unwrap();
        assert!(data.tasks.len() >= 40, "{}", data.tasks.len());
        let tools = [
            ("orders", "get_order"),
            ("orders", "find_orders"),
            ("orders", "get_customer"),
            ("orders", "cancel_order"),
            ("knowledge", "search_knowledge"),
        ];
        for task in &data.tasks {
            for call in &task.expect_tools {
                assert!(
                    tools.contains(&(call.server.as_str(), call.tool.as_str())),
                    "{}: {}.{}",
                    task.id,
                    call.server,
                    call.tool
                );
            }
            let wav = hound::WavReader::open(data.audio_path(task)).unwrap();
            let spec = wav.spec();
            assert_eq!(
                (spec.sample_rate, spec.channels),
                (16_000, 1),
                "{}",
                task.id
            );
            assert!(wav.duration() > 8_000, "{}: under half a second", task.id);
        }
        let small_talk = data
            .tasks
            .iter()
            .filter(|t| t.expect_tools.is_empty())
            .count();
        let human = data
            .tasks
            .iter()
            .filter(|t| matches!(t.speech, Speech::Recording { .. }))
            .count();
        let noisy = data.tasks.iter().filter(|t| t.noise.is_some()).count();
        assert!(
            small_talk >= 3 && human >= 3 && noisy >= 5,
            "{small_talk} {human} {noisy}"
        );
    }
}
