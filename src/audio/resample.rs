//! Sample-rate conversion with rubato, mono only (callers downmix first:
//! averaging channels is linear, so downmixing before resampling gives the
//! same result for a fraction of the work).
//!
//! [`StreamResampler`] takes input in pieces of any size and hands back
//! output as soon as a whole resampler chunk is in; [`resample`] is the
//! one-shot form for whole buffers. Both trim the resampler's delay, so
//! output sample `k` lines up with input time `k / to`, and both give
//! exactly `round(n_in * to / from)` samples once finished.

use std::time::Duration;

use rubato::{
    calculate_cutoff, FftFixedIn, SincFixedIn, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::{AudioError, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE};
use crate::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};

/// Above this many input frames per FFT block (`from / gcd(from, to)`), an
/// FFT resampler would need huge blocks and a long delay (44 101 Hz has no
/// common factor with 16 kHz), so the sinc resampler is used instead.
const MAX_FFT_BLOCK_IN: usize = 1024;

/// Chunk length for one-shot work: large chunks amortise per-call overhead.
const BATCH_CHUNK: Duration = Duration::from_millis(100);

/// Chunk length for live audio: one 20 ms frame in gives its output at once.
const LIVE_CHUNK: Duration = Duration::from_millis(20);

// rubato's `Resampler` is generic over buffer types and so not object safe;
// this fixes them to what we pass, so FFT and sinc share one code path.
rubato::implement_resampler!(SliceResampler, &[&[T]], &mut [Vec<T>]);

/// Resamples one mono stream, fed in pieces of any length.
pub struct StreamResampler {
    from: u32,
    to: u32,
    kind: Kind,
    /// Input not yet handed to the resampler (less than one chunk).
    pending: Vec<f32>,
    /// Output frames of resampler delay still to be dropped.
    skip: usize,
    /// Input frames per resampler chunk, kept to rebuild it after `finish`.
    chunk_frames: usize,
    frames_in: u64,
    frames_out: u64,
}

enum Kind {
    /// `from == to`: samples go straight through.
    Passthrough,
    Rubato {
        inner: Box<dyn SliceResampler<f32>>,
        out: Vec<Vec<f32>>,
    },
}

impl StreamResampler {
    /// A resampler from `from` Hz to the pipeline rate, with chunks sized for
    /// live audio (20 ms): feed it the live-call edge's frames.
    ///
    /// # Errors
    /// [`AudioError::BadSampleRate`] when `from` is outside
    /// [`MIN_SAMPLE_RATE`]..=[`MAX_SAMPLE_RATE`].
    pub fn new(from: u32) -> Result<Self, AudioError> {
        Self::with_chunk(from, PIPELINE_SAMPLE_RATE, LIVE_CHUNK)
    }

    /// A resampler from `from` Hz to `to` Hz that works in chunks of about
    /// `chunk` of input. Longer chunks are faster; shorter ones give output
    /// sooner.
    ///
    /// # Errors
    /// [`AudioError::BadSampleRate`] when either rate is out of range.
    pub fn with_chunk(from: u32, to: u32, chunk: Duration) -> Result<Self, AudioError> {
        for rate in [from, to] {
            if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&rate) {
                return Err(AudioError::BadSampleRate { rate });
            }
        }
        let chunk_frames = ((from as f64 * chunk.as_secs_f64()).round() as usize).max(64);
        let (kind, skip) = Self::kind(from, to, chunk_frames)?;
        Ok(Self {
            from,
            to,
            kind,
            pending: Vec::new(),
            skip,
            chunk_frames,
            frames_in: 0,
            frames_out: 0,
        })
    }

    fn kind(from: u32, to: u32, chunk_frames: usize) -> Result<(Kind, usize), AudioError> {
        if from == to {
            return Ok((Kind::Passthrough, 0));
        }
        let inner = build(from, to, chunk_frames).map_err(|detail| AudioError::Resample {
            from,
            to,
            detail,
        })?;
        let out = inner.output_buffer_allocate(true);
        let skip = delay(from, to, &*inner);
        Ok((Kind::Rubato { inner, out }, skip))
    }

    /// How far output lags input inside the resampler: output for the last
    /// input arrives up to this much later (or at [`finish`](Self::finish)).
    pub fn latency(&self) -> Duration {
        match &self.kind {
            Kind::Passthrough => Duration::ZERO,
            Kind::Rubato { inner, .. } => Duration::from_secs_f64(
                (delay(self.from, self.to, &**inner) as f64 / self.to as f64)
                    + (inner.input_frames_next() as f64 / self.from as f64),
            ),
        }
    }

    pub fn input_rate(&self) -> u32 {
        self.from
    }

    pub fn output_rate(&self) -> u32 {
        self.to
    }

    /// Resamples `input` and appends whatever output is ready to `out`.
    /// Input short of a whole chunk waits for the next call or [`finish`](Self::finish).
    /// Non-finite samples (NaN, infinity) are treated as silence.
    ///
    /// # Errors
    /// [`AudioError::Resample`] if rubato fails, which would be a bug.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) -> Result<(), AudioError> {
        // A NaN or infinity would poison the FFT (and rubato panics on it);
        // such samples come only from broken float files, so they become silence.
        let sanitized: Vec<f32>;
        let input = if input.iter().all(|x| x.is_finite()) {
            input
        } else {
            sanitized = input
                .iter()
                .map(|&x| if x.is_finite() { x } else { 0.0 })
                .collect();
            &sanitized
        };
        self.frames_in += input.len() as u64;
        let Kind::Rubato { inner, out: buf } = &mut self.kind else {
            out.extend_from_slice(input);
            self.frames_out += input.len() as u64;
            return Ok(());
        };
        // Whole chunks straight from `input` when nothing is pending, so the
        // common case copies nothing.
        let mut rest = input;
        if !self.pending.is_empty() {
            let need = inner.input_frames_next() - self.pending.len();
            let take = need.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() < inner.input_frames_next() {
                return Ok(());
            }
            let (_, produced) = inner
                .process_into_buffer(&[&self.pending], buf, None)
                .map_err(|e| resample_error(self.from, self.to, e))?;
            self.pending.clear();
            emit(
                &buf[0][..produced],
                &mut self.skip,
                &mut self.frames_out,
                out,
            );
        }
        while rest.len() >= inner.input_frames_next() {
            let (used, produced) = inner
                .process_into_buffer(&[rest], buf, None)
                .map_err(|e| resample_error(self.from, self.to, e))?;
            rest = &rest[used..];
            emit(
                &buf[0][..produced],
                &mut self.skip,
                &mut self.frames_out,
                out,
            );
        }
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Flushes pending input and the resampler's delay line, appending the
    /// tail to `out`, so the total output is `round(n_in * to / from)`
    /// samples. The resampler is then reset and can start a new stream.
    ///
    /// # Errors
    /// [`AudioError::Resample`] if rubato fails, which would be a bug.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), AudioError> {
        let expected = (self.frames_in * self.to as u64 + self.from as u64 / 2) / self.from as u64;
        if let Kind::Rubato { inner, out: buf } = &mut self.kind {
            // The tail is zero-padded to a whole chunk, then whole chunks of
            // silence push the delayed output out. The delay is a few chunks
            // at most; the bound only stops a broken resampler from spinning.
            let mut input = std::mem::take(&mut self.pending);
            let max_calls = 4 + 2 * self.skip / inner.output_frames_max().max(1);
            for _ in 0..max_calls {
                if self.frames_out >= expected {
                    break;
                }
                input.resize(inner.input_frames_next(), 0.0);
                let (_, produced) = inner
                    .process_into_buffer(&[&input], buf, None)
                    .map_err(|e| resample_error(self.from, self.to, e))?;
                emit(
                    &buf[0][..produced],
                    &mut self.skip,
                    &mut self.frames_out,
                    out,
                );
                input.clear();
            }
        }
        // The last chunk was zero-padded: drop the output made from padding.
        let extra = self.frames_out.saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(extra));
        // Rebuilt rather than reset: the object-safe wrapper has no `reset`.
        (self.kind, self.skip) = Self::kind(self.from, self.to, self.chunk_frames)?;
        self.pending.clear();
        self.frames_in = 0;
        self.frames_out = 0;
        Ok(())
    }
}

fn emit(produced: &[f32], skip: &mut usize, frames_out: &mut u64, out: &mut Vec<f32>) {
    let skipped = (*skip).min(produced.len());
    *skip -= skipped;
    let kept = &produced[skipped..];
    out.extend_from_slice(kept);
    *frames_out += kept.len() as u64;
}

fn uses_fft(from: u32, to: u32) -> bool {
    (from / gcd(from, to)) as usize <= MAX_FFT_BLOCK_IN
}

/// Output frames to drop so output sample `k` lines up with input time
/// `k / to`. Measured with an impulse, not taken on trust: rubato 0.16's
/// `SincFixedIn` already comes out aligned although its `output_delay()`
/// says otherwise, while `FftFixedIn`'s `output_delay()` is exact.
fn delay(from: u32, to: u32, inner: &dyn SliceResampler<f32>) -> usize {
    if uses_fft(from, to) {
        inner.output_delay()
    } else {
        0
    }
}

fn build(from: u32, to: u32, chunk_frames: usize) -> Result<Box<dyn SliceResampler<f32>>, String> {
    if uses_fft(from, to) {
        // An odd FFT length puts the output half an input sample late, which
        // `output_delay()` cannot express; an even number of blocks avoids it.
        let block_in = 2 * (from / gcd(from, to)) as usize;
        let chunk = chunk_frames.div_ceil(block_in) * block_in;
        let r = FftFixedIn::<f32>::new(from as usize, to as usize, chunk, 1, 1)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(r))
    } else {
        let sinc_len = 128;
        let window = WindowFunction::BlackmanHarris2;
        let params = SincInterpolationParameters {
            sinc_len,
            f_cutoff: calculate_cutoff(sinc_len, window),
            oversampling_factor: 256,
            interpolation: SincInterpolationType::Cubic,
            window,
        };
        let r = SincFixedIn::<f32>::new(to as f64 / from as f64, 1.0, params, chunk_frames, 1)
            .map_err(|e| e.to_string())?;
        Ok(Box::new(r))
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn resample_error(from: u32, to: u32, e: rubato::ResampleError) -> AudioError {
    AudioError::Resample {
        from,
        to,
        detail: e.to_string(),
    }
}

/// Resamples a whole mono buffer from `from` Hz to `to` Hz. Returns the
/// input unchanged (no copy of work, one copy of data) when the rates match.
///
/// # Errors
/// [`AudioError::BadSampleRate`] when either rate is out of range.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    let mut r = StreamResampler::with_chunk(from, to, BATCH_CHUNK)?;
    let mut out = Vec::with_capacity((samples.len() as u64 * to as u64 / from as u64) as usize + 1);
    r.process(samples, &mut out)?;
    r.finish(&mut out)?;
    Ok(out)
}

/// Brings a chunk to [`PIPELINE_SAMPLE_RATE`]; free when it is already there.
///
/// # Errors
/// [`AudioError::BadSampleRate`] when the chunk's rate is out of range.
pub fn to_pipeline_rate(chunk: AudioChunk) -> Result<AudioChunk, AudioError> {
    if chunk.sample_rate == PIPELINE_SAMPLE_RATE {
        return Ok(chunk);
    }
    let samples = resample(&chunk.samples, chunk.sample_rate, PIPELINE_SAMPLE_RATE)?;
    Ok(AudioChunk::new(PIPELINE_SAMPLE_RATE, samples))
}

/// Used by the decoder, which feeds whole packets: batch-sized chunks.
pub(super) fn batch(from: u32, to: u32) -> Result<StreamResampler, AudioError> {
    StreamResampler::with_chunk(from, to, BATCH_CHUNK)
}
