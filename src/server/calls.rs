//! `GET /v1/calls`: a live call over a WebSocket (the protocol is in
//! `live/protocol.rs`; the call itself in `live/call.rs`).
//!
//! This file is the carrier: the upgrade and its refusals (400 for a bad
//! sample rate, 404 for another pipeline, 429 when every call slot is
//! taken), the socket's limits, and the call's life. Each call is one entry
//! in [`CallRegistry`] from upgrade to close. Its two halves run side by
//! side: the reader feeds the caller's audio in, the writer sends events and
//! paced audio out. A call ends when
//! - the caller says `end` (the turns in flight finish and play first),
//! - the caller goes away or sends a message over the size limit (1009),
//! - the caller sends nothing (audio or a message; pongs do not count) for
//!   `idle_timeout`, or the call reaches `max_duration`,
//! - the caller stops reading: a send that waits longer than
//!   `write_timeout`, or pings unanswered for `pong_timeout`, end the call
//!   instead of letting buffers grow,
//! - the server shuts down (1001, after a `call.ended` event).
//!
//! Every way out drops the call's pipeline, which cancels its stages: a
//! caller that hangs up mid-reply leaves no work behind.

use std::collections::HashMap;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, Query, State};
use axum::response::Response;
use dashmap::DashMap;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::auth::WS_PROTOCOL;
use super::turns::{at_capacity, check_pipeline, no_pipeline};
use super::{start_live_call, ApiError, AppState};
use crate::access::Caller;
use crate::audio::{MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
use crate::frame::PIPELINE_SAMPLE_RATE;
use crate::live::{self, ClientMessage, InputError, LiveConfirmer, Outbound, ServerEvent};
use crate::runner::Pipeline;

/// What one call may use.
#[derive(Debug, Clone)]
pub struct CallLimits {
    /// Calls at once; one more gets a 429.
    pub max_calls: usize,
    /// A call whose caller sends nothing (audio or a message; pongs do not
    /// count) this long is ended.
    pub idle_timeout: Duration,
    /// No call lasts longer.
    pub max_duration: Duration,
    /// The biggest message a caller may send (a second of 48 kHz audio is
    /// 96 KB; 20 ms frames are far smaller).
    pub max_message_bytes: usize,
    /// A send to the caller that waits longer than this ends the call.
    pub write_timeout: Duration,
    /// Reply audio is sent this far ahead of playback.
    pub lead: Duration,
    /// parlor pings the caller this often...
    pub ping_interval: Duration,
    /// ...and ends the call when no pong has come back for this long (the
    /// caller is not reading).
    pub pong_timeout: Duration,
    /// A sensitive tool call waits this long for the caller's approval
    /// (`tool.confirm`) before it is refused.
    pub confirm_timeout: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_calls: 4,
            idle_timeout: Duration::from_secs(30),
            max_duration: Duration::from_secs(30 * 60),
            max_message_bytes: 64 * 1024,
            write_timeout: Duration::from_secs(10),
            lead: live::DEFAULT_LEAD,
            ping_interval: Duration::from_secs(5),
            pong_timeout: Duration::from_secs(20),
            confirm_timeout: live::DEFAULT_CONFIRM_TIMEOUT,
        }
    }
}

/// Socket buffers are sized on purpose: tungstenite's 128 KiB defaults
/// would cost an idle call more than all of its own state.
pub(super) const READ_BUFFER: usize = 4 * 1024;
pub(super) const WRITE_BUFFER: usize = 4 * 1024;
/// Above this much unsent data, sends wait (backpressure from a slow
/// caller); the write timeout bounds the wait.
pub(super) const MAX_WRITE_BUFFER: usize = 64 * 1024;

/// How long a closing call waits for the caller's close frame.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One call, as the registry lists it.
#[derive(Debug, Clone)]
pub struct CallSession {
    pub pipeline: String,
    pub started: Instant,
    pub input_sample_rate: u32,
}

/// The live calls of a server: their slots, their limits, and the token
/// that tells them the server is stopping.
#[derive(Debug)]
pub struct CallRegistry {
    pub sessions: DashMap<String, CallSession>,
    pub(super) slots: Arc<Semaphore>,
    pub limits: CallLimits,
    pub(super) stopping: CancellationToken,
    next_id: AtomicU64,
}

impl CallRegistry {
    pub fn new(limits: CallLimits) -> Self {
        Self {
            sessions: DashMap::new(),
            slots: Arc::new(Semaphore::new(limits.max_calls)),
            limits,
            stopping: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Calls now.
    pub fn active(&self) -> usize {
        self.sessions.len()
    }

    /// End every call (each gets `call.ended` and a 1001 close).
    pub fn stop_all(&self) {
        self.stopping.cancel();
    }

    /// What one call or session waits on to hear that the server is
    /// stopping: a child of the server's token, so that waiting touches the
    /// call's own node. Every call waiting on the shared token would take
    /// the same two locks each time its task wakes (every frame).
    pub(super) fn stop_signal(&self) -> CancellationToken {
        self.stopping.child_token()
    }

    pub(super) fn next_id(&self) -> String {
        format!("call_{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A session id for one `POST /v1/turns` upload, from the same count
    /// as the calls' so no two sessions of a server share one.
    pub(super) fn next_upload_id(&self) -> String {
        format!("upload_{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for CallRegistry {
    fn default() -> Self {
        Self::new(CallLimits::default())
    }
}

/// Removes a call from the registry however its task ends.
pub(super) struct Registered<'a> {
    pub(super) registry: &'a CallRegistry,
    pub(super) id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.sessions.remove(&self.id);
    }
}

/// `GET /v1/calls?sample_rate=16000[&pipeline=NAME]`.
pub async fn calls(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    caller: Option<Extension<Caller>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let pipeline = state.pipeline.clone().ok_or_else(no_pipeline)?;
    check_pipeline(&pipeline, query.get("pipeline").map(String::as_str))?;
    let input_rate = match query.get("sample_rate") {
        None => PIPELINE_SAMPLE_RATE,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|r| (MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(r))
            .ok_or_else(|| {
                ApiError::invalid(
                    "sample_rate",
                    format!(
                        "sample_rate must be a whole number of Hz from {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE}, got `{text}`"
                    ),
                )
            })?,
    };
    let upgrade = upgrade.map_err(|rejection| ApiError {
        status: rejection.status(),
        ..ApiError::invalid(
            "",
            format!("GET /v1/calls opens a WebSocket (send the upgrade headers): {rejection}"),
        )
    })?;
    let registry = state.calls.clone();
    let Ok(slot) = registry.slots.clone().try_acquire_owned() else {
        return Ok(at_capacity(
            "Every call slot on this server is taken; retry in a moment.",
        ));
    };
    // The call's id is its session in the audit log.
    let id = registry.next_id();
    let caller = Caller {
        session: Some(id.clone()),
        ..caller.map(|Extension(c)| c).unwrap_or_default()
    };
    let (confirmer, questions) = LiveConfirmer::new(registry.limits.confirm_timeout);
    let call = start_live_call(&pipeline, caller, confirmer.clone()).await?;
    let output_rate = pipeline.output_rate().unwrap_or(PIPELINE_SAMPLE_RATE);
    let name = pipeline.spec().name.clone();
    let limits = &registry.limits;
    Ok(upgrade
        // Answers a browser that sent its key as a subprotocol (auth.rs).
        .protocols([WS_PROTOCOL])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER.max(limits.max_message_bytes + WRITE_BUFFER))
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| async move {
            let span = tracing::info_span!("call", call = %id);
            let session = CallSession {
                pipeline: name,
                started: Instant::now(),
                input_sample_rate: input_rate,
            };
            let confirmations = Confirmations {
                confirmer,
                questions,
            };
            run_call(
                socket,
                &state,
                call,
                &id,
                session,
                output_rate,
                confirmations,
                slot,
            )
            .instrument(span)
            .await
        }))
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The caller said `end` and every turn has played.
    CallerEnded,
    /// The pipeline's output ended without the caller ending (a stage
    /// failed).
    PipelineStopped,
    /// The socket went away (or broke).
    Gone,
    Idle,
    TooBig,
    TooLong,
    NotReading,
    ServerStopping,
}

impl Ending {
    /// The close code and the reason given in `call.ended`; `None` when
    /// the caller cannot hear it anyway.
    pub(super) fn close(self, limits: &CallLimits) -> Option<(u16, String)> {
        Some(match self {
            Ending::CallerEnded => (close_code::NORMAL, "the caller ended the call".into()),
            Ending::PipelineStopped => (
                close_code::ERROR,
                "the pipeline stopped; see the server log".into(),
            ),
            Ending::Idle => (
                close_code::POLICY,
                format!(
                    "nothing arrived for {} s; send audio (silence too) while on a call",
                    limits.idle_timeout.as_secs()
                ),
            ),
            Ending::TooBig => (
                close_code::SIZE,
                format!(
                    "a message was over the limit of {} bytes; send audio in short frames (20 ms is usual)",
                    limits.max_message_bytes
                ),
            ),
            Ending::TooLong => (
                close_code::POLICY,
                format!(
                    "calls last at most {} min",
                    limits.max_duration.as_secs() / 60
                ),
            ),
            Ending::ServerStopping => (close_code::AWAY, "the server is shutting down".into()),
            Ending::Gone | Ending::NotReading => return None,
        })
    }
}

/// A call's sensitive-tool questions ([`LiveConfirmer`]) and the events
/// that ask them.
struct Confirmations {
    confirmer: Arc<LiveConfirmer>,
    questions: mpsc::Receiver<ServerEvent>,
}

#[allow(clippy::too_many_arguments)]
async fn run_call(
    socket: WebSocket,
    state: &AppState,
    call: Pipeline,
    id: &str,
    session: CallSession,
    output_rate: u32,
    confirmations: Confirmations,
    _slot: OwnedSemaphorePermit,
) {
    let Confirmations {
        confirmer,
        mut questions,
    } = confirmations;
    let registry = &*state.calls;
    let limits = registry.limits.clone();
    let input_rate = session.input_sample_rate;
    let pipeline_name = session.pipeline.clone();
    registry.sessions.insert(id.to_string(), session);
    let _registered = Registered {
        registry,
        id: id.to_string(),
    };
    let _counted = state.metrics.call_opened();
    tracing::info!(message = "Call started.", input_sample_rate = input_rate);

    let running = call.barge_in(true).inline_front(true).start();
    let (mut sink, mut stream) = socket.split();
    let (mut input, mut output) = match live::open(running, input_rate, output_rate, limits.lead) {
        Ok(halves) => halves,
        Err(error) => {
            // The rate was checked before the upgrade; this is a bug.
            tracing::error!(message = "Cannot open the call.", %error);
            let _ = sink
                .send(close(close_code::ERROR, "cannot open the call"))
                .await;
            return;
        }
    };
    let started = ServerEvent::CallStarted {
        call_id: id.to_string(),
        pipeline: pipeline_name,
        input_sample_rate: input_rate,
        output_sample_rate: output_rate,
    };
    if send(&mut sink, event_message(&started), limits.write_timeout)
        .await
        .is_err()
    {
        return;
    }

    let notices = output.notices();
    let stream_ref = &mut stream;
    // When the caller last answered a ping, in ms since the call started.
    let call_started = Instant::now();
    let last_pong = AtomicU64::new(0);
    let last_pong_ref = &last_pong;
    let reader = async move {
        let mut idle = IdleDeadline::new(limits.idle_timeout);
        loop {
            let message = match idle.next_message(stream_ref).await {
                Ok(message) => message,
                Err(ending) => return ending,
            };
            match message {
                Message::Binary(bytes) => match input.push_pcm16(&bytes).await {
                    Ok(()) => {}
                    Err(InputError::Audio(error)) => {
                        let _ =
                            notices.try_send(ServerEvent::error("bad_audio", error.to_string()));
                    }
                    Err(InputError::Closed) => return Ending::PipelineStopped,
                },
                Message::Text(text) => match ClientMessage::parse(&text) {
                    Ok(ClientMessage::End) => {
                        input.finish().await;
                        return Ending::CallerEnded;
                    }
                    Ok(ClientMessage::Confirm { id, approve }) => {
                        if let Err(error) = confirmer.answer(&id, approve) {
                            let _ = notices
                                .try_send(ServerEvent::error("bad_message", error.to_string()));
                        }
                    }
                    Err(message) => {
                        let _ = notices.try_send(ServerEvent::error("bad_message", message));
                    }
                },
                Message::Close(_) => return Ending::Gone,
                Message::Pong(_) => {
                    let at = call_started.elapsed().as_millis() as u64;
                    last_pong_ref.store(at, Ordering::Relaxed);
                }
                Message::Ping(_) => {}
            }
        }
    };
    let write_timeout = limits.write_timeout;
    let metrics = &state.metrics;
    let sink_ref = &mut sink;
    let writer = async move {
        // Pings find a caller that has stopped reading even while parlor is
        // quiet (paced audio alone would take minutes to fill the socket's
        // buffers): its side answers pings only as it reads.
        let mut ping = tokio::time::interval(limits.ping_interval);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                out = output.next() => match out {
                    Some(Outbound::Event(event)) => event_message(&event),
                    Some(Outbound::Audio(bytes)) => Message::Binary(bytes.into()),
                    Some(Outbound::TurnDone { event, report }) => {
                        metrics.turn_finished("calls", &report);
                        tracing::info!(
                            message = "Turn done.",
                            turn = %report.turn,
                            transcript = %report.transcript,
                            tools = report.tools.len(),
                        );
                        event_message(&event)
                    }
                    None => break,
                },
                Some(question) = questions.recv() => event_message(&question),
                _ = ping.tick() => {
                    let answered = Duration::from_millis(last_pong_ref.load(Ordering::Relaxed));
                    let silent_for = call_started.elapsed().saturating_sub(answered);
                    if silent_for > limits.pong_timeout {
                        tracing::warn!(
                            message = "Caller not reading (no pong); ending the call.",
                            silent_s = silent_for.as_secs_f64()
                        );
                        return Ending::NotReading;
                    }
                    Message::Ping(Default::default())
                }
            };
            if let Err(ending) = send(sink_ref, message, write_timeout).await {
                return ending;
            }
        }
        Ending::PipelineStopped
        // `output` drops here, and with it the pipeline: its stages stop.
    };

    let ending = {
        let mut reader = pin!(reader);
        let mut writer = pin!(writer);
        let stopping = registry.stop_signal();
        let mut too_long = pin!(tokio::time::sleep(limits.max_duration));
        tokio::select! {
            ending = &mut reader => match ending {
                Ending::CallerEnded => tokio::select! {
                    ending = &mut writer => match ending {
                        Ending::PipelineStopped => Ending::CallerEnded,
                        other => other,
                    },
                    () = stopping.cancelled() => Ending::ServerStopping,
                    () = &mut too_long => Ending::TooLong,
                },
                other => other,
            },
            ending = &mut writer => ending,
            () = stopping.cancelled() => Ending::ServerStopping,
            () = &mut too_long => Ending::TooLong,
        }
    };
    tracing::info!(message = "Call ended.", ending = ?ending);
    if let Some((code, reason)) = ending.close(&limits) {
        let ended = ServerEvent::CallEnded {
            reason: reason.clone(),
        };
        if send(&mut sink, event_message(&ended), write_timeout)
            .await
            .is_ok()
            && send(&mut sink, close(code, &reason), write_timeout)
                .await
                .is_ok()
        {
            // The closing handshake: wait (briefly) for the caller's close,
            // so the socket is not dropped with data unread (which resets
            // the connection and can lose the close frame on the way).
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

fn event_message(event: &ServerEvent) -> Message {
    Message::Text(
        serde_json::to_string(event)
            .expect("events serialise")
            .into(),
    )
}

pub(super) fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// When a caller has gone idle: nothing sent (audio, or a message) for
/// `timeout`. Pongs do not count: a client's WebSocket library answers
/// pings by itself, so a caller who only reads would never be idle.
///
/// One timer per call, moved on lazily: it fires at most once per
/// `timeout` and is then pushed back to the last message. A `timeout`
/// around each read would re-arm a timer for every 20 ms frame (two locked
/// updates of the timer wheel each).
pub(super) struct IdleDeadline {
    timeout: Duration,
    heard_at: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl IdleDeadline {
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            heard_at: tokio::time::Instant::now(),
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// The caller's next message, or how the call ends: the caller went
    /// away or sent a message over the size limit, or nothing came for the
    /// timeout. Cancel-safe: the timer lives in `self`.
    pub(super) async fn next_message(
        &mut self,
        stream: &mut SplitStream<WebSocket>,
    ) -> Result<Message, Ending> {
        loop {
            let next = tokio::select! {
                // The socket first: a message that came as the timer fired
                // still counts.
                biased;
                next = stream.next() => next,
                () = self.timer.as_mut() => {
                    let deadline = self.heard_at + self.timeout;
                    if deadline <= tokio::time::Instant::now() {
                        return Err(Ending::Idle);
                    }
                    self.timer.as_mut().reset(deadline);
                    continue;
                }
            };
            return match next {
                None => Err(Ending::Gone),
                Some(Err(error)) => Err(if is_too_big(error) {
                    Ending::TooBig
                } else {
                    Ending::Gone
                }),
                Some(Ok(message)) => {
                    if matches!(message, Message::Binary(_) | Message::Text(_)) {
                        self.heard_at = tokio::time::Instant::now();
                    }
                    Ok(message)
                }
            };
        }
    }
}

/// Send, unless the caller has stopped reading for longer than `timeout`.
pub(super) async fn send(
    sink: &mut SplitSink<WebSocket, Message>,
    message: Message,
    timeout: Duration,
) -> Result<(), Ending> {
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ending::Gone),
        Err(_) => {
            tracing::warn!(
                message = "Caller not reading; ending the call.",
                waited_s = timeout.as_secs_f64()
            );
            Err(Ending::NotReading)
        }
    }
}

/// Whether a read failed on the message size limit.
pub(super) fn is_too_big(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        error.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(_))
    )
}
