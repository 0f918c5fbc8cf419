//! What flows between stages.
//!
//! A [`Frame`] is a small enum moved (never copied) through bounded channels.
//! Frames that belong to a turn carry its [`TurnId`], so a stage can drop the
//! leftovers of a turn that was cancelled (barge-in) on sight instead of
//! relying on "is speaking" flags that race.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Sample rate of every audio frame that enters a pipeline: the decoder and
/// the live-call edge resample to it once, so stages never have to.
pub const PIPELINE_SAMPLE_RATE: u32 = 16_000;

/// Identifies one user turn: from the VAD's "speech started" to the end of
/// the reply. Monotonic within a pipeline run; 0 is never a real turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TurnId(pub u64);

impl fmt::Display for TurnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A piece of mono PCM audio, samples in [-1, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct AudioChunk {
    pub sample_rate: u32,
    pub samples: Vec<f32>,
}

impl AudioChunk {
    pub fn new(sample_rate: u32, samples: Vec<f32>) -> Self {
        Self {
            sample_rate,
            samples,
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / self.sample_rate as f64)
    }
}

/// The speech of one turn as the VAD cut it out, shared because several
/// consumers (STT, the bench's recorder) may want it without copying.
#[derive(Debug, Clone)]
pub struct Utterance {
    pub turn: TurnId,
    pub audio: Arc<AudioChunk>,
    /// Where the speech starts in the input stream (after any pre-roll).
    pub start: Duration,
    /// Where the last speech in it ends in the input stream: a paused
    /// turn that ends with the same `speech_end` has no new speech, so its
    /// early transcript stands.
    pub speech_end: Duration,
    /// When the VAD decided the turn was over; latencies count from here.
    pub ended_at: Instant,
}

#[derive(Debug, Clone)]
pub enum Frame {
    /// Input audio (16 kHz mono) or, after TTS, reply audio.
    Audio(AudioChunk),
    /// The VAD heard speech begin. In a live call this is the barge-in signal.
    SpeechStarted { turn: TurnId, at: Duration },
    /// The caller paused inside a turn (`early_stt_ms` of silence, not yet
    /// `end_of_turn_ms`): the speech so far, so the transcription can start
    /// before the turn is over. Consumed by the stt stage; followed by more
    /// speech or by `SpeechEnded`.
    SpeechPaused(Utterance),
    /// The VAD heard the end of the turn; carries the turn's speech.
    SpeechEnded(Utterance),
    /// A transcript of the turn's speech; partial ones may be revised.
    Transcript {
        turn: TurnId,
        text: String,
        is_final: bool,
    },
    /// Planner output, in the order written.
    ReplyDelta { turn: TurnId, text: String },
    /// A tool call the planner made and how it went (for whoever shows the
    /// turn: the upload response, a live call's events, the bench).
    ToolCall {
        turn: TurnId,
        record: Box<crate::planner::ToolRecord>,
    },
    /// Something to say while a slow tool call runs ("One moment."): spoken
    /// like the reply but not part of it (nor of the conversation).
    Filler { turn: TurnId, text: String },
    /// Spoken reply, at the tts stage's output rate; `text` is the chunk of
    /// the reply this audio says (set on the chunk's first piece only).
    ReplyAudio {
        turn: TurnId,
        audio: AudioChunk,
        text: Option<String>,
    },
    /// A stage could not do its part of a turn (a speech server is down...):
    /// the turn goes on without it, and whoever shows the turn says why.
    TurnError {
        turn: TurnId,
        stage: &'static str,
        message: String,
    },
    /// The turn is complete; each stage adds its own timing on the way down.
    EndOfTurn(TurnMetrics),
}

impl Frame {
    /// The turn this frame belongs to, if it belongs to one.
    pub fn turn(&self) -> Option<TurnId> {
        match self {
            Frame::Audio(_) => None,
            Frame::SpeechStarted { turn, .. }
            | Frame::Transcript { turn, .. }
            | Frame::ReplyDelta { turn, .. }
            | Frame::ToolCall { turn, .. }
            | Frame::Filler { turn, .. }
            | Frame::ReplyAudio { turn, .. }
            | Frame::TurnError { turn, .. } => Some(*turn),
            Frame::SpeechPaused(u) | Frame::SpeechEnded(u) => Some(u.turn),
            Frame::EndOfTurn(m) => Some(m.turn),
        }
    }

    /// Short name for logs and test assertions.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Audio(_) => "audio",
            Frame::SpeechStarted { .. } => "speech_started",
            Frame::SpeechPaused(_) => "speech_paused",
            Frame::SpeechEnded(_) => "speech_ended",
            Frame::Transcript { .. } => "transcript",
            Frame::ReplyDelta { .. } => "reply_delta",
            Frame::ToolCall { .. } => "tool_call",
            Frame::Filler { .. } => "filler",
            Frame::ReplyAudio { .. } => "reply_audio",
            Frame::TurnError { .. } => "turn_error",
            Frame::EndOfTurn(_) => "end_of_turn",
        }
    }
}

/// Per-turn timings. Travels inside [`Frame::EndOfTurn`]: each stage appends
/// its [`StageTiming`] as the frame passes, so the sink sees the whole turn
/// without any shared table.
#[derive(Debug, Clone, Serialize)]
pub struct TurnMetrics {
    pub turn: TurnId,
    /// Length of the caller's speech in this turn.
    #[serde(serialize_with = "ser_ms")]
    pub speech: Duration,
    /// When the VAD decided the turn ended (the anchor for latencies).
    #[serde(skip)]
    pub speech_ended_at: Instant,
    pub stages: Vec<StageTiming>,
    /// What the turn consumed, summed over the stages: what an API would
    /// bill for it (see [`crate::prices::Prices`]).
    pub usage: Usage,
}

impl TurnMetrics {
    pub fn new(turn: TurnId, speech: Duration, speech_ended_at: Instant) -> Self {
        Self {
            turn,
            speech,
            speech_ended_at,
            stages: Vec::new(),
            usage: Usage::default(),
        }
    }

    pub fn stage(&self, name: &str) -> Option<&StageTiming> {
        self.stages.iter().find(|s| s.stage == name)
    }
}

/// What a turn consumed, in the units API providers bill by. Local stages
/// count the same things (they cost nothing, but the figures show how big a
/// turn is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Text tokens read by a language model (prompt tokens, summed over
    /// every model request of the turn: the tool loop asks more than once).
    pub input_text_tokens: u64,
    /// Of `input_text_tokens`, those a prompt cache already held (billed
    /// at a lower rate by OpenAI; the local model's reused prefix).
    pub cached_input_text_tokens: u64,
    /// Text tokens the model wrote (completion tokens).
    pub output_text_tokens: u64,
    /// Audio tokens a realtime model heard.
    pub input_audio_tokens: u64,
    /// Of `input_audio_tokens`, those a prompt cache already held.
    pub cached_input_audio_tokens: u64,
    /// Audio tokens a realtime model spoke.
    pub output_audio_tokens: u64,
    /// Seconds of speech sent to speech-to-text.
    pub transcribed_seconds: f64,
    /// Characters of text sent to text-to-speech.
    pub spoken_characters: u64,
    /// Seconds of speech text-to-speech produced.
    pub spoken_seconds: f64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.input_text_tokens += other.input_text_tokens;
        self.cached_input_text_tokens += other.cached_input_text_tokens;
        self.cached_input_audio_tokens += other.cached_input_audio_tokens;
        self.output_text_tokens += other.output_text_tokens;
        self.input_audio_tokens += other.input_audio_tokens;
        self.output_audio_tokens += other.output_audio_tokens;
        self.transcribed_seconds += other.transcribed_seconds;
        self.spoken_characters += other.spoken_characters;
        self.spoken_seconds += other.spoken_seconds;
    }
}

/// One stage's share of a turn.
#[derive(Debug, Clone, Serialize)]
pub struct StageTiming {
    pub stage: String,
    /// From the stage's first input frame of the turn to its first output
    /// frame of the turn. `None` when the stage's input carries no turn id
    /// (the VAD reads raw audio) or it produced nothing for the turn.
    #[serde(serialize_with = "ser_opt_ms")]
    pub time_to_first_output: Option<Duration>,
    /// From the end of the caller's speech to this stage's first output:
    /// the latency a caller feels, stage by stage.
    #[serde(serialize_with = "ser_opt_ms")]
    pub first_output_after_speech_end: Option<Duration>,
    /// Time spent working (not waiting for input) since the previous turn.
    #[serde(serialize_with = "ser_ms")]
    pub busy: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_ms(d, s),
        None => s.serialize_none(),
    }
}
