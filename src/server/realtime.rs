//! `GET /v1/realtime?model=...`: the OpenAI Realtime protocol over a
//! WebSocket, served by the server's own voice pipeline (the events are in
//! `realtime/events.rs`, their meaning in `realtime/session.rs`, the call
//! underneath in `live/call.rs`).
//!
//! Any Realtime client (the official `openai` package's
//! `client.realtime.connect`, for one) gets parlor's VAD, Whisper, planner
//! with its MCP tools, and voice. The carrier is the same as `/v1/calls`'
//! (`server/calls.rs`): the same slots, limits, keys and ways to end; only
//! the messages differ. Caller audio comes as base64 24 kHz PCM in
//! `input_audio_buffer.append` events and reply audio goes out as
//! `response.output_audio.delta` events, paced to playback so a barge-in
//! is heard at once. A bad event gets an `error` event and the session
//! goes on; an event type parlor does not use is ignored. A sensitive tool
//! call asks the caller with parlor's `parlor.tool.confirm` event (see
//! `realtime/session.rs`), answered on this same socket: a channel the
//! model cannot write to.
//!
//! `model` is taken as any Realtime client sends it and reported back in
//! `session.created`; the pipeline answering is the server's.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

use super::calls::{
    close, send, CallSession, Ending, IdleDeadline, Registered, CLOSE_WAIT, MAX_WRITE_BUFFER,
    READ_BUFFER, WRITE_BUFFER,
};
use super::turns::{at_capacity, no_pipeline};
use super::{start_realtime_call, ApiError, AppState};
use crate::access::Caller;
use crate::frame::PIPELINE_SAMPLE_RATE;
use crate::live::{self, InputError, LiveConfirmer};
use crate::realtime::events::{ErrorDetail, PCM_RATE};
use crate::realtime::tools::{ClientToolsHandle, ToolRequest};
use crate::realtime::{ClientEvent, Parsed, ServerMessage, Session};
use crate::runner::Pipeline;

/// Events the reader answers with wait here for the writer; a client that
/// floods bad events while not reading is ended by the write timeout.
const ANSWERS: usize = 64;

/// `GET /v1/realtime?model=NAME`.
pub async fn realtime(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    caller: Option<Extension<Caller>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pipeline = state.pipeline.clone().ok_or_else(no_pipeline)?;
    let upgrade = upgrade.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::invalid(
            "",
            format!("GET /v1/realtime opens a WebSocket (send the upgrade headers): {rejection}"),
        )
    })?;
    let registry = state.calls.clone();
    let Ok(slot) = registry.slots.clone().try_acquire_owned() else {
        return Ok(at_capacity(
            "Every call slot on this server is taken; retry in a moment.",
        ));
    };
    let id = registry.next_id();
    let caller = Caller {
        session: Some(id.clone()),
        ..caller.map(|Extension(c)| c).unwrap_or_default()
    };
    let (tools, requests) = ClientToolsHandle::new();
    let (confirmer, questions) = LiveConfirmer::new(registry.limits.confirm_timeout);
    let call = start_realtime_call(&pipeline, caller, tools.clone(), confirmer.clone()).await?;
    let voice_rate = pipeline.output_rate().unwrap_or(PIPELINE_SAMPLE_RATE);
    let name = pipeline.spec().name.clone();
    let model = query.get("model").cloned().unwrap_or_else(|| name.clone());
    let voice = pipeline
        .voice()
        .map(|v| v.name().to_string())
        .unwrap_or_default();
    let limits = &registry.limits;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(limits.max_message_bytes + WRITE_BUFFER))
        // Base64 makes the same audio 4/3 as long as a binary frame.
        .max_message_size(limits.max_message_bytes * 4 / 3 + 1024)
        .max_frame_size(limits.max_message_bytes * 4 / 3 + 1024)
        .on_upgrade(move |socket| async move {
            let span = tracing::info_span!("realtime", call = %id);
            let session = CallSession {
                pipeline: name,
                started: Instant::now(),
                input_sample_rate: PCM_RATE,
            };
            let about = About {
                model,
                voice,
                voice_rate,
                tools,
                requests,
                confirmer,
                questions,
            };
            run_session(socket, &state, call, &id, session, about, slot)
                .instrument(span)
                .await
        }))
}

/// What a session reports about itself.
struct About {
    model: String,
    voice: String,
    voice_rate: u32,
    /// The client's function tools, and their calls to send it.
    tools: ClientToolsHandle,
    requests: mpsc::UnboundedReceiver<ToolRequest>,
    /// The caller's answers to sensitive tool calls, and the questions.
    confirmer: Arc<LiveConfirmer>,
    questions: mpsc::Receiver<live::ServerEvent>,
}

async fn run_session(
    socket: WebSocket,
    state: &AppState,
    call: Pipeline,
    id: &str,
    session: CallSession,
    about: About,
    _slot: OwnedSemaphorePermit,
) {
    let registry = &*state.calls;
    let limits = registry.limits.clone();
    registry.sessions.insert(id.to_string(), session);
    let _registered = Registered {
        registry,
        id: id.to_string(),
    };
    let _counted = state.metrics.call_opened();
    tracing::info!(message = "Realtime session started.", model = %about.model);

    let running = call.barge_in(true).inline_front(true).start();
    let (mut sink, mut stream) = socket.split();
    let (mut input, mut output) = match live::open(running, PCM_RATE, about.voice_rate, limits.lead)
    {
        Ok(halves) => halves,
        Err(error) => {
            tracing::error!(message = "Cannot open the call.", %error);
            let _ = sink
                .send(close(close_code::ERROR, "cannot open the session"))
                .await;
            return;
        }
    };
    let protocol = Arc::new(Mutex::new(
        Session::new(output.turns(), about.voice_rate, &about.model, &about.voice)
            .with_client_tools(about.tools)
            .with_confirmer(about.confirmer),
    ));
    let mut requests = about.requests;
    let mut questions = about.questions;
    let created = protocol.lock().expect("session poisoned").created();
    if send(&mut sink, text(&created), limits.write_timeout)
        .await
        .is_err()
    {
        return;
    }

    let (answers, mut answered) = mpsc::channel::<ServerMessage>(ANSWERS);
    let stream_ref = &mut stream;
    let call_started = Instant::now();
    let last_pong = AtomicU64::new(0);
    let last_pong_ref = &last_pong;
    let reader_protocol = protocol.clone();
    let reader = async move {
        let mut idle = IdleDeadline::new(limits.idle_timeout);
        loop {
            let message = match idle.next_message(stream_ref).await {
                Ok(message) => message,
                Err(ending) => return ending,
            };
            let reply = match message {
                Message::Text(text) => {
                    let mut protocol = reader_protocol.lock().expect("session poisoned");
                    match ClientEvent::parse(&text) {
                        Ok(Parsed::Event(event)) => protocol.on_client(event),
                        Ok(Parsed::Unknown { kind }) => {
                            tracing::debug!(message = "Client event ignored.", kind = %kind);
                            continue;
                        }
                        Err(bad) => crate::realtime::ClientReply {
                            messages: vec![protocol.error(ErrorDetail::invalid(
                                bad.message,
                                None,
                                bad.event_id.as_deref(),
                            ))],
                            audio: None,
                        },
                    }
                }
                Message::Binary(_) => {
                    let mut protocol = reader_protocol.lock().expect("session poisoned");
                    crate::realtime::ClientReply {
                        messages: vec![protocol.error(ErrorDetail::invalid(
                            "Audio goes in input_audio_buffer.append events (base64 of 16-bit \
                             PCM at 24 kHz), not in binary frames.",
                            None,
                            None,
                        ))],
                        audio: None,
                    }
                }
                Message::Close(_) => return Ending::Gone,
                Message::Pong(_) => {
                    let at = call_started.elapsed().as_millis() as u64;
                    last_pong_ref.store(at, Ordering::Relaxed);
                    continue;
                }
                Message::Ping(_) => continue,
            };
            for message in reply.messages {
                if answers.send(message).await.is_err() {
                    return Ending::Gone;
                }
            }
            if let Some(audio) = reply.audio {
                match input.push_pcm16(&audio).await {
                    Ok(()) => {}
                    Err(InputError::Audio(error)) => {
                        let message = reader_protocol.lock().expect("session poisoned").error(
                            ErrorDetail::invalid(
                                format!("`audio` must be whole 16-bit samples: {error}."),
                                Some("audio"),
                                None,
                            ),
                        );
                        let _ = answers.send(message).await;
                    }
                    Err(InputError::Closed) => return Ending::PipelineStopped,
                }
            }
        }
    };
    let write_timeout = limits.write_timeout;
    let metrics = &state.metrics;
    let sink_ref = &mut sink;
    let writer = async move {
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.tick().await;
        loop {
            let messages = tokio::select! {
                out = output.next() => match out {
                    Some(out) => {
                        if let live::Outbound::TurnDone { report, .. } = &out {
                            metrics.turn_finished("realtime", report);
                            tracing::info!(
                                message = "Turn done.",
                                turn = %report.turn,
                                transcript = %report.transcript,
                                tools = report.tools.len(),
                            );
                        }
                        protocol.lock().expect("session poisoned").on_outbound(out)
                    }
                    None => break,
                },
                Some(answer) = answered.recv() => vec![answer],
                Some(question) = questions.recv() => protocol
                    .lock()
                    .expect("session poisoned")
                    .on_outbound(live::Outbound::Event(question)),
                Some(request) = requests.recv() => {
                    // The planner's parallel calls of one step arrive
                    // together: they go out in one response.
                    let mut batch = vec![request];
                    while let Ok(more) = requests.try_recv() {
                        batch.push(more);
                    }
                    protocol.lock().expect("session poisoned").on_tool_requests(batch)
                }
                _ = ping.tick() => {
                    let answered = Duration::from_millis(last_pong_ref.load(Ordering::Relaxed));
                    let silent_for = call_started.elapsed().saturating_sub(answered);
                    if silent_for > limits.pong_timeout {
                        tracing::warn!(
                            message = "Client not reading (no pong); ending the session.",
                            silent_s = silent_for.as_secs_f64()
                        );
                        return Ending::NotReading;
                    }
                    if let Err(ending) = send(sink_ref, Message::Ping(Default::default()), write_timeout).await {
                        return ending;
                    }
                    continue;
                }
            };
            for message in &messages {
                if let Err(ending) = send(sink_ref, text(message), write_timeout).await {
                    return ending;
                }
            }
        }
        Ending::PipelineStopped
    };

    let ending = {
        let mut reader = pin!(reader);
        let mut writer = pin!(writer);
        let stopping = registry.stop_signal();
        let mut too_long = pin!(tokio::time::sleep(limits.max_duration));
        tokio::select! {
            ending = &mut reader => ending,
            ending = &mut writer => ending,
            () = stopping.cancelled() => Ending::ServerStopping,
            () = &mut too_long => Ending::TooLong,
        }
    };
    tracing::info!(message = "Realtime session ended.", ending = ?ending);
    if let Some((code, reason)) = ending.close(&limits) {
        if send(&mut sink, close(code, &reason), write_timeout)
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(Ok(message)) = stream.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

fn text(message: &ServerMessage) -> Message {
    Message::Text(
        serde_json::to_string(message)
            .expect("events serialise")
            .into(),
    )
}
