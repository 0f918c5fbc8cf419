//! earshot: a pure-Rust VAD (mel features and a small built-in network).
//! No model file and no runtime library, so it always builds and loads.

use super::{SpeechDetector, VadError};

/// Samples per call: 16 ms at 16 kHz, the only size earshot takes.
const FRAME: usize = 256;

/// Times the first frame of a stream is fed before it is scored.
///
/// earshot's window and recurrent state start at zero, and from there the
/// first ~300 ms of any steady noise score as speech: every stream that
/// starts with background noise (most calls) began with a false turn.
/// Feeding the first frame repeatedly settles the state on the stream's own
/// background first (measured: white noise scored 0.5-0.58 for the first
/// 150 ms unprimed, a flat 0.24 primed 30 times). ~0.1 ms, once per stream.
const PRIME_FRAMES: usize = 30;

/// One earshot detector: one per audio stream (it keeps a 48 ms window).
pub struct EarshotDetector {
    // Boxed: the detector keeps ~8 KiB of buffers inline.
    detector: Box<earshot::Detector>,
    /// Input clamped to [-1, 1], which earshot requires.
    clamped: [f32; FRAME],
    primed: bool,
}

impl EarshotDetector {
    pub fn new() -> Self {
        Self {
            detector: earshot::Detector::default_boxed(),
            clamped: [0.0; FRAME],
            primed: false,
        }
    }
}

impl Default for EarshotDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl SpeechDetector for EarshotDetector {
    fn frame_len(&self) -> usize {
        FRAME
    }

    fn speech_probability(&mut self, frame: &[f32]) -> Result<f32, VadError> {
        debug_assert_eq!(frame.len(), FRAME);
        for (out, sample) in self.clamped.iter_mut().zip(frame) {
            *out = sample.clamp(-1.0, 1.0);
        }
        if !self.primed {
            self.primed = true;
            for _ in 0..PRIME_FRAMES {
                self.detector.predict_f32(&self.clamped);
            }
        }
        let score = self.detector.predict_f32(&self.clamped);
        if score < 0.0 {
            // earshot signals a wrong frame size with -1.
            return Err(VadError::Inference(format!(
                "earshot rejected a frame of {} samples",
                frame.len()
            )));
        }
        Ok(score)
    }

    fn reset(&mut self) {
        self.detector.reset();
        self.primed = false;
    }
}
