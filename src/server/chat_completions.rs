//! `POST /v1/chat/completions`, OpenAI's wire format, answered by the local
//! model: a whole `chat.completion`, or with `"stream": true` server-sent
//! `chat.completion.chunk`s as the text is generated, ending `data: [DONE]`.
//!
//! Errors before the first token (bad request, prompt too long) get their
//! own status even when streaming: the response starts only once the model
//! has produced something. An error after that is sent as a `data:
//! {"error": …}` event, as OpenAI does, and ends the stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::chat_request::ChatCompletionRequest;
use super::chat_response::Completion;
use super::openai_error::ApiError;
use super::served_model::{Event, Reply, ServedModel};
use super::AppState;
use crate::llm::LlmError;

/// SSE events buffered towards the client. Full: the forwarder waits, and
/// so the model waits (backpressure).
const SSE_QUEUE: usize = 16;

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Response {
    match answer(&state.model, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn answer(
    model: &Arc<ServedModel>,
    body: Result<Json<ChatCompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    if !model.answers_to(&request.model) {
        return Err(ApiError::model_not_found(&request.model, model.id()));
    }
    let request = request.prepare()?;
    let (stream, include_usage) = (request.stream, request.include_usage);
    let mut events = model.generate(request).map_err(ApiError::busy)?;
    let completion = Completion::new(model.id());
    if !stream {
        let answer = loop {
            match events.recv().await {
                Some(Event::Text(_)) => continue,
                Some(Event::Finished(result)) => break result,
                None => return Err(ApiError::server_error()),
            }
        };
        let answer = answer.map_err(|e| ApiError::from(&e))?;
        return Ok(Json(completion.body(&answer)).into_response());
    }
    let first = match events.recv().await {
        Some(Event::Finished(Err(e))) => return Err(ApiError::from(&e)),
        Some(event) => event,
        None => return Err(ApiError::server_error()),
    };
    let (tx, rx) = mpsc::channel(SSE_QUEUE);
    tokio::spawn(forward(first, events, tx, completion, include_usage));
    Ok(Sse::new(ReceiverStream::new(rx)).into_response())
}

/// Turns the model's events into chunks until the answer is finished or the
/// client goes away (then `events` is dropped, which stops the model).
async fn forward(
    first: Event,
    mut events: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
    completion: Completion,
    include_usage: bool,
) {
    let send = |data: Value| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(SseEvent::default().data(data.to_string())))
                .await
                .is_ok()
        }
    };
    if !send(completion.role_chunk()).await {
        return;
    }
    let mut next = Some(first);
    loop {
        let event = match next.take() {
            Some(event) => event,
            None => match events.recv().await {
                Some(event) => event,
                None => return,
            },
        };
        match event {
            Event::Text(text) => {
                if !send(completion.content_chunk(&text)).await {
                    return;
                }
            }
            Event::Finished(Ok(answer)) => {
                if let Reply::Call { name, arguments } = &answer.reply {
                    if !send(completion.tool_call_chunk(name, arguments)).await {
                        return;
                    }
                }
                if !send(completion.finish_chunk(answer.finish)).await {
                    return;
                }
                if include_usage && !send(completion.usage_chunk(&answer.usage)).await {
                    return;
                }
                let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                return;
            }
            Event::Finished(Err(LlmError::Cancelled)) => return,
            Event::Finished(Err(e)) => {
                let _ = send(ApiError::from(&e).body()).await;
                return;
            }
        }
    }
}
