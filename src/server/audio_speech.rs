//! `POST /v1/audio/speech`, OpenAI's text-to-speech route, spoken by the
//! pipeline's own voice ([`crate::stages::tts::Voice`]).
//!
//! `response_format: "pcm"` (raw 24 kHz 16-bit little-endian mono) is
//! streamed: each piece of audio goes out as the voice makes it, so a
//! client hears the first sentence while the rest is being synthesised.
//! `"wav"` (24 kHz 16-bit mono) needs the length in its header and is sent
//! whole. Other formats (`mp3`, `opus`, `aac`, `flac`) would need encoders
//! parlor does not ship and get a 400 naming the two it has.
//!
//! Errors before the first audio (bad request, the voice failing at once)
//! get their own status; a failure after that cuts the response off rather
//! than ending it as if the audio were complete.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::openai_error::ApiError;
use super::AppState;
use crate::audio::{resample, wav_bytes, StreamResampler};
use crate::frame::AudioChunk;
use crate::stages::tts::{TtsError, Voice};

/// The rate of every response: OpenAI's `pcm` rate, which clients assume.
pub const SPEECH_RATE: u32 = 24_000;
/// OpenAI's limit on `input`, in characters.
pub const MAX_INPUT_CHARS: usize = 4096;
/// The formats this server writes.
pub const SPEECH_FORMATS: &str = "pcm, wav";
/// Audio pieces buffered between the voice and the response body (~100 ms
/// each). Full: the voice waits for the client.
const AUDIO_QUEUE: usize = 8;
/// Resampler chunk for streamed audio: short, so a piece goes out at once.
const STREAM_CHUNK: Duration = Duration::from_millis(20);

/// The request body. Unknown fields are ignored, as OpenAI clients send
/// newer ones (`stream_format`) this server has no use for.
#[derive(Debug, Deserialize)]
pub struct SpeechRequest {
    /// Accepted whatever it names: the server has one voice.
    pub model: String,
    pub input: String,
    /// Accepted and ignored (a string or `{"id": …}`): the pipeline's voice
    /// speaks.
    #[serde(default)]
    pub voice: Option<serde_json::Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    /// Checked against OpenAI's range, 0.25 to 4.0. The voice speaks at the
    /// rate its tts stage sets.
    #[serde(default)]
    pub speed: Option<f32>,
    /// `pcm` or `wav`; absent means `wav` (OpenAI's default, mp3, is not
    /// available).
    #[serde(default)]
    pub response_format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Pcm,
    Wav,
}

pub async fn audio_speech(
    State(state): State<AppState>,
    body: Result<Json<SpeechRequest>, JsonRejection>,
) -> Response {
    match speak(state.voice.clone(), body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn check(request: &SpeechRequest) -> Result<Format, ApiError> {
    let chars = request.input.chars().count();
    if request.input.trim().is_empty() {
        return Err(
            ApiError::invalid("input", "`input` is empty: give the text to speak.")
                .with_code("empty_input"),
        );
    }
    if chars > MAX_INPUT_CHARS {
        return Err(ApiError::invalid(
            "input",
            format!("`input` is {chars} characters; the limit is {MAX_INPUT_CHARS}. Split the text and send it in parts."),
        )
        .with_code("string_above_max_length"));
    }
    if let Some(speed) = request.speed {
        if !(0.25..=4.0).contains(&speed) {
            return Err(ApiError::invalid(
                "speed",
                format!("`speed` must be from 0.25 to 4.0, got {speed}."),
            ));
        }
    }
    match request.response_format.as_deref() {
        None | Some("wav") => Ok(Format::Wav),
        Some("pcm") => Ok(Format::Pcm),
        Some(other) => Err(ApiError::invalid(
            "response_format",
            format!("`response_format` \"{other}\" is not available on this server; use one of: {SPEECH_FORMATS}."),
        )
        .with_code("unsupported_value")),
    }
}

async fn speak(
    voice: Option<Arc<dyn Voice>>,
    body: Result<Json<SpeechRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    let format = check(&request)?;
    let voice = voice.ok_or_else(ApiError::no_voice)?;
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(AUDIO_QUEUE);
    let text = request.input;
    let speed = request.speed.unwrap_or(1.0);
    let speaking: JoinHandle<Result<(), TtsError>> =
        tokio::spawn(async move { voice.speak_at(&text, speed, &tx).await });

    // Wait for the first audio, or for the voice to finish without any.
    let first = match rx.recv().await {
        Some(chunk) => chunk,
        None => {
            finished(speaking).await?;
            return Ok(audio_response(format, body_for_empty(format)?));
        }
    };
    match format {
        Format::Wav => {
            let rate = first.sample_rate;
            let mut samples = first.samples;
            while let Some(chunk) = rx.recv().await {
                samples.extend(to_rate(chunk, rate)?);
            }
            finished(speaking).await?;
            let samples = resample(&samples, rate, SPEECH_RATE).map_err(|e| {
                tracing::error!(error = %e, message = "Resampling speech failed.");
                ApiError::speech_failed()
            })?;
            let wav = wav_bytes(&AudioChunk::new(SPEECH_RATE, samples)).map_err(|e| {
                tracing::error!(error = %e, message = "Writing speech as WAV failed.");
                ApiError::speech_failed()
            })?;
            Ok(audio_response(format, Body::from(wav)))
        }
        Format::Pcm => {
            let resampler =
                StreamResampler::with_chunk(first.sample_rate, SPEECH_RATE, STREAM_CHUNK).map_err(
                    |e| {
                        tracing::error!(error = %e, message = "The voice's sample rate cannot be resampled.");
                        ApiError::speech_failed()
                    },
                )?;
            let stream = pcm_stream(first, rx, resampler, speaking);
            Ok(audio_response(format, Body::from_stream(stream)))
        }
    }
}

/// The voice task's outcome as the client should see it.
async fn finished(speaking: JoinHandle<Result<(), TtsError>>) -> Result<(), ApiError> {
    match speaking.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            tracing::error!(error = %e, message = "The voice failed.");
            Err(ApiError::speech_failed())
        }
        Err(e) => {
            tracing::error!(error = %e, message = "The voice task panicked.");
            Err(ApiError::speech_failed())
        }
    }
}

/// A chunk at `rate` (a voice keeps one rate, so this is a copy in practice).
fn to_rate(chunk: AudioChunk, rate: u32) -> Result<Vec<f32>, ApiError> {
    if chunk.sample_rate == rate {
        return Ok(chunk.samples);
    }
    resample(&chunk.samples, chunk.sample_rate, rate).map_err(|e| {
        tracing::error!(error = %e, message = "Resampling speech failed.");
        ApiError::speech_failed()
    })
}

fn body_for_empty(format: Format) -> Result<Body, ApiError> {
    Ok(match format {
        Format::Pcm => Body::empty(),
        Format::Wav => Body::from(
            wav_bytes(&AudioChunk::new(SPEECH_RATE, Vec::new()))
                .map_err(|_| ApiError::speech_failed())?,
        ),
    })
}

fn audio_response(format: Format, body: Body) -> Response {
    let content_type = match format {
        Format::Pcm => "audio/pcm",
        Format::Wav => "audio/wav",
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn pcm_bytes(samples: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for &s in samples {
        let s = if s.is_finite() {
            s.clamp(-1.0, 1.0)
        } else {
            0.0
        };
        out.extend_from_slice(&((s * i16::MAX as f32).round() as i16).to_le_bytes());
    }
    Bytes::from(out)
}

/// The response body: the first chunk, then each chunk as the voice sends
/// it, resampled to [`SPEECH_RATE`]. A voice failure mid-way ends the body
/// with an error, so the client sees a broken transfer, not a short clip.
fn pcm_stream(
    first: AudioChunk,
    rx: mpsc::Receiver<AudioChunk>,
    resampler: StreamResampler,
    speaking: JoinHandle<Result<(), TtsError>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    struct State {
        rx: mpsc::Receiver<AudioChunk>,
        resampler: StreamResampler,
        pending: Option<AudioChunk>,
        speaking: Option<JoinHandle<Result<(), TtsError>>>,
    }
    let broken = |what: String| std::io::Error::other(what);
    futures::stream::unfold(
        State {
            rx,
            resampler,
            pending: Some(first),
            speaking: Some(speaking),
        },
        move |mut st| async move {
            loop {
                let chunk = match st.pending.take() {
                    Some(c) => Some(c),
                    None => st.rx.recv().await,
                };
                let mut out = Vec::new();
                match chunk {
                    Some(chunk) => {
                        if chunk.sample_rate != st.resampler.input_rate() {
                            return Some((
                                Err(broken(
                                    "the voice changed its sample rate mid-speech".into(),
                                )),
                                st,
                            ));
                        }
                        if let Err(e) = st.resampler.process(&chunk.samples, &mut out) {
                            return Some((Err(broken(e.to_string())), st));
                        }
                        if out.is_empty() {
                            continue;
                        }
                        return Some((Ok(pcm_bytes(&out)), st));
                    }
                    None => {
                        let speaking = st.speaking.take()?;
                        if let Err(e) = finished(speaking).await {
                            return Some((Err(broken(e.message)), st));
                        }
                        if let Err(e) = st.resampler.finish(&mut out) {
                            return Some((Err(broken(e.to_string())), st));
                        }
                        return Some((Ok(pcm_bytes(&out)), st));
                    }
                }
            }
        },
    )
}
