//! Whisper in process: whisper.cpp through whisper-rs.
//!
//! [`WhisperEngine`] is the blocking part: one loaded model and one decoding
//! state, reused turn after turn (a state holds ~100 MB of buffers that are
//! costly to allocate). [`WhisperLocal`] is the stage around it: it moves
//! each turn's work onto tokio's blocking pool, so the runtime's workers
//! never wait on the encoder, and lets go of a turn the moment it is
//! cancelled (barge-in): the frames behind it flow on at once, while
//! whisper.cpp stops at its next checkpoint.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use whisper_rs::whisper_rs_sys::ggml_log_level as GgmlLogLevel;
use whisper_rs::{
    FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters, WhisperState,
};

use super::{run_stt, SttError, Transcriber};
use crate::frame::{Utterance, PIPELINE_SAMPLE_RATE};
use crate::spec::SttSpec;
use crate::stages::{Stage, StageContext, StageError, StageIo};

/// whisper.cpp returns nothing for input under 100 ms ("input is too
/// short") and warns; pad such scraps with silence to one second so every
/// turn gets a real decode. Whisper pads every input to its window (20 to
/// 30 s) anyway, so this costs nothing.
const MIN_SAMPLES: usize = PIPELINE_SAMPLE_RATE as usize;

/// Whisper's full encoder window: 1500 frames of 20 ms, 30 s.
pub const FULL_AUDIO_CTX: u32 = 1500;

/// Samples of 16 kHz audio per encoder frame (10 ms mel hop, stride-2 conv).
const SAMPLES_PER_CTX_FRAME: usize = 320;

/// The automatic window never goes below this many frames (20.48 s)…
const AUTO_AUDIO_CTX_MIN: u32 = 1024;

/// …and covers the utterance plus this many (5.12 s) of trailing silence.
const AUTO_AUDIO_CTX_MARGIN: u32 = 256;

/// The encoder window for an utterance of `samples` when the spec leaves
/// `audio_ctx` unset: the speech plus 5 s, at least 1024 frames, at most
/// the full 1500, in steps of 64.
///
/// whisper.cpp pads every clip to its window and the encoder, ~95% of the
/// time, scales with it. Measured side by side on the 19 clips of
/// tests/stt.rs (1.1–7.1 s; tiny.en f16, llamafile kernels, 2 threads,
/// median of 3 interleaved runs):
///
/// | window | mean WER | ms a clip | clips changed vs 1500 |
/// |---|---|---|---|
/// | 1500 (full) | 0.043 | 739 | – |
/// | 1024 | 0.051 | 357 | 2: "ill-disposed" → "old-sposed"; "Eight" → "8" |
/// | 768 | 0.068 | 268 | 6: also "clubs" → "close", punctuation |
/// | 512 | 0.068 | 173 | 7, the same misses |
///
/// 1024 is the smallest window within +0.02 WER of the full one, with no
/// loop or made-up words anywhere (384 gave WER 0.17 and 256 loops:
/// MODELS.md). It is not free: joined into one 11.7 s turn, the cards
/// clips lose "clubs" to "clothes" three times (WER 0.14, 0 with 1500; 1216
/// frames does the same); joined espeak clips (15.7 s) read alike. Over
/// those 19 + 3 joined clips the mean is still +0.013. The margin keeps a
/// long turn whole: past the window whisper.cpp does not just drop words,
/// it makes up new ones (a fixed 1024 on 26.7 s of LibriVox wrote a
/// paragraph of nonsense; this gives 1500, read right). In `cargo bench
/// --bench stt`: 264 ms a clip, faster-whisper int8 350, the full window
/// 518. For the full window, `audio_ctx = 1500`.
pub fn auto_audio_ctx(samples: usize) -> u32 {
    let frames = u32::try_from(samples.div_ceil(SAMPLES_PER_CTX_FRAME)).unwrap_or(u32::MAX);
    frames
        .saturating_add(AUTO_AUDIO_CTX_MARGIN)
        .div_ceil(64)
        .saturating_mul(64)
        .clamp(AUTO_AUDIO_CTX_MIN, FULL_AUDIO_CTX)
}

/// The window to encode `samples` with: `fixed` when set, widened to hold
/// the whole utterance (past the window whisper.cpp loses the words and
/// may invent others), else [`auto_audio_ctx`].
pub fn audio_ctx_for(fixed: Option<u32>, samples: usize) -> u32 {
    match fixed {
        Some(ctx) => {
            let frames = u32::try_from(samples.div_ceil(SAMPLES_PER_CTX_FRAME)).unwrap_or(u32::MAX);
            ctx.max(frames).min(FULL_AUDIO_CTX)
        }
        None => auto_audio_ctx(samples),
    }
}

/// Audio whose loudest sample is below this (-60 dBFS) holds no speech.
/// Whisper, given silence, does not return nothing: tiny.en says "you".
/// The VAD should never send such a turn; this keeps a stray one from
/// becoming words the planner answers.
const SILENCE_PEAK: f32 = 0.001;

/// How to decode; everything else is whisper.cpp's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperSettings {
    /// CPU threads for the encoder and decoder.
    pub threads: usize,
    /// Spoken language ("en"); "auto" detects it (multilingual models only).
    pub language: String,
    /// Encoder window in 20 ms frames: a number is fixed (1500 = whisper's
    /// full 30 s window); `None` picks one per utterance, [`auto_audio_ctx`].
    pub audio_ctx: Option<u32>,
}

impl WhisperSettings {
    pub fn from_spec(spec: &SttSpec) -> Self {
        Self {
            threads: if spec.threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                spec.threads
            },
            language: spec.language.clone(),
            audio_ctx: spec.audio_ctx,
        }
    }
}

/// A loaded Whisper model with its reusable decoding state. Blocking: call
/// [`WhisperEngine::transcribe`] off the async runtime.
pub struct WhisperEngine {
    state: WhisperState,
    settings: WhisperSettings,
    model: PathBuf,
}

impl WhisperEngine {
    /// Load a ggml Whisper model. Takes ~100 ms for tiny.en.
    pub fn load(model: &Path, settings: WhisperSettings) -> Result<Self, SttError> {
        route_whisper_logs();
        if !model.is_file() {
            return Err(SttError::ModelMissing {
                path: model.to_path_buf(),
            });
        }
        let load_error = |reason: String| SttError::ModelLoad {
            path: model.to_path_buf(),
            reason,
        };
        let context = WhisperContext::new_with_params(model, WhisperContextParameters::default())
            .map_err(|e| load_error(format!("whisper.cpp rejected it ({e:?})")))?;
        // The state keeps the model alive (it holds a reference to it).
        let state = context
            .create_state()
            .map_err(|e| load_error(format!("cannot allocate a decoding state ({e:?})")))?;
        tracing::info!(
            message = "Whisper model loaded.",
            model = %model.display(),
            kind = context.model_type_readable_str_lossy().as_deref().unwrap_or("?"),
            multilingual = context.is_multilingual(),
            threads = settings.threads,
        );
        Ok(Self {
            state,
            settings,
            model: model.to_path_buf(),
        })
    }

    pub fn settings(&self) -> &WhisperSettings {
        &self.settings
    }

    pub fn model(&self) -> &Path {
        &self.model
    }

    /// Transcribe 16 kHz mono samples into trimmed text ("" for no speech).
    /// `cancel`, when it fires, makes the call return
    /// [`SttError::Cancelled`]. whisper.cpp (1.8) checks it only after the
    /// encoder and after each decoder step, so a cancel during the encoder
    /// (~90% of the time) saves just the decoding.
    pub fn transcribe(
        &mut self,
        samples: &[f32],
        cancel: Option<&CancellationToken>,
    ) -> Result<String, SttError> {
        if samples.iter().all(|s| s.abs() < SILENCE_PEAK) {
            return Ok(String::new());
        }
        let padded;
        let samples = if samples.len() < MIN_SAMPLES {
            let mut v = Vec::with_capacity(MIN_SAMPLES);
            v.extend_from_slice(samples);
            v.resize(MIN_SAMPLES, 0.0);
            padded = v;
            &padded[..]
        } else {
            samples
        };

        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(c_int::try_from(self.settings.threads).unwrap_or(c_int::MAX));
        params.set_language(Some(&self.settings.language));
        params.set_translate(false);
        // Each turn stands alone: the previous turn's text as a prompt helps
        // long dictation, but here it makes one misheard turn poison the next.
        params.set_no_context(true);
        params.set_no_timestamps(true);
        // A turn is at most one 30 s window: no need to split it.
        params.set_single_segment(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        // No "[BLANK_AUDIO]", "(music)" or leading-blank tokens: the planner
        // reads this text as the caller's words.
        params.set_suppress_blank(true);
        params.set_suppress_nst(true);
        // Also measured on the corpus, full window: `flash_attn` is slower
        // (871 vs 739 ms a clip) and changes a transcript;
        // `temperature_inc(0.0)` (no fallback re-decodes) changes nothing:
        // no clip fell back.
        let ctx = audio_ctx_for(self.settings.audio_ctx, samples.len());
        params.set_audio_ctx(c_int::try_from(ctx).unwrap_or(0));
        if let Some(token) = cancel {
            // SAFETY: `abort_if_cancelled` only reads the token through a
            // shared reference, and `token` outlives `params`, which is
            // consumed by `full` below before this function returns.
            unsafe {
                params.set_abort_callback(Some(abort_if_cancelled));
                params
                    .set_abort_callback_user_data(token as *const CancellationToken as *mut c_void);
            }
        }

        let running = Running::set(cancel);
        let result = self.state.full(params, samples);
        drop(running);
        if cancel.is_some_and(CancellationToken::is_cancelled) {
            return Err(SttError::Cancelled);
        }
        result.map_err(|e| SttError::Whisper(format!("{e:?}")))?;

        let mut text = String::new();
        for segment in self.state.as_iter() {
            let piece = segment
                .to_str_lossy()
                .map_err(|e| SttError::Whisper(format!("segment text: {e:?}")))?;
            text.push_str(&piece);
        }
        Ok(text.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

/// whisper.cpp's abort callback: asked after the encoder and after each
/// decoder step whether to stop.
unsafe extern "C" fn abort_if_cancelled(data: *mut c_void) -> bool {
    // SAFETY: `data` is the `&CancellationToken` set in `transcribe`, alive
    // for the whole `full` call during which this is invoked.
    let token = unsafe { &*(data as *const CancellationToken) };
    token.is_cancelled()
}

thread_local! {
    /// The turn's cancel token while this thread runs `full` (whisper.cpp
    /// logs from the calling thread; the abort callback may run on its
    /// compute threads). Once it has fired, whisper.cpp's "failed to
    /// encode" (or decode) is not an error but the stop that was asked for.
    static RUNNING: std::cell::RefCell<Option<CancellationToken>> =
        const { std::cell::RefCell::new(None) };
}

/// Holds this thread's [`RUNNING`] token for one `full` call and clears it
/// when dropped, even if the call unwinds.
struct Running;

impl Running {
    fn set(cancel: Option<&CancellationToken>) -> Self {
        RUNNING.set(cancel.cloned());
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = RUNNING.try_with(|running| running.replace(None));
    }
}

/// whisper.cpp and ggml print to stderr by default; route both to tracing
/// so they follow the service's log settings. `whisper_log_set` sets
/// ggml's log callback too, so one callback, [`whisper_log`], takes every
/// line (target `whisper_rs::whisper_logging_hook`, as whisper-rs's own
/// hook would), and it knows a cancelled turn's "failed to encode" is not
/// an error.
fn route_whisper_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `whisper_log` never unwinds (it catches panics) and keeps
        // no pointer past the call.
        unsafe { whisper_rs::set_log_callback(Some(whisper_log), std::ptr::null_mut()) };
    });
}

/// whisper.cpp's and ggml's log lines, one tracing event each. A panic
/// (say, in a subscriber) must not unwind into C: it is caught and the line
/// dropped.
unsafe extern "C" fn whisper_log(
    level: GgmlLogLevel,
    text: *const c_char,
    _user_data: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: whisper.cpp passes a NUL-terminated string alive for the call.
    let text = unsafe { CStr::from_ptr(text) };
    let _ = std::panic::catch_unwind(|| log_whisper_line(level, &text.to_string_lossy()));
}

fn log_whisper_line(level: GgmlLogLevel, text: &str) {
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let stopping = RUNNING
        .try_with(|t| {
            t.borrow()
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
        })
        .unwrap_or(false);
    match whisper_log_level(level, text, stopping) {
        tracing::Level::ERROR => {
            tracing::error!(target: "whisper_rs::whisper_logging_hook", "{text}")
        }
        tracing::Level::WARN => {
            tracing::warn!(target: "whisper_rs::whisper_logging_hook", "{text}")
        }
        tracing::Level::INFO => {
            tracing::info!(target: "whisper_rs::whisper_logging_hook", "{text}")
        }
        _ => tracing::debug!(target: "whisper_rs::whisper_logging_hook", "{text}"),
    }
}

/// The tracing level of a whisper.cpp or ggml log line (none and
/// continuation lines as debug). The encoder's or decoder's failure while
/// the call is being stopped on purpose is only debug: it is how
/// whisper.cpp reports the abort. Any other error stays one.
fn whisper_log_level(level: GgmlLogLevel, text: &str, aborted: bool) -> tracing::Level {
    use whisper_rs::whisper_rs_sys as sys;
    let abort_report = text.contains("failed to encode") || text.contains("failed to decode");
    match level {
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR if aborted && abort_report => {
            tracing::Level::DEBUG
        }
        sys::ggml_log_level_GGML_LOG_LEVEL_ERROR => tracing::Level::ERROR,
        sys::ggml_log_level_GGML_LOG_LEVEL_WARN => tracing::Level::WARN,
        sys::ggml_log_level_GGML_LOG_LEVEL_INFO => tracing::Level::INFO,
        _ => tracing::Level::DEBUG,
    }
}

/// The `whisper-local` stt stage.
pub struct WhisperLocal {
    engine: Arc<Mutex<WhisperEngine>>,
}

impl WhisperLocal {
    /// Load the spec's model (blocking).
    pub fn load(spec: &SttSpec) -> Result<Self, SttError> {
        let engine = WhisperEngine::load(Path::new(&spec.model), WhisperSettings::from_spec(spec))?;
        Ok(Self::new(engine))
    }

    pub fn new(engine: WhisperEngine) -> Self {
        Self::shared(Arc::new(Mutex::new(engine)))
    }

    /// A stage on an engine other calls use too: their transcriptions take
    /// turns on it (one at a time uses the cores best anyway).
    pub fn shared(engine: Arc<Mutex<WhisperEngine>>) -> Self {
        Self { engine }
    }
}

#[async_trait]
impl Transcriber for WhisperLocal {
    /// Transcribe one utterance on the blocking pool. `Ok(None)` as soon as
    /// the turn is cancelled: the blocking job is left to stop at whisper's
    /// next checkpoint and release the engine, and the next turn's job
    /// waits for it on the engine's lock, off the runtime.
    async fn transcribe(
        &self,
        utterance: Utterance,
        cancel: CancellationToken,
    ) -> Result<Option<String>, SttError> {
        let engine = self.engine.clone();
        let job_cancel = cancel.clone();
        let job = tokio::task::spawn_blocking(move || {
            let mut engine = engine
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            engine.transcribe(&utterance.audio.samples, Some(&job_cancel))
        });
        tokio::select! {
            biased;
            result = job => match result {
                Ok(Ok(text)) => Ok(Some(text)),
                Ok(Err(SttError::Cancelled)) => Ok(None),
                Ok(Err(e)) => Err(e),
                Err(join) => Err(SttError::Whisper(format!("the whisper task panicked: {join}"))),
            },
            _ = cancel.cancelled() => Ok(None),
        }
    }
}

#[async_trait]
impl Stage for WhisperLocal {
    fn name(&self) -> &'static str {
        "stt"
    }

    async fn run(self: Box<Self>, io: StageIo, cx: StageContext) -> Result<(), StageError> {
        run_stt(&*self, io, cx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whisper_rs::whisper_rs_sys as sys;

    #[test]
    fn only_the_abort_report_of_a_stopped_call_is_demoted() {
        let error = sys::ggml_log_level_GGML_LOG_LEVEL_ERROR;
        let encode = "whisper_full_with_state: failed to encode";
        assert_eq!(
            whisper_log_level(error, encode, true),
            tracing::Level::DEBUG
        );
        assert_eq!(
            whisper_log_level(error, encode, false),
            tracing::Level::ERROR
        );
        assert_eq!(
            whisper_log_level(error, "failed to allocate the compute buffer", true),
            tracing::Level::ERROR,
            "a stopped call's other errors stay errors"
        );
        assert_eq!(
            whisper_log_level(sys::ggml_log_level_GGML_LOG_LEVEL_WARN, "x", true),
            tracing::Level::WARN
        );
        assert_eq!(
            whisper_log_level(sys::ggml_log_level_GGML_LOG_LEVEL_CONT, "x", false),
            tracing::Level::DEBUG
        );
    }
}
