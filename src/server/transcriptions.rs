//! `POST /v1/audio/transcriptions`, OpenAI's whisper-1 shape, backed by the
//! pipeline's own listening half: the file is cut into turns by the VAD and
//! each is transcribed by the stt stage (the local Whisper), so a long file
//! becomes timed segments and silence stays silent.
//!
//! Form fields (or query parameters): `file` (required), `model` (any name;
//! this server has one model), `language` (must be the stt stage's),
//! `prompt` and `temperature` (accepted, unused), `response_format`
//! (`json` default, `text`, `verbose_json`, `srt`, `vtt`), `stream=true`
//! (server-sent `transcript.text.delta` events, a segment at a time, then
//! `transcript.text.done`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;

use axum::extract::{Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::upload::Upload;
use super::{start_call, ApiError, AppState, CallKind, ServerMetrics};
use crate::access::Caller;
use crate::audio::DecodeLimits;
use crate::file_call::{self, TurnReport};
use crate::spec::StageSpec;

const FORMATS: &[&str] = &["json", "text", "verbose_json", "srt", "vtt"];

pub async fn transcriptions(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, ApiError> {
    let Some(pipeline) = state.pipeline.clone() else {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: "This server transcribes with its pipeline's stt stage and runs no \
                      pipeline; start it with `parlor serve --pipeline FILE`."
                .into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("no_pipeline"),
        });
    };
    let upload = Upload::read(request).await?;
    let format = upload.option(&query, "response_format").unwrap_or("json");
    if !FORMATS.contains(&format) {
        return Err(ApiError::invalid(
            "response_format",
            format!(
                "response_format `{format}` is not supported; use one of: {}",
                FORMATS.join(", ")
            ),
        ));
    }
    let stream = match upload.option(&query, "stream").unwrap_or("false") {
        "true" => true,
        "false" => false,
        other => {
            return Err(ApiError::invalid(
                "stream",
                format!("stream must be true or false, got `{other}`"),
            ))
        }
    };
    if stream && !matches!(format, "json" | "text") {
        return Err(ApiError::invalid(
            "stream",
            format!(
                "stream=true sends text events; use response_format json or text, not `{format}`"
            ),
        ));
    }
    let language = spoken_language(pipeline.spec().stages.iter());
    if let Some(asked) = upload.option(&query, "language") {
        if !asked.eq_ignore_ascii_case(&language) {
            return Err(ApiError::invalid(
                "language",
                format!("this server's speech model transcribes `{language}` only, not `{asked}`"),
            ));
        }
    }
    let audio = upload.decode(DecodeLimits::default()).await?;
    let duration = audio.duration().as_secs_f64();

    let Ok(slot) = state.turn_slots.clone().try_acquire_owned() else {
        return Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "Too many requests are running on this server; retry in a moment.".into(),
            kind: "rate_limit_error",
            param: None,
            code: Some("server_at_capacity"),
        });
    };
    let call = start_call(&pipeline, CallKind::Listening, Caller::default()).await?;

    if stream {
        let (events, rx) = mpsc::channel(16);
        let metrics = state.metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            stream_segments(call, audio, events, &metrics).await;
        });
        return Ok(Sse::new(ReceiverStream::new(rx)).into_response());
    }

    let reports = file_call::play(call, audio).await.map_err(|e| {
        tracing::error!(message = "Transcription failed.", error = %e);
        ApiError::server_error()
    })?;
    drop(slot);
    for report in &reports {
        state.metrics.turn_finished("transcriptions", report);
    }
    let text = joined(&reports);
    Ok(match format {
        "text" => ([(CONTENT_TYPE, "text/plain; charset=utf-8")], format!("{text}\n")).into_response(),
        "verbose_json" => Json(json!({
            "task": "transcribe",
            "language": language_name(&language),
            "duration": duration,
            "text": text,
            "segments": reports.iter().enumerate().map(|(i, r)| segment_json(i, r)).collect::<Vec<_>>(),
        }))
        .into_response(),
        "srt" => ([(CONTENT_TYPE, "text/plain; charset=utf-8")], subtitles(&reports, false)).into_response(),
        "vtt" => ([(CONTENT_TYPE, "text/vtt; charset=utf-8")], subtitles(&reports, true)).into_response(),
        _ => Json(json!({ "text": text })).into_response(),
    })
}

/// Play the file, sending each segment as a `transcript.text.delta` event
/// when its turn is over, then `transcript.text.done` with the whole text
/// (or an `error` event). A client that goes away stops the work.
async fn stream_segments(
    call: crate::runner::Pipeline,
    audio: crate::frame::AudioChunk,
    events: mpsc::Sender<Result<SseEvent, Infallible>>,
    metrics: &ServerMetrics,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let playing = file_call::play_each(call, audio, tx);
    let forward = async {
        let mut text = String::new();
        while let Some(report) = rx.recv().await {
            metrics.turn_finished("transcriptions", &report);
            if report.transcript.is_empty() {
                continue;
            }
            let delta = if text.is_empty() {
                report.transcript
            } else {
                format!(" {}", report.transcript)
            };
            text.push_str(&delta);
            let delta = json!({"type": "transcript.text.delta", "delta": delta});
            if events.send(event(delta)).await.is_err() {
                return None; // gone: dropping `rx` stops the call
            }
        }
        Some(text)
    };
    let (played, text) = tokio::join!(playing, forward);
    let last = match (played, text) {
        (Ok(()), Some(text)) => json!({"type": "transcript.text.done", "text": text}),
        (Err(error), Some(_)) => {
            tracing::error!(message = "Streamed transcription failed.", %error);
            json!({"type": "error", "error": ApiError::server_error().body()["error"]})
        }
        (_, None) => return,
    };
    let _ = events.send(event(last)).await;
}

fn event(payload: Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(payload.to_string()))
}

fn joined(reports: &[TurnReport]) -> String {
    reports
        .iter()
        .map(|r| r.transcript.as_str())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn segment_end(report: &TurnReport) -> f64 {
    report.start_s + report.metrics.speech.as_secs_f64()
}

fn segment_json(id: usize, report: &TurnReport) -> Value {
    json!({
        "id": id,
        "seek": 0,
        "start": report.start_s,
        "end": segment_end(report),
        "text": report.transcript,
        "tokens": [],
        "temperature": 0.0,
        "avg_logprob": 0.0,
        "compression_ratio": 0.0,
        "no_speech_prob": 0.0,
    })
}

/// SubRip (`vtt = false`) or WebVTT subtitles, a cue per segment.
fn subtitles(reports: &[TurnReport], vtt: bool) -> String {
    let mut out = String::new();
    if vtt {
        out.push_str("WEBVTT\n\n");
    }
    let cues = reports.iter().filter(|r| !r.transcript.is_empty());
    for (i, report) in cues.enumerate() {
        if !vtt {
            let _ = writeln!(out, "{}", i + 1);
        }
        let _ = writeln!(
            out,
            "{} --> {}\n{}\n",
            timestamp(report.start_s, vtt),
            timestamp(segment_end(report), vtt),
            report.transcript
        );
    }
    out
}

/// `HH:MM:SS,mmm` (SubRip) or `HH:MM:SS.mmm` (WebVTT).
fn timestamp(seconds: f64, vtt: bool) -> String {
    let ms = (seconds.max(0.0) * 1e3).round() as u64;
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let sep = if vtt { '.' } else { ',' };
    format!("{h:02}:{m:02}:{s:02}{sep}{ms:03}")
}

/// The stt stage's language code ("en").
fn spoken_language<'a>(mut stages: impl Iterator<Item = &'a StageSpec>) -> String {
    stages
        .find_map(|s| match s {
            StageSpec::Stt(stt) => Some(stt.language.clone()),
            _ => None,
        })
        .unwrap_or_else(|| "en".into())
}

/// OpenAI's verbose_json names the language in English words.
fn language_name(code: &str) -> &str {
    match code {
        "en" => "english",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_both_subtitle_formats() {
        assert_eq!(timestamp(0.0, false), "00:00:00,000");
        assert_eq!(timestamp(3723.4567, false), "01:02:03,457");
        assert_eq!(timestamp(61.5, true), "00:01:01.500");
    }
}
