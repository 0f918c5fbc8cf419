//! Pipeline specs: `pipelines/*.toml` parsed and validated up front.
//!
//! A spec is a flat list of `[[stage]]` tables (a voice pipeline is a chain,
//! not a graph) plus `[mcp.NAME]` server tables, a `[trust]` table that
//! allow-lists them, an optional `[audit]` table, and the optional `[auth]`
//! and `[access]` tables (their types are in `crate::access`). `kind` selects the stage
//! type through an internally tagged enum, so a typo gets "unknown variant
//! `stt2`, expected one of ..." rather than "did not match any variant".
//!
//! Loading collects *every* problem before failing (each stage is
//! deserialized on its own, then cross-checked), and each problem names the
//! file, the place, the field and the fix.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::access::{AccessSpec, AuthSpec};
pub use crate::mcp::allow::{AllowEntry, TrustSpec};

/// The default pipeline, embedded so `parlor` runs without a `--pipeline`.
pub const LOCAL_PIPELINE: &str = include_str!("../pipelines/local.toml");
/// How the embedded default is named in messages.
pub const LOCAL_PIPELINE_PATH: &str = "pipelines/local.toml";

const SETUP_FIX: &str = "run `bash models/setup.sh` from the project root";

#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    /// Capacity of every channel between stages. Bounded: a slow stage holds
    /// the ones before it back instead of letting a queue grow.
    pub channel_capacity: NonZeroUsize,
    pub stages: Vec<StageSpec>,
    pub mcp: BTreeMap<String, McpServerSpec>,
    /// The `[audit]` table: where tool decisions are logged. `None`: no
    /// audit log (see [`AuditSpec`]).
    pub audit: Option<AuditSpec>,
    /// The `[trust]` table: the servers that may be started or connected
    /// to (every `[mcp.*]` server must match an entry) and the tool-pin
    /// lock file (src/mcp/allow.rs, src/mcp/pins.rs).
    pub trust: TrustSpec,
    /// `[auth]`: where the API keys are. `None`: callers are anonymous.
    pub auth: Option<AuthSpec>,
    /// `[access]`: role rules and rate limits for tool calls (none: all
    /// allowed).
    pub access: AccessSpec,
    /// `[prices]`: what the API stages' units cost, for `parlor bench`'s
    /// cost per turn. `None`: a local pipeline, nothing billed.
    pub prices: Option<crate::prices::Prices>,
    /// Where the spec came from, for messages.
    pub source: PathBuf,
}

/// `[audit]`: the tool-call audit log (src/mcp/audit.rs).
///
/// Off unless the table is present: parlor also runs as a one-shot CLI
/// (`parlor ask`, tests, demos), where a file appearing in the working
/// directory would surprise; a deployment that needs an audit trail says
/// where it goes, and a spec that names one never runs without it (a log
/// that cannot be opened fails the start, a failed write withholds the
/// tool result).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    /// The JSON Lines file (relative to the working directory); its head
    /// sidecar is `<path>.head`. Directories are created.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StageSpec {
    Vad(VadSpec),
    Stt(SttSpec),
    Planner(PlannerSpec),
    Tts(TtsSpec),
    Realtime(RealtimeSpec),
}

impl StageSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            StageSpec::Vad(_) => "vad",
            StageSpec::Stt(_) => "stt",
            StageSpec::Planner(_) => "planner",
            StageSpec::Tts(_) => "tts",
            StageSpec::Realtime(_) => "realtime",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VadBackend {
    /// Silero VAD (ONNX, through onnxruntime): a small neural net, robust to
    /// noise and music.
    Silero,
    /// earshot: pure Rust, no model file, no runtime library.
    Earshot,
}

/// Voice activity detection: where each turn's speech starts and ends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VadSpec {
    #[serde(default = "default_vad_backend")]
    pub backend: VadBackend,
    /// Silero's ONNX model file.
    #[serde(default = "default_silero_model")]
    pub model: PathBuf,
    /// onnxruntime shared library that Silero runs on (loaded at run time so
    /// nothing is downloaded at build time).
    #[serde(default = "default_onnxruntime")]
    pub onnxruntime: PathBuf,
    /// Speech probability above which a frame counts as speech.
    #[serde(default = "default_vad_threshold")]
    pub threshold: f32,
    /// Silence that ends a turn. Shorter answers sooner but cuts callers who
    /// pause mid-sentence.
    #[serde(default = "default_end_of_turn_ms")]
    pub end_of_turn_ms: u32,
    /// Speech shorter than this is a click or a cough, not a turn.
    #[serde(default = "default_min_speech_ms")]
    pub min_speech_ms: u32,
    /// Audio kept from before the detected start, so the first phoneme,
    /// which the detector hears late, is not clipped.
    #[serde(default = "default_pre_roll_ms")]
    pub pre_roll_ms: u32,
    /// A turn longer than this is ended anyway (Whisper reads 30 s windows).
    #[serde(default = "default_max_turn_s")]
    pub max_turn_s: u32,
    /// Echo guard: while parlor's own reply is playing, speech must last
    /// this long before it counts as the caller barging in (a speakerphone
    /// hears parlor's voice; a short echo must not interrupt it).
    #[serde(default = "default_barge_in_min_ms")]
    pub barge_in_min_ms: u32,
    /// Silence inside a turn after which the speech so far goes to the stt
    /// stage, which starts transcribing while the VAD still waits for
    /// `end_of_turn_ms`: if the caller says no more, that transcript is
    /// the turn's, and the wait has hidden the STT's time. 0 turns it off;
    /// at or above `end_of_turn_ms` it never fires.
    #[serde(default = "default_early_stt_ms")]
    pub early_stt_ms: u32,
    /// A frame quieter than this (RMS, dBFS) is silence: no voice is that
    /// quiet. Between turns the detector is not even asked, so a quiet line
    /// (most of a call) costs next to nothing, which is what lets one
    /// machine hold many calls. Inside a turn, 64 ms of such frames are
    /// silence whatever the detector says, dated from the first, so the end
    /// of turn counts from where the voice stopped, not from where the
    /// detector's probability fell off (50–150 ms later); a line noisier
    /// than the floor gets none of this. Raised above about -50 it starts
    /// to cut soft speech. -100 leaves every frame to the detector.
    #[serde(default = "default_quiet_dbfs")]
    pub quiet_dbfs: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SttBackend {
    /// whisper.cpp in process through whisper-rs.
    WhisperLocal,
    /// Any `/v1/audio/transcriptions` server.
    Openai,
}

/// Speech to text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SttSpec {
    pub backend: SttBackend,
    /// A ggml file for `whisper-local`; a model name (`whisper-1`) for `openai`.
    pub model: String,
    #[serde(default = "default_language")]
    pub language: String,
    /// CPU threads for whisper.cpp; 0 means one per core.
    #[serde(default)]
    pub threads: usize,
    /// Encoder window in 20 ms frames. Unset: chosen per utterance (its
    /// length plus 5 s, 1024 to 1500 frames): twice as fast as the full
    /// window on short turns, for +0.008 mean WER on the test corpus (see
    /// `whisper_local::auto_audio_ctx`). `1500` is whisper's full 30 s
    /// window, the most accurate; any other number is a fixed window,
    /// widened for a turn longer than it. Smaller is faster but changes
    /// transcripts on the tiny model (see MODELS.md).
    pub audio_ctx: Option<u32>,
    /// Server for the `openai` backend (default: `OPENAI_BASE_URL`, else OpenAI).
    pub base_url: Option<String>,
    /// Environment variable that holds the API key for `openai`.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
}

/// The LLM that answers, using MCP tools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlannerSpec {
    pub backend: ModelBackend,
    /// A GGUF file for `local` (default: the bundled Qwen2.5 0.5B); a model
    /// name for `openai` (default `gpt-4.1-mini`).
    pub model: Option<String>,
    /// Server for `openai` (default: `OPENAI_BASE_URL`, else OpenAI).
    pub base_url: Option<String>,
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// System prompt file.
    pub instructions: Option<PathBuf>,
    /// The system prompt from an MCP prompt instead (`prompts/get`),
    /// appended to `instructions` if both are given.
    pub prompt: Option<McpPromptSpec>,
    /// Names of `[mcp.*]` servers whose tools the planner may use.
    #[serde(default)]
    pub mcp: Vec<String>,
    /// Resources read at start and put in the system prompt as data, each
    /// `"server:uri"` (e.g. `"knowledge:config://settings"`).
    #[serde(default)]
    pub resources: Vec<String>,
    /// At most this many bytes of resources in the prompt.
    #[serde(default = "default_resource_budget")]
    pub resource_budget_bytes: usize,
    /// Model requests per turn that may call tools.
    #[serde(default = "default_max_steps")]
    pub max_steps: usize,
    /// One tool call, in milliseconds.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// A whole turn, in milliseconds.
    #[serde(default = "default_turn_timeout_ms")]
    pub turn_timeout_ms: u64,
    /// Conversation kept between turns, in (estimated) tokens.
    #[serde(default = "default_history_tokens")]
    pub history_tokens: usize,
    /// A tool call still running after this many milliseconds gets a short
    /// filler spoken ("One moment."), so the caller is not left in silence;
    /// 0 turns fillers off.
    #[serde(default = "default_filler_after_ms")]
    pub filler_after_ms: u64,
    /// What fillers say, taken in turn.
    #[serde(default = "default_fillers")]
    pub fillers: Vec<String>,
    /// Start answering on the transcript of a pause (the stt stage's early
    /// transcript, see the vad's `early_stt_ms`) before the turn is over:
    /// kept if the final transcript is the same, thrown away if the caller
    /// went on. Tool calls wait until the turn is over.
    #[serde(default = "yes")]
    pub speculate: bool,
}

/// A system prompt taken from an MCP server's prompt.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpPromptSpec {
    pub server: String,
    pub name: String,
    #[serde(default)]
    pub arguments: BTreeMap<String, String>,
}

impl PlannerSpec {
    /// The GGUF file of a `local` planner.
    pub fn local_model(&self) -> PathBuf {
        self.model
            .as_deref()
            .unwrap_or(DEFAULT_LOCAL_PLANNER_MODEL)
            .into()
    }

    /// `resources` as (server, uri) pairs; `None` for an entry without a
    /// server.
    pub fn resource_refs(&self) -> Vec<Option<(String, String)>> {
        self.resources
            .iter()
            .map(|r| {
                r.split_once(':')
                    .filter(|(s, u)| !s.is_empty() && !u.is_empty() && !s.contains('/'))
                    .map(|(s, u)| (s.to_string(), u.to_string()))
            })
            .collect()
    }
}

/// The planner model the setup script fetches.
pub const DEFAULT_LOCAL_PLANNER_MODEL: &str = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelBackend {
    Local,
    Openai,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TtsBackend {
    /// A Piper neural voice (VITS, ONNX) through onnxruntime, with espeak-ng
    /// turning text into phonemes: natural speech, ~0.05 real-time factor.
    Local,
    /// espeak-ng alone: robotic but needs no model file and is ten times
    /// faster; the fallback when the Piper model or onnxruntime is missing.
    Espeak,
    /// Any `/v1/audio/speech` server (OpenAI, or parlor's own `serve`).
    Openai,
}

/// Text to speech.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TtsSpec {
    pub backend: TtsBackend,
    /// `local`: the Piper .onnx file, its config beside it as `<model>.json`
    /// (default [`DEFAULT_PIPER_MODEL`]); `openai`: a model name (default
    /// `gpt-4o-mini-tts`). Unused by `espeak`.
    pub model: Option<String>,
    /// `openai`: the server's voice (default `alloy`); `espeak`: an espeak-ng
    /// voice (default `en-us`). A Piper model is one voice, so `local`
    /// ignores it.
    pub voice: Option<String>,
    /// `openai` only: how to speak (tone, pace), for models that take it.
    pub instructions: Option<String>,
    /// Speaking rate, 1.0 normal, 0.25 to 4.0 (OpenAI's range). Piper
    /// stretches phoneme durations by 1/speed; espeak-ng gets words per
    /// minute.
    #[serde(default = "default_tts_speed")]
    pub speed: f32,
    /// Server for `openai` (default: `OPENAI_BASE_URL`, else OpenAI).
    pub base_url: Option<String>,
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// onnxruntime shared library the Piper voice runs on (`local`).
    #[serde(default = "default_onnxruntime")]
    pub onnxruntime: PathBuf,
    /// Output sample rate: 16000 or 24000.
    #[serde(default = "default_tts_rate")]
    pub sample_rate: u32,
}

/// The Piper voice the setup script fetches.
pub const DEFAULT_PIPER_MODEL: &str = "models/en_US-joe-medium.onnx";

impl TtsSpec {
    /// The Piper model of a `local` voice.
    pub fn local_model(&self) -> PathBuf {
        self.model.as_deref().unwrap_or(DEFAULT_PIPER_MODEL).into()
    }

    /// The Piper model's config: the model's path with `.json` appended,
    /// the name Piper itself looks for.
    pub fn local_config(&self) -> PathBuf {
        let mut config = self.local_model().into_os_string();
        config.push(".json");
        config.into()
    }
}

/// Speech-to-speech over the Realtime protocol; replaces stt, planner, tts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeSpec {
    #[serde(default = "default_realtime_model")]
    pub model: String,
    /// The Realtime WebSocket endpoint (`ws://` or `wss://`); the model is
    /// added as `?model=`. When left out, the `/realtime` route under
    /// `OPENAI_BASE_URL`, else OpenAI's.
    pub url: Option<String>,
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    pub voice: Option<String>,
    /// A text file with the session's instructions (the system prompt).
    pub instructions: Option<PathBuf>,
    /// `server_vad` or `semantic_vad`: the model's own end-of-turn detector.
    #[serde(default = "default_turn_detection")]
    pub turn_detection: String,
    /// What transcribes the caller's speech for the transcript (the
    /// speech-to-speech model itself does not need it).
    #[serde(default = "default_realtime_transcription")]
    pub transcription_model: String,
    /// MCP servers whose tools are offered as the session's function tools,
    /// run by parlor through the same policy layer as the planner's.
    #[serde(default)]
    pub mcp: Vec<String>,
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    #[serde(default = "default_turn_timeout_ms")]
    pub turn_timeout_ms: u64,
}

/// OpenAI's API root.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// Where an `openai` backend sends its requests: `configured` (the spec's
/// `base_url`), else the `OPENAI_BASE_URL` environment variable as
/// OpenAI's own SDKs read it, else OpenAI. So a shipped OpenAI spec runs
/// unchanged against any OpenAI-compatible server, parlor's own included.
pub fn openai_base_url(configured: Option<&str>) -> String {
    let from_env = || {
        std::env::var("OPENAI_BASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
    };
    configured
        .map(str::to_string)
        .or_else(from_env)
        .unwrap_or_else(|| OPENAI_BASE_URL.to_string())
        .trim_end_matches('/')
        .to_string()
}

impl RealtimeSpec {
    /// The endpoint to dial, with the model in the query. With no `url`,
    /// the Realtime route under [`openai_base_url`] (`https` → `wss`).
    pub fn endpoint(&self) -> String {
        let url = match &self.url {
            Some(url) => url.clone(),
            None => realtime_url(&openai_base_url(None)),
        };
        if url.contains("model=") {
            return url.to_string();
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}model={}", self.model)
    }
}

/// The Realtime WebSocket route of an API root (`http(s)://…/v1` →
/// `ws(s)://…/v1/realtime`).
fn realtime_url(base: &str) -> String {
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{ws}/realtime")
}

/// One MCP server. `transport` selects how parlor reaches it.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "transport", rename_all = "kebab-case", deny_unknown_fields)]
pub enum McpServerSpec {
    /// A child process speaking over stdin/stdout. `env` is the *whole*
    /// environment it gets besides PATH: secrets live with their server.
    /// A value may name a variable of parlor's own environment as
    /// `${NAME}` (see [`expand_env`]), so a secret need not be written in
    /// the spec.
    Stdio {
        command: String,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// Legacy HTTP+SSE.
    Sse {
        url: String,
        /// OAuth 2.1 bearer tokens for this server (`[mcp.NAME.oauth]`).
        #[serde(default)]
        oauth: Option<OAuthSpec>,
    },
    StreamableHttp {
        url: String,
        /// OAuth 2.1 bearer tokens for this server (`[mcp.NAME.oauth]`).
        #[serde(default)]
        oauth: Option<OAuthSpec>,
    },
    /// Handed to the model provider, which calls the server itself (the
    /// Responses API's `mcp` tool): parlor never connects to it. Needs the
    /// `openai` planner backend.
    Hosted(HostedMcpSpec),
}

/// `value` with each `${NAME}` replaced by parlor's environment variable
/// `NAME` (letters, digits and `_`); any other `$` stays as written.
///
/// # Errors
/// The first variable named that is not set (or not UTF-8), in words.
pub fn expand_env(value: &str) -> Result<String, String> {
    expand_with(value, |name| {
        std::env::var(name).map_err(|_| format!("${{{name}}} is not set in parlor's environment"))
    })
}

/// The variables `value` names as `${NAME}`.
pub fn env_refs(value: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = expand_with(value, |name| {
        names.push(name.to_string());
        Ok(String::new())
    });
    names
}

fn expand_with(
    value: &str,
    mut lookup: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        let after = &rest[at + 2..];
        let name_len = after.find('}').filter(|&n| {
            n > 0
                && !after.starts_with(|c: char| c.is_ascii_digit())
                && after[..n]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        let Some(n) = name_len else {
            out.push_str(&rest[..at + 2]);
            rest = after;
            continue;
        };
        let found = lookup(&after[..n])?;
        out.push_str(&rest[..at]);
        out.push_str(&found);
        rest = &after[n + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// How parlor gets bearer tokens for a remote MCP server: the OAuth 2.1
/// client-credentials grant (a service account; no person present).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSpec {
    /// How parlor gets tokens: as a service account, or for a person who
    /// signed in once with `parlor mcp login NAME`.
    #[serde(default)]
    pub grant: OAuthGrant,
    /// The client id registered with the authorization server.
    pub client_id: String,
    /// The environment variable holding the client secret: secrets are
    /// never written into a spec (which is committed and logged). Needed
    /// for `client_credentials`; `authorization_code` clients are public
    /// (PKCE stands in for the secret).
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// Scopes to ask for, e.g. `["knowledge:read"]`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The authorization server's issuer URL. Without it, it is discovered:
    /// the server's 401 names its protected-resource metadata (RFC 9728),
    /// which names the authorization server.
    #[serde(default)]
    pub issuer: Option<String>,
}

/// The OAuth grant of a remote MCP server's tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthGrant {
    /// A service account: client id and secret, no person involved.
    #[default]
    ClientCredentials,
    /// A person signs in once in a browser (`parlor mcp login`, code +
    /// PKCE); parlor keeps their refresh token in its credential store.
    AuthorizationCode,
}

/// A server the model provider calls on the planner's behalf.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedMcpSpec {
    /// The server's Streamable HTTP endpoint, as the provider will reach it.
    pub url: String,
    /// Only these tools are offered (default: all the server has).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Tells the model what the server is for.
    #[serde(default)]
    pub description: Option<String>,
    /// An environment variable holding the bearer token the provider should
    /// send to the server (never written into the spec itself).
    #[serde(default)]
    pub authorization_env: Option<String>,
}

fn default_vad_backend() -> VadBackend {
    VadBackend::Silero
}
fn default_silero_model() -> PathBuf {
    "models/silero_vad.onnx".into()
}
fn default_onnxruntime() -> PathBuf {
    "models/libonnxruntime.so".into()
}
fn default_vad_threshold() -> f32 {
    0.5
}
fn default_end_of_turn_ms() -> u32 {
    400
}
fn default_min_speech_ms() -> u32 {
    200
}
fn default_pre_roll_ms() -> u32 {
    200
}
fn default_barge_in_min_ms() -> u32 {
    400
}
fn default_quiet_dbfs() -> f32 {
    -60.0
}
fn default_early_stt_ms() -> u32 {
    100
}
fn default_max_turn_s() -> u32 {
    30
}
fn default_language() -> String {
    "en".into()
}
fn default_api_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_resource_budget() -> usize {
    4000
}
fn default_max_steps() -> usize {
    4
}
fn default_call_timeout_ms() -> u64 {
    15_000
}
fn default_turn_timeout_ms() -> u64 {
    60_000
}
fn default_history_tokens() -> usize {
    1500
}
fn yes() -> bool {
    true
}
fn default_filler_after_ms() -> u64 {
    1200
}
fn default_fillers() -> Vec<String> {
    vec!["One moment.".into(), "Let me check.".into()]
}
fn default_tts_rate() -> u32 {
    24_000
}
fn default_tts_speed() -> f32 {
    1.0
}
fn default_realtime_model() -> String {
    "gpt-realtime".into()
}
fn default_turn_detection() -> String {
    "server_vad".into()
}
fn default_realtime_transcription() -> String {
    "gpt-4o-mini-transcribe".into()
}

/// One thing wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file: `stage 2 (stt)`, `mcp.orders`, or `top level`.
    pub place: String,
    /// The field at fault, when there is one.
    pub field: Option<String>,
    pub message: String,
    pub fix: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.place)?;
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, " (fix: {fix})")?;
        }
        Ok(())
    }
}

/// Every problem found in one spec file.
#[derive(Debug, thiserror::Error)]
pub struct SpecError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl PipelineSpec {
    /// The rate the pipeline takes caller audio at: the Realtime protocol's
    /// 24 kHz for a realtime stage, 16 kHz (the VAD's and Whisper's) for the
    /// rest. Uploads and live calls are resampled to it once, at the edge.
    pub fn input_rate(&self) -> u32 {
        if self
            .stages
            .iter()
            .any(|s| matches!(s, StageSpec::Realtime(_)))
        {
            crate::realtime::events::PCM_RATE
        } else {
            crate::frame::PIPELINE_SAMPLE_RATE
        }
    }

    /// Load and validate a spec file. Relative model paths resolve against
    /// `base_dir` (normally the working directory).
    pub fn load(path: &Path, base_dir: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                place: "file".into(),
                field: None,
                message: format!("cannot read it: {e}"),
                fix: Some("check the --pipeline path".into()),
            }],
        })?;
        Self::parse(&text, path, base_dir)
    }

    /// The embedded default pipeline.
    pub fn local_default(base_dir: &Path) -> Result<Self, SpecError> {
        Self::parse(LOCAL_PIPELINE, Path::new(LOCAL_PIPELINE_PATH), base_dir)
    }

    /// Parse and validate spec text; `source` names it in messages.
    pub fn parse(text: &str, source: &Path, base_dir: &Path) -> Result<Self, SpecError> {
        let fail = |problems| SpecError {
            file: source.to_path_buf(),
            problems,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            fail(vec![Problem {
                place: "syntax".into(),
                field: None,
                message: e.message().to_string(),
                fix: Some(format!("fix the TOML {}", line_of(text, e.span()))),
            }])
        })?;
        let mut problems = Vec::new();
        let spec = Self::from_table(table, source, &mut problems);
        validate(&spec, base_dir, &mut problems);
        if problems.is_empty() {
            Ok(spec)
        } else {
            Err(fail(problems))
        }
    }

    fn from_table(mut table: toml::Table, source: &Path, problems: &mut Vec<Problem>) -> Self {
        let top = |field: &str, message: String, fix: &str| Problem {
            place: "top level".into(),
            field: Some(field.into()),
            message,
            fix: Some(fix.into()),
        };
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => s,
            Some(_) => {
                problems.push(top(
                    "name",
                    "must be a non-empty string".into(),
                    "name = \"local\"",
                ));
                String::new()
            }
            None => {
                problems.push(top("name", "missing".into(), "add name = \"...\""));
                String::new()
            }
        };
        let channel_capacity = match table.remove("channel_capacity") {
            None => NonZeroUsize::new(32).expect("non-zero"),
            Some(toml::Value::Integer(n)) if (1..=65_536).contains(&n) => {
                NonZeroUsize::new(n as usize).expect("checked range")
            }
            Some(v) => {
                problems.push(top(
                    "channel_capacity",
                    format!("must be an integer from 1 to 65536, got {v}"),
                    "channel_capacity = 32",
                ));
                NonZeroUsize::new(32).expect("non-zero")
            }
        };
        let mut stages = Vec::new();
        match table.remove("stage") {
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    let kind = item
                        .get("kind")
                        .and_then(|k| k.as_str())
                        .unwrap_or("?")
                        .to_string();
                    match StageSpec::deserialize(item.clone()) {
                        Ok(stage) => stages.push(stage),
                        Err(e) => problems.push(serde_problem(
                            format!("stage {} ({kind})", i + 1),
                            e.message(),
                            &item,
                        )),
                    }
                }
            }
            Some(_) => problems.push(top(
                "stage",
                "must be an array of tables".into(),
                "write each stage as [[stage]]",
            )),
            None => problems.push(top(
                "stage",
                "no stages".into(),
                "add at least one [[stage]] table",
            )),
        }
        let mut mcp = BTreeMap::new();
        match table.remove("mcp") {
            Some(toml::Value::Table(servers)) => {
                for (server, value) in servers {
                    match McpServerSpec::deserialize(value.clone()) {
                        Ok(s) => {
                            mcp.insert(server, s);
                        }
                        Err(e) => problems.push(serde_problem(
                            format!("mcp.{server}"),
                            e.message(),
                            &value,
                        )),
                    }
                }
            }
            Some(_) => problems.push(top(
                "mcp",
                "must be a table of servers".into(),
                "write each server as [mcp.NAME]",
            )),
            None => {}
        }
        let audit = match table.remove("audit") {
            None => None,
            Some(value) => match AuditSpec::deserialize(value.clone()) {
                Ok(a) if a.path.as_os_str().is_empty() => {
                    problems.push(problem(
                        "audit".into(),
                        "path",
                        "must not be empty".into(),
                        "path = \"audit/tools.jsonl\"",
                    ));
                    None
                }
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(serde_problem("audit".into(), e.message(), &value));
                    None
                }
            },
        };
        let trust = match table.remove("trust") {
            None => TrustSpec::default(),
            Some(value) => match TrustSpec::deserialize(value.clone()) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(serde_problem("trust".into(), e.message(), &value));
                    TrustSpec::default()
                }
            },
        };
        let auth = match table.remove("auth") {
            None => None,
            Some(value) => match AuthSpec::deserialize(value.clone()) {
                Ok(a) => Some(a),
                Err(e) => {
                    problems.push(serde_problem("auth".into(), e.message(), &value));
                    None
                }
            },
        };
        let access = match table.remove("access") {
            None => AccessSpec::default(),
            Some(value) => AccessSpec::deserialize(value.clone()).unwrap_or_else(|e| {
                problems.push(serde_problem("access".into(), e.message(), &value));
                AccessSpec::default()
            }),
        };
        let prices = match table.remove("prices") {
            None => None,
            Some(value) => match crate::prices::Prices::deserialize(value.clone()) {
                Ok(p) => {
                    for (field, message) in p.problems() {
                        problems.push(problem(
                            "prices".into(),
                            field,
                            message,
                            "a price in US dollars, 0 or more (e.g. 0.40)",
                        ));
                    }
                    Some(p)
                }
                Err(e) => {
                    problems.push(serde_problem("prices".into(), e.message(), &value));
                    None
                }
            },
        };
        for (key, _) in table {
            problems.push(Problem {
                place: "top level".into(),
                field: Some(key.clone()),
                message: "unknown field".into(),
                fix: Some(
                    "expected one of `name`, `channel_capacity`, `stage`, `mcp`, `audit`, `trust`, \
                     `auth`, `access`, `prices`"
                        .into(),
                ),
            });
        }
        PipelineSpec {
            name,
            channel_capacity,
            stages,
            mcp,
            audit,
            trust,
            auth,
            access,
            prices,
            source: source.to_path_buf(),
        }
    }

    /// The tool-pin lock file: `[trust] lock`, or the spec's own path with
    /// `.mcp.lock` in place of `.toml` (`pipelines/local.mcp.lock`), both
    /// relative to `base_dir`.
    pub fn lock_path(&self, base_dir: &Path) -> PathBuf {
        let path = match &self.trust.lock {
            Some(p) => p.clone(),
            None => self.source.with_extension("mcp.lock"),
        };
        base_dir.join(path)
    }

    /// The stages a `transcribe` run needs: everything up to and including
    /// speech-to-text.
    pub fn listening_stages(&self) -> Vec<&StageSpec> {
        self.stages
            .iter()
            .filter(|s| matches!(s, StageSpec::Vad(_) | StageSpec::Stt(_)))
            .collect()
    }
}

/// Turn a serde message into a problem naming the field at fault. serde
/// puts the field in backticks for field errors ("unknown field `modle`");
/// for an unknown enum value it names only the value, so the field is the
/// key in `table` holding that value.
fn serde_problem(place: String, message: &str, table: &toml::Value) -> Problem {
    let quoted = message.split('`').nth(1);
    let field = if message.contains("unknown variant") {
        quoted.and_then(|value| {
            table
                .as_table()?
                .iter()
                .find_map(|(key, v)| (v.as_str() == Some(value)).then(|| key.clone()))
        })
    } else if message.contains("field") {
        quoted.map(str::to_string)
    } else {
        None
    };
    let fix = if message.contains("unknown variant") {
        Some("use one of the values listed".into())
    } else if message.contains("unknown field") {
        Some("remove it or correct its spelling; the valid fields are listed".into())
    } else if message.contains("missing field") {
        Some("add it".into())
    } else {
        None
    };
    Problem {
        place,
        field,
        message: message.to_string(),
        fix,
    }
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => format!(
            "near line {}",
            text[..span.start.min(text.len())].matches('\n').count() + 1
        ),
        None => String::new(),
    }
}

fn problem(place: String, field: &str, message: String, fix: &str) -> Problem {
    Problem {
        place,
        field: Some(field.into()),
        message,
        fix: Some(fix.into()),
    }
}

/// Cross-field and cross-stage checks.
fn validate(spec: &PipelineSpec, base_dir: &Path, problems: &mut Vec<Problem>) {
    let place = |i: usize, s: &StageSpec| format!("stage {} ({})", i + 1, s.kind());
    let needs_file = |path: &Path| {
        let full = base_dir.join(path);
        (!full.is_file()).then(|| format!("file {} not found", path.display()))
    };

    for (i, stage) in spec.stages.iter().enumerate() {
        let at = place(i, stage);
        match stage {
            StageSpec::Vad(v) => {
                if !(0.05..=0.95).contains(&v.threshold) {
                    problems.push(problem(
                        at.clone(),
                        "threshold",
                        format!("must be between 0.05 and 0.95, got {}", v.threshold),
                        "threshold = 0.5",
                    ));
                }
                if !(50..=5_000).contains(&v.end_of_turn_ms) {
                    problems.push(problem(
                        at.clone(),
                        "end_of_turn_ms",
                        format!("must be from 50 to 5000, got {}", v.end_of_turn_ms),
                        "end_of_turn_ms = 400",
                    ));
                }
                if v.barge_in_min_ms > 3_000 {
                    problems.push(problem(
                        at.clone(),
                        "barge_in_min_ms",
                        format!(
                            "must be at most 3000 (longer and a caller cannot interrupt), got {}",
                            v.barge_in_min_ms
                        ),
                        "barge_in_min_ms = 400",
                    ));
                }
                if v.pre_roll_ms > 1_000 {
                    problems.push(problem(
                        at.clone(),
                        "pre_roll_ms",
                        format!("must be at most 1000, got {}", v.pre_roll_ms),
                        "pre_roll_ms = 200",
                    ));
                }
                if !(-100.0..=-30.0).contains(&v.quiet_dbfs) {
                    problems.push(problem(
                        at.clone(),
                        "quiet_dbfs",
                        format!(
                            "must be from -100 to -30 (louder, and soft speech would count as silence), got {}",
                            v.quiet_dbfs
                        ),
                        "quiet_dbfs = -60",
                    ));
                }
                if !(1..=30).contains(&v.max_turn_s) {
                    problems.push(problem(
                        at.clone(),
                        "max_turn_s",
                        format!(
                            "must be from 1 to 30 (one Whisper window), got {}",
                            v.max_turn_s
                        ),
                        "max_turn_s = 30",
                    ));
                }
                if v.backend == VadBackend::Silero {
                    for (field, path) in [("model", &v.model), ("onnxruntime", &v.onnxruntime)] {
                        if let Some(m) = needs_file(path) {
                            problems.push(problem(at.clone(), field, m, SETUP_FIX));
                        }
                    }
                }
            }
            StageSpec::Stt(s) => {
                if s.backend == SttBackend::WhisperLocal {
                    if let Some(m) = needs_file(Path::new(&s.model)) {
                        problems.push(problem(at.clone(), "model", m, SETUP_FIX));
                    }
                }
                if let Some(ctx) = s.audio_ctx {
                    if !(64..=1500).contains(&ctx) {
                        problems.push(problem(
                            at.clone(),
                            "audio_ctx",
                            format!("must be from 64 to 1500, got {ctx}"),
                            "remove it for the automatic window, or 1500 for whisper's full window",
                        ));
                    }
                }
            }
            StageSpec::Tts(t) => {
                if ![16_000, 24_000].contains(&t.sample_rate) {
                    problems.push(problem(
                        at.clone(),
                        "sample_rate",
                        format!("must be 16000 or 24000, got {}", t.sample_rate),
                        "sample_rate = 24000",
                    ));
                }
                check_tts(t, &at, &needs_file, problems);
            }
            StageSpec::Planner(p) => check_planner(p, &at, &needs_file, problems),
            StageSpec::Realtime(r) => check_realtime(r, &at, &needs_file, problems),
        }
        let mcp_names = match stage {
            StageSpec::Planner(p) => &p.mcp[..],
            StageSpec::Realtime(r) => &r.mcp[..],
            _ => &[],
        };
        for name in mcp_names {
            if let (Some(McpServerSpec::Hosted(_)), StageSpec::Planner(p)) =
                (spec.mcp.get(name), stage)
            {
                if p.backend != ModelBackend::Openai {
                    problems.push(problem(
                        at.clone(),
                        "mcp",
                        format!(
                            "\"{name}\" is hosted (the model provider calls it), but the \
                             local backend has no provider"
                        ),
                        &format!(
                            "use backend = \"openai\", or reach [mcp.{name}] yourself \
                             with transport = \"streamable-http\""
                        ),
                    ));
                }
            }
            if !spec.mcp.contains_key(name) {
                let known: Vec<_> = spec.mcp.keys().map(String::as_str).collect();
                problems.push(problem(
                    at.clone(),
                    "mcp",
                    format!("unknown MCP server \"{name}\""),
                    &if known.is_empty() {
                        format!("declare it as [mcp.{name}]")
                    } else {
                        format!("declare [mcp.{name}] or use one of: {}", known.join(", "))
                    },
                ));
            }
        }
    }

    problems.extend(crate::mcp::allow::check_entries(&spec.trust));
    for (name, server) in &spec.mcp {
        if let Some(p) = crate::mcp::allow::check_server(name, server, &spec.trust) {
            problems.push(p);
        }
        check_oauth(name, server, problems);
    }

    check_order(spec, problems);
    check_access(spec, problems);
}

/// `[mcp.NAME.oauth]`: a service account needs its secret's variable; a
/// person's sign-in must not name one (a public client cannot keep it).
fn check_oauth(name: &str, server: &McpServerSpec, problems: &mut Vec<Problem>) {
    let (McpServerSpec::Sse {
        oauth: Some(oauth), ..
    }
    | McpServerSpec::StreamableHttp {
        oauth: Some(oauth), ..
    }) = server
    else {
        return;
    };
    let at = format!("mcp.{name}.oauth");
    match (oauth.grant, &oauth.client_secret_env) {
        (OAuthGrant::ClientCredentials, None) => problems.push(problem(
            at,
            "client_secret_env",
            "the client_credentials grant needs the client secret's environment variable".into(),
            "client_secret_env = \"KB_CLIENT_SECRET\", or grant = \"authorization_code\" for a person's sign-in",
        )),
        (OAuthGrant::AuthorizationCode, Some(_)) => problems.push(problem(
            at,
            "client_secret_env",
            "an authorization_code client is public (PKCE): it has no secret".into(),
            "remove client_secret_env",
        )),
        _ => {}
    }
}

/// `[auth]` and `[access]`: names that exist, limits that can refill, and
/// an audit log wherever a call can be refused.
fn check_access(spec: &PipelineSpec, problems: &mut Vec<Problem>) {
    if let Some(auth) = &spec.auth {
        if auth.keys_env.trim().is_empty() {
            problems.push(problem(
                "auth".into(),
                "keys_env",
                "must name an environment variable".into(),
                "keys_env = \"PARLOR_API_KEYS\"",
            ));
        }
    }
    let access = &spec.access;
    if access.restricts() && spec.audit.is_none() {
        problems.push(problem(
            "access".into(),
            "tool",
            "access rules need an audit log: refused and rate-limited calls are recorded".into(),
            "add [audit] with path = \"audit/tools.jsonl\"",
        ));
    }
    let known_server = |name: &str| {
        let server = name.split_once("__").map_or(name, |(s, _)| s);
        spec.mcp.contains_key(server)
    };
    for (i, rule) in access.tool.iter().enumerate() {
        if !rule.tool.contains("__") || !known_server(&rule.tool) {
            problems.push(problem(
                format!("access.tool {}", i + 1),
                "tool",
                format!("\"{}\" is not a tool of a declared MCP server", rule.tool),
                "name it server__tool (as the model sees it) or server__* for all of a server's tools",
            ));
        }
    }
    for (i, limit) in access.limit.iter().enumerate() {
        let at = format!("access.limit {}", i + 1);
        match (&limit.tool, &limit.server) {
            (Some(tool), None) if tool.contains("__") && known_server(tool) => {}
            (None, Some(server)) if spec.mcp.contains_key(server) => {}
            (Some(_), Some(_)) | (None, None) => problems.push(problem(
                at.clone(),
                "tool",
                "give exactly one of `tool` or `server`".into(),
                "tool = \"orders__get_order\" or server = \"orders\"",
            )),
            (Some(name), None) | (None, Some(name)) => problems.push(problem(
                at.clone(),
                if limit.tool.is_some() {
                    "tool"
                } else {
                    "server"
                },
                format!("\"{name}\" is not a declared MCP server or one of its tools"),
                "name a server from [mcp.NAME], or its tool as server__tool",
            )),
        }
        if limit.per_secs == 0 {
            problems.push(problem(
                at,
                "per_secs",
                "must be at least 1".into(),
                "per_secs = 60",
            ));
        }
    }
}

fn check_tts(
    t: &TtsSpec,
    at: &str,
    needs_file: &dyn Fn(&Path) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    // `contains` is false for NaN too.
    if !(0.25..=4.0).contains(&t.speed) {
        problems.push(problem(
            at.to_string(),
            "speed",
            format!("must be from 0.25 to 4.0, got {}", t.speed),
            "speed = 1.0",
        ));
    }
    if t.instructions.is_some() && t.backend != TtsBackend::Openai {
        problems.push(problem(
            at.to_string(),
            "instructions",
            "only the openai backend takes instructions".into(),
            "remove it, or use backend = \"openai\"",
        ));
    }
    if t.backend == TtsBackend::Local {
        let model = t.local_model();
        let config = t.local_config();
        for (field, path) in [
            ("model", model.as_path()),
            ("model", config.as_path()),
            ("onnxruntime", t.onnxruntime.as_path()),
        ] {
            if let Some(m) = needs_file(path) {
                problems.push(problem(
                    at.to_string(),
                    field,
                    m,
                    &format!("{SETUP_FIX}, or use backend = \"espeak\""),
                ));
            }
        }
    }
}

fn check_realtime(
    r: &RealtimeSpec,
    at: &str,
    needs_file: &dyn Fn(&Path) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    if let Some(url) = &r.url {
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            problems.push(problem(
                at.to_string(),
                "url",
                format!("\"{url}\" is not a WebSocket URL"),
                "e.g. \"ws://127.0.0.1:8080/v1/realtime\" or leave it out for OpenAI's",
            ));
        }
    }
    if !["server_vad", "semantic_vad"].contains(&r.turn_detection.as_str()) {
        problems.push(problem(
            at.to_string(),
            "turn_detection",
            format!(
                "must be \"server_vad\" or \"semantic_vad\", got \"{}\"",
                r.turn_detection
            ),
            "turn_detection = \"server_vad\"",
        ));
    }
    if let Some(path) = &r.instructions {
        if let Some(m) = needs_file(path) {
            problems.push(problem(
                at.to_string(),
                "instructions",
                m,
                "point it at a text file with the session's instructions",
            ));
        }
    }
}

fn check_planner(
    p: &PlannerSpec,
    at: &str,
    needs_file: &dyn Fn(&Path) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    if p.backend == ModelBackend::Local {
        if let Some(m) = needs_file(&p.local_model()) {
            problems.push(problem(at.to_string(), "model", m, SETUP_FIX));
        }
    }
    if let Some(path) = &p.instructions {
        if let Some(m) = needs_file(path) {
            problems.push(problem(
                at.to_string(),
                "instructions",
                m,
                "point it at a text file with the system prompt",
            ));
        }
    }
    if let Some(prompt) = &p.prompt {
        if !p.mcp.contains(&prompt.server) {
            problems.push(problem(
                at.to_string(),
                "prompt",
                format!(
                    "server \"{}\" is not in this stage's mcp list",
                    prompt.server
                ),
                &format!("add \"{}\" to mcp", prompt.server),
            ));
        }
    }
    for (raw, parsed) in p.resources.iter().zip(p.resource_refs()) {
        match parsed {
            None => problems.push(problem(
                at.to_string(),
                "resources",
                format!("\"{raw}\" is not \"server:uri\""),
                "e.g. \"knowledge:config://settings\"",
            )),
            Some((server, _)) if !p.mcp.contains(&server) => problems.push(problem(
                at.to_string(),
                "resources",
                format!("server \"{server}\" is not in this stage's mcp list"),
                &format!("add \"{server}\" to mcp"),
            )),
            Some(_) => {}
        }
    }
    if !(1..=16).contains(&p.max_steps) {
        problems.push(problem(
            at.to_string(),
            "max_steps",
            format!("must be from 1 to 16, got {}", p.max_steps),
            "max_steps = 4",
        ));
    }
    for (field, ms) in [
        ("call_timeout_ms", p.call_timeout_ms),
        ("turn_timeout_ms", p.turn_timeout_ms),
    ] {
        if ms == 0 {
            problems.push(problem(
                at.to_string(),
                field,
                "must be more than 0".into(),
                "e.g. 15000",
            ));
        }
    }
}

/// The chain must make sense as a chain: VAD first, each kind once, stt →
/// planner → tts in that order, and realtime alone (it replaces all three).
fn check_order(spec: &PipelineSpec, problems: &mut Vec<Problem>) {
    let kinds: Vec<&str> = spec.stages.iter().map(StageSpec::kind).collect();
    let mut seen = std::collections::HashSet::new();
    for (i, kind) in kinds.iter().enumerate() {
        if !seen.insert(*kind) {
            problems.push(Problem {
                place: format!("stage {} ({kind})", i + 1),
                field: Some("kind".into()),
                message: format!("a second {kind} stage"),
                fix: Some("keep one stage of each kind".into()),
            });
        }
    }
    if let Some(rt) = kinds.iter().position(|k| *k == "realtime") {
        for (i, kind) in kinds.iter().enumerate() {
            if matches!(*kind, "vad" | "stt" | "planner" | "tts") {
                problems.push(Problem {
                    place: format!("stage {} ({kind})", i + 1),
                    field: Some("kind".into()),
                    message: format!(
                        "a {kind} stage cannot be mixed with the realtime stage (stage {}), which finds turns (its turn_detection), understands, plans and speaks itself",
                        rt + 1
                    ),
                    fix: Some(format!("remove the {kind} stage, or the realtime stage")),
                });
            }
        }
    }
    let rank = |k: &str| match k {
        "vad" => 0,
        "stt" | "realtime" => 1,
        "planner" => 2,
        _ => 3,
    };
    for pair in kinds.windows(2).enumerate() {
        let (i, w) = pair;
        if rank(w[0]) > rank(w[1]) {
            problems.push(Problem {
                place: format!("stage {} ({})", i + 2, w[1]),
                field: Some("kind".into()),
                message: format!("{} must come before {}", w[1], w[0]),
                fix: Some("order the stages vad, stt, planner, tts".into()),
            });
        }
    }
    if !kinds.is_empty() && !matches!(kinds[0], "vad" | "realtime") {
        problems.push(Problem {
            place: "stage 1".into(),
            field: Some("kind".into()),
            message: format!(
                "the first stage is {}, but turns come from the VAD",
                kinds[0]
            ),
            fix: Some("put a vad stage first".into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{env_refs, expand_env, realtime_url};

    #[test]
    fn env_values_name_parlors_variables() {
        std::env::set_var("PARLOR_SPEC_TEST_KEY", "k-42");
        assert_eq!(expand_env("${PARLOR_SPEC_TEST_KEY}").unwrap(), "k-42");
        assert_eq!(
            expand_env("Bearer ${PARLOR_SPEC_TEST_KEY}!").unwrap(),
            "Bearer k-42!"
        );
        for literal in ["plain", "$HOME", "${}", "${1X}", "${not closed", "a$b${"] {
            assert_eq!(expand_env(literal).unwrap(), literal);
        }
        assert_eq!(env_refs("Bearer ${A_1} and ${B}, not $C"), ["A_1", "B"]);
        assert_eq!(
            expand_env("${PARLOR_SPEC_TEST_UNSET_VAR}").unwrap_err(),
            "${PARLOR_SPEC_TEST_UNSET_VAR} is not set in parlor's environment"
        );
    }

    #[test]
    fn an_api_roots_realtime_route_is_a_websocket_url() {
        assert_eq!(
            realtime_url("https://api.openai.com/v1"),
            "wss://api.openai.com/v1/realtime"
        );
        assert_eq!(
            realtime_url("http://127.0.0.1:8080/v1"),
            "ws://127.0.0.1:8080/v1/realtime"
        );
    }
}
