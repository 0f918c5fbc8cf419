//! WAV out, with hound: 16-bit PCM mono, what every player and every
//! speech API accepts.

use std::io::{Cursor, Seek, Write};
use std::path::Path;

use super::AudioError;
use crate::frame::AudioChunk;

fn spec(chunk: &AudioChunk) -> hound::WavSpec {
    hound::WavSpec {
        channels: 1,
        sample_rate: chunk.sample_rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    }
}

fn write_to<W: Write + Seek>(writer: W, chunk: &AudioChunk) -> Result<(), hound::Error> {
    let mut w = hound::WavWriter::new(writer, spec(chunk))?;
    {
        let mut w16 = w.get_i16_writer(chunk.samples.len() as u32);
        for &s in &chunk.samples {
            w16.write_sample(to_i16(s));
        }
        w16.flush()?;
    }
    w.finalize()
}

/// Clamps to [-1, 1] (TTS and resampling can overshoot a little) and maps
/// NaN to silence rather than to a full-scale click.
fn to_i16(s: f32) -> i16 {
    if s.is_nan() {
        0
    } else {
        (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16
    }
}

/// Writes `chunk` to `path` as a 16-bit PCM mono WAV at the chunk's rate.
///
/// # Errors
/// [`AudioError::Write`] if the file cannot be created or written, or the
/// chunk is too long for a WAV file (over 4 GiB of data).
pub fn write_wav(path: impl AsRef<Path>, chunk: &AudioChunk) -> Result<(), AudioError> {
    let path = path.as_ref();
    let err = |source: hound::Error| AudioError::Write {
        target: path.display().to_string(),
        source: Box::new(source),
    };
    let file = std::fs::File::create(path).map_err(|e| err(e.into()))?;
    write_to(std::io::BufWriter::new(file), chunk).map_err(err)
}

/// `chunk` as the bytes of a 16-bit PCM mono WAV file, for HTTP responses.
///
/// # Errors
/// [`AudioError::Write`] if the chunk is too long for a WAV file or its
/// sample rate is 0.
pub fn wav_bytes(chunk: &AudioChunk) -> Result<Vec<u8>, AudioError> {
    let mut buf = Cursor::new(Vec::with_capacity(44 + chunk.samples.len() * 2));
    write_to(&mut buf, chunk).map_err(|source| AudioError::Write {
        target: "to memory".into(),
        source: Box::new(source),
    })?;
    Ok(buf.into_inner())
}
