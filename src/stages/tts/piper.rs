//! A Piper voice: a VITS model (ONNX) run through onnxruntime, fed phoneme
//! ids made from espeak-ng's IPA ([`super::phonemes`], [`super::espeak_ipa`]).
//!
//! A text of several sentences is synthesised sentence by sentence, so the
//! first one is heard while the next is being made. When the voice's two
//! halves are there (`models/split_piper.py`), a sentence is streamed too:
//! its first ~0.3 s is heard while the rest is decoded
//! ([`super::piper_stream`]). Otherwise the model is one call per sentence:
//! phoneme ids in, the whole sentence's audio out at the config's rate
//! (22 050 Hz for medium voices).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::stages::onnx::cpu_session;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::phonemes::{self, PhonemeIdMap};
use super::piper_stream::{self, Loudness, SplitModel};
use super::voice::{send_pieces, TtsError, Voice};
use crate::frame::AudioChunk;

/// Threads for one synthesis. Two: a sentence takes ~5% of its length on
/// one core; a second halves the wait for the first audio, and more would
/// take cores from whisper and the planner running at the same time.
const INTRA_THREADS: usize = 2;

/// The parts of a Piper `.onnx.json` parlor uses.
#[derive(Debug, Deserialize)]
struct Config {
    audio: AudioConfig,
    espeak: EspeakConfig,
    inference: InferenceConfig,
    phoneme_id_map: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    phoneme_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AudioConfig {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct EspeakConfig {
    voice: String,
}

/// The defaults the voice was trained with: sampling noise, phoneme
/// duration and duration noise.
#[derive(Debug, Clone, Copy, Deserialize)]
struct InferenceConfig {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// How a voice's model runs. Sessions sit behind mutexes (ort
/// 2.0.0-rc.12's `Session::run` takes `&mut self`), so sentences from
/// concurrent callers take turns, each already using [`INTRA_THREADS`].
#[derive(Clone)]
enum Model {
    /// The whole model, one call per sentence.
    Whole(Arc<Mutex<Session>>),
    /// Encoder and decoder, a sentence streamed window by window.
    Split(Arc<SplitModel>),
}

/// A loaded Piper voice. Cheap to share.
pub struct PiperVoice {
    model_run: Model,
    ids: PhonemeIdMap,
    espeak_voice: String,
    sample_rate: u32,
    /// `[noise_scale, length_scale, noise_w]`, `length_scale` already
    /// divided by the speed.
    scales: [f32; 3],
    model: PathBuf,
}

impl std::fmt::Debug for PiperVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperVoice")
            .field("model", &self.model)
            .field("espeak_voice", &self.espeak_voice)
            .field("sample_rate", &self.sample_rate)
            .field("scales", &self.scales)
            .field("streams", &self.streams())
            .finish_non_exhaustive()
    }
}

impl PiperVoice {
    /// Load the Piper model at `model` (its config is `model` + `.json`)
    /// on the onnxruntime library `runtime`, speaking at `speed` times the
    /// trained rate. Streams sentences when the model's halves are beside
    /// it ([`piper_stream::parts`]). Blocking: ~0.5 s.
    ///
    /// # Errors
    /// [`TtsError::ModelMissing`], [`TtsError::BadConfig`],
    /// [`TtsError::ModelLoad`], [`TtsError::Runtime`].
    pub fn load(model: &Path, runtime: &Path, speed: f32) -> Result<Self, TtsError> {
        Self::load_as(model, runtime, speed, true)
    }

    /// [`Self::load`], but one model call per sentence even when the
    /// halves are there: the way to compare the two side by side.
    ///
    /// # Errors
    /// As [`Self::load`].
    pub fn load_whole(model: &Path, runtime: &Path, speed: f32) -> Result<Self, TtsError> {
        Self::load_as(model, runtime, speed, false)
    }

    fn load_as(model: &Path, runtime: &Path, speed: f32, stream: bool) -> Result<Self, TtsError> {
        if !model.is_file() {
            return Err(TtsError::ModelMissing {
                path: model.to_path_buf(),
            });
        }
        let config_path = {
            let mut p = model.as_os_str().to_owned();
            p.push(".json");
            PathBuf::from(p)
        };
        let bad_config = |reason: String| TtsError::BadConfig {
            path: config_path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&config_path).map_err(|e| bad_config(e.to_string()))?;
        let config: Config = serde_json::from_str(&text).map_err(|e| bad_config(e.to_string()))?;
        if let Some(kind) = config.phoneme_type.as_deref().filter(|k| *k != "espeak") {
            return Err(bad_config(format!(
                "phoneme_type is \"{kind}\"; parlor only makes espeak phonemes"
            )));
        }
        let ids = PhonemeIdMap::from_json(&config.phoneme_id_map).map_err(bad_config)?;
        // A missing espeak-ng or voice fails here, not on the first reply.
        super::espeak_ipa::check(&config.espeak.voice)?;

        // The one place onnxruntime is loaded (shared with the Silero VAD).
        crate::stages::vad::silero::init_onnxruntime(runtime)
            .map_err(|e| TtsError::Runtime(e.to_string()))?;
        let model_run = match piper_stream::parts(model).filter(|_| stream) {
            Some((encoder, decoder)) => Model::Split(Arc::new(SplitModel::load(
                &encoder,
                &decoder,
                INTRA_THREADS,
            )?)),
            None => Model::Whole(Arc::new(Mutex::new(load_whole_model(model)?))),
        };
        // Say which, so a voice left without its halves (streaming lost:
        // the first audio waits for the whole sentence) shows in the log.
        tracing::info!(
            message = "Piper voice loaded.",
            model = %model.display(),
            streams = matches!(model_run, Model::Split(_)),
        );
        let inference = config.inference;
        Ok(Self {
            model_run,
            ids,
            espeak_voice: config.espeak.voice,
            sample_rate: config.audio.sample_rate,
            scales: [
                inference.noise_scale,
                inference.length_scale / speed,
                inference.noise_w,
            ],
            model: model.to_path_buf(),
        })
    }

    /// The same voice with no sampling noise (in the phonemes' durations
    /// or the sound): the same ids always give the same audio, so two ways
    /// of running the model can be compared sample by sample.
    #[must_use]
    pub fn without_noise(mut self) -> Self {
        self.scales[0] = 0.0;
        self.scales[2] = 0.0;
        self
    }

    /// Whether sentences are streamed (the model's halves were loaded).
    pub fn streams(&self) -> bool {
        matches!(self.model_run, Model::Split(_))
    }

    /// The rate of the audio this voice makes.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Phoneme ids for each sentence of `text`.
    ///
    /// # Errors
    /// espeak-ng's errors.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, TtsError> {
        let sentences = phonemes::phonemize(text, &self.espeak_voice)?;
        Ok(sentences
            .iter()
            .map(|s| {
                let (ids, unknown) = self.ids.ids(s);
                if !unknown.is_empty() {
                    tracing::debug!(
                        message = "Skipped phonemes the voice does not know.",
                        ?unknown
                    );
                }
                ids
            })
            .collect())
    }

    /// One sentence's audio. Blocking (runs the model).
    ///
    /// # Errors
    /// [`TtsError::Inference`].
    pub fn synthesize(&self, ids: &[i64]) -> Result<Vec<f32>, TtsError> {
        match &self.model_run {
            Model::Whole(session) => synthesize(session, ids, self.scales),
            Model::Split(split) => {
                let latent = split.encode(ids, self.scales)?;
                let mut audio = split.decode(&latent, 0..latent.frames())?;
                normalize(&mut audio);
                Ok(audio)
            }
        }
    }

    /// One sentence's audio to `out` in pieces, streamed window by window
    /// or made whole; `false` when `out` closed (the turn was cancelled).
    async fn speak_sentence(
        &self,
        ids: Vec<i64>,
        scales: [f32; 3],
        out: &mpsc::Sender<AudioChunk>,
    ) -> Result<bool, TtsError> {
        let failed = |e: tokio::task::JoinError| {
            TtsError::Inference(format!("the synthesis task failed: {e}"))
        };
        match self.model_run.clone() {
            Model::Whole(session) => {
                // The model run cannot be interrupted; a cancelled turn
                // stops before the next sentence instead.
                let audio = tokio::task::spawn_blocking(move || synthesize(&session, &ids, scales))
                    .await
                    .map_err(failed)??;
                Ok(send_pieces(out, self.sample_rate, &audio).await)
            }
            Model::Split(split) => {
                let encoder = Arc::clone(&split);
                let latent = Arc::new(
                    tokio::task::spawn_blocking(move || encoder.encode(&ids, scales))
                        .await
                        .map_err(failed)??,
                );
                let mut loudness = Loudness::default();
                // A cancelled turn stops at the next window.
                for window in piper_stream::windows(latent.frames()) {
                    if out.is_closed() {
                        return Ok(false);
                    }
                    let (split, latent) = (Arc::clone(&split), Arc::clone(&latent));
                    let mut audio =
                        tokio::task::spawn_blocking(move || split.decode(&latent, window))
                            .await
                            .map_err(failed)??;
                    loudness.apply(&mut audio);
                    if !send_pieces(out, self.sample_rate, &audio).await {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
        }
    }
}

/// The whole model at `model`, checked to have Piper's inputs.
fn load_whole_model(model: &Path) -> Result<Session, TtsError> {
    let session = cpu_session(model, INTRA_THREADS).map_err(|e| TtsError::ModelLoad {
        path: model.to_path_buf(),
        message: e.to_string(),
    })?;
    check_inputs(&session, model)?;
    Ok(session)
}

/// That `session` (the whole model at `path`, or its encoder) takes
/// Piper's inputs, so a wrong file fails at load, not on the first reply.
pub(super) fn check_inputs(session: &Session, path: &Path) -> Result<(), TtsError> {
    let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
    for expected in ["input", "input_lengths", "scales"] {
        if !names.contains(&expected) {
            return Err(TtsError::ModelLoad {
                path: path.to_path_buf(),
                message: format!(
                    "it has inputs {names:?}, but a Piper model has input, input_lengths and scales"
                ),
            });
        }
    }
    Ok(())
}

fn synthesize(
    session: &Mutex<Session>,
    ids: &[i64],
    scales: [f32; 3],
) -> Result<Vec<f32>, TtsError> {
    let (_, mut audio) = run_on_ids(session, ids, scales)?;
    normalize(&mut audio);
    Ok(audio)
}

/// Runs a model with Piper's inputs (the whole voice, or its encoder) on
/// one sentence's ids: its first output's shape and data. Blocking.
pub(super) fn run_on_ids(
    session: &Mutex<Session>,
    ids: &[i64],
    scales: [f32; 3],
) -> Result<(Vec<i64>, Vec<f32>), TtsError> {
    let err = |e: ort::Error| TtsError::Inference(e.to_string());
    let input = Tensor::from_array(([1usize, ids.len()], ids.to_vec())).map_err(err)?;
    let lengths = Tensor::from_array(([1usize], vec![ids.len() as i64])).map_err(err)?;
    let scales = Tensor::from_array(([3usize], scales.to_vec())).map_err(err)?;
    // A poisoned lock means a panic mid-run; the session itself holds no
    // state between runs, so it is still usable.
    let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
    let outputs = session
        .run(ort::inputs![
            "input" => input,
            "input_lengths" => lengths,
            "scales" => scales,
        ])
        .map_err(err)?;
    let (shape, data) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
    Ok((shape.to_vec(), data.to_vec()))
}

/// Scales the sentence to full range, as Piper does: VITS output level
/// varies from sentence to sentence. Near-silence is left alone rather
/// than amplified into noise.
fn normalize(audio: &mut [f32]) {
    let gain = 1.0 / piper_stream::peak(audio).max(0.01);
    piper_stream::scale(audio, gain);
}

#[async_trait::async_trait]
impl Voice for PiperVoice {
    fn name(&self) -> &'static str {
        "piper"
    }

    async fn speak_at(
        &self,
        text: &str,
        speed: f32,
        out: &mpsc::Sender<AudioChunk>,
    ) -> Result<(), TtsError> {
        if text.trim().is_empty() || out.is_closed() {
            return Ok(());
        }
        let sentences = self.phoneme_ids(text)?;
        let [noise, length, noise_w] = self.scales;
        let scales = [noise, length / speed, noise_w];
        for ids in sentences {
            if out.is_closed() || !self.speak_sentence(ids, scales, out).await? {
                return Ok(());
            }
        }
        Ok(())
    }
}
