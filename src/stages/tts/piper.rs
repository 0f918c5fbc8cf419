//! A Piper voice: a VITS model (ONNX) run through onnxruntime, fed phoneme
//! ids made from espeak-ng's IPA ([`super::phonemes`]).
//!
//! The model is one call per sentence: phoneme ids in, the whole sentence's
//! audio out at the config's rate (22 050 Hz for medium voices). A text of
//! several sentences is synthesised sentence by sentence, so the first one
//! is heard while the next is being made.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::stages::onnx::cpu_session;
use ort::session::Session;
use ort::value::Tensor;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::phonemes::{self, PhonemeIdMap};
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

/// A loaded Piper voice. Cheap to share: the session sits behind a mutex
/// (ort 2.0.0-rc.12's `Session::run` takes `&mut self`), so sentences from
/// concurrent callers take turns, each already using [`INTRA_THREADS`].
pub struct PiperVoice {
    session: Arc<Mutex<Session>>,
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
            .finish_non_exhaustive()
    }
}

impl PiperVoice {
    /// Load the Piper model at `model` (its config is `model` + `.json`)
    /// on the onnxruntime library `runtime`, speaking at `speed` times the
    /// trained rate. Blocking: ~0.5 s.
    ///
    /// # Errors
    /// [`TtsError::ModelMissing`], [`TtsError::BadConfig`],
    /// [`TtsError::ModelLoad`], [`TtsError::Runtime`].
    pub fn load(model: &Path, runtime: &Path, speed: f32) -> Result<Self, TtsError> {
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

        // The one place onnxruntime is loaded (shared with the Silero VAD).
        crate::stages::vad::silero::init_onnxruntime(runtime)
            .map_err(|e| TtsError::Runtime(e.to_string()))?;
        // The builder's steps fail with different error types; only the
        // message matters here.
        let load_err = |e: &dyn std::fmt::Display| TtsError::ModelLoad {
            path: model.to_path_buf(),
            message: e.to_string(),
        };
        let session = cpu_session(model, INTRA_THREADS).map_err(|e| load_err(&e))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for expected in ["input", "input_lengths", "scales"] {
            if !names.contains(&expected) {
                return Err(TtsError::ModelLoad {
                    path: model.to_path_buf(),
                    message: format!(
                        "it has inputs {names:?}, but a Piper model has input, input_lengths and scales"
                    ),
                });
            }
        }
        let inference = config.inference;
        Ok(Self {
            session: Arc::new(Mutex::new(session)),
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

    /// The rate of the audio this voice makes.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Phoneme ids for each sentence of `text`.
    ///
    /// # Errors
    /// espeak-ng's errors.
    pub async fn phoneme_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, TtsError> {
        let sentences = phonemes::phonemize(text, &self.espeak_voice).await?;
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
        synthesize(&self.session, ids, self.scales)
    }
}

fn synthesize(
    session: &Mutex<Session>,
    ids: &[i64],
    scales: [f32; 3],
) -> Result<Vec<f32>, TtsError> {
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
    let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(err)?;
    let mut audio = audio.to_vec();
    normalize(&mut audio);
    Ok(audio)
}

/// Scales the sentence to full range, as Piper does: VITS output level
/// varies from sentence to sentence. Near-silence is left alone rather
/// than amplified into noise.
fn normalize(audio: &mut [f32]) {
    let peak = audio
        .iter()
        .filter(|s| s.is_finite())
        .fold(0f32, |m, s| m.max(s.abs()));
    let gain = 1.0 / peak.max(0.01);
    for s in audio.iter_mut() {
        *s = if s.is_finite() {
            (*s * gain).clamp(-1.0, 1.0)
        } else {
            0.0
        };
    }
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
        let sentences = tokio::select! {
            ids = self.phoneme_ids(text) => ids?,
            () = out.closed() => return Ok(()),
        };
        for ids in sentences {
            if out.is_closed() {
                return Ok(());
            }
            let session = Arc::clone(&self.session);
            let [noise, length, noise_w] = self.scales;
            let scales = [noise, length / speed, noise_w];
            // The model run cannot be interrupted; a cancelled turn stops
            // before the next sentence instead.
            let audio = tokio::task::spawn_blocking(move || synthesize(&session, &ids, scales))
                .await
                .map_err(|e| TtsError::Inference(format!("the synthesis task failed: {e}")))??;
            if !send_pieces(out, self.sample_rate, &audio).await {
                return Ok(());
            }
        }
        Ok(())
    }
}
