//! The `parlor transcribe` job: a file through the listening half of a
//! pipeline (vad → stt), one transcript per detected turn.

use serde::Serialize;

use crate::file_call;
use crate::frame::{AudioChunk, TurnId, TurnMetrics};
use crate::runner::Pipeline;
use crate::spec::{PipelineSpec, StageSpec};
use crate::stages;

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
    let mut pipeline = Pipeline::new(spec.channel_capacity);
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
    let reports = file_call::play(pipeline, audio)
        .await
        .map_err(|e| TranscribeError::Pipeline(e.to_string()))?;
    Ok(reports
        .into_iter()
        .map(|r| TurnTranscript {
            turn: r.turn,
            start_s: r.start_s,
            text: r.transcript,
            metrics: r.metrics,
        })
        .collect())
}
