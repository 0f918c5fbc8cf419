//! Audio in and out: decode any supported file to 16 kHz mono, write WAV.
//! The only module that knows symphonia, rubato and hound.
//!
//! # Layout
//! - [`decode`](decode_file): WAV, FLAC, MP3, Ogg/Vorbis → [`AudioChunk`](crate::frame::AudioChunk)
//!   at [`PIPELINE_SAMPLE_RATE`](crate::frame::PIPELINE_SAMPLE_RATE), with [`DecodeLimits`].
//! - [`resample`]: rubato, one-shot and streaming ([`StreamResampler`]).
//! - [`write_wav`] / [`wav_bytes`]: 16-bit PCM mono WAV out, with hound.
//! - [`pcm16_le_bytes`] / [`pcm16_le_samples`]: raw PCM, as live calls send it.
//! - [`AudioError`]: one variant per class of bad input.

mod decode;
mod error;
mod pcm16;
mod resample;
mod wav;

pub use decode::{decode_bytes, decode_file, DecodeLimits};
pub use error::{AudioError, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SUPPORTED_FORMATS};
pub use pcm16::{pcm16_le_bytes, pcm16_le_samples};
pub use resample::{resample, to_pipeline_rate, StreamResampler};
pub use wav::{read_wav_bytes, wav_bytes, write_wav};
