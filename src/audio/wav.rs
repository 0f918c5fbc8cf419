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

/// Reads a 16-bit PCM mono WAV held in memory, at its own sample rate (no
/// resampling: TTS output keeps its rate until the stage resamples it).
///
/// A writer streaming to a pipe (`espeak-ng --stdout`, ffmpeg) cannot seek
/// back to fill in the lengths, so it leaves placeholders (`0x7ffff000`); the
/// RIFF and `data` lengths are therefore clamped to the bytes actually there.
///
/// # Errors
/// [`AudioError::CorruptHeader`] when it is not a RIFF/WAVE file hound can
/// read, [`AudioError::UnsupportedCodec`] for anything but 16-bit integer
/// mono.
pub fn read_wav_bytes(bytes: &[u8]) -> Result<AudioChunk, AudioError> {
    let mut fixed = bytes.to_vec();
    clamp_wav_lengths(&mut fixed);
    let reader =
        hound::WavReader::new(Cursor::new(fixed)).map_err(|e| AudioError::CorruptHeader {
            format: "WAV",
            detail: e.to_string(),
        })?;
    let spec = reader.spec();
    if spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(AudioError::UnsupportedCodec {
            codec: format!(
                "{}-bit {:?} WAV with {} channels (expected 16-bit integer mono)",
                spec.bits_per_sample, spec.sample_format, spec.channels
            ),
        });
    }
    let samples = reader
        .into_samples::<i16>()
        // A truncated last sample ends the audio rather than failing it.
        .map_while(Result::ok)
        .map(|s| s as f32 / 32_768.0)
        .collect();
    Ok(AudioChunk::new(spec.sample_rate, samples))
}

/// Sets the RIFF length and the `data` chunk's length to what `wav` holds.
fn clamp_wav_lengths(wav: &mut [u8]) {
    if wav.len() < 12 || &wav[0..4] != b"RIFF" || &wav[8..12] != b"WAVE" {
        return;
    }
    let riff_len = (wav.len() - 8) as u32;
    wav[4..8].copy_from_slice(&riff_len.to_le_bytes());
    let mut at = 12;
    while at + 8 <= wav.len() {
        let id = [wav[at], wav[at + 1], wav[at + 2], wav[at + 3]];
        let len = u32::from_le_bytes([wav[at + 4], wav[at + 5], wav[at + 6], wav[at + 7]]) as usize;
        let body = at + 8;
        if &id == b"data" {
            let real = (wav.len() - body) as u32;
            if len > real as usize {
                wav[at + 4..at + 8].copy_from_slice(&real.to_le_bytes());
            }
            return;
        }
        // Chunks are padded to an even length.
        at = body.saturating_add(len).saturating_add(len & 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_wav_with_placeholder_lengths_reads_back() {
        let chunk = AudioChunk::new(22_050, vec![0.0, 0.5, -0.5, 0.25]);
        let mut wav = wav_bytes(&chunk).unwrap();
        // What `espeak-ng --stdout` writes: lengths it could not know.
        wav[4..8].copy_from_slice(&0x7fff_f024u32.to_le_bytes());
        wav[40..44].copy_from_slice(&0x7fff_f000u32.to_le_bytes());
        let back = read_wav_bytes(&wav).unwrap();
        assert_eq!(back.sample_rate, 22_050);
        assert_eq!(back.samples.len(), 4);
        for (a, b) in back.samples.iter().zip(&chunk.samples) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn stereo_is_refused() {
        let mut wav = wav_bytes(&AudioChunk::new(16_000, vec![0.0; 4])).unwrap();
        // Channels, then the byte rate and block size that go with them.
        wav[22] = 2;
        wav[28..32].copy_from_slice(&(16_000u32 * 4).to_le_bytes());
        wav[32] = 4;
        assert!(matches!(
            read_wav_bytes(&wav),
            Err(AudioError::UnsupportedCodec { .. })
        ));
    }
}
