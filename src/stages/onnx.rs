//! onnxruntime sessions, built one way for every model parlor runs on it
//! (Silero's VAD, Piper's voice).

use std::path::Path;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// A CPU session for `model` with `intra_threads` threads for one operator
/// and none spinning: between calls (a VAD frame, a sentence) a spinning
/// pool would burn a core for nothing, and several calls may run at once.
///
/// # Errors
/// ort's error: the file is not an ONNX model, or an unsupported one.
pub fn cpu_session(model: &Path, intra_threads: usize) -> ort::Result<Session> {
    Session::builder()?
        .with_intra_threads(intra_threads)?
        .with_inter_threads(1)?
        .with_intra_op_spinning(false)?
        .with_optimization_level(GraphOptimizationLevel::Level3)?
        .commit_from_file(model)
}
