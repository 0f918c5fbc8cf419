//! The realtime stage: one speech-to-speech model over the Realtime
//! protocol in place of stt → planner → tts.
//!
//! The caller's audio goes up as `input_audio_buffer.append`; the server's
//! own VAD finds the turns. Its events come back as the frames the chained
//! stages would have made, so the edges (live calls, uploads, the bench)
//! cannot tell the difference:
//!
//! | server event | frame |
//! |---|---|
//! | `input_audio_buffer.speech_started` | `SpeechStarted` (a new turn: [`Turns::begin`], so barge-in works as with the VAD stage) |
//! | `input_audio_buffer.speech_stopped` | `SpeechEnded` (the latency anchor) |
//! | `…input_audio_transcription.completed` | `Transcript` |
//! | `response.output_audio_transcript.delta` | `ReplyDelta` |
//! | `response.output_audio.delta` | `ReplyAudio` at 24 kHz |
//! | `response.function_call_arguments.done` | the tool runs here, through the pipeline's policy layer; `ToolCall` |
//! | `response.done` | `EndOfTurn` (or the function outputs and `response.create`) |
//!
//! MCP tools are offered as the session's function tools and run by parlor,
//! never by the model's provider: the allow-list, roles, rate limits, audit
//! log, confirmation and fencing of tool results apply exactly as for the
//! planner. The spec's secrets are watched for in the reply's transcript;
//! a reply that starts to say one is cancelled.
//!
//! Barge-in: when the server hears the caller over a reply, the new turn
//! cancels the old one at the call's edge, which stops the audio and
//! records how much played; the stage then sends `response.cancel` and a
//! `conversation.item.truncate` at that point, so the model's
//! conversation holds only what the caller heard.
//!
//! A connection that drops ends the turn in flight with a clear error; the
//! next audio reconnects (a fresh conversation), so the call stays usable.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Stage, StageContext, StageError, StageIo};
use crate::audio::{pcm16_le_bytes, pcm16_le_samples, StreamResampler};
use crate::frame::{AudioChunk, Frame, TurnId, TurnMetrics, Utterance};
use crate::planner::{ToolAnswer, ToolRecord, Toolbox};
use crate::realtime::client::{self, ClientError, RealtimeRx, RealtimeTx};
use crate::realtime::events::{
    AudioConfig, AudioFormat, AudioInput, AudioOutput, ClientEvent, ErrorDetail, FunctionTool,
    Item, ResponseStatus, ServerEvent, SessionConfig, TurnDetection, Voice, PCM_RATE,
};
use crate::secrets::{LeakGuard, Secrets};
use crate::spec::RealtimeSpec;
use crate::untrusted;

const STAGE: &str = "realtime";

/// Silence sent after the last of an upload's audio, so the server's VAD
/// hears the end of the last turn (its silence threshold is well under).
const TRAILING_SILENCE: Duration = Duration::from_millis(1200);
/// Once the input is over and no turn is in flight, how long the server may
/// stay quiet before the stage is sure nothing more is coming.
const SETTLE: Duration = Duration::from_millis(1500);
/// How long a finished turn waits for its transcript, which a provider may
/// send after the reply.
const TRANSCRIPT_GRACE: Duration = Duration::from_millis(1500);
/// How long after a barge-in the call's edge has to say how much played.
const TRUNCATE_WAIT: Duration = Duration::from_millis(500);
/// How often timers (truncation, deadlines, settling) are looked at.
const TICK: Duration = Duration::from_millis(20);
/// Caller audio kept to cut each turn's utterance from (at 24 kHz).
const INPUT_KEPT: Duration = Duration::from_secs(30);
/// A failed reconnect is tried again after this.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// What a realtime stage needs, read from its spec once.
#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// The WebSocket URL with the model in the query.
    pub endpoint: String,
    pub model: String,
    pub key: Option<String>,
    pub voice: Option<String>,
    pub instructions: Option<String>,
    pub turn_detection: String,
    pub transcription_model: String,
    pub call_timeout: Duration,
    pub turn_timeout: Duration,
    /// Tool results are cut to this many bytes before the model sees them.
    pub max_result_bytes: usize,
}

impl RealtimeSettings {
    /// Settings from a validated spec; `base_dir` resolves the
    /// instructions file.
    ///
    /// # Errors
    /// An instructions file that cannot be read (named).
    pub fn from_spec(spec: &RealtimeSpec, base_dir: &Path) -> Result<Self, String> {
        let instructions = match &spec.instructions {
            Some(path) => Some(
                std::fs::read_to_string(base_dir.join(path))
                    .map_err(|e| format!("instructions {}: {e}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let key = std::env::var(&spec.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        Ok(Self {
            endpoint: spec.endpoint(),
            model: spec.model.clone(),
            key,
            voice: spec.voice.clone(),
            instructions,
            turn_detection: spec.turn_detection.clone(),
            transcription_model: spec.transcription_model.clone(),
            call_timeout: Duration::from_millis(spec.call_timeout_ms),
            turn_timeout: Duration::from_millis(spec.turn_timeout_ms),
            max_result_bytes: crate::planner::PlannerOptions::default().max_result_bytes,
        })
    }

    /// The `session.update` that opens a session: 24 kHz PCM both ways,
    /// the server's VAD with barge-in, and `tools` as function tools.
    fn session(&self, tools: Vec<FunctionTool>) -> SessionConfig {
        let turn_detection = match self.turn_detection.as_str() {
            "semantic_vad" => TurnDetection::SemanticVad {
                eagerness: None,
                create_response: Some(true),
                interrupt_response: Some(true),
            },
            _ => TurnDetection::ServerVad {
                threshold: None,
                prefix_padding_ms: None,
                silence_duration_ms: None,
                create_response: Some(true),
                interrupt_response: Some(true),
            },
        };
        SessionConfig {
            kind: "realtime".into(),
            model: Some(self.model.clone()),
            instructions: self.instructions.clone(),
            output_modalities: Some(vec!["audio".into()]),
            audio: Some(AudioConfig {
                input: Some(AudioInput {
                    format: Some(AudioFormat::pcm()),
                    turn_detection: Some(Some(turn_detection)),
                    transcription: Some(serde_json::json!({"model": self.transcription_model})),
                }),
                output: Some(AudioOutput {
                    format: Some(AudioFormat::pcm()),
                    voice: self.voice.clone().map(Voice::Name),
                    speed: None,
                }),
            }),
            tool_choice: tool_choice(&tools),
            tools: Some(tools),
            ..SessionConfig::default()
        }
    }
}

/// `auto` when there are tools; otherwise left out, so an empty list means
/// the same at open and on a later update (to parlor's own route: "use
/// the pipeline's tools"; to OpenAI: none).
fn tool_choice(tools: &[FunctionTool]) -> Option<Value> {
    (!tools.is_empty()).then(|| "auto".into())
}

/// The stage of one call: the settings, and the call's own toolbox (bound
/// to its caller and confirmer).
pub struct RealtimeStage {
    settings: Arc<RealtimeSettings>,
    tools: Arc<dyn Toolbox>,
    secrets: Arc<Secrets>,
}

impl RealtimeStage {
    pub fn new(
        settings: Arc<RealtimeSettings>,
        tools: Arc<dyn Toolbox>,
        secrets: Arc<Secrets>,
    ) -> Self {
        Self {
            settings,
            tools,
            secrets,
        }
    }
}

#[async_trait]
impl Stage for RealtimeStage {
    fn name(&self) -> &'static str {
        STAGE
    }

    async fn run(self: Box<Self>, io: StageIo, cx: StageContext) -> Result<(), StageError> {
        let secrets = self.secrets.clone();
        let conn = connect(&self.settings, &*self.tools)
            .await
            .map_err(|e| StageError::failed(STAGE, e.to_string()))?;
        let mut call = Call {
            settings: self.settings.clone(),
            tools: self.tools.clone(),
            secrets: &secrets,
            io,
            cx,
            conn: Some(conn),
            reconnect_at: None,
            resampler: None,
            resampled: Vec::new(),
            input: InputLog::default(),
            turn: None,
            closing: None,
            last_reply: None,
            truncate: None,
            running: JoinSet::new(),
            relisting: None,
            last_event: Instant::now(),
        };
        call.run().await
    }
}

struct Conn {
    tx: RealtimeTx,
    rx: RealtimeRx,
    /// The function tools the session was last given.
    offered: Vec<FunctionTool>,
}

/// Dial the server and open the session.
async fn connect(settings: &RealtimeSettings, tools: &dyn Toolbox) -> Result<Conn, ClientError> {
    let (mut tx, rx) = client::connect(&settings.endpoint, settings.key.as_deref()).await?;
    let offered = function_tools(tools).await;
    tx.send(&ClientEvent::SessionUpdate {
        event_id: None,
        session: Box::new(settings.session(offered.clone())),
    })
    .await?;
    tracing::info!(message = "Realtime session open.", endpoint = %settings.endpoint);
    Ok(Conn { tx, rx, offered })
}

/// The toolbox's tools (for this caller's role) as the protocol's
/// function tools.
async fn function_tools(tools: &dyn Toolbox) -> Vec<FunctionTool> {
    tools
        .specs()
        .await
        .into_iter()
        .map(|spec| FunctionTool {
            kind: "function".into(),
            name: spec.name,
            description: Some(spec.description),
            parameters: Some(spec.parameters),
        })
        .collect()
}

/// A `session.update` that changes only the tools on offer.
fn tools_update(tools: Vec<FunctionTool>) -> ClientEvent {
    ClientEvent::SessionUpdate {
        event_id: None,
        session: Box::new(SessionConfig {
            kind: "realtime".into(),
            tool_choice: tool_choice(&tools),
            tools: Some(tools),
            ..SessionConfig::default()
        }),
    }
}

/// The caller's recent audio at 24 kHz, to cut each turn's speech from.
#[derive(Default)]
struct InputLog {
    samples: VecDeque<f32>,
    /// Samples dropped off the front since the session began.
    dropped: u64,
}

impl InputLog {
    fn push(&mut self, samples: &[f32]) {
        self.samples.extend(samples);
        let keep = (INPUT_KEPT.as_secs_f64() * PCM_RATE as f64) as usize;
        if self.samples.len() > keep {
            let extra = self.samples.len() - keep;
            self.samples.drain(..extra);
            self.dropped += extra as u64;
        }
    }

    /// Everything appended so far, in ms of session audio.
    fn total_ms(&self) -> u64 {
        (self.dropped + self.samples.len() as u64) * 1000 / PCM_RATE as u64
    }

    /// The audio from `start_ms` to `end_ms` of the session, as far as kept.
    fn cut(&self, start_ms: u64, end_ms: u64) -> Vec<f32> {
        let at = |ms: u64| {
            ((ms * PCM_RATE as u64 / 1000).saturating_sub(self.dropped) as usize)
                .min(self.samples.len())
        };
        self.samples
            .range(at(start_ms)..at(end_ms).max(at(start_ms)))
            .copied()
            .collect()
    }
}

/// A function call of the response in progress.
struct FunctionCall {
    call_id: String,
    /// What goes back to the model, once the tool has answered.
    output: Option<String>,
}

/// The turn in flight.
struct Turn<'s> {
    id: TurnId,
    /// The server's id for the caller's item (matches its transcript).
    user_item: String,
    start_ms: u64,
    /// Set when the server heard the speech end.
    ended: Option<(Instant, Duration)>,
    transcript_done: bool,
    /// The response being produced, once the server has created it.
    response: Option<String>,
    /// A `response.create` was sent and its response is not created yet.
    awaiting_response: bool,
    /// The reply's audio items in order (a filler, then the answer...),
    /// with the samples received of each, for a truncation.
    items: Vec<SpokenItem>,
    /// Transcript text not yet attached to reply audio.
    unspoken_text: String,
    guard: LeakGuard<'s>,
    calls: Vec<FunctionCall>,
    started: Instant,
}

impl Turn<'_> {
    fn calls_pending(&self) -> bool {
        self.calls.iter().any(|c| c.output.is_none())
    }
}

/// An assistant item of the reply and how much audio of it came (24 kHz
/// samples).
#[derive(Debug, Clone)]
struct SpokenItem {
    id: String,
    samples: u64,
}

/// Where to truncate each item of a reply the caller stopped hearing after
/// `played`: the item playing then is cut there, later ones at 0 (never
/// heard), earlier ones are left whole. `(item, audio_end_ms)` pairs.
fn cuts(items: &[SpokenItem], played: Duration) -> Vec<(String, u64)> {
    let played = (played.as_secs_f64() * f64::from(PCM_RATE)) as u64;
    let mut start = 0;
    let mut cuts = Vec::new();
    for item in items.iter().filter(|i| i.samples > 0) {
        if played < start + item.samples {
            let heard = played.saturating_sub(start);
            cuts.push((item.id.clone(), heard * 1000 / u64::from(PCM_RATE)));
        }
        start += item.samples;
    }
    cuts
}

/// A tool call that finished.
struct ToolDone {
    turn: TurnId,
    record: ToolRecord,
}

/// One call's stage at work.
struct Call<'s> {
    settings: Arc<RealtimeSettings>,
    tools: Arc<dyn Toolbox>,
    secrets: &'s Secrets,
    io: StageIo,
    cx: StageContext,
    conn: Option<Conn>,
    reconnect_at: Option<Instant>,
    resampler: Option<StreamResampler>,
    resampled: Vec<f32>,
    input: InputLog,
    turn: Option<Turn<'s>>,
    /// A turn whose reply is over, waiting for its transcript until the
    /// deadline.
    closing: Option<(Turn<'s>, Instant)>,
    /// A reply cut by barge-in: its turn, its audio item, and how long to
    /// wait for the edge to say how much played.
    truncate: Option<(TurnId, Vec<SpokenItem>, Instant)>,
    /// The last turn that spoke, and its audio items, until the next turn
    /// starts: barge-in can cut a reply the server has finished sending.
    last_reply: Option<(TurnId, Vec<SpokenItem>)>,
    running: JoinSet<ToolDone>,
    /// The tools being listed again at the start of a turn, so a server's
    /// `list_changed` reaches the session as it reaches the planner: by
    /// the next turn. Listed off the loop (a slow server must not stall
    /// the audio).
    relisting: Option<tokio::task::JoinHandle<Vec<FunctionTool>>>,
    last_event: Instant,
}

/// What woke the loop.
enum Wake {
    Shutdown,
    Input(Option<Frame>),
    /// Boxed: a server event is far bigger than the other wake-ups.
    Server(Box<Result<Option<ServerEvent>, ClientError>>),
    Tool(ToolDone),
    Relisted(Vec<FunctionTool>),
    Tick,
}

impl<'s> Call<'s> {
    async fn run(&mut self) -> Result<(), StageError> {
        let mut input_open = true;
        let mut input_ended_at: Option<Instant> = None;
        loop {
            let ticking = !input_open
                || self.closing.is_some()
                || self.truncate.is_some()
                || self.turn.is_some();
            let connected = self.conn.is_some();
            let relisting = self.relisting.is_some();
            let conn = &mut self.conn;
            let listing = &mut self.relisting;
            let wake = tokio::select! {
                biased;
                () = self.cx.shutdown.cancelled() => Wake::Shutdown,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => match done {
                    Ok(done) => Wake::Tool(done),
                    Err(e) => {
                        tracing::error!(message = "A tool call task failed.", error = %e);
                        continue;
                    }
                },
                event = async { conn.as_mut().expect("guarded").rx.next().await }, if connected => Wake::Server(Box::new(event)),
                listed = async { listing.as_mut().expect("guarded").await }, if relisting => {
                    self.relisting = None;
                    match listed {
                        Ok(tools) => Wake::Relisted(tools),
                        Err(e) => {
                            tracing::error!(message = "Listing the tools failed.", error = %e);
                            continue;
                        }
                    }
                },
                frame = self.io.recv(), if input_open => Wake::Input(frame),
                () = tokio::time::sleep(TICK), if ticking => Wake::Tick,
            };
            match wake {
                Wake::Shutdown => break,
                Wake::Input(Some(frame)) => self.on_input(frame).await?,
                Wake::Input(None) => {
                    input_open = false;
                    input_ended_at = Some(Instant::now());
                    self.last_event = Instant::now();
                    self.end_of_input().await;
                }
                Wake::Server(event) => match *event {
                    Ok(Some(event)) => {
                        self.last_event = Instant::now();
                        self.on_server(event).await?;
                    }
                    Ok(None) => self.lost("closed the connection", None).await?,
                    Err(e) => {
                        let detail = match e {
                            ClientError::Socket(detail) => detail,
                            other => other.to_string(),
                        };
                        self.lost("dropped the connection", Some(&detail)).await?
                    }
                },
                Wake::Tool(done) => self.on_tool(done).await?,
                Wake::Relisted(tools) => self.offer(tools).await,
                Wake::Tick => {}
            }
            self.on_timers().await?;
            if let Some(ended) = input_ended_at {
                let idle = self.turn.is_none() && self.closing.is_none() && self.running.is_empty();
                let settled = idle && self.last_event.elapsed() >= SETTLE;
                let too_long = ended.elapsed() >= self.settings.turn_timeout + SETTLE;
                if settled || too_long || (self.conn.is_none() && idle) {
                    break;
                }
            }
        }
        if let Some((turn, _)) = self.closing.take() {
            self.end_turn(turn).await?;
        }
        if let Some(turn) = self.turn.take() {
            self.end_turn(turn).await?;
        }
        if let Some(listing) = self.relisting.take() {
            listing.abort();
        }
        if let Some(conn) = self.conn.take() {
            conn.tx.close().await;
        }
        Ok(())
    }

    /// List the tools again, unless a listing is already under way.
    fn relist(&mut self) {
        if self.relisting.is_none() {
            let tools = self.tools.clone();
            self.relisting = Some(tokio::spawn(async move { function_tools(&*tools).await }));
        }
    }

    /// Give the session `tools` if they differ from what it has.
    async fn offer(&mut self, tools: Vec<FunctionTool>) {
        let Some(conn) = &mut self.conn else { return };
        if conn.offered == tools {
            return;
        }
        let names = |t: &[FunctionTool]| t.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        tracing::info!(
            message = "The tools changed; the session is told.",
            was = ?names(&conn.offered),
            now = ?names(&tools),
        );
        conn.offered = tools.clone();
        self.send(tools_update(tools)).await;
    }

    // ------------------------------------------------------------ input

    async fn on_input(&mut self, frame: Frame) -> Result<(), StageError> {
        let Frame::Audio(chunk) = frame else {
            // Nothing upstream of this stage makes turn frames; pass on
            // whatever comes.
            return self.io.forward(frame).await;
        };
        let samples = self.at_model_rate(chunk);
        if samples.is_empty() {
            return Ok(());
        }
        self.input.push(&samples);
        self.append(&samples).await;
        Ok(())
    }

    /// Caller audio at the protocol's 24 kHz (resampled here, once, when
    /// the edge delivered another rate).
    fn at_model_rate(&mut self, chunk: AudioChunk) -> Vec<f32> {
        if chunk.sample_rate == PCM_RATE {
            return chunk.samples;
        }
        if self
            .resampler
            .as_ref()
            .is_none_or(|r| r.input_rate() != chunk.sample_rate)
        {
            match StreamResampler::with_chunk(chunk.sample_rate, PCM_RATE, TICK) {
                Ok(r) => self.resampler = Some(r),
                Err(e) => {
                    tracing::warn!(message = "Caller audio dropped: cannot resample it.", error = %e);
                    return Vec::new();
                }
            }
        }
        let resampler = self.resampler.as_mut().expect("just set");
        self.resampled.clear();
        if let Err(e) = resampler.process(&chunk.samples, &mut self.resampled) {
            tracing::warn!(message = "Caller audio dropped: resampling failed.", error = %e);
            return Vec::new();
        }
        std::mem::take(&mut self.resampled)
    }

    /// Send caller audio up, reconnecting first if the last connection
    /// dropped.
    async fn append(&mut self, samples: &[f32]) {
        if self.conn.is_none() {
            if self.reconnect_at.is_some_and(|at| Instant::now() < at) {
                return;
            }
            match connect(&self.settings, &*self.tools).await {
                Ok(conn) => {
                    // The new session was given a fresh list: an older
                    // listing still under way must not replace it.
                    if let Some(listing) = self.relisting.take() {
                        listing.abort();
                    }
                    self.conn = Some(conn);
                    self.reconnect_at = None;
                }
                Err(e) => {
                    tracing::warn!(message = "Realtime reconnect failed; caller audio dropped until it succeeds.", error = %e);
                    self.reconnect_at = Some(Instant::now() + RECONNECT_AFTER);
                    return;
                }
            }
        }
        let audio = base64::engine::general_purpose::STANDARD.encode(pcm16_le_bytes(samples));
        self.send(ClientEvent::InputAudioBufferAppend {
            event_id: None,
            audio,
        })
        .await;
    }

    /// The upload is over: pad it with silence so the server ends the last
    /// turn.
    async fn end_of_input(&mut self) {
        if self.conn.is_none() {
            return;
        }
        let silence = vec![0.0; (TRAILING_SILENCE.as_secs_f64() * PCM_RATE as f64) as usize];
        self.input.push(&silence);
        self.append(&silence).await;
    }

    /// Send a client event; a failure shows up as the connection's end on
    /// the read side.
    async fn send(&mut self, event: ClientEvent) {
        if let Some(conn) = &mut self.conn {
            if let Err(e) = conn.tx.send(&event).await {
                tracing::warn!(message = "Realtime send failed.", error = %e);
            }
        }
    }

    // ----------------------------------------------------------- server

    async fn on_server(&mut self, event: ServerEvent) -> Result<(), StageError> {
        match event {
            ServerEvent::SpeechStarted {
                audio_start_ms,
                item_id,
            } => self.speech_started(audio_start_ms, item_id).await?,
            ServerEvent::SpeechStopped { audio_end_ms, .. } => {
                self.speech_stopped(audio_end_ms).await?
            }
            ServerEvent::TranscriptionCompleted {
                item_id,
                transcript,
                ..
            } => self.transcript(&item_id, transcript).await?,
            ServerEvent::ResponseCreated { response } => {
                if let Some(turn) = self
                    .turn
                    .as_mut()
                    .filter(|t| t.awaiting_response || t.response.is_none())
                {
                    turn.response = Some(response.id);
                    turn.awaiting_response = false;
                }
            }
            ServerEvent::OutputItemAdded {
                response_id,
                item: Item::Message { id, .. },
                ..
            } => {
                if let (Some(turn), Some(id)) = (self.current(&response_id), id) {
                    turn.items.push(SpokenItem { id, samples: 0 });
                }
            }
            ServerEvent::OutputAudioTranscriptDelta { at, delta } => {
                self.reply_text(&at.response_id, &delta).await?
            }
            ServerEvent::OutputAudioDelta { at, delta } => {
                self.reply_audio(&at.response_id, &delta).await?
            }
            ServerEvent::FunctionCallArgumentsDone {
                response_id,
                call_id,
                name,
                arguments,
                ..
            } => self.function_call(&response_id, call_id, name, arguments),
            ServerEvent::ResponseDone { response } => {
                // What the response cost counts for its turn, however it ended.
                if let (Some(usage), Some(turn)) = (&response.usage, &self.turn) {
                    if turn.response.as_deref() == Some(response.id.as_str()) {
                        self.io.add_usage(turn.id, usage.to_turn_usage());
                    }
                }
                let details = response.status_details.clone();
                self.response_done(&response.id, response.status, details)
                    .await?
            }
            ServerEvent::Error { error } => self.server_error(error).await?,
            _ => {}
        }
        Ok(())
    }

    /// The turn whose response is `response_id`, if it is the one in
    /// flight and still wanted.
    fn current(&mut self, response_id: &str) -> Option<&mut Turn<'s>> {
        let turns = self.cx.turns.clone();
        self.turn
            .as_mut()
            .filter(|t| t.response.as_deref() == Some(response_id) && turns.is_live(t.id))
    }

    async fn speech_started(&mut self, start_ms: u64, item_id: String) -> Result<(), StageError> {
        if let Some((turn, _)) = self.closing.take() {
            self.end_turn(turn).await?;
        }
        let previous = self.turn.take();
        // A new turn: on a live call this cancels the reply being played
        // (the edge stops it and records how much was heard).
        let id = self.cx.turns.begin();
        self.relist();
        if let Some(old) = previous {
            if old.response.is_some() {
                self.send(ClientEvent::ResponseCancel {
                    event_id: None,
                    response_id: None,
                })
                .await;
            }
            self.end_turn(old).await?;
        }
        // The last reply may still be playing at the edge even when the
        // server has finished sending it: if the edge cut it, the model
        // learns where.
        if let Some((turn, items)) = self.last_reply.take() {
            self.truncate = Some((turn, items, Instant::now() + TRUNCATE_WAIT));
        }
        self.turn = Some(Turn {
            id,
            user_item: item_id,
            start_ms,
            ended: None,
            transcript_done: false,
            response: None,
            awaiting_response: false,
            items: Vec::new(),
            unspoken_text: String::new(),
            guard: LeakGuard::new(self.secrets),
            calls: Vec::new(),
            started: Instant::now(),
        });
        // Relayed from the server's VAD: not this stage's own output, so
        // its clock keeps running to the first reply.
        self.io
            .forward(Frame::SpeechStarted {
                turn: id,
                at: Duration::from_millis(start_ms),
            })
            .await
    }

    async fn speech_stopped(&mut self, end_ms: u64) -> Result<(), StageError> {
        let Some(turn) = self.turn.as_mut().filter(|t| t.ended.is_none()) else {
            return Ok(());
        };
        let now = Instant::now();
        let speech = self
            .input
            .cut(turn.start_ms, end_ms.min(self.input.total_ms()));
        let audio = AudioChunk::new(PCM_RATE, speech);
        turn.ended = Some((now, audio.duration()));
        turn.started = now;
        let utterance = Utterance {
            turn: turn.id,
            audio: Arc::new(audio),
            start: Duration::from_millis(turn.start_ms),
            speech_end: Duration::from_millis(end_ms),
            ended_at: now.into_std(),
        };
        self.io.forward(Frame::SpeechEnded(utterance)).await
    }

    async fn transcript(&mut self, item_id: &str, text: String) -> Result<(), StageError> {
        let text = text.trim().to_string();
        if let Some(turn) = self.turn.as_mut().filter(|t| t.user_item == item_id) {
            turn.transcript_done = true;
            let id = turn.id;
            return self.forward_transcript(id, text).await;
        }
        if let Some((turn, _)) = self
            .closing
            .as_mut()
            .filter(|(t, _)| t.user_item == item_id)
        {
            turn.transcript_done = true;
            let id = turn.id;
            self.forward_transcript(id, text).await?;
            let (turn, _) = self.closing.take().expect("just matched");
            return self.end_turn(turn).await;
        }
        Ok(())
    }

    async fn forward_transcript(&mut self, turn: TurnId, text: String) -> Result<(), StageError> {
        self.io
            .forward(Frame::Transcript {
                turn,
                text,
                is_final: true,
            })
            .await
    }

    async fn reply_text(&mut self, response_id: &str, delta: &str) -> Result<(), StageError> {
        let Some(turn) = self.current(response_id) else {
            return Ok(());
        };
        if turn.guard.tripped() {
            return Ok(());
        }
        let said = turn.guard.push(delta);
        let tripped = turn.guard.tripped();
        let id = turn.id;
        if let Some(text) = &said {
            if !tripped {
                turn.unspoken_text.push_str(text);
            }
        }
        if tripped {
            tracing::warn!(message = "The model began to say a secret; its reply is cancelled.", turn = %id);
            self.send(ClientEvent::ResponseCancel {
                event_id: None,
                response_id: None,
            })
            .await;
        }
        // Relayed, as the tts passes its text on: the stage's output (its
        // voice-to-voice mark) is the reply's audio.
        match said {
            Some(text) => self.io.forward(Frame::ReplyDelta { turn: id, text }).await,
            None => Ok(()),
        }
    }

    async fn reply_audio(&mut self, response_id: &str, delta: &str) -> Result<(), StageError> {
        let Some(turn) = self.current(response_id) else {
            return Ok(());
        };
        if turn.guard.tripped() {
            return Ok(());
        }
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(delta.as_bytes()) else {
            tracing::warn!(message = "Reply audio that is not base64; skipped.");
            return Ok(());
        };
        let mut samples = Vec::with_capacity(bytes.len() / 2);
        if pcm16_le_samples(&bytes, &mut samples).is_err() || samples.is_empty() {
            return Ok(());
        }
        let Some(item) = turn.items.last_mut() else {
            tracing::warn!(message = "Reply audio outside any item; skipped.");
            return Ok(());
        };
        item.samples += samples.len() as u64;
        let text = Some(std::mem::take(&mut turn.unspoken_text)).filter(|t| !t.is_empty());
        let id = turn.id;
        self.io
            .send(Frame::ReplyAudio {
                turn: id,
                audio: AudioChunk::new(PCM_RATE, samples),
                text,
            })
            .await
    }

    /// The model called a tool: run it through the policy layer, off the
    /// loop, so audio and barge-in keep flowing while it runs.
    fn function_call(
        &mut self,
        response_id: &str,
        call_id: String,
        name: String,
        arguments: String,
    ) {
        let Some(turn) = self.current(response_id) else {
            return;
        };
        turn.calls.push(FunctionCall {
            call_id: call_id.clone(),
            output: None,
        });
        let id = turn.id;
        let tools = self.tools.clone();
        let deadline = self.settings.call_timeout + tools.allowance(&name);
        let max_bytes = self.settings.max_result_bytes;
        tracing::info!(message = "Function call.", turn = %id, tool = %name);
        self.running.spawn(async move {
            let started = std::time::Instant::now();
            let parsed: Result<Value, _> = serde_json::from_str(&arguments);
            let answer = match &parsed {
                Err(_) => ToolAnswer::error(format!(
                    "tool \"{name}\": the arguments are not valid JSON: {arguments}"
                )),
                Ok(args) => {
                    match tokio::time::timeout(deadline, tools.call(&name, args.clone())).await {
                        Ok(answer) => answer,
                        Err(_) => ToolAnswer::error(format!(
                            "tool \"{name}\": no answer within {deadline:?}"
                        )),
                    }
                }
            };
            ToolDone {
                turn: id,
                record: ToolRecord {
                    id: call_id,
                    arguments: parsed.unwrap_or(Value::String(arguments)),
                    is_error: answer.is_error,
                    output: crate::planner::cap(answer.text, max_bytes),
                    latency: started.elapsed(),
                    hosted: false,
                    name,
                },
            }
        });
    }

    async fn on_tool(&mut self, done: ToolDone) -> Result<(), StageError> {
        let turns = self.cx.turns.clone();
        let Some(turn) = self
            .turn
            .as_mut()
            .filter(|t| t.id == done.turn && turns.is_live(t.id))
        else {
            return Ok(());
        };
        if let Some(call) = turn.calls.iter_mut().find(|c| c.call_id == done.record.id) {
            // Fenced as data, as the planner fences its tool results: the
            // model is told it is information, not instructions.
            call.output = Some(untrusted::fence(&done.record.name, &done.record.output));
        }
        let id = turn.id;
        // Not the stage's output: that is the reply's audio (its
        // voice-to-voice mark), as for the tts stage.
        self.io
            .forward(Frame::ToolCall {
                turn: id,
                record: Box::new(done.record),
            })
            .await?;
        self.resume_if_ready().await;
        Ok(())
    }

    /// Once the response that asked for tools is over and every tool has
    /// answered: the outputs go up and the model answers with them.
    async fn resume_if_ready(&mut self) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if turn.response.is_some() || turn.calls.is_empty() || turn.calls_pending() {
            return;
        }
        let outputs: Vec<FunctionCall> = std::mem::take(&mut turn.calls);
        turn.awaiting_response = true;
        for call in outputs {
            self.send(ClientEvent::ConversationItemCreate {
                event_id: None,
                previous_item_id: None,
                item: Item::FunctionCallOutput {
                    id: None,
                    object: None,
                    status: None,
                    call_id: call.call_id,
                    output: call.output.unwrap_or_default(),
                },
            })
            .await;
        }
        self.send(ClientEvent::ResponseCreate {
            event_id: None,
            response: None,
        })
        .await;
    }

    async fn response_done(
        &mut self,
        response_id: &str,
        status: ResponseStatus,
        details: Option<crate::realtime::events::StatusDetails>,
    ) -> Result<(), StageError> {
        let Some(turn) = self
            .turn
            .as_mut()
            .filter(|t| t.response.as_deref() == Some(response_id))
        else {
            return Ok(());
        };
        turn.response = None;
        let id = turn.id;
        match status {
            ResponseStatus::Completed if !turn.calls.is_empty() => {
                self.resume_if_ready().await;
                return Ok(());
            }
            ResponseStatus::Failed | ResponseStatus::Incomplete => {
                let why = details
                    .and_then(|d| d.error)
                    .and_then(|e| e.get("message").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| format!("the response ended {status:?}").to_lowercase());
                self.io
                    .send(Frame::TurnError {
                        turn: id,
                        stage: STAGE,
                        message: why,
                    })
                    .await?;
            }
            _ => {}
        }
        let turn = self.turn.take().expect("matched above");
        self.finish(turn).await
    }

    async fn server_error(&mut self, error: ErrorDetail) -> Result<(), StageError> {
        // A cancel that crossed the response's own end is harmless.
        if error.code.as_deref() == Some("response_cancel_not_active")
            || error.message.contains("no active response")
            || error.message.contains("No response")
        {
            return Ok(());
        }
        tracing::warn!(message = "Realtime server error.", kind = %error.kind, code = ?error.code, error = %error.message);
        let Some(turn) = self.turn.as_ref() else {
            return Ok(());
        };
        let id = turn.id;
        let stuck = turn.awaiting_response;
        self.io
            .send(Frame::TurnError {
                turn: id,
                stage: STAGE,
                message: format!("the Realtime server said: {}", error.message),
            })
            .await?;
        if stuck {
            // The response.create that would go on was refused: nothing
            // more is coming for this turn.
            let turn = self.turn.take().expect("checked");
            self.finish(turn).await?;
        }
        Ok(())
    }

    /// The connection is gone: the turn in flight ends with a clear error,
    /// and the next audio reconnects.
    async fn lost(&mut self, what: &str, detail: Option<&str>) -> Result<(), StageError> {
        tracing::warn!(message = "Realtime connection lost.", endpoint = %self.settings.endpoint, what, detail);
        self.conn = None;
        self.running.abort_all();
        if let Some(turn) = self.turn.take() {
            self.io
                .send(Frame::TurnError {
                    turn: turn.id,
                    stage: STAGE,
                    message: format!(
                        "the Realtime server at {} {what} mid-turn{}; the call goes on and \
                         reconnects with the caller's next words",
                        self.settings.endpoint,
                        detail.map(|d| format!(" ({d})")).unwrap_or_default()
                    ),
                })
                .await?;
            self.end_turn(turn).await?;
        }
        if let Some((turn, _)) = self.closing.take() {
            self.end_turn(turn).await?;
        }
        // Its items were the old session's.
        self.last_reply = None;
        self.truncate = None;
        Ok(())
    }

    // ----------------------------------------------------------- ending

    /// The turn's reply is over: end it now, or once its transcript is in.
    async fn finish(&mut self, mut turn: Turn<'s>) -> Result<(), StageError> {
        if let Some(rest) = turn.guard.finish() {
            self.io
                .forward(Frame::ReplyDelta {
                    turn: turn.id,
                    text: rest,
                })
                .await?;
        }
        if turn.transcript_done || turn.ended.is_none() {
            return self.end_turn(turn).await;
        }
        if let Some((older, _)) = self.closing.take() {
            self.end_turn(older).await?;
        }
        self.closing = Some((turn, Instant::now() + TRANSCRIPT_GRACE));
        Ok(())
    }

    async fn end_turn(&mut self, turn: Turn<'s>) -> Result<(), StageError> {
        if turn.items.iter().any(|i| i.samples > 0) {
            self.last_reply = Some((turn.id, turn.items.clone()));
        }
        let (ended_at, speech) = turn
            .ended
            .unwrap_or_else(|| (Instant::now(), Duration::ZERO));
        self.io
            .send(Frame::EndOfTurn(TurnMetrics::new(
                turn.id,
                speech,
                ended_at.into_std(),
            )))
            .await
    }

    async fn on_timers(&mut self) -> Result<(), StageError> {
        let now = Instant::now();
        if let Some(&(turn, _, until)) = self.truncate.as_ref() {
            if let Some(played) = self.cx.turns.played_before_cut(turn) {
                let (_, items, _) = self.truncate.take().expect("just matched");
                tracing::info!(message = "Reply truncated at what was heard.", turn = %turn, played_ms = played.as_millis() as u64);
                for (item_id, audio_end_ms) in cuts(&items, played) {
                    self.send(ClientEvent::ConversationItemTruncate {
                        event_id: None,
                        item_id,
                        content_index: 0,
                        audio_end_ms,
                    })
                    .await;
                }
            } else if now >= until {
                // Heard in full, or nobody listening: nothing to cut.
                self.truncate = None;
            }
        }
        if self
            .closing
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            let (turn, _) = self.closing.take().expect("checked");
            self.end_turn(turn).await?;
        }
        let overdue = self.turn.as_ref().is_some_and(|t| {
            t.ended.is_some() && t.started.elapsed() >= self.settings.turn_timeout
        });
        if overdue {
            let turn = self.turn.take().expect("checked");
            self.send(ClientEvent::ResponseCancel {
                event_id: None,
                response_id: None,
            })
            .await;
            self.io
                .send(Frame::TurnError {
                    turn: turn.id,
                    stage: STAGE,
                    message: format!(
                        "no complete answer from the Realtime server within {:?}",
                        self.settings.turn_timeout
                    ),
                })
                .await?;
            self.end_turn(turn).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_truncates_the_item_playing_and_silences_the_rest() {
        let item = |id: &str, ms: u64| SpokenItem {
            id: id.into(),
            samples: ms * u64::from(PCM_RATE) / 1000,
        };
        // A 600 ms filler, an item with no audio, then a 3 s answer.
        let items = [item("filler", 600), item("call", 0), item("answer", 3000)];
        // Cut 1 s in: the filler was heard whole, 400 ms of the answer.
        assert_eq!(
            cuts(&items, Duration::from_millis(1000)),
            [("answer".to_string(), 400)]
        );
        // Cut inside the filler: the answer was never heard.
        assert_eq!(
            cuts(&items, Duration::from_millis(250)),
            [("filler".to_string(), 250), ("answer".to_string(), 0)]
        );
        // Heard to the end: nothing to cut.
        assert!(cuts(&items, Duration::from_millis(3600)).is_empty());
    }

    #[test]
    fn the_input_log_cuts_by_session_time_and_forgets_the_oldest() {
        let mut log = InputLog::default();
        let second = PCM_RATE as usize;
        log.push(&vec![0.5; second]);
        log.push(&vec![-0.5; second]);
        assert_eq!(log.total_ms(), 2000);
        let cut = log.cut(500, 1500);
        assert_eq!(cut.len(), second);
        assert_eq!(cut[0], 0.5);
        assert_eq!(cut[cut.len() - 1], -0.5);
        // Past the kept window: the oldest audio is gone, times still hold.
        log.push(&vec![0.0; second * INPUT_KEPT.as_secs() as usize]);
        assert_eq!(log.total_ms(), 2000 + INPUT_KEPT.as_millis() as u64);
        assert!(log.cut(0, 1000).is_empty());
        assert_eq!(log.cut(2000, 3000).len(), second);
    }

    #[test]
    fn the_session_asks_for_pcm_both_ways_the_vad_and_the_tools() {
        let spec: RealtimeSpec = toml::from_str(
            r#"
            url = "ws://127.0.0.1:9/v1/realtime"
            turn_detection = "semantic_vad"
            voice = "marin"
            "#,
        )
        .unwrap();
        let settings = RealtimeSettings::from_spec(&spec, Path::new(".")).unwrap();
        assert_eq!(
            settings.endpoint,
            "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime"
        );
        let tool = FunctionTool {
            kind: "function".into(),
            name: "orders__get_order".into(),
            description: None,
            parameters: None,
        };
        let json = serde_json::to_value(settings.session(vec![tool])).unwrap();
        assert_eq!(json["type"], "realtime");
        assert_eq!(json["audio"]["input"]["format"]["rate"], 24000);
        assert_eq!(
            json["audio"]["input"]["turn_detection"]["type"],
            "semantic_vad"
        );
        assert_eq!(json["audio"]["output"]["voice"], "marin");
        assert_eq!(json["tools"][0]["name"], "orders__get_order");
        assert_eq!(json["tool_choice"], "auto");
    }
}
