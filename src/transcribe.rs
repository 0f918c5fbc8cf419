//! The `parlor transcribe` job: a file through the listening half of a
//! pipeline (vad → stt), one transcript per detected turn.

use std::time::Duration;

use serde::Serialize;

use crate::frame::{AudioChunk, Frame, TurnId, TurnMetrics, PIPELINE_SAMPLE_RATE};
use crate::runner::Pipeline;
use crate::spec::{PipelineSpec, StageSpec};
use crate::stages;

/// Audio is fed in 20 ms frames, the size a live call sends, so a file and a
/// call exercise the same VAD path.
const FRAME_SAMPLES: usize = PIPELINE_SAMPLE_RATE as usize / 50;

/// How long stages may take to finish after the last frame before they are
/// named and aborted.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

/// One detected turn.
#[derive(Debug, Clone, Serialize)]
pub struct TurnTranscript {
    pub turn: TurnId,
    /// Where the speech starts in the file, in seconds.
    pub start_s: f64,
    /// The final transcript; empty if the STT heard no words.
    pub text: String,
    pub metrics: TurnMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscribeError {
    #[error("pipeline \"{pipeline}\" has no {kind} stage; transcribe needs vad and stt")]
    MissingStage {
        pipeline: String,
        kind: &'static str,
    },
    #[error(transparent)]
    Build(#[from] stages::BuildError),
    #[error("the pipeline failed: {0}")]
    Pipeline(String),
}

/// Build the spec's vad and stt stages (loading their models).
pub async fn listening_pipeline(spec: &PipelineSpec) -> Result<Pipeline, TranscribeError> {
    for kind in ["vad", "stt"] {
        if !spec.stages.iter().any(|s| s.kind() == kind) {
            return Err(TranscribeError::MissingStage {
                pipeline: spec.name.clone(),
                kind,
            });
        }
    }
    let chosen: Vec<(usize, StageSpec)> = spec
        .stages
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s, StageSpec::Vad(_) | StageSpec::Stt(_)))
        .map(|(i, s)| (i + 1, s.clone()))
        .collect();
    let built = tokio::task::spawn_blocking(move || {
        chosen
            .iter()
            .map(|(index, stage)| stages::build(*index, stage))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .expect("stage build panicked")?;
    let mut pipeline = Pipeline::new(spec.channel_capacity).barge_in(false);
    for stage in built {
        pipeline = pipeline.stage(stage);
    }
    Ok(pipeline)
}

/// Run `audio` (16 kHz mono) through the pipeline; one entry per turn, in
/// order. Silence and noise give no turns, not an error.
pub async fn transcribe(
    pipeline: Pipeline,
    audio: AudioChunk,
) -> Result<Vec<TurnTranscript>, TranscribeError> {
    debug_assert_eq!(audio.sample_rate, PIPELINE_SAMPLE_RATE);
    let mut running = pipeline.start();
    let input = running.input_handle();
    running.close_input();
    // Feed from its own task: the output must be read while feeding, or a
    // full pipeline would stop the feeder forever.
    let feeder = tokio::spawn(async move {
        for chunk in audio.samples.chunks(FRAME_SAMPLES) {
            let frame = Frame::Audio(AudioChunk::new(audio.sample_rate, chunk.to_vec()));
            if input.send(frame).await.is_err() {
                break;
            }
        }
    });

    let mut starts: Vec<(TurnId, Duration)> = Vec::new();
    let mut texts: Vec<(TurnId, String)> = Vec::new();
    let mut turns = Vec::new();
    while let Some(frame) = running.output().recv().await {
        match frame {
            Frame::SpeechStarted { turn, at } => starts.push((turn, at)),
            Frame::Transcript {
                turn,
                text,
                is_final: true,
            } => texts.push((turn, text)),
            Frame::EndOfTurn(metrics) => {
                let turn = metrics.turn;
                turns.push(TurnTranscript {
                    turn,
                    start_s: take_turn(&mut starts, turn)
                        .unwrap_or_default()
                        .as_secs_f64(),
                    text: take_turn(&mut texts, turn).unwrap_or_default(),
                    metrics,
                });
            }
            _ => {}
        }
    }
    let _ = feeder.await;
    running
        .join(DRAIN_DEADLINE)
        .await
        .into_result()
        .map_err(|e| TranscribeError::Pipeline(e.to_string()))?;
    Ok(turns)
}

fn take_turn<T>(items: &mut Vec<(TurnId, T)>, turn: TurnId) -> Option<T> {
    let i = items.iter().position(|(t, _)| *t == turn)?;
    Some(items.remove(i).1)
}
