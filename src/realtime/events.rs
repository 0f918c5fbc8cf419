//! The OpenAI Realtime protocol's events (GA shape), as JSON: what a client
//! sends ([`ClientEvent`]) and what a server answers ([`ServerMessage`]).
//!
//! Field names follow the official `openai` Python package
//! (`openai/types/realtime/`), so its client parses what parlor sends. Only
//! the events parlor uses are typed; a client event of another type is
//! [`Parsed::Unknown`] (the server ignores it), while a known type with a
//! wrong field is a [`BadEvent`] naming the event and the field.
//!
//! No carrier here: the server route (`server/realtime.rs`) and a later
//! realtime client stage share these types.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// The only audio format parlor speaks on this protocol: 16-bit mono PCM.
pub const PCM_FORMAT: &str = "audio/pcm";
/// ...at the protocol's fixed rate.
pub const PCM_RATE: u32 = 24_000;

// ---------------------------------------------------------------- client

/// An event from the client, of a type parlor acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    #[serde(rename = "session.update")]
    SessionUpdate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        /// Boxed: far bigger than any other event.
        session: Box<SessionConfig>,
    },
    /// Base64 of 16-bit little-endian mono PCM at the session's input rate.
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        audio: String,
    },
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioBufferCommit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.clear")]
    InputAudioBufferClear {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_item_id: Option<String>,
        item: Item,
    },
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    /// `response` holds per-response overrides (instructions, tools...).
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<Value>,
    },
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_id: Option<String>,
    },
    /// parlor's extension: the caller's answer to a `parlor.tool.confirm`
    /// server event with the same `id`.
    #[serde(rename = "parlor.tool.confirm")]
    ParlorToolConfirm {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
        id: String,
        approved: bool,
    },
}

/// The client event types [`ClientEvent`] reads.
const KNOWN: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
    "parlor.tool.confirm",
];

/// What a text frame from the client was.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Event(ClientEvent),
    /// A well-formed event of a type parlor does not act on.
    Unknown {
        kind: String,
    },
}

/// A client event parlor could not read; it becomes an `error` event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct BadEvent {
    pub message: String,
    /// The client's `event_id`, if it could be read, to echo back.
    pub event_id: Option<String>,
}

impl ClientEvent {
    /// Read one text frame.
    ///
    /// # Errors
    /// [`BadEvent`] for text that is not a JSON object with a string
    /// `type`, or a known event with a missing or mistyped field.
    pub fn parse(text: &str) -> Result<Parsed, BadEvent> {
        let value: Value = serde_json::from_str(text).map_err(|e| BadEvent {
            message: format!("The event is not valid JSON: {e}."),
            event_id: None,
        })?;
        let event_id = value
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return Err(BadEvent {
                message: "Every client event is a JSON object with a string `type` \
                          (e.g. \"input_audio_buffer.append\")."
                    .into(),
                event_id,
            });
        };
        if !KNOWN.contains(&kind) {
            return Ok(Parsed::Unknown { kind: kind.into() });
        }
        let kind = kind.to_string();
        serde_json::from_value(value)
            .map(Parsed::Event)
            .map_err(|e| BadEvent {
                message: format!("Invalid `{kind}` event: {e}."),
                event_id,
            })
    }

    pub fn event_id(&self) -> Option<&str> {
        match self {
            ClientEvent::SessionUpdate { event_id, .. }
            | ClientEvent::InputAudioBufferAppend { event_id, .. }
            | ClientEvent::InputAudioBufferCommit { event_id }
            | ClientEvent::InputAudioBufferClear { event_id }
            | ClientEvent::ConversationItemCreate { event_id, .. }
            | ClientEvent::ConversationItemTruncate { event_id, .. }
            | ClientEvent::ResponseCreate { event_id, .. }
            | ClientEvent::ResponseCancel { event_id, .. }
            | ClientEvent::ParlorToolConfirm { event_id, .. } => event_id.as_deref(),
        }
    }
}

/// A session's configuration: what `session.update` asks for, and what
/// `session.created`/`session.updated` report. Fields parlor does not use
/// (tracing, prompt, truncation...) are accepted and not echoed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Always `realtime` for a speech-to-speech session (transcription
    /// sessions are another type).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<FunctionTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<AudioInput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<AudioOutput>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    /// Absent: unchanged; `null`: no turn detection (the client commits).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub turn_detection: Option<Option<TurnDetection>>,
    /// How the server transcribes the caller (`{"model": "..."}`); parlor's
    /// own server always transcribes with its Whisper and ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AudioOutput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<Voice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<f64>,
}

/// `{"type": "audio/pcm", "rate": 24000}` (or `audio/pcmu`, `audio/pcma`,
/// which parlor refuses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

impl AudioFormat {
    pub fn pcm() -> Self {
        Self {
            kind: PCM_FORMAT.into(),
            rate: Some(PCM_RATE),
        }
    }
}

/// A voice by name, or a custom voice by id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Voice {
    Name(String),
    Id { id: String },
}

/// How the server finds the end of the caller's turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        threshold: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix_padding_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        silence_duration_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
    },
    SemanticVad {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eagerness: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        create_response: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interrupt_response: Option<bool>,
    },
}

/// A function the model may call; the client runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionTool {
    /// Only `function` tools exist in this protocol's client-run kind.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// `Some(None)` for an explicit `null`, so `turn_detection: null` differs
/// from leaving it out.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

// ------------------------------------------------------------ conversation

/// One item of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<ItemStatus>,
        role: Role,
        content: Vec<Content>,
    },
    FunctionCall {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<ItemStatus>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        call_id: Option<String>,
        name: String,
        arguments: String,
    },
    FunctionCallOutput {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<ItemStatus>,
        call_id: String,
        output: String,
    },
    /// An item type parlor does not use (a provider's `mcp_call`...): read
    /// so the event around it still reads.
    #[serde(other)]
    Other,
}

impl Item {
    /// A message item as the server reports it.
    pub fn message(id: &str, role: Role, status: ItemStatus, content: Vec<Content>) -> Self {
        Item::Message {
            id: Some(id.into()),
            object: Some("realtime.item".into()),
            status: Some(status),
            role,
            content,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Completed,
    Incomplete,
    InProgress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Assistant,
    System,
}

/// One content part of a message: `input_audio`, `input_text`,
/// `output_audio`, `output_text` (and `audio`/`text` in content-part
/// events). Audio bytes are never echoed back, so `audio` stays empty in
/// what parlor sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The words of audio content; `null` until known.
    #[serde(default)]
    pub transcript: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<String>,
}

impl Content {
    pub fn audio(kind: &str, transcript: Option<String>) -> Self {
        Self {
            kind: kind.into(),
            text: None,
            transcript,
            audio: None,
        }
    }
}

// ---------------------------------------------------------------- server

/// One server event with its id (`event_N`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerMessage {
    pub event_id: String,
    #[serde(flatten)]
    pub event: ServerEvent,
}

/// Where a piece of a response belongs: the response, its output item, and
/// the content part in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRef {
    pub response_id: String,
    pub item_id: String,
    pub output_index: u32,
    pub content_index: u32,
}

/// An event the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ServerEvent {
    #[serde(rename = "session.created")]
    SessionCreated { session: SessionConfig },
    #[serde(rename = "session.updated")]
    SessionUpdated { session: SessionConfig },
    /// The VAD heard speech start, `audio_start_ms` into the session's audio.
    #[serde(rename = "input_audio_buffer.speech_started")]
    SpeechStarted {
        audio_start_ms: u64,
        item_id: String,
    },
    #[serde(rename = "input_audio_buffer.speech_stopped")]
    SpeechStopped { audio_end_ms: u64, item_id: String },
    #[serde(rename = "input_audio_buffer.committed")]
    Committed {
        item_id: String,
        previous_item_id: Option<String>,
    },
    #[serde(rename = "input_audio_buffer.cleared")]
    Cleared {},
    #[serde(rename = "conversation.item.added")]
    ItemAdded {
        item: Item,
        previous_item_id: Option<String>,
    },
    #[serde(rename = "conversation.item.done")]
    ItemDone {
        item: Item,
        previous_item_id: Option<String>,
    },
    #[serde(rename = "conversation.item.truncated")]
    ItemTruncated {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    #[serde(rename = "conversation.item.input_audio_transcription.completed")]
    TranscriptionCompleted {
        item_id: String,
        content_index: u32,
        transcript: String,
        usage: TranscriptionUsage,
    },
    #[serde(rename = "response.created")]
    ResponseCreated { response: Response },
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        response_id: String,
        output_index: u32,
        item: Item,
    },
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        #[serde(flatten)]
        at: PartRef,
        part: Content,
    },
    /// Base64 of 16-bit little-endian mono PCM at 24 kHz.
    #[serde(rename = "response.output_audio.delta")]
    OutputAudioDelta {
        #[serde(flatten)]
        at: PartRef,
        delta: String,
    },
    #[serde(rename = "response.output_audio_transcript.delta")]
    OutputAudioTranscriptDelta {
        #[serde(flatten)]
        at: PartRef,
        delta: String,
    },
    #[serde(rename = "response.output_audio.done")]
    OutputAudioDone {
        #[serde(flatten)]
        at: PartRef,
    },
    #[serde(rename = "response.output_audio_transcript.done")]
    OutputAudioTranscriptDone {
        #[serde(flatten)]
        at: PartRef,
        transcript: String,
    },
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        #[serde(flatten)]
        at: PartRef,
        part: Content,
    },
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        delta: String,
    },
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        response_id: String,
        item_id: String,
        output_index: u32,
        call_id: String,
        name: String,
        arguments: String,
    },
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        response_id: String,
        output_index: u32,
        item: Item,
    },
    #[serde(rename = "response.done")]
    ResponseDone { response: Response },
    #[serde(rename = "error")]
    Error { error: ErrorDetail },
    /// parlor's extension: a sensitive tool call of the pipeline's waits
    /// for the caller's approval. Answer with a `parlor.tool.confirm`
    /// client event carrying the same `id` within `timeout_ms`, or it is
    /// not done (a client that ignores this event declines by silence).
    #[serde(rename = "parlor.tool.confirm")]
    ParlorToolConfirm {
        id: String,
        server: String,
        /// The tool as the planner names it (`server__tool`).
        tool: String,
        /// The call's arguments, a JSON object.
        arguments: Value,
        timeout_ms: u64,
    },
}

/// The transcription's cost: parlor's Whisper is billed by nobody, so the
/// audio's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptionUsage {
    #[serde(rename = "type")]
    pub kind: String,
    /// Absent from OpenAI's `tokens` usage (its gpt-4o transcribe models):
    /// the event must still read, or the caller's transcript is lost.
    #[serde(default)]
    pub seconds: f64,
}

impl TranscriptionUsage {
    pub fn duration(seconds: f64) -> Self {
        Self {
            kind: "duration".into(),
            seconds,
        }
    }
}

/// A response, as `response.created` and `response.done` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub id: String,
    #[serde(default)]
    pub object: String,
    pub status: ResponseStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_details: Option<StatusDetails>,
    #[serde(default)]
    pub output: Vec<Item>,
    #[serde(default)]
    pub output_modalities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Response {
    pub fn in_progress(id: &str) -> Self {
        Self {
            id: id.into(),
            object: "realtime.response".into(),
            status: ResponseStatus::InProgress,
            status_details: None,
            output: Vec::new(),
            output_modalities: vec!["audio".into()],
            usage: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    InProgress,
    Completed,
    Cancelled,
    Failed,
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDetails {
    #[serde(rename = "type")]
    pub kind: ResponseStatus,
    /// For a cancelled response: `turn_detected` (the caller spoke) or
    /// `client_cancelled` (`response.cancel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// Token counts. parlor's own route reports its chain's: the planner's
/// text tokens (the chain hears and speaks through Whisper and a voice, not
/// audio tokens).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub total_tokens: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The input split into text and audio (OpenAI bills them apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_details: Option<TokenDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_token_details: Option<TokenDetails>,
}

/// Text and audio tokens of a response's input or output.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
    /// Of the input, the tokens a prompt cache held (input only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_tokens_details: Option<CachedTokenDetails>,
}

/// The cached input tokens, text and audio apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CachedTokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
}

impl Usage {
    /// A turn's text tokens in the protocol's shape, split as OpenAI
    /// reports them (parlor's seconds and characters have no field here).
    pub fn from_turn_usage(usage: &crate::frame::Usage) -> Self {
        let input_tokens = usage.input_text_tokens + usage.input_audio_tokens;
        let output_tokens = usage.output_text_tokens + usage.output_audio_tokens;
        Usage {
            total_tokens: input_tokens + output_tokens,
            input_tokens,
            output_tokens,
            input_token_details: Some(TokenDetails {
                text_tokens: usage.input_text_tokens,
                audio_tokens: usage.input_audio_tokens,
                cached_tokens: Some(
                    usage.cached_input_text_tokens + usage.cached_input_audio_tokens,
                ),
                cached_tokens_details: Some(CachedTokenDetails {
                    text_tokens: usage.cached_input_text_tokens,
                    audio_tokens: usage.cached_input_audio_tokens,
                }),
            }),
            output_token_details: Some(TokenDetails {
                text_tokens: usage.output_text_tokens,
                audio_tokens: usage.output_audio_tokens,
                ..TokenDetails::default()
            }),
        }
    }

    /// In parlor's units: text and audio tokens apart where the server
    /// split them, all counted as text where it did not.
    pub fn to_turn_usage(&self) -> crate::frame::Usage {
        let split = |details: &Option<TokenDetails>, total: u64| match details {
            Some(d) => (d.text_tokens, d.audio_tokens),
            None => (total, 0),
        };
        let (input_text, input_audio) = split(&self.input_token_details, self.input_tokens);
        let (output_text, output_audio) = split(&self.output_token_details, self.output_tokens);
        // Cached input, split where the server split it, else counted as
        // text (where the prompt cache mostly is: instructions and tools).
        let (cached_text, cached_audio) = match &self.input_token_details {
            Some(TokenDetails {
                cached_tokens_details: Some(c),
                ..
            }) => (c.text_tokens, c.audio_tokens),
            Some(d) => (d.cached_tokens.unwrap_or(0), 0),
            None => (0, 0),
        };
        crate::frame::Usage {
            input_text_tokens: input_text,
            cached_input_text_tokens: cached_text,
            cached_input_audio_tokens: cached_audio,
            output_text_tokens: output_text,
            input_audio_tokens: input_audio,
            output_audio_tokens: output_audio,
            ..Default::default()
        }
    }
}

/// The body of an `error` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// `invalid_request_error` for something the client sent,
    /// `server_error` for parlor's own failures.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    /// The client event this answers, if it had an id.
    #[serde(default)]
    pub event_id: Option<String>,
}

impl ErrorDetail {
    /// Something the client sent was wrong.
    pub fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        event_id: Option<&str>,
    ) -> Self {
        Self {
            kind: "invalid_request_error".into(),
            code: None,
            message: message.into(),
            param: param.map(str::to_string),
            event_id: event_id.map(str::to_string),
        }
    }

    /// parlor failed at its part.
    pub fn server(message: impl Into<String>) -> Self {
        Self {
            kind: "server_error".into(),
            code: None,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_session_update_reads_formats_voice_tools_and_null_turn_detection() {
        let text = json!({
            "type": "session.update",
            "event_id": "ev1",
            "session": {
                "type": "realtime",
                "instructions": "Be brief.",
                "tracing": "auto",
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": null},
                    "output": {"format": {"type": "audio/pcm"}, "voice": "marin"}
                },
                "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
            }
        })
        .to_string();
        let Ok(Parsed::Event(ClientEvent::SessionUpdate { event_id, session })) =
            ClientEvent::parse(&text)
        else {
            panic!("not a session.update")
        };
        assert_eq!(event_id.as_deref(), Some("ev1"));
        assert_eq!(session.kind, "realtime");
        let audio = session.audio.unwrap();
        let input = audio.input.unwrap();
        assert_eq!(input.format, Some(AudioFormat::pcm()));
        assert_eq!(input.turn_detection, Some(None), "null is not absent");
        assert_eq!(
            audio.output.unwrap().voice,
            Some(Voice::Name("marin".into()))
        );
        assert_eq!(session.tools.unwrap()[0].name, "lookup");
    }

    #[test]
    fn turn_detection_left_out_or_set() {
        let input: AudioInput = serde_json::from_value(json!({})).unwrap();
        assert_eq!(input.turn_detection, None);
        let input: AudioInput = serde_json::from_value(
            json!({"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}),
        )
        .unwrap();
        assert!(matches!(
            input.turn_detection,
            Some(Some(TurnDetection::SemanticVad { .. }))
        ));
    }

    #[test]
    fn unknown_types_are_not_errors_but_bad_fields_are() {
        assert_eq!(
            ClientEvent::parse(r#"{"type":"output_audio_buffer.clear"}"#),
            Ok(Parsed::Unknown {
                kind: "output_audio_buffer.clear".into()
            })
        );
        let err = ClientEvent::parse(r#"{"type":"input_audio_buffer.append","event_id":"e7"}"#)
            .unwrap_err();
        assert_eq!(err.event_id.as_deref(), Some("e7"));
        assert!(
            err.message.contains("input_audio_buffer.append") && err.message.contains("audio"),
            "{}",
            err.message
        );
        let err = ClientEvent::parse("{not json").unwrap_err();
        assert!(err.message.contains("not valid JSON"), "{}", err.message);
        let err = ClientEvent::parse(r#"{"event_id":"e8"}"#).unwrap_err();
        assert!(err.message.contains("`type`"), "{}", err.message);
        assert_eq!(err.event_id.as_deref(), Some("e8"));
    }

    #[test]
    fn a_function_call_output_item_is_read() {
        let text = r#"{"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c1","output":"{\"ok\":true}"}}"#;
        let Ok(Parsed::Event(ClientEvent::ConversationItemCreate { item, .. })) =
            ClientEvent::parse(text)
        else {
            panic!("not an item")
        };
        assert!(matches!(item, Item::FunctionCallOutput { call_id, .. } if call_id == "c1"));
    }

    #[test]
    fn parlors_confirmation_events_are_read_and_written() {
        let text =
            r#"{"type":"parlor.tool.confirm","event_id":"e9","id":"confirm_1","approved":true}"#;
        let Ok(Parsed::Event(event)) = ClientEvent::parse(text) else {
            panic!("not read: {text}")
        };
        assert_eq!(event.event_id(), Some("e9"));
        assert_eq!(
            event,
            ClientEvent::ParlorToolConfirm {
                event_id: Some("e9".into()),
                id: "confirm_1".into(),
                approved: true
            }
        );
        // An answer must say yes or no.
        let err =
            ClientEvent::parse(r#"{"type":"parlor.tool.confirm","id":"confirm_1"}"#).unwrap_err();
        assert!(err.message.contains("approved"), "{}", err.message);

        let question = ServerMessage {
            event_id: "event_5".into(),
            event: ServerEvent::ParlorToolConfirm {
                id: "confirm_1".into(),
                server: "orders".into(),
                tool: "orders__cancel_order".into(),
                arguments: json!({"order_id": 1043}),
                timeout_ms: 30_000,
            },
        };
        assert_eq!(
            serde_json::to_value(&question).unwrap(),
            json!({"event_id": "event_5", "type": "parlor.tool.confirm", "id": "confirm_1",
                   "server": "orders", "tool": "orders__cancel_order",
                   "arguments": {"order_id": 1043}, "timeout_ms": 30000})
        );
    }

    #[test]
    fn server_events_have_the_field_names_the_official_client_reads() {
        let at = PartRef {
            response_id: "resp_1".into(),
            item_id: "item_2".into(),
            output_index: 0,
            content_index: 0,
        };
        let message = ServerMessage {
            event_id: "event_3".into(),
            event: ServerEvent::OutputAudioDelta {
                at,
                delta: "AAA=".into(),
            },
        };
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(
            json,
            json!({"event_id": "event_3", "type": "response.output_audio.delta",
                   "response_id": "resp_1", "item_id": "item_2", "output_index": 0,
                   "content_index": 0, "delta": "AAA="})
        );
        assert_eq!(
            serde_json::from_value::<ServerMessage>(json).unwrap(),
            message
        );

        let error = ServerMessage {
            event_id: "event_4".into(),
            event: ServerEvent::Error {
                error: ErrorDetail::invalid("bad", Some("session.type"), Some("e1")),
            },
        };
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"event_id": "event_4", "type": "error", "error": {
                "type": "invalid_request_error", "code": null, "message": "bad",
                "param": "session.type", "event_id": "e1"}})
        );
    }

    #[test]
    fn openai_usage_reads_with_text_and_audio_apart() {
        // The shape of OpenAI's `response.done` usage.
        let usage: Usage = serde_json::from_value(json!({
            "total_tokens": 1234, "input_tokens": 1000, "output_tokens": 234,
            "input_token_details": {"text_tokens": 900, "audio_tokens": 100,
                "cached_tokens": 0, "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0}},
            "output_token_details": {"text_tokens": 34, "audio_tokens": 200}
        }))
        .unwrap();
        let u = usage.to_turn_usage();
        assert_eq!((u.input_text_tokens, u.input_audio_tokens), (900, 100));
        assert_eq!((u.output_text_tokens, u.output_audio_tokens), (34, 200));
        let cached: Usage = serde_json::from_value(json!({
            "total_tokens": 1234, "input_tokens": 1000, "output_tokens": 234,
            "input_token_details": {"text_tokens": 900, "audio_tokens": 100,
                "cached_tokens": 832, "cached_tokens_details": {"text_tokens": 768, "audio_tokens": 64}}
        }))
        .unwrap();
        let u = cached.to_turn_usage();
        assert_eq!(
            (u.cached_input_text_tokens, u.cached_input_audio_tokens),
            (768, 64)
        );
        // Back to the protocol's shape, as parlor's route reports it.
        let back = Usage::from_turn_usage(&u);
        assert_eq!(back.to_turn_usage(), u);
        assert_eq!(back.input_token_details.unwrap().cached_tokens, Some(832));
        // No split (parlor's own route): all of it is text.
        let plain = Usage {
            total_tokens: 15,
            input_tokens: 10,
            output_tokens: 5,
            ..Usage::default()
        };
        let u = plain.to_turn_usage();
        assert_eq!((u.input_text_tokens, u.output_text_tokens), (10, 5));
        assert_eq!(u.input_audio_tokens + u.output_audio_tokens, 0);
        // A transcription billed in tokens (no `seconds`) still reads.
        let t: TranscriptionUsage =
            serde_json::from_value(json!({"type": "tokens", "input_tokens": 14})).unwrap();
        assert_eq!(t.seconds, 0.0);
    }
}
