//! Audio uploads, shared by `POST /v1/turns` and
//! `POST /v1/audio/transcriptions`: a `multipart/form-data` form with the
//! audio in a `file` field (OpenAI's shape) or the audio as the raw body,
//! decoded to the pipeline's 16 kHz mono with precise errors for each kind
//! of bad input.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::StatusCode;

use super::ApiError;
use crate::audio::{decode_bytes, AudioError, DecodeLimits};
use crate::frame::AudioChunk;

/// Largest upload body: the decoder's 25 MB (OpenAI's own limit) plus room
/// for a form's other fields and boundaries.
pub const UPLOAD_BODY_LIMIT: usize = DecodeLimits::DEFAULT_MAX_BYTES as usize + 64 * 1024;

/// Form fields other than the file are small (a model name, a language).
const MAX_FIELD_BYTES: usize = 4 * 1024;

/// An upload: the audio's bytes and the form's other fields (empty for a
/// raw body; the query string carries options then).
pub struct Upload {
    pub audio: Bytes,
    /// The uploaded file's name, for messages.
    pub file_name: Option<String>,
    /// The file's extension or the body's MIME type: a hint for the
    /// decoder, which goes by the content.
    hint: Option<String>,
    pub fields: HashMap<String, String>,
}

impl Upload {
    /// Read the request as a form with a `file` field or as a raw body.
    ///
    /// # Errors
    /// A 413 for a body over the limit, 415 for JSON or text sent as the
    /// body, 400 for a malformed form, a form without `file`, or an
    /// oversized field.
    pub async fn read(request: Request) -> Result<Self, ApiError> {
        // A body announced over the limit is turned away before any of it
        // is read: the caller is not made to send 25 MB for a 413.
        let announced = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|length| length > UPLOAD_BODY_LIMIT as u64) {
            return Err(body_error(StatusCode::PAYLOAD_TOO_LARGE, String::new()));
        }
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("multipart/form-data") {
            return Self::read_form(request).await;
        }
        if content_type.starts_with("application/json")
            || content_type.starts_with("text/")
            || content_type.starts_with("application/x-www-form-urlencoded")
        {
            return Err(ApiError {
                status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ..ApiError::invalid(
                    "file",
                    format!(
                        "the body is {content_type}; send the audio as a multipart/form-data \
                         field named `file`, or as the raw request body (audio/wav, audio/mpeg, \
                         application/octet-stream...)"
                    ),
                )
            }
            .with_code("unsupported_media_type"));
        }
        let audio = Bytes::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        Ok(Self {
            audio,
            file_name: None,
            hint: Some(content_type).filter(|t| t.starts_with("audio/")),
            fields: HashMap::new(),
        })
    }

    async fn read_form(request: Request) -> Result<Self, ApiError> {
        let mut form = Multipart::from_request(request, &())
            .await
            .map_err(|e| body_error(e.status(), e.body_text()))?;
        let mut audio = None;
        let mut file_name = None;
        let mut fields = HashMap::new();
        loop {
            let field = match form.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(e) => return Err(body_error(e.status(), e.body_text())),
            };
            let name = field.name().unwrap_or("").to_string();
            if name == "file" {
                file_name = field.file_name().map(str::to_string);
                let bytes = field
                    .bytes()
                    .await
                    .map_err(|e| body_error(e.status(), e.body_text()))?;
                audio = Some(bytes);
                continue;
            }
            let value = field
                .bytes()
                .await
                .map_err(|e| body_error(e.status(), e.body_text()))?;
            if value.len() > MAX_FIELD_BYTES {
                return Err(ApiError::invalid(
                    name.clone(),
                    format!(
                        "form field `{name}` is {} bytes; fields other than `file` may have at most {MAX_FIELD_BYTES}",
                        value.len()
                    ),
                ));
            }
            let text = String::from_utf8(value.to_vec()).map_err(|_| {
                ApiError::invalid(
                    name.clone(),
                    format!("form field `{name}` is not UTF-8 text"),
                )
            })?;
            fields.insert(name, text);
        }
        let audio = audio.ok_or_else(|| {
            ApiError::invalid(
                "file",
                "the form has no `file` field; put the audio in a field named `file`",
            )
            .with_code("missing_required_parameter")
        })?;
        let hint = file_name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, ext)| ext.to_string());
        Ok(Self {
            audio,
            file_name,
            hint,
            fields,
        })
    }

    /// A form field, or else the query parameter of the same name.
    pub fn option<'a>(&'a self, query: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
        self.fields
            .get(name)
            .or_else(|| query.get(name))
            .map(String::as_str)
    }

    /// Decode the audio (on the blocking pool: a long MP3 takes a while).
    ///
    /// # Errors
    /// The decoder's error for this input, as a 400 (413 when too large)
    /// naming the `file` parameter.
    pub async fn decode(&self, limits: DecodeLimits) -> Result<AudioChunk, ApiError> {
        let bytes = self.audio.clone();
        let hint = self.hint.clone();
        let decoded =
            tokio::task::spawn_blocking(move || decode_bytes(bytes, hint.as_deref(), &limits))
                .await
                .map_err(|_| ApiError::server_error())?;
        decoded.map_err(|e| audio_error(&e, self.file_name.as_deref()))
    }
}

/// Why uploaded audio could not be used, in OpenAI's error shape.
pub fn audio_error(error: &AudioError, file_name: Option<&str>) -> ApiError {
    let status = match error {
        AudioError::TooLarge { .. } | AudioError::TooLong { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    let message = match file_name {
        Some(name) => format!("{name}: {error}"),
        None => error.to_string(),
    };
    ApiError {
        status,
        ..ApiError::invalid("file", message)
    }
    .with_code("invalid_audio")
}

/// A body axum could not read: too large, or a broken form.
fn body_error(status: StatusCode, detail: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError {
            status,
            ..ApiError::invalid(
                "file",
                format!(
                    "the upload is over the limit of {} bytes; send a shorter or more compressed file (FLAC, MP3)",
                    DecodeLimits::DEFAULT_MAX_BYTES
                ),
            )
        }
        .with_code("file_too_large");
    }
    ApiError {
        status: StatusCode::BAD_REQUEST,
        ..ApiError::invalid("file", format!("cannot read the upload: {detail}"))
    }
}
