//! One Realtime session served by a live call: the client's events in, the
//! call's output ([`Outbound`]) turned into the protocol's server events.
//!
//! parlor's own pipeline does the work (VAD turns, Whisper, the planner with
//! its MCP tools, TTS) through `live::call`, with its pacing, barge-in and
//! "what was heard" bookkeeping; this is only the translation. A spoken turn
//! maps to a user item (speech_started → speech_stopped → committed →
//! item added → transcription completed) and its reply to one response with
//! one assistant item and one `output_audio` content part. Reply audio is
//! resampled from the voice's rate to the protocol's 24 kHz here, once, as
//! the caller's 24 kHz is resampled to the pipeline rate by the call's input.
//!
//! One parlor extension: a tool the spec marks `sensitive` runs, once
//! untrusted text is in the turn's context, only if the caller approves
//! that exact call (as on `/v1/calls` with `tool.confirm`). The question
//! is a `parlor.tool.confirm` server event `{id, server, tool, arguments,
//! timeout_ms}`; the answer a `parlor.tool.confirm` client event `{id,
//! approved}`. Official clients ignore server event types they do not
//! know, and no answer within the timeout is a no, so a client that knows
//! nothing of this only ever sees such calls refused.
//!
//! No carrier: `server/realtime.rs` puts this on a WebSocket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use super::events::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, ClientEvent, Content, ErrorDetail,
    FunctionTool, Item, ItemStatus, PartRef, Response, ResponseStatus, Role, ServerEvent,
    ServerMessage, SessionConfig, StatusDetails, TranscriptionUsage, TurnDetection, Usage, Voice,
    PCM_FORMAT, PCM_RATE,
};
use super::tools::{ClientToolsHandle, ToolRequest};
use crate::audio::{pcm16_le_bytes, pcm16_le_samples, StreamResampler};
use crate::frame::TurnId;
use crate::live::{LiveConfirmer, Outbound, ServerEvent as CallEvent};
use crate::llm::ToolSpec;
use crate::planner::ToolAnswer;
use crate::turns::Turns;

/// How many finished responses a `conversation.item.truncate` can still
/// name; older items are gone from the planner's history's reach anyway.
const REMEMBERED: usize = 8;

/// What a client event asks of the carrier besides the events to send.
#[derive(Debug, Default)]
pub struct ClientReply {
    pub messages: Vec<ServerMessage>,
    /// Caller audio to feed the call: 16-bit PCM at [`PCM_RATE`].
    pub audio: Option<Vec<u8>>,
}

/// The response being produced: one assistant item, one audio part.
struct Reply {
    turn: u64,
    at: PartRef,
    transcript: String,
    /// The voice's rate to 24 kHz; built with the first audio.
    resampler: Option<StreamResampler>,
    /// Samples at 24 kHz sent so far, and where each spoken piece began
    /// (`None` for a filler), so a truncation can say what was heard.
    sent: u64,
    pieces: Vec<(u64, Option<String>)>,
}

/// A finished response a truncation may still name.
struct Spoken {
    item_id: String,
    turn: u64,
    sent: u64,
    pieces: Vec<(u64, Option<String>)>,
}

/// A function call the client was asked to run.
struct ClientCall {
    /// The toolbox's id of the call.
    id: u64,
    call_id: String,
    turn: u64,
    /// Where the planner waits for the result.
    answer: tokio::sync::oneshot::Sender<ToolAnswer>,
    /// The client's `function_call_output`, held until `response.create`.
    output: Option<String>,
}

/// A function call as the response that asks for it shows it.
struct Asked {
    call_id: String,
    item_id: String,
    name: String,
    /// A JSON object, as a string (as the protocol sends it).
    arguments: String,
}

/// One session's protocol state.
pub struct Session {
    turns: Arc<Turns>,
    /// The rate of the call's reply audio (the voice's).
    voice_rate: u32,
    config: SessionConfig,
    next_id: u64,
    /// The user item of each turn in flight, and where its speech began
    /// (ms into the session's audio).
    user_items: VecDeque<(u64, String, u64)>,
    /// The last item added to the conversation.
    last_item: Option<String>,
    /// The last turn whose speech ended and whose reply has not finished.
    open_turn: Option<u64>,
    reply: Option<Reply>,
    /// Turns whose user item is in the conversation.
    committed: VecDeque<u64>,
    /// Caller audio received so far, in ms (the session's audio clock).
    appended_ms: u64,
    /// Turns whose response is over; their late frames are dropped.
    closed: VecDeque<u64>,
    spoken: VecDeque<Spoken>,
    /// The client's declared function tools (none until
    /// [`Self::with_client_tools`]: `session.update` tools are refused).
    client_tools: Option<ClientToolsHandle>,
    /// Function calls sent to the client, waiting for its output.
    calls: Vec<ClientCall>,
    /// Where the caller's `parlor.tool.confirm` answers go (none until
    /// [`Self::with_confirmer`]: every sensitive call is refused).
    confirmer: Option<Arc<LiveConfirmer>>,
}

impl Session {
    /// A session over a call whose turns are `turns` and whose reply audio
    /// is at `voice_rate`; `model` and `voice` are what it reports.
    pub fn new(turns: Arc<Turns>, voice_rate: u32, model: &str, voice: &str) -> Self {
        let config = SessionConfig {
            kind: "realtime".into(),
            id: None,
            object: Some("realtime.session".into()),
            model: Some(model.into()),
            instructions: None,
            output_modalities: Some(vec!["audio".into()]),
            audio: Some(AudioConfig {
                input: Some(AudioInput {
                    format: Some(AudioFormat::pcm()),
                    turn_detection: Some(Some(TurnDetection::ServerVad {
                        threshold: None,
                        prefix_padding_ms: None,
                        silence_duration_ms: None,
                        create_response: Some(true),
                        interrupt_response: Some(true),
                    })),
                    transcription: None,
                }),
                output: Some(AudioOutput {
                    format: Some(AudioFormat::pcm()),
                    voice: Some(Voice::Name(voice.into())),
                    speed: None,
                }),
            }),
            tools: Some(Vec::new()),
            tool_choice: Some("auto".into()),
        };
        let mut session = Self {
            turns,
            voice_rate,
            config,
            next_id: 1,
            user_items: VecDeque::new(),
            last_item: None,
            open_turn: None,
            reply: None,
            committed: VecDeque::new(),
            appended_ms: 0,
            closed: VecDeque::new(),
            spoken: VecDeque::new(),
            client_tools: None,
            calls: Vec::new(),
            confirmer: None,
        };
        let id = session.id("sess");
        session.config.id = Some(id);
        session
    }

    /// The session's planner offers the function tools the client
    /// declares, through `tools` (see `realtime::tools`).
    pub fn with_client_tools(mut self, tools: ClientToolsHandle) -> Self {
        self.client_tools = Some(tools);
        self
    }

    /// The caller answers the session's sensitive tool calls through
    /// `confirmer`, whose questions the carrier passes to
    /// [`Self::on_outbound`].
    pub fn with_confirmer(mut self, confirmer: Arc<LiveConfirmer>) -> Self {
        self.confirmer = Some(confirmer);
        self
    }

    /// The first event of a session.
    pub fn created(&mut self) -> ServerMessage {
        let session = self.config.clone();
        self.message(ServerEvent::SessionCreated { session })
    }

    /// An `error` event for something the client sent.
    pub fn error(&mut self, detail: ErrorDetail) -> ServerMessage {
        self.message(ServerEvent::Error { error: detail })
    }

    // ------------------------------------------------------------ client

    /// What one client event means.
    pub fn on_client(&mut self, event: ClientEvent) -> ClientReply {
        let event_id = event.event_id().map(str::to_string);
        let invalid = |message: &str, param: Option<&str>| {
            ErrorDetail::invalid(message, param, event_id.as_deref())
        };
        let mut reply = ClientReply::default();
        match event {
            ClientEvent::SessionUpdate { session, .. } => match self.update(*session) {
                Ok(()) => {
                    let session = self.config.clone();
                    reply
                        .messages
                        .push(self.message(ServerEvent::SessionUpdated { session }));
                }
                Err((message, param)) => reply
                    .messages
                    .push(self.error(invalid(&message, Some(param)))),
            },
            ClientEvent::InputAudioBufferAppend { audio, .. } => {
                match base64::engine::general_purpose::STANDARD.decode(audio.as_bytes()) {
                    Ok(bytes) => {
                        self.appended_ms += bytes.len() as u64 / 2 * 1000 / PCM_RATE as u64;
                        reply.audio = Some(bytes);
                    }
                    Err(e) => reply.messages.push(self.error(invalid(
                        &format!("`audio` must be base64 of 16-bit PCM at 24 kHz: {e}."),
                        Some("audio"),
                    ))),
                }
            }
            ClientEvent::InputAudioBufferCommit { .. } => reply.messages.push(self.error(invalid(
                "parlor's VAD commits the input audio at the end of each spoken turn \
                 (server_vad); input_audio_buffer.commit is not supported.",
                None,
            ))),
            ClientEvent::InputAudioBufferClear { .. } => {
                // Audio already appended has gone through the VAD; there is
                // no uncommitted buffer to drop.
                reply.messages.push(self.message(ServerEvent::Cleared {}));
            }
            ClientEvent::ConversationItemCreate {
                item:
                    Item::FunctionCallOutput {
                        call_id, output, ..
                    },
                ..
            } => match self.call_output(&call_id, output) {
                Ok(messages) => reply.messages = messages,
                Err(message) => reply
                    .messages
                    .push(self.error(invalid(&message, Some("item.call_id")))),
            },
            ClientEvent::ConversationItemCreate { .. } => reply.messages.push(self.error(invalid(
                "conversation.item.create takes only function_call_output items (the answer \
                 to a function call); the rest of the conversation is built from the \
                 caller's speech.",
                Some("item"),
            ))),
            ClientEvent::ResponseCreate { .. } if !self.calls.is_empty() => {
                reply.messages = self.resume();
            }
            ClientEvent::ResponseCreate { .. } => reply.messages.push(self.error(invalid(
                "parlor starts a response at the end of each spoken turn (server_vad with \
                 create_response), and after the outputs of a response's function calls; \
                 no function call is waiting, so response.create has nothing to start.",
                None,
            ))),
            ClientEvent::ResponseCancel { response_id, .. } => {
                reply.messages = self.cancel(response_id.as_deref(), event_id.as_deref());
            }
            ClientEvent::ParlorToolConfirm { id, approved, .. } => {
                let answered = match &self.confirmer {
                    Some(confirmer) => confirmer.answer(&id, approved).map_err(|e| e.to_string()),
                    None => Err("no tool call on this session asks for confirmation".into()),
                };
                if let Err(message) = answered {
                    reply
                        .messages
                        .push(self.error(invalid(&format!("{message}."), Some("id"))));
                }
            }
            ClientEvent::ConversationItemTruncate {
                item_id,
                content_index,
                audio_end_ms,
                ..
            } => {
                let message = match self.truncate(&item_id, audio_end_ms) {
                    Ok(()) => self.message(ServerEvent::ItemTruncated {
                        item_id,
                        content_index,
                        audio_end_ms,
                    }),
                    Err(message) => self.error(invalid(&message, Some("item_id"))),
                };
                reply.messages.push(message);
            }
        }
        reply
    }

    /// Apply a `session.update`, all or nothing; an error names the field.
    fn update(&mut self, asked: SessionConfig) -> Result<(), (String, &'static str)> {
        if asked.kind != "realtime" {
            return Err((
                format!(
                    "parlor serves `realtime` sessions only; got session.type `{}`.",
                    asked.kind
                ),
                "session.type",
            ));
        }
        if let Some(modalities) = &asked.output_modalities {
            if !modalities.iter().any(|m| m == "audio") {
                return Err((
                    "parlor answers with audio (and its transcript); output_modalities must \
                     include \"audio\"."
                        .into(),
                    "session.output_modalities",
                ));
            }
        }
        let specs = match &asked.tools {
            Some(tools) if !tools.is_empty() && self.client_tools.is_none() => {
                return Err((
                    "Function tools from the client are not supported on this session; the \
                     pipeline's own MCP tools are used."
                        .into(),
                    "session.tools",
                ))
            }
            Some(tools) => Some(tool_specs(tools)?),
            None => None,
        };
        let offer_none = match &asked.tool_choice {
            None => None,
            Some(serde_json::Value::String(choice)) if choice == "auto" => Some(false),
            Some(serde_json::Value::String(choice)) if choice == "none" => Some(true),
            Some(other) => {
                return Err((
                    format!(
                        "parlor's planner chooses its tools itself: tool_choice must be \
                         \"auto\" or \"none\"; got {other}."
                    ),
                    "session.tool_choice",
                ))
            }
        };
        let audio = asked.audio.unwrap_or_default();
        let input = audio.input.unwrap_or_default();
        let output = audio.output.unwrap_or_default();
        for (format, param) in [
            (&input.format, "session.audio.input.format"),
            (&output.format, "session.audio.output.format"),
        ] {
            if let Some(format) = format {
                if format.kind != PCM_FORMAT || format.rate.is_some_and(|r| r != PCM_RATE) {
                    return Err((
                        format!(
                            "parlor speaks audio/pcm at 24000 Hz only; got `{}`{}.",
                            format.kind,
                            format
                                .rate
                                .map(|r| format!(" at {r} Hz"))
                                .unwrap_or_default()
                        ),
                        param,
                    ));
                }
            }
        }
        let turn_detection = match input.turn_detection {
            Some(None) => {
                return Err((
                    "parlor finds turns with its own VAD; turn_detection null (the client \
                     commits) is not supported. Use server_vad or semantic_vad."
                        .into(),
                    "session.audio.input.turn_detection",
                ))
            }
            other => other,
        };
        // Instructions and voice belong to the pipeline's spec: a session
        // reports the pipeline's, not what it asked for.
        if asked.instructions.is_some() {
            tracing::info!(
                message = "session.update instructions not applied; the pipeline's planner prompt is used."
            );
        }
        if let Some(tools) = &self.client_tools {
            if let Some(specs) = specs {
                tools.declare(Some(specs));
                self.config.tools = asked.tools.clone();
            }
            if let Some(none) = offer_none {
                tools.offer_none(none);
                self.config.tool_choice = asked.tool_choice.clone();
            }
        }
        if let (Some(td), Some(audio)) = (turn_detection, self.config.audio.as_mut()) {
            if let Some(input) = audio.input.as_mut() {
                input.turn_detection = Some(td);
            }
        }
        Ok(())
    }

    /// `response.cancel`: stop the response in progress (or the turn whose
    /// reply is still being thought of).
    fn cancel(&mut self, response_id: Option<&str>, event_id: Option<&str>) -> Vec<ServerMessage> {
        if self.reply.is_none() && !self.calls.is_empty() && response_id.is_none() {
            // The response that asked for them is done; what is stopped is
            // the turn waiting for their outputs.
            for call in std::mem::take(&mut self.calls) {
                self.turns.cancel(TurnId(call.turn));
            }
            tracing::info!(message = "Turn waiting for function call outputs cancelled.");
            return Vec::new();
        }
        let active = self.reply.as_ref().map(|r| r.turn).or(self.open_turn);
        let matches = response_id
            .is_none_or(|id| self.reply.as_ref().is_some_and(|r| r.at.response_id == id));
        let Some(turn) = active.filter(|_| matches) else {
            let mut detail = ErrorDetail::invalid(
                "There is no response in progress to cancel.",
                response_id.map(|_| "response_id"),
                event_id,
            );
            detail.code = Some("response_cancel_not_active".into());
            return vec![self.error(detail)];
        };
        self.turns.cancel(TurnId(turn));
        let mut messages = Vec::new();
        if self.reply.is_none() {
            messages.extend(self.begin(turn));
        }
        messages.extend(self.finish(ResponseStatus::Cancelled, Some("client_cancelled")));
        messages
    }

    /// `conversation.item.truncate`: the client played `audio_end_ms` of an
    /// assistant item; the planner keeps only the words heard by then.
    fn truncate(&mut self, item_id: &str, audio_end_ms: u64) -> Result<(), String> {
        let spoken = self
            .spoken
            .iter()
            .find(|s| s.item_id == item_id)
            .ok_or_else(|| {
                format!("No assistant audio item `{item_id}` to truncate (the last {REMEMBERED} responses can be).")
            })?;
        let end = audio_end_ms * PCM_RATE as u64 / 1000;
        if end > spoken.sent {
            return Err(format!(
                "audio_end_ms {audio_end_ms} is past the end of item `{item_id}` ({} ms).",
                spoken.sent * 1000 / PCM_RATE as u64
            ));
        }
        let heard = heard(&spoken.pieces, spoken.sent, end);
        let turn = TurnId(spoken.turn);
        if audio_end_ms == 0 && self.turns.played_before_cut(turn).is_some() {
            // A later item of a reply already cut (the answer after a
            // filler the caller was hearing): it adds nothing heard.
            return Ok(());
        }
        // A barge-in may have recorded its own estimate; the client's
        // playback position is the better one.
        let _ = self.turns.take_heard(turn);
        tracing::info!(message = "Reply truncated.", turn = %turn, audio_end_ms, heard = %heard);
        self.turns
            .record_heard(turn, heard, Duration::from_millis(audio_end_ms));
        Ok(())
    }

    // ------------------------------------------------------------- call

    /// What one item of the call's output means for the client.
    pub fn on_outbound(&mut self, out: Outbound) -> Vec<ServerMessage> {
        match out {
            Outbound::Event(event) => self.on_call_event(event),
            Outbound::TurnDone { event, .. } => self.on_call_event(event),
            Outbound::Audio(bytes) => self.audio(&bytes),
        }
    }

    fn on_call_event(&mut self, event: CallEvent) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        match event {
            CallEvent::SpeechStarted { turn, at_ms } => {
                let item_id = self.id("item");
                if self.user_items.len() >= REMEMBERED {
                    self.user_items.pop_front();
                }
                self.user_items.push_back((turn, item_id.clone(), at_ms));
                out.push(self.message(ServerEvent::SpeechStarted {
                    audio_start_ms: at_ms,
                    item_id,
                }));
            }
            CallEvent::SpeechEnded { turn, speech_ms } => {
                let end = self.speech_start(turn) + speech_ms;
                out.extend(self.commit(turn, end));
            }
            CallEvent::Transcript {
                turn,
                text,
                is_final: true,
            } => {
                // The STT consumes the VAD's end of speech, so a pipeline
                // with one reports the end with the final transcript: the
                // audio received by then is the best end time known here.
                out.extend(self.commit(turn, self.appended_ms));
                let Some(item_id) = self.user_item(turn) else {
                    return out;
                };
                let transcript = text.trim().to_string();
                out.push(self.message(ServerEvent::TranscriptionCompleted {
                    item_id: item_id.clone(),
                    content_index: 0,
                    transcript: transcript.clone(),
                    usage: TranscriptionUsage::duration(0.0),
                }));
                let item = Item::message(
                    &item_id,
                    Role::User,
                    ItemStatus::Completed,
                    vec![Content::audio("input_audio", Some(transcript))],
                );
                out.push(self.message(ServerEvent::ItemDone {
                    item,
                    previous_item_id: None,
                }));
            }
            CallEvent::ReplyDelta { turn, text } => {
                out.extend(self.reply_for(turn));
                if let Some(reply) = self.reply.as_mut().filter(|r| r.turn == turn) {
                    reply.transcript.push_str(&text);
                    let at = reply.at.clone();
                    out.push(
                        self.message(ServerEvent::OutputAudioTranscriptDelta { at, delta: text }),
                    );
                }
            }
            CallEvent::ReplyAudio { turn, text } => {
                out.extend(self.reply_for(turn));
                if let Some(reply) = self.reply.as_mut().filter(|r| r.turn == turn) {
                    reply.pieces.push((reply.sent, Some(text)));
                }
            }
            CallEvent::Filler { turn, .. } => {
                out.extend(self.reply_for(turn));
                if let Some(reply) = self.reply.as_mut().filter(|r| r.turn == turn) {
                    reply.pieces.push((reply.sent, None));
                }
            }
            CallEvent::ToolCall {
                turn, server, tool, ..
            } => {
                // The pipeline's own MCP tools run server-side; the client
                // only hears the answer.
                tracing::debug!(message = "Tool call.", turn, server = %server, tool = %tool);
            }
            CallEvent::BargeIn { turn, .. } => {
                if self.reply.as_ref().is_some_and(|r| r.turn == turn) {
                    out.extend(self.finish(ResponseStatus::Cancelled, Some("turn_detected")));
                }
            }
            CallEvent::TurnError { stage, message, .. } => {
                out.push(self.error(ErrorDetail::server(format!("{stage}: {message}"))));
            }
            CallEvent::TurnDone {
                turn,
                interrupted,
                usage,
                ..
            } => {
                if self.reply.as_ref().is_some_and(|r| r.turn == turn) {
                    let (status, reason) = if interrupted || !self.turns.is_live(TurnId(turn)) {
                        (ResponseStatus::Cancelled, Some("turn_detected"))
                    } else {
                        (ResponseStatus::Completed, None)
                    };
                    // The chain's own counts: its planner's text tokens.
                    let usage = Usage::from_turn_usage(&usage);
                    out.extend(self.finish_with(status, reason, Vec::new(), usage));
                }
                if self.open_turn == Some(turn) {
                    self.open_turn = None;
                }
                self.user_items.retain(|(t, _, _)| *t != turn);
            }
            CallEvent::Error { code, message } => {
                let mut detail = ErrorDetail::invalid(message, None, None);
                detail.code = Some(code);
                out.push(self.error(detail));
            }
            // A sensitive tool call asks the caller (parlor's extension
            // to the protocol; see the module docs).
            CallEvent::ToolConfirm {
                id,
                server,
                tool,
                arguments,
                timeout_ms,
            } => out.push(self.message(ServerEvent::ParlorToolConfirm {
                id,
                server,
                tool,
                arguments,
                timeout_ms,
            })),
            CallEvent::Transcript { .. }
            | CallEvent::CallStarted { .. }
            | CallEvent::CallEnded { .. } => {}
        }
        out
    }

    /// Reply audio from the call (16-bit PCM at the voice's rate).
    fn audio(&mut self, bytes: &[u8]) -> Vec<ServerMessage> {
        let Some(reply) = self.reply.as_mut() else {
            return Vec::new();
        };
        let mut samples = Vec::new();
        if pcm16_le_samples(bytes, &mut samples).is_err() {
            return Vec::new();
        }
        let voice_rate = self.voice_rate;
        let resampler = match &mut reply.resampler {
            Some(r) => r,
            None => {
                match StreamResampler::with_chunk(voice_rate, PCM_RATE, Duration::from_millis(20)) {
                    Ok(r) => reply.resampler.insert(r),
                    Err(error) => {
                        tracing::error!(message = "Cannot resample reply audio.", %error);
                        return Vec::new();
                    }
                }
            }
        };
        let mut resampled = Vec::new();
        if let Err(error) = resampler.process(&samples, &mut resampled) {
            tracing::error!(message = "Cannot resample reply audio.", %error);
            return Vec::new();
        }
        self.audio_delta(&resampled).into_iter().collect()
    }

    fn audio_delta(&mut self, samples: &[f32]) -> Option<ServerMessage> {
        let reply = self.reply.as_mut()?;
        if samples.is_empty() {
            return None;
        }
        reply.sent += samples.len() as u64;
        let at = reply.at.clone();
        let delta = base64::engine::general_purpose::STANDARD.encode(pcm16_le_bytes(samples));
        Some(self.message(ServerEvent::OutputAudioDelta { at, delta }))
    }

    /// The response of `turn`, begun if it is not yet; a late frame of a
    /// finished response begins nothing.
    fn reply_for(&mut self, turn: u64) -> Vec<ServerMessage> {
        if self.closed.contains(&turn) || !self.turns.is_live(TurnId(turn)) {
            return Vec::new();
        }
        let mut out = Vec::new();
        match &self.reply {
            Some(reply) if reply.turn == turn => return out,
            Some(_) => {
                // A newer turn's reply: the older one was cut short.
                out.extend(self.finish(ResponseStatus::Cancelled, Some("turn_detected")));
            }
            None => {}
        }
        out.extend(self.begin(turn));
        out
    }

    /// `response.created` through `response.content_part.added`.
    fn begin(&mut self, turn: u64) -> Vec<ServerMessage> {
        let response_id = self.id("resp");
        let item_id = self.id("item");
        let at = PartRef {
            response_id: response_id.clone(),
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
        };
        let item = Item::message(
            &item_id,
            Role::Assistant,
            ItemStatus::InProgress,
            Vec::new(),
        );
        let previous_item_id = self.last_item.replace(item_id.clone());
        let out = vec![
            self.message(ServerEvent::ResponseCreated {
                response: Response::in_progress(&response_id),
            }),
            self.message(ServerEvent::OutputItemAdded {
                response_id,
                output_index: 0,
                item: item.clone(),
            }),
            self.message(ServerEvent::ItemAdded {
                item,
                previous_item_id,
            }),
            self.message(ServerEvent::ContentPartAdded {
                at: at.clone(),
                part: Content::audio("audio", Some(String::new())),
            }),
        ];
        self.reply = Some(Reply {
            turn,
            at,
            transcript: String::new(),
            resampler: None,
            sent: 0,
            pieces: Vec::new(),
        });
        out
    }

    /// The last audio, then every `.done` event and `response.done`.
    /// A response ended before its turn was (cut short, or function calls
    /// for the client) reports no usage: the turn's counts come at its end.
    fn finish(&mut self, status: ResponseStatus, reason: Option<&str>) -> Vec<ServerMessage> {
        self.finish_with(status, reason, Vec::new(), Usage::default())
    }

    /// [`Self::finish`] with function calls for the client after the
    /// message item, in the same response, and the response's `usage`.
    fn finish_with(
        &mut self,
        status: ResponseStatus,
        reason: Option<&str>,
        calls: Vec<Asked>,
        usage: Usage,
    ) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        if status == ResponseStatus::Completed {
            let mut tail = Vec::new();
            if let Some(resampler) = self.reply.as_mut().and_then(|r| r.resampler.as_mut()) {
                let _ = resampler.finish(&mut tail);
            }
            out.extend(self.audio_delta(&tail));
        }
        let Some(reply) = self.reply.take() else {
            return out;
        };
        if self.closed.len() >= REMEMBERED {
            self.closed.pop_front();
        }
        self.closed.push_back(reply.turn);
        if self.open_turn == Some(reply.turn) {
            self.open_turn = None;
        }
        let item_status = match status {
            ResponseStatus::Completed => ItemStatus::Completed,
            _ => ItemStatus::Incomplete,
        };
        let part = Content::audio("audio", Some(reply.transcript.clone()));
        let item = Item::message(
            &reply.at.item_id,
            Role::Assistant,
            item_status,
            vec![Content::audio(
                "output_audio",
                Some(reply.transcript.clone()),
            )],
        );
        let at = reply.at.clone();
        out.push(self.message(ServerEvent::OutputAudioDone { at: at.clone() }));
        out.push(self.message(ServerEvent::OutputAudioTranscriptDone {
            at: at.clone(),
            transcript: reply.transcript.clone(),
        }));
        out.push(self.message(ServerEvent::ContentPartDone {
            at: at.clone(),
            part,
        }));
        out.push(self.message(ServerEvent::OutputItemDone {
            response_id: at.response_id.clone(),
            output_index: 0,
            item: item.clone(),
        }));
        out.push(self.message(ServerEvent::ItemDone {
            item: item.clone(),
            previous_item_id: None,
        }));
        let (calls_out, call_items) = self.function_items(&at.response_id, 1, calls);
        out.extend(calls_out);
        let mut output = vec![item];
        output.extend(call_items);
        let response = Response {
            status,
            status_details: Some(StatusDetails {
                kind: status,
                reason: reason.map(str::to_string),
                error: None,
            }),
            output,
            usage: Some(usage),
            ..Response::in_progress(&at.response_id)
        };
        out.push(self.message(ServerEvent::ResponseDone { response }));
        if self.spoken.len() >= REMEMBERED {
            self.spoken.pop_front();
        }
        self.spoken.push_back(Spoken {
            item_id: at.item_id,
            turn: reply.turn,
            sent: reply.sent,
            pieces: reply.pieces,
        });
        out
    }

    // ------------------------------------------------------ client tools

    /// Calls of the planner to the client's tools (a step's calls
    /// together), and calls it no longer waits for.
    pub fn on_tool_requests(&mut self, requests: Vec<ToolRequest>) -> Vec<ServerMessage> {
        let mut out = Vec::new();
        let mut asked = Vec::new();
        for request in requests {
            match request {
                ToolRequest::Withdrawn { id } => out.extend(self.withdrawn(id)),
                ToolRequest::Call {
                    id,
                    name,
                    arguments,
                    answer,
                } => asked.push((id, name, arguments, answer)),
            }
        }
        if asked.is_empty() {
            return out;
        }
        let turn = self.reply.as_ref().map(|r| r.turn).or(self.open_turn);
        let Some(turn) = turn.filter(|t| self.turns.is_live(TurnId(*t))) else {
            for (_, name, _, answer) in asked {
                let _ = answer.send(ToolAnswer::error(format!(
                    "{name} was not run: the turn is over"
                )));
            }
            return out;
        };
        let mut calls = Vec::new();
        for (id, name, arguments, answer) in asked {
            let call_id = self.id("call");
            tracing::info!(message = "Function call sent to the client.", turn, %call_id, tool = %name);
            calls.push(Asked {
                call_id: call_id.clone(),
                item_id: self.id("item"),
                name,
                arguments: arguments.to_string(),
            });
            self.calls.push(ClientCall {
                id,
                call_id,
                turn,
                answer,
                output: None,
            });
        }
        if self.reply.as_ref().is_some_and(|r| r.turn == turn) {
            out.extend(self.finish_with(ResponseStatus::Completed, None, calls, Usage::default()));
        } else {
            out.extend(self.function_response(turn, calls));
        }
        out
    }

    /// A response holding only function calls (the planner called its
    /// tools before saying anything).
    fn function_response(&mut self, turn: u64, calls: Vec<Asked>) -> Vec<ServerMessage> {
        let response_id = self.id("resp");
        let mut out = vec![self.message(ServerEvent::ResponseCreated {
            response: Response::in_progress(&response_id),
        })];
        let (calls_out, output) = self.function_items(&response_id, 0, calls);
        out.extend(calls_out);
        let response = Response {
            status: ResponseStatus::Completed,
            status_details: Some(StatusDetails {
                kind: ResponseStatus::Completed,
                reason: None,
                error: None,
            }),
            output,
            usage: Some(Usage::default()),
            ..Response::in_progress(&response_id)
        };
        out.push(self.message(ServerEvent::ResponseDone { response }));
        if self.closed.len() >= REMEMBERED {
            self.closed.pop_front();
        }
        self.closed.push_back(turn);
        if self.open_turn == Some(turn) {
            self.open_turn = None;
        }
        out
    }

    /// The events of function call items from `first` on in a response:
    /// each added, its arguments (in one delta), done.
    fn function_items(
        &mut self,
        response_id: &str,
        first: u32,
        calls: Vec<Asked>,
    ) -> (Vec<ServerMessage>, Vec<Item>) {
        let mut out = Vec::new();
        let mut items = Vec::new();
        for (i, asked) in calls.into_iter().enumerate() {
            let Asked {
                call_id,
                item_id,
                name,
                arguments,
            } = asked;
            let output_index = first + i as u32;
            let item = |status, arguments: &str| Item::FunctionCall {
                id: Some(item_id.clone()),
                object: Some("realtime.item".into()),
                status: Some(status),
                call_id: Some(call_id.clone()),
                name: name.clone(),
                arguments: arguments.into(),
            };
            let previous_item_id = self.last_item.replace(item_id.clone());
            out.push(self.message(ServerEvent::OutputItemAdded {
                response_id: response_id.into(),
                output_index,
                item: item(ItemStatus::InProgress, ""),
            }));
            out.push(self.message(ServerEvent::ItemAdded {
                item: item(ItemStatus::InProgress, ""),
                previous_item_id,
            }));
            out.push(self.message(ServerEvent::FunctionCallArgumentsDelta {
                response_id: response_id.into(),
                item_id: item_id.clone(),
                output_index,
                call_id: call_id.clone(),
                delta: arguments.clone(),
            }));
            out.push(self.message(ServerEvent::FunctionCallArgumentsDone {
                response_id: response_id.into(),
                item_id: item_id.clone(),
                output_index,
                call_id: call_id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
            }));
            let done = item(ItemStatus::Completed, &arguments);
            out.push(self.message(ServerEvent::OutputItemDone {
                response_id: response_id.into(),
                output_index,
                item: done.clone(),
            }));
            out.push(self.message(ServerEvent::ItemDone {
                item: done.clone(),
                previous_item_id: None,
            }));
            items.push(done);
        }
        (out, items)
    }

    /// The client's `function_call_output` for `call_id`: kept until
    /// `response.create`.
    fn call_output(&mut self, call_id: &str, output: String) -> Result<Vec<ServerMessage>, String> {
        let Some(call) = self
            .calls
            .iter_mut()
            .find(|c| c.call_id == call_id && c.output.is_none())
        else {
            return Err(format!(
                "No function call `{call_id}` is waiting for its output (it was answered, \
                 given up after the turn's deadline, or never made)."
            ));
        };
        call.output = Some(output.clone());
        let item_id = self.id("item");
        let item = Item::FunctionCallOutput {
            id: Some(item_id.clone()),
            object: Some("realtime.item".into()),
            status: Some(ItemStatus::Completed),
            call_id: call_id.into(),
            output,
        };
        let previous_item_id = self.last_item.replace(item_id);
        Ok(vec![
            self.message(ServerEvent::ItemAdded {
                item: item.clone(),
                previous_item_id: previous_item_id.clone(),
            }),
            self.message(ServerEvent::ItemDone {
                item,
                previous_item_id,
            }),
        ])
    }

    /// `response.create` after function calls: their outputs go to the
    /// planner (a call without one fails), and the turn's next words are
    /// a new response.
    fn resume(&mut self) -> Vec<ServerMessage> {
        let turn = self.calls[0].turn;
        let (answered, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.calls)
            .into_iter()
            .partition(|c| c.turn == turn);
        self.calls = rest;
        for call in answered {
            let answer = match call.output {
                Some(text) => ToolAnswer {
                    text,
                    is_error: false,
                },
                None => ToolAnswer::error(format!(
                    "the client sent no output for call {} before response.create",
                    call.call_id
                )),
            };
            let _ = call.answer.send(answer);
        }
        self.closed.retain(|t| *t != turn);
        if !self.turns.is_live(TurnId(turn)) {
            return Vec::new();
        }
        self.open_turn = Some(turn);
        let mut out = Vec::new();
        if self.reply.is_some() {
            out.extend(self.finish(ResponseStatus::Cancelled, Some("turn_detected")));
        }
        out.extend(self.begin(turn));
        out
    }

    /// The planner stopped waiting for call `id` (its deadline, a
    /// cancelled turn): a live turn goes on, its next words a new response.
    fn withdrawn(&mut self, id: u64) -> Vec<ServerMessage> {
        let Some(at) = self.calls.iter().position(|c| c.id == id) else {
            return Vec::new();
        };
        let call = self.calls.remove(at);
        tracing::info!(message = "Function call given up.", turn = call.turn, call_id = %call.call_id);
        let waiting = self.calls.iter().any(|c| c.turn == call.turn);
        if !waiting && self.turns.is_live(TurnId(call.turn)) {
            self.closed.retain(|t| *t != call.turn);
            self.open_turn = Some(call.turn);
        }
        Vec::new()
    }

    /// The caller's turn is over: its user item enters the conversation
    /// (once, however the end was learnt).
    fn commit(&mut self, turn: u64, audio_end_ms: u64) -> Vec<ServerMessage> {
        let Some(item_id) = self.user_item(turn) else {
            return Vec::new();
        };
        if self.committed.contains(&turn) {
            return Vec::new();
        }
        if self.committed.len() >= REMEMBERED {
            self.committed.pop_front();
        }
        self.committed.push_back(turn);
        self.open_turn = Some(turn);
        let mut out = vec![self.message(ServerEvent::SpeechStopped {
            audio_end_ms,
            item_id: item_id.clone(),
        })];
        let previous_item_id = self.last_item.replace(item_id.clone());
        out.push(self.message(ServerEvent::Committed {
            item_id: item_id.clone(),
            previous_item_id: previous_item_id.clone(),
        }));
        let item = Item::message(
            &item_id,
            Role::User,
            ItemStatus::Completed,
            vec![Content::audio("input_audio", None)],
        );
        out.push(self.message(ServerEvent::ItemAdded {
            item,
            previous_item_id,
        }));
        out
    }

    fn user_item(&self, turn: u64) -> Option<String> {
        self.user_items
            .iter()
            .find(|(t, _, _)| *t == turn)
            .map(|(_, id, _)| id.clone())
    }

    fn speech_start(&self, turn: u64) -> u64 {
        self.user_items
            .iter()
            .find(|(t, _, _)| *t == turn)
            .map_or(0, |(_, _, at)| *at)
    }

    fn id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}_{}", self.next_id);
        self.next_id += 1;
        id
    }

    fn message(&mut self, event: ServerEvent) -> ServerMessage {
        ServerMessage {
            event_id: self.id("event"),
            event,
        }
    }
}

/// The client's function tools as the planner offers them; an error names
/// the tool that is not a function tool.
fn tool_specs(tools: &[FunctionTool]) -> Result<Vec<ToolSpec>, (String, &'static str)> {
    tools
        .iter()
        .map(|tool| {
            if tool.kind != "function" || tool.name.trim().is_empty() {
                return Err((
                    format!(
                        "parlor runs function tools only (type \"function\" with a name); \
                         got type `{}` named `{}`.",
                        tool.kind, tool.name
                    ),
                    "session.tools",
                ));
            }
            Ok(ToolSpec::new(
                tool.name.clone(),
                tool.description.clone().unwrap_or_default(),
                tool.parameters
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            ))
        })
        .collect()
}

/// The reply text heard by sample `end` of `sent`: whole pieces before it,
/// and the played share of the words of the piece it falls in.
fn heard(pieces: &[(u64, Option<String>)], sent: u64, end: u64) -> String {
    let mut words: Vec<&str> = Vec::new();
    for (i, (start, text)) in pieces.iter().enumerate() {
        if *start >= end {
            break;
        }
        let Some(text) = text else { continue };
        let stop = pieces.get(i + 1).map(|(s, _)| *s).unwrap_or(sent);
        let piece: Vec<&str> = text.split_whitespace().collect();
        let share = if stop <= *start {
            1.0
        } else {
            ((end - start) as f64 / (stop - start) as f64).min(1.0)
        };
        let n = (piece.len() as f64 * share).round() as usize;
        words.extend(&piece[..n.min(piece.len())]);
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;

    fn session() -> (Session, Arc<Turns>) {
        let turns = Arc::new(Turns::new(true, CancellationToken::new()));
        (Session::new(turns.clone(), 24_000, "local", "joe"), turns)
    }

    fn kinds(messages: &[ServerMessage]) -> Vec<String> {
        messages
            .iter()
            .map(|m| {
                serde_json::to_value(m).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn event(session: &mut Session, event: CallEvent) -> Vec<String> {
        kinds(&session.on_outbound(Outbound::Event(event)))
    }

    #[test]
    fn a_turn_becomes_a_user_item_and_a_response_in_order() {
        let (mut s, turns) = session();
        let turn = turns.begin().0;
        assert_eq!(
            event(&mut s, CallEvent::SpeechStarted { turn, at_ms: 100 }),
            ["input_audio_buffer.speech_started"]
        );
        assert_eq!(
            event(
                &mut s,
                CallEvent::SpeechEnded {
                    turn,
                    speech_ms: 900
                }
            ),
            [
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.added"
            ]
        );
        let transcript = CallEvent::Transcript {
            turn,
            text: " Where is my order?".into(),
            is_final: true,
        };
        assert_eq!(
            event(&mut s, transcript),
            [
                "conversation.item.input_audio_transcription.completed",
                "conversation.item.done"
            ]
        );
        let delta = CallEvent::ReplyDelta {
            turn,
            text: "It shipped.".into(),
        };
        assert_eq!(
            event(&mut s, delta),
            [
                "response.created",
                "response.output_item.added",
                "conversation.item.added",
                "response.content_part.added",
                "response.output_audio_transcript.delta"
            ]
        );
        event(
            &mut s,
            CallEvent::ReplyAudio {
                turn,
                text: "It shipped.".into(),
            },
        );
        let audio = s.on_outbound(Outbound::Audio(pcm16_le_bytes(&[0.1; 480])));
        assert_eq!(kinds(&audio), ["response.output_audio.delta"]);
        let done = CallEvent::TurnDone {
            turn,
            transcript: String::new(),
            reply: String::new(),
            interrupted: false,
            voice_to_voice_ms: None,
            stages: serde_json::Value::Null,
            usage: crate::frame::Usage {
                input_text_tokens: 900,
                output_text_tokens: 12,
                transcribed_seconds: 1.5,
                ..Default::default()
            },
        };
        let done = s.on_outbound(Outbound::Event(done));
        assert_eq!(
            kinds(&done).last().map(String::as_str),
            Some("response.done")
        );
        let last = serde_json::to_value(done.last().unwrap()).unwrap();
        assert_eq!(last["response"]["status"], "completed");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["transcript"],
            "It shipped."
        );
        // The chain's planner tokens, as text tokens.
        let usage = &last["response"]["usage"];
        assert_eq!(usage["input_tokens"], 900);
        assert_eq!(usage["output_tokens"], 12);
        assert_eq!(usage["total_tokens"], 912);
        assert_eq!(usage["input_token_details"]["text_tokens"], 900);
        assert_eq!(usage["input_token_details"]["audio_tokens"], 0);
        assert_eq!(usage["output_token_details"]["text_tokens"], 12);
    }

    #[test]
    fn a_final_transcript_commits_a_turn_whose_end_was_not_reported() {
        let (mut s, turns) = session();
        let turn = turns.begin().0;
        event(&mut s, CallEvent::SpeechStarted { turn, at_ms: 0 });
        let transcript = CallEvent::Transcript {
            turn,
            text: "hi".into(),
            is_final: true,
        };
        assert_eq!(
            event(&mut s, transcript),
            [
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.input_audio_transcription.completed",
                "conversation.item.done"
            ]
        );
    }

    #[test]
    fn cancel_ends_the_response_and_cancels_the_turn() {
        let (mut s, turns) = session();
        let turn = turns.begin().0;
        event(&mut s, CallEvent::SpeechStarted { turn, at_ms: 0 });
        event(
            &mut s,
            CallEvent::SpeechEnded {
                turn,
                speech_ms: 500,
            },
        );
        event(
            &mut s,
            CallEvent::ReplyDelta {
                turn,
                text: "Hello".into(),
            },
        );
        let reply = s.on_client(ClientEvent::ResponseCancel {
            event_id: None,
            response_id: None,
        });
        let last = serde_json::to_value(reply.messages.last().unwrap()).unwrap();
        assert_eq!(last["type"], "response.done");
        assert_eq!(last["response"]["status"], "cancelled");
        assert_eq!(
            last["response"]["status_details"]["reason"],
            "client_cancelled"
        );
        assert!(!turns.is_live(TurnId(turn)));
        // Late frames of the cancelled turn begin nothing.
        assert!(event(
            &mut s,
            CallEvent::ReplyDelta {
                turn,
                text: "x".into()
            }
        )
        .is_empty());
        // Nothing left to cancel.
        let again = s.on_client(ClientEvent::ResponseCancel {
            event_id: Some("c2".into()),
            response_id: None,
        });
        let error = serde_json::to_value(&again.messages[0]).unwrap();
        assert_eq!(error["error"]["code"], "response_cancel_not_active");
        assert_eq!(error["error"]["event_id"], "c2");
    }

    #[test]
    fn truncate_records_the_words_heard() {
        assert_eq!(
            heard(
                &[
                    (0, Some("one two".into())),
                    (100, Some("three four".into()))
                ],
                200,
                150
            ),
            "one two three"
        );
        assert_eq!(heard(&[(0, None), (50, Some("a b".into()))], 100, 40), "");
    }

    #[test]
    fn session_update_refuses_what_parlor_cannot_do_and_names_the_field() {
        let (mut s, _) = session();
        let ask = |json: serde_json::Value| {
            let ClientEvent::SessionUpdate { session, .. } = serde_json::from_value(
                serde_json::json!({"type": "session.update", "session": json}),
            )
            .unwrap() else {
                unreachable!()
            };
            ClientEvent::SessionUpdate {
                event_id: Some("u1".into()),
                session,
            }
        };
        let param = |reply: ClientReply| {
            let v = serde_json::to_value(&reply.messages[0]).unwrap();
            (
                v["type"].as_str().unwrap().to_string(),
                v["error"]["param"].clone(),
            )
        };
        let ok = s.on_client(ask(
            serde_json::json!({"type": "realtime", "instructions": "hi",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": {"type": "semantic_vad"}}}}),
        ));
        assert_eq!(param(ok).0, "session.updated");
        let bad = s.on_client(ask(serde_json::json!({"type": "realtime",
            "audio": {"input": {"format": {"type": "audio/pcmu"}}}})));
        assert_eq!(
            param(bad),
            ("error".into(), "session.audio.input.format".into())
        );
        let bad = s.on_client(ask(serde_json::json!({"type": "realtime",
            "audio": {"input": {"turn_detection": null}}})));
        assert_eq!(
            param(bad),
            ("error".into(), "session.audio.input.turn_detection".into())
        );
        let bad = s.on_client(ask(serde_json::json!({"type": "transcription"})));
        assert_eq!(param(bad), ("error".into(), "session.type".into()));
    }

    #[tokio::test]
    async fn a_client_tool_call_is_a_response_and_its_output_resumes_the_turn() {
        let (handle, _asked) = ClientToolsHandle::new();
        let turns = Arc::new(Turns::new(true, CancellationToken::new()));
        let mut s =
            Session::new(turns.clone(), 24_000, "local", "joe").with_client_tools(handle.clone());
        let update: ClientEvent = serde_json::from_value(serde_json::json!({
            "type": "session.update",
            "session": {"type": "realtime", "tools": [{"type": "function", "name": "get_store_hours",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}
        }))
        .unwrap();
        assert_eq!(kinds(&s.on_client(update).messages), ["session.updated"]);
        assert!(handle.client_runs());
        let turn = turns.begin().0;
        event(&mut s, CallEvent::SpeechStarted { turn, at_ms: 0 });
        event(
            &mut s,
            CallEvent::SpeechEnded {
                turn,
                speech_ms: 500,
            },
        );

        let (answer, answered) = tokio::sync::oneshot::channel();
        let asked = s.on_tool_requests(vec![ToolRequest::Call {
            id: 1,
            name: "get_store_hours".into(),
            arguments: serde_json::json!({"city": "Lisbon"}),
            answer,
        }]);
        assert_eq!(
            kinds(&asked),
            [
                "response.created",
                "response.output_item.added",
                "conversation.item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "conversation.item.done",
                "response.done"
            ]
        );
        let done = serde_json::to_value(asked.last().unwrap()).unwrap();
        let call = &done["response"]["output"][0];
        assert_eq!(call["type"], "function_call");
        assert_eq!(call["name"], "get_store_hours");
        let call_id = call["call_id"].as_str().unwrap().to_string();
        let args: serde_json::Value =
            serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["city"], "Lisbon");

        let output = |call_id: &str| -> ClientEvent {
            serde_json::from_value(serde_json::json!({
                "type": "conversation.item.create", "event_id": "o1",
                "item": {"type": "function_call_output", "call_id": call_id, "output": "Closes at midnight."}
            }))
            .unwrap()
        };
        let unknown = s.on_client(output("call_x"));
        let error = serde_json::to_value(&unknown.messages[0]).unwrap();
        assert_eq!(error["error"]["param"], "item.call_id");
        assert_eq!(error["error"]["event_id"], "o1");
        assert_eq!(
            kinds(&s.on_client(output(&call_id)).messages),
            ["conversation.item.added", "conversation.item.done"]
        );
        // A second output for the same call is refused.
        assert_eq!(kinds(&s.on_client(output(&call_id)).messages), ["error"]);

        let create: ClientEvent =
            serde_json::from_value(serde_json::json!({"type": "response.create"})).unwrap();
        let resumed = s.on_client(create);
        assert_eq!(kinds(&resumed.messages)[0], "response.created");
        let answer = answered.await.unwrap();
        assert_eq!(answer.text, "Closes at midnight.");
        assert!(!answer.is_error);
        // The turn's next words are the new response's.
        let said = event(
            &mut s,
            CallEvent::ReplyDelta {
                turn,
                text: "At midnight.".into(),
            },
        );
        assert_eq!(said, ["response.output_audio_transcript.delta"]);
    }

    /// A `parlor.tool.confirm` client event.
    fn confirm(id: &str, approved: bool) -> ClientEvent {
        ClientEvent::ParlorToolConfirm {
            event_id: Some("answer_1".into()),
            id: id.into(),
            approved,
        }
    }

    #[tokio::test]
    async fn a_sensitive_call_is_asked_about_and_the_callers_answer_decides() {
        use crate::planner::{ConfirmRequest, Confirmation, Confirmer};

        let (confirmer, mut questions) = LiveConfirmer::new(Duration::from_secs(30));
        let (s, _turns) = session();
        let mut s = s.with_confirmer(confirmer.clone());
        let request = ConfirmRequest {
            server: "orders".into(),
            tool: "orders__cancel_order".into(),
            arguments: serde_json::json!({"order_id": 1043}),
        };
        for approved in [true, false] {
            let waiting = tokio::spawn({
                let (confirmer, request) = (confirmer.clone(), request.clone());
                async move { confirmer.confirm(request).await }
            });
            let question = questions.recv().await.expect("a question");
            let asked = s.on_outbound(Outbound::Event(question));
            let asked = serde_json::to_value(&asked[0]).unwrap();
            assert_eq!(asked["type"], "parlor.tool.confirm");
            assert_eq!(asked["tool"], "orders__cancel_order");
            assert_eq!(asked["arguments"]["order_id"], 1043);
            assert_eq!(asked["timeout_ms"], 30_000);
            let id = asked["id"].as_str().unwrap().to_string();
            assert!(s.on_client(confirm(&id, approved)).messages.is_empty());
            let expected = if approved {
                Confirmation::Approved
            } else {
                Confirmation::Declined
            };
            assert_eq!(waiting.await.unwrap(), expected);
            // The same question cannot be answered twice.
            let again = s.on_client(confirm(&id, true)).messages;
            let again = serde_json::to_value(&again[0]).unwrap();
            assert_eq!(again["type"], "error");
            assert_eq!(again["error"]["param"], "id");
            assert_eq!(again["error"]["event_id"], "answer_1");
        }
    }

    #[test]
    fn an_answer_on_a_session_that_asks_nothing_is_an_error() {
        let (mut s, _turns) = session();
        let answered = s.on_client(confirm("confirm_1", true)).messages;
        let answered = serde_json::to_value(&answered[0]).unwrap();
        assert_eq!(answered["type"], "error");
        assert_eq!(answered["error"]["param"], "id");
    }

    #[test]
    fn a_call_given_up_reopens_the_turn_for_its_apology() {
        let (handle, _asked) = ClientToolsHandle::new();
        let turns = Arc::new(Turns::new(true, CancellationToken::new()));
        let mut s = Session::new(turns.clone(), 24_000, "local", "joe").with_client_tools(handle);
        let turn = turns.begin().0;
        event(&mut s, CallEvent::SpeechStarted { turn, at_ms: 0 });
        event(
            &mut s,
            CallEvent::SpeechEnded {
                turn,
                speech_ms: 500,
            },
        );
        let (answer, _answered) = tokio::sync::oneshot::channel();
        s.on_tool_requests(vec![ToolRequest::Call {
            id: 7,
            name: "f".into(),
            arguments: serde_json::json!({}),
            answer,
        }]);
        // Given up (the planner's deadline): the turn's next words, its
        // apology, begin a new response.
        assert!(s
            .on_tool_requests(vec![ToolRequest::Withdrawn { id: 7 }])
            .is_empty());
        let said = event(
            &mut s,
            CallEvent::ReplyDelta {
                turn,
                text: "Sorry.".into(),
            },
        );
        assert_eq!(said[0], "response.created");
    }
}
