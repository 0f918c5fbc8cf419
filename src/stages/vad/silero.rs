//! Silero VAD (v5/v6) through onnxruntime.
//!
//! The model takes 512 new samples at 16 kHz plus the last 64 samples of the
//! previous chunk ("context"), a recurrent state `[2, 1, 128]` and the
//! sample rate, and returns the speech probability of the chunk and the next
//! state. This mirrors `OnnxWrapper` in the silero-vad Python package.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::stages::onnx::cpu_session;
use ort::session::Session;
use ort::value::Tensor;

use super::{SpeechDetector, VadError};

/// New samples per call: 32 ms at 16 kHz, the only size the 16 kHz model takes.
const CHUNK: usize = 512;
/// Samples carried over from the previous chunk.
const CONTEXT: usize = 64;
const STATE_LEN: usize = 2 * 128;
const SAMPLE_RATE: i64 = 16_000;

/// The onnxruntime library this process loaded, or why it could not.
/// onnxruntime can be loaded once per process (ort keeps it in a global),
/// so the first path wins and later callers get the same answer.
static RUNTIME: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Load onnxruntime from `library` once per process.
///
/// # Errors
/// [`VadError::RuntimeMissing`] if the file does not exist,
/// [`VadError::RuntimeLoad`] if it is not a usable onnxruntime (too old,
/// wrong architecture). A failure is remembered: the process cannot recover
/// from it without restarting.
pub fn init_onnxruntime(library: &Path) -> Result<(), VadError> {
    let loaded = RUNTIME.get_or_init(|| {
        if !library.is_file() {
            return Err(format!(
                "onnxruntime library {} not found",
                library.display()
            ));
        }
        // An absolute path: ort resolves relative ones against the
        // executable's folder, not the working directory.
        let absolute = std::fs::canonicalize(library).unwrap_or_else(|_| library.to_path_buf());
        match ort::init_from(&absolute) {
            Ok(builder) => {
                // `false` means another part of this process set up the
                // environment first, which is fine: it is the same library.
                let _ = builder.with_name("parlor").commit();
                tracing::debug!(message = "Loaded onnxruntime.", path = %absolute.display());
                Ok(absolute)
            }
            Err(e) => Err(format!(
                "cannot load onnxruntime from {}: {e}",
                absolute.display()
            )),
        }
    });
    match loaded {
        Ok(_) => Ok(()),
        Err(message) if !library.is_file() => Err(VadError::RuntimeMissing {
            path: library.to_path_buf(),
            detail: message.clone(),
        }),
        Err(message) => Err(VadError::RuntimeLoad {
            path: library.to_path_buf(),
            message: message.clone(),
        }),
    }
}

/// One Silero session with its recurrent state: one per audio stream.
/// A loaded Silero model, shared by every call's detector: a session per
/// call would cost each call megabytes of onnxruntime arenas, while one
/// frame's inference holds the lock for a fraction of a millisecond.
pub struct SileroModel {
    session: Mutex<Session>,
}

impl std::fmt::Debug for SileroModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroModel").finish_non_exhaustive()
    }
}

impl SileroModel {
    /// Load `model` on the onnxruntime library at `runtime`. Blocking.
    ///
    /// # Errors
    /// [`VadError::RuntimeMissing`], [`VadError::RuntimeLoad`],
    /// [`VadError::ModelMissing`], [`VadError::ModelLoad`], or
    /// [`VadError::UnexpectedModel`] for a model without Silero's inputs.
    pub fn load(model: &Path, runtime: &Path) -> Result<Self, VadError> {
        init_onnxruntime(runtime)?;
        if !model.is_file() {
            return Err(VadError::ModelMissing {
                path: model.to_path_buf(),
            });
        }
        let load_err = |e: &dyn std::fmt::Display| VadError::ModelLoad {
            path: model.to_path_buf(),
            message: e.to_string(),
        };
        let session = cpu_session(model, 1).map_err(|e| load_err(&e))?;
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        for expected in ["input", "state", "sr"] {
            if !names.contains(&expected) {
                return Err(VadError::UnexpectedModel(format!(
                    "{} has inputs {names:?}, but a Silero v5/v6 model has input, state and sr",
                    model.display()
                )));
            }
        }
        Ok(Self {
            session: Mutex::new(session),
        })
    }
}

/// One stream's Silero detector: its own state over a shared model.
pub struct SileroDetector {
    model: Arc<SileroModel>,
    input: Tensor<f32>,
    state: Tensor<f32>,
    sr: Tensor<i64>,
}

impl SileroDetector {
    /// A detector with fresh state over a loaded model.
    ///
    /// # Errors
    /// [`VadError::Inference`] if onnxruntime cannot make its tensors.
    pub fn new(model: Arc<SileroModel>) -> Result<Self, VadError> {
        let inference = |e: ort::Error| VadError::Inference(e.to_string());
        let input = Tensor::from_array(([1usize, CONTEXT + CHUNK], vec![0f32; CONTEXT + CHUNK]))
            .map_err(inference)?;
        let state =
            Tensor::from_array(([2usize, 1, 128], vec![0f32; STATE_LEN])).map_err(inference)?;
        let sr = Tensor::from_array((Vec::<usize>::new(), vec![SAMPLE_RATE])).map_err(inference)?;
        Ok(Self {
            model,
            input,
            state,
            sr,
        })
    }
}

impl SpeechDetector for SileroDetector {
    fn frame_len(&self) -> usize {
        CHUNK
    }

    fn speech_probability(&mut self, frame: &[f32]) -> Result<f32, VadError> {
        debug_assert_eq!(frame.len(), CHUNK);
        {
            let (_, data) = self.input.extract_tensor_mut();
            // The last CONTEXT samples of the previous call become the context.
            data.copy_within(CHUNK.., 0);
            data[CONTEXT..].copy_from_slice(frame);
        }
        let mut session = self
            .model
            .session
            .lock()
            .map_err(|_| VadError::Inference("the Silero session was poisoned".into()))?;
        let outputs = session
            .run(ort::inputs![
                "input" => &self.input,
                "state" => &self.state,
                "sr" => &self.sr,
            ])
            .map_err(|e| VadError::Inference(e.to_string()))?;
        let (_, probability) = outputs["output"]
            .try_extract_tensor::<f32>()
            .map_err(|e| VadError::Inference(e.to_string()))?;
        let probability = probability.first().copied().unwrap_or(0.0);
        let (_, next_state) = outputs["stateN"]
            .try_extract_tensor::<f32>()
            .map_err(|e| VadError::Inference(e.to_string()))?;
        if next_state.len() != STATE_LEN {
            return Err(VadError::UnexpectedModel(format!(
                "state output has {} values, expected {STATE_LEN}",
                next_state.len()
            )));
        }
        // `outputs` borrows the session only, so the state can be updated in
        // place without a copy through the heap.
        self.state
            .extract_tensor_mut()
            .1
            .copy_from_slice(next_state);
        Ok(probability)
    }

    fn reset(&mut self) {
        self.input.extract_tensor_mut().1.fill(0.0);
        self.state.extract_tensor_mut().1.fill(0.0);
    }
}
