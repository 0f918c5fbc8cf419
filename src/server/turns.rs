//! `POST /v1/turns`: a spoken question in, the whole chained turn out.
//!
//! The audio (a form's `file` field or the raw body, any format the decoder
//! knows) is played through a fresh call on the server's loaded pipeline:
//! VAD, STT, the planner with its MCP tools, TTS. The answer is JSON with
//! what was heard, each tool call, the reply, per-stage timings and the
//! reply audio as base64 WAV (`audio=none` leaves it out); with
//! `Accept: audio/wav` the answer is the reply audio itself.
//!
//! Each upload is a session of its own (`upload_N`), as a live call is:
//! its tool calls' audit records name it, and the answer carries it
//! (`session` in the JSON, the `parlor-session` header on the WAV).
//!
//! Capacity is bounded: beyond [`AppState::turn_slots`] turns at once a
//! request gets a 429 at once instead of waiting in an unbounded queue.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use super::upload::Upload;
use super::{start_call, ApiError, AppState, CallKind};
use crate::access::Caller;
use crate::audio::{wav_bytes, DecodeLimits};
use crate::file_call::{self, TurnReport};
use crate::frame::AudioChunk;
use crate::loaded::LoadedPipeline;

/// The header naming an upload's session on a WAV answer.
const SESSION_HEADER: &str = "parlor-session";

/// Longest upload a turn accepts: a question, not a podcast.
const MAX_TURN_AUDIO: std::time::Duration = std::time::Duration::from_secs(120);

pub async fn turns(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(no_pipeline());
    };
    let wants_wav = request
        .headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("audio/wav") || accept.contains("audio/x-wav"));
    let session = state.calls.next_upload_id();
    let caller = Caller {
        session: Some(session.clone()),
        ..super::auth::caller_of(request.extensions())
    };
    let upload = Upload::read(request).await?;
    check_pipeline(&pipeline, upload.option(&query, "pipeline"))?;
    let with_audio = match upload.option(&query, "audio").unwrap_or("base64") {
        "base64" => true,
        "none" => false,
        other => {
            return Err(ApiError::invalid(
                "audio",
                format!("audio must be `base64` or `none`, got `{other}`"),
            ))
        }
    };
    let audio = upload
        .decode(DecodeLimits {
            max_duration: MAX_TURN_AUDIO,
            rate: pipeline.input_rate(),
            ..DecodeLimits::default()
        })
        .await?;

    // Held until the turn is done (or the client goes away).
    let Ok(_slot) = state.turn_slots.clone().try_acquire_owned() else {
        return Ok(too_many_turns());
    };
    let started = Instant::now();
    let call = start_call(&pipeline, CallKind::Full, caller).await?;
    let reports = file_call::play(call, audio).await.map_err(|e| {
        tracing::error!(message = "Turn failed.", session = %session, error = %e);
        ApiError {
            message: format!("the pipeline failed: {e}"),
            ..ApiError::server_error()
        }
    })?;
    let total_ms = started.elapsed().as_secs_f64() * 1e3;
    for report in &reports {
        state.metrics.turn_finished("turns", report);
    }

    if wants_wav {
        return spoken_wav(&reports, &session);
    }
    let turns: Vec<Value> = reports.iter().map(|r| turn_json(r, with_audio)).collect();
    Ok(Json(json!({
        "object": "parlor.turns",
        "pipeline": pipeline.spec().name,
        "session": session,
        "turns": turns,
        "total_ms": round_ms(total_ms),
    }))
    .into_response())
}

/// One turn as the API shows it.
fn turn_json(report: &TurnReport, with_audio: bool) -> Value {
    let tool_calls: Vec<Value> = report
        .tools
        .iter()
        .map(|r| {
            let (server, tool) = r.name.split_once("__").unwrap_or(("", &r.name));
            json!({
                "server": server,
                "tool": tool,
                "arguments": r.arguments,
                "is_error": r.is_error,
                "latency_ms": (!r.hosted).then(|| round_ms(r.latency.as_secs_f64() * 1e3)),
                "output_bytes": r.output.len(),
            })
        })
        .collect();
    let audio = match (&report.audio, with_audio) {
        (Some(audio), true) => audio_json(audio),
        _ => Value::Null,
    };
    json!({
        "turn": report.turn,
        "start_s": report.start_s,
        "transcript": report.transcript,
        "tool_calls": tool_calls,
        "reply": report.reply.trim(),
        "errors": report.errors,
        "timings": {
            "voice_to_voice_ms": report.voice_to_voice().map(|d| round_ms(d.as_secs_f64() * 1e3)),
            "speech_ms": round_ms(report.metrics.speech.as_secs_f64() * 1e3),
            "stages": report.metrics.stages,
        },
        "audio": audio,
    })
}

fn audio_json(audio: &AudioChunk) -> Value {
    match wav_bytes(audio) {
        Ok(wav) => json!({
            "format": "wav",
            "sample_rate": audio.sample_rate,
            "duration_s": (audio.duration().as_secs_f64() * 1e3).round() / 1e3,
            "data": base64::engine::general_purpose::STANDARD.encode(wav),
        }),
        Err(e) => {
            tracing::error!(message = "Cannot encode reply audio.", error = %e);
            Value::Null
        }
    }
}

/// The reply audio of every turn, in order, as one WAV.
fn spoken_wav(reports: &[TurnReport], session: &str) -> Result<Response, ApiError> {
    let mut spoken = reports.iter().filter_map(|r| r.audio.as_ref());
    let Some(first) = spoken.next() else {
        return Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            ..ApiError::invalid(
                "file",
                if reports.is_empty() {
                    "no speech was detected in the upload, so nothing was said back"
                } else {
                    "the pipeline said nothing back (see the JSON answer's `errors` without Accept: audio/wav)"
                },
            )
        }
        .with_code("no_reply_audio"));
    };
    let mut all = first.clone();
    for more in spoken {
        all.samples.extend_from_slice(&more.samples);
    }
    let wav = wav_bytes(&all).map_err(|_| ApiError::server_error())?;
    Ok((
        [
            (CONTENT_TYPE, "audio/wav"),
            (HeaderName::from_static(SESSION_HEADER), session),
        ],
        wav,
    )
        .into_response())
}

/// A 404 unless `asked` (if given) names the pipeline this server runs.
pub(super) fn check_pipeline(
    pipeline: &LoadedPipeline,
    asked: Option<&str>,
) -> Result<(), ApiError> {
    match asked {
        Some(asked) if asked != pipeline.spec().name => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            ..ApiError::invalid(
                "pipeline",
                format!(
                    "pipeline `{asked}` is not served here; this server runs `{}`",
                    pipeline.spec().name
                ),
            )
        }
        .with_code("pipeline_not_found")),
        _ => Ok(()),
    }
}

fn too_many_turns() -> Response {
    at_capacity("Too many turns are running on this server; retry in a moment.")
}

/// A 429 with `Retry-After`: the server is full, not broken.
pub(super) fn at_capacity(message: &str) -> Response {
    let error = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        message: message.into(),
        kind: "rate_limit_error",
        param: None,
        code: Some("server_at_capacity"),
    };
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}

pub(super) fn no_pipeline() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "This server runs no voice pipeline; start it with `parlor serve --pipeline \
                  FILE` (a spec with vad, stt, planner and tts stages)."
            .into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("no_pipeline"),
    }
}

pub(super) fn round_ms(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}
