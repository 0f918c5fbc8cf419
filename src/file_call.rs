//! An audio file played into a pipeline as if a caller said it, and what
//! each turn heard, did and said back: the shared core of `parlor
//! transcribe`, `parlor turn` and `POST /v1/turns`.
//!
//! Audio goes in as 20 ms frames, the size a live call sends, so a file and
//! a call exercise the same VAD path; it is not paced in real time (barge-in
//! is off, so a reply is never cut short by the rest of the file).

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::frame::{AudioChunk, Frame, TurnId, TurnMetrics};
use crate::planner::ToolRecord;
use crate::runner::Pipeline;

/// How long stages may take to finish after the last frame before they are
/// named and aborted (a turn with tool calls on a slow model takes a while).
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// One turn of the call.
#[derive(Debug, Clone, Serialize)]
pub struct TurnReport {
    pub turn: TurnId,
    /// Where the caller's speech starts in the file, in seconds.
    pub start_s: f64,
    /// What the caller said; empty if the STT heard no words.
    pub transcript: String,
    /// Tool calls in the order they finished.
    pub tools: Vec<ToolRecord>,
    /// The reply as the planner wrote it.
    pub reply: String,
    /// The reply as spoken, at the tts stage's rate; `None` without a tts
    /// stage.
    #[serde(skip)]
    pub audio: Option<AudioChunk>,
    /// What a stage could not do ("tts: could not speak ...").
    pub errors: Vec<String>,
    pub metrics: TurnMetrics,
}

impl TurnReport {
    fn new(metrics: TurnMetrics) -> Self {
        Self {
            turn: metrics.turn,
            start_s: 0.0,
            transcript: String::new(),
            tools: Vec::new(),
            reply: String::new(),
            audio: None,
            errors: Vec::new(),
            metrics,
        }
    }

    /// From the end of the caller's speech to the first reply audio out
    /// of the stage that speaks: the tts, or a realtime model.
    pub fn voice_to_voice(&self) -> Option<Duration> {
        ["tts", "realtime"]
            .into_iter()
            .find_map(|stage| self.metrics.stage(stage))?
            .first_output_after_speech_end
    }
}

/// Play `audio` (mono, at the pipeline's input rate: see
/// [`PipelineSpec::input_rate`](crate::spec::PipelineSpec::input_rate)) into
/// a started-fresh `pipeline`; one report
/// per detected turn, in order. Silence gives no turns, not an error.
///
/// # Errors
/// A stage that failed (named), or one that did not stop in time.
pub async fn play(pipeline: Pipeline, audio: AudioChunk) -> anyhow::Result<Vec<TurnReport>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let collect = async {
        let mut reports = Vec::new();
        while let Some(report) = rx.recv().await {
            reports.push(report);
        }
        reports
    };
    let (played, reports) = tokio::join!(play_each(pipeline, audio, tx), collect);
    played.map(|()| reports)
}

/// [`play`], handing each turn's report to `each` as soon as the turn is
/// over (a streamed transcription sends it on at once). If `each` is
/// closed (the client went away) the call stops early and its stages are
/// cancelled.
///
/// # Errors
/// As [`play`].
pub async fn play_each(
    pipeline: Pipeline,
    audio: AudioChunk,
    each: mpsc::UnboundedSender<TurnReport>,
) -> anyhow::Result<()> {
    let mut running = pipeline.barge_in(false).start();
    let input = running.input_handle();
    running.close_input();
    // Feed from its own task: the output must be read while feeding, or a
    // full pipeline would stop the feeder forever.
    let feeder = tokio::spawn(async move {
        // 20 ms frames, as a caller's device sends them.
        let frame_samples = (audio.sample_rate as usize / 50).max(1);
        for chunk in audio.samples.chunks(frame_samples) {
            let frame = Frame::Audio(AudioChunk::new(audio.sample_rate, chunk.to_vec()));
            if input.send(frame).await.is_err() {
                break;
            }
        }
    });

    let mut open = Reports::default();
    while let Some(frame) = running.output().recv().await {
        match frame {
            Frame::SpeechStarted { turn, at } => open.get(turn).start_s = at.as_secs_f64(),
            Frame::Transcript {
                turn,
                text,
                is_final: true,
            } => open.get(turn).transcript = text,
            Frame::ToolCall { turn, record } => open.get(turn).tools.push(*record),
            Frame::ReplyDelta { turn, text } => open.get(turn).reply.push_str(&text),
            Frame::ReplyAudio { turn, audio, .. } => {
                let report = open.get(turn);
                match &mut report.audio {
                    Some(all) => all.samples.extend_from_slice(&audio.samples),
                    None => report.audio = Some(audio),
                }
            }
            Frame::TurnError {
                turn,
                stage,
                message,
            } => open.get(turn).errors.push(format!("{stage}: {message}")),
            Frame::EndOfTurn(metrics) => {
                let mut report = open.take(metrics.turn);
                report.metrics = metrics;
                if each.send(report).is_err() {
                    // Nobody is listening: dropping `running` cancels it all.
                    feeder.abort();
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    let _ = feeder.await;
    running.join(DRAIN_DEADLINE).await.into_result()
}

/// Reports of the turns still going, filled in frame by frame.
#[derive(Default)]
pub(crate) struct Reports(Vec<TurnReport>);

impl Reports {
    pub(crate) fn get(&mut self, turn: TurnId) -> &mut TurnReport {
        match self.0.iter().position(|r| r.turn == turn) {
            Some(i) => &mut self.0[i],
            None => {
                self.0.push(TurnReport::new(TurnMetrics::new(
                    turn,
                    Duration::ZERO,
                    std::time::Instant::now(),
                )));
                self.0.last_mut().expect("just pushed")
            }
        }
    }

    pub(crate) fn take(&mut self, turn: TurnId) -> TurnReport {
        self.get(turn);
        let i = self
            .0
            .iter()
            .position(|r| r.turn == turn)
            .expect("just made");
        self.0.remove(i)
    }
}
