//! A Piper sentence heard while it is still being made.
//!
//! A Piper voice is one model call per sentence: the caller hears nothing
//! until the whole sentence exists. `models/split_piper.py` cuts the model
//! at the decoder's input into an encoder (phoneme ids → latent frames, one
//! per 256 samples) and a decoder (latent frames → audio). The decoder is
//! convolutional, so a window of frames decoded with [`CONTEXT_FRAMES`] of
//! their neighbours on each side gives exactly the samples the whole
//! sentence would have there. parlor encodes once, decodes a short first
//! window and sends it, then decodes the rest in growing windows while the
//! first plays.
//!
//! Measured with onnxruntime, 2 threads (29 Nov): for a 2.2 s sentence the
//! whole model takes 62 ms, the encoder 24 and the first window 7, so the
//! first audio comes after ~31 ms instead of 62; for a 4.2 s sentence 49
//! against 116 ms. The decoder's extra work on the overlaps is ~15%.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;

use super::voice::TtsError;
use crate::stages::onnx::cpu_session;

/// Latent frames decoded on each side of a window and then cut away. The
/// decoder's receptive field: at 10 the windows join to the whole
/// sentence's samples exactly (at 8 they differ by up to 1e-3, at 4 by 2e-2).
pub const CONTEXT_FRAMES: usize = 10;

/// The first window: ~0.28 s of audio at 256 samples a frame and 22 050 Hz,
/// decoded in ~7 ms. Smaller saves little (the encoder's ~25 ms stays),
/// and each window costs the decoder its context again.
const FIRST_WINDOW_FRAMES: usize = 24;

/// Windows double up to this (~2.2 s), so a long sentence costs a few
/// overlaps, not one per 0.28 s.
const MAX_WINDOW_FRAMES: usize = 192;

/// Piper scales each sentence to full range by its peak, known only when
/// the sentence is complete. A streamed window is scaled by the peak so
/// far instead, but never by more than a sentence of typical loudness
/// would be (the joe voice's sentences peak at 0.45–0.67 before scaling):
/// a quiet first syllable must not be blown up and the rest of the
/// sentence come out quieter than it.
const TYPICAL_PEAK: f32 = 0.45;

/// The encoder and decoder halves of a Piper voice.
pub struct SplitModel {
    encoder: Mutex<Session>,
    decoder: Mutex<Session>,
    /// The decoder's input, the encoder's output.
    latent: String,
}

impl std::fmt::Debug for SplitModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitModel")
            .field("latent", &self.latent)
            .finish_non_exhaustive()
    }
}

/// One sentence's latent frames, `[1, channels, frames]` row-major.
#[derive(Debug, Clone)]
pub struct Latent {
    data: Vec<f32>,
    channels: usize,
    frames: usize,
}

impl Latent {
    /// How many frames (256 samples each for the medium voices).
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Frames `range` of every channel, as a `[1, channels, len]` tensor's data.
    fn window(&self, range: Range<usize>) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.channels * range.len());
        for row in self.data.chunks_exact(self.frames) {
            out.extend_from_slice(&row[range.clone()]);
        }
        out
    }
}

/// The halves `models/split_piper.py` writes for `model` (`X.onnx` →
/// `X.encoder.onnx`, `X.decoder.onnx`), if both are there.
pub fn parts(model: &Path) -> Option<(PathBuf, PathBuf)> {
    let stem = model.to_str()?.strip_suffix(".onnx")?;
    let encoder = PathBuf::from(format!("{stem}.encoder.onnx"));
    let decoder = PathBuf::from(format!("{stem}.decoder.onnx"));
    (encoder.is_file() && decoder.is_file()).then_some((encoder, decoder))
}

impl SplitModel {
    /// Load both halves, `threads` each. onnxruntime must be initialised.
    ///
    /// # Errors
    /// [`TtsError::ModelLoad`] when a half does not load, the encoder lacks
    /// Piper's inputs, or they do not fit together (the encoder's one
    /// output is not the decoder's one input).
    pub fn load(encoder: &Path, decoder: &Path, threads: usize) -> Result<Self, TtsError> {
        let load = |path: &Path| {
            cpu_session(path, threads).map_err(|e| TtsError::ModelLoad {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        };
        let (enc, dec) = (load(encoder)?, load(decoder)?);
        super::piper::check_inputs(&enc, encoder)?;
        let outputs: Vec<&str> = enc.outputs().iter().map(|o| o.name()).collect();
        let inputs: Vec<&str> = dec.inputs().iter().map(|i| i.name()).collect();
        let ([latent], [wanted]) = (outputs.as_slice(), inputs.as_slice()) else {
            return Err(TtsError::ModelLoad {
                path: decoder.to_path_buf(),
                message: format!(
                    "the encoder gives {outputs:?} and the decoder takes {inputs:?}; each should be one tensor (remake them with models/split_piper.py)"
                ),
            });
        };
        if latent != wanted {
            return Err(TtsError::ModelLoad {
                path: decoder.to_path_buf(),
                message: format!(
                    "it takes {wanted:?} but the encoder gives {latent:?}: not halves of one voice (remake them with models/split_piper.py)"
                ),
            });
        }
        let latent = latent.to_string();
        Ok(Self {
            encoder: Mutex::new(enc),
            decoder: Mutex::new(dec),
            latent,
        })
    }

    /// A sentence's latent frames. Blocking.
    ///
    /// # Errors
    /// [`TtsError::Inference`].
    pub fn encode(&self, ids: &[i64], scales: [f32; 3]) -> Result<Latent, TtsError> {
        let (shape, data) = super::piper::run_on_ids(&self.encoder, ids, scales)?;
        let &[1, channels, frames] = &shape[..] else {
            return Err(TtsError::Inference(format!(
                "the encoder gave latent frames of shape {shape:?}, not [1, channels, frames]"
            )));
        };
        Ok(Latent {
            data,
            channels: channels as usize,
            frames: frames as usize,
        })
    }

    /// The audio of frames `range`, decoded with their context and cut to
    /// exactly those frames' samples. Not yet scaled ([`Loudness`]). Blocking.
    ///
    /// # Errors
    /// [`TtsError::Inference`].
    pub fn decode(&self, latent: &Latent, range: Range<usize>) -> Result<Vec<f32>, TtsError> {
        let start = range.start.saturating_sub(CONTEXT_FRAMES);
        let end = (range.end + CONTEXT_FRAMES).min(latent.frames);
        let window = Tensor::from_array((
            [1usize, latent.channels, end - start],
            latent.window(start..end),
        ))
        .map_err(inference)?;
        // A poisoned lock means a panic mid-run; a session holds no state
        // between runs, so it is still usable.
        let mut session = self.decoder.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.latent.as_str() => window])
            .map_err(inference)?;
        let (_, audio) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
        let frames = end - start;
        if frames == 0 || audio.len() % frames != 0 {
            return Err(TtsError::Inference(format!(
                "the decoder made {} samples of {frames} frames, not a whole number a frame",
                audio.len()
            )));
        }
        let per_frame = audio.len() / frames;
        let from = (range.start - start) * per_frame;
        Ok(audio[from..from + range.len() * per_frame].to_vec())
    }
}

/// The windows a sentence of `frames` is decoded in: a short first one,
/// then each twice the last up to [`MAX_WINDOW_FRAMES`]. They cover
/// `0..frames` in order with no gap or overlap.
pub fn windows(frames: usize) -> impl Iterator<Item = Range<usize>> {
    let mut start = 0;
    let mut size = FIRST_WINDOW_FRAMES;
    std::iter::from_fn(move || {
        if start >= frames {
            return None;
        }
        let end = (start + size).min(frames);
        let window = start..end;
        start = end;
        size = (size * 2).min(MAX_WINDOW_FRAMES);
        Some(window)
    })
}

/// Scales a streamed sentence window by window (see [`TYPICAL_PEAK`]).
#[derive(Debug, Default)]
pub struct Loudness {
    peak: f32,
}

impl Loudness {
    /// Scale the sentence's next window in place.
    pub fn apply(&mut self, audio: &mut [f32]) {
        self.peak = peak(audio).max(self.peak);
        scale(audio, 1.0 / self.peak.max(TYPICAL_PEAK));
    }
}

/// The largest finite magnitude in `audio`.
pub(crate) fn peak(audio: &[f32]) -> f32 {
    audio
        .iter()
        .filter(|s| s.is_finite())
        .fold(0f32, |m, s| m.max(s.abs()))
}

/// Multiply by `gain` and clamp to full range; a non-finite sample (a
/// model gone wrong) becomes silence rather than a click.
pub(crate) fn scale(audio: &mut [f32], gain: f32) {
    for s in audio.iter_mut() {
        *s = if s.is_finite() {
            (*s * gain).clamp(-1.0, 1.0)
        } else {
            0.0
        };
    }
}

fn inference(e: ort::Error) -> TtsError {
    TtsError::Inference(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_sentence_in_order_growing() {
        for frames in [0, 1, 23, 24, 25, 72, 73, 400, 1000] {
            let all: Vec<_> = windows(frames).collect();
            let mut next = 0;
            for w in &all {
                assert_eq!(w.start, next, "{frames}: {all:?}");
                assert!(!w.is_empty() && w.len() <= MAX_WINDOW_FRAMES);
                next = w.end;
            }
            assert_eq!(next, frames, "{frames}: {all:?}");
        }
        let sizes: Vec<usize> = windows(1000).map(|w| w.len()).collect();
        assert_eq!(sizes[..5], [24, 48, 96, 192, 192]);
    }

    #[test]
    fn latent_window_takes_the_frames_of_every_channel() {
        let latent = Latent {
            data: (0..12).map(|x| x as f32).collect(),
            channels: 3,
            frames: 4,
        };
        assert_eq!(latent.window(1..3), [1.0, 2.0, 5.0, 6.0, 9.0, 10.0]);
    }

    #[test]
    fn loudness_never_boosts_past_a_typical_sentence_and_never_clips() {
        let mut loudness = Loudness::default();
        // A quiet first window: scaled as a typical sentence would be.
        let mut quiet = vec![0.1, -0.2];
        loudness.apply(&mut quiet);
        assert!((quiet[1] + 0.2 / TYPICAL_PEAK).abs() < 1e-6);
        // A louder one later: scaled by its own peak, so nothing clips.
        let mut loud = vec![0.9, -0.45, f32::NAN];
        loudness.apply(&mut loud);
        assert_eq!(loud, [1.0, -0.5, 0.0]);
        // The peak so far still rules the next window.
        let mut after = vec![0.45];
        loudness.apply(&mut after);
        assert_eq!(after, [0.5]);
    }
}
