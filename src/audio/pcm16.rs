//! Raw 16-bit little-endian PCM, the sample format of a live call's binary
//! WebSocket frames (both ways).

use super::AudioError;

/// Samples in [-1, 1] as 16-bit little-endian PCM (clipped).
pub fn pcm16_le_bytes(samples: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(samples.len() * 2);
    for &s in samples {
        let v = (s.clamp(-1.0, 1.0) * i16::MAX as f32).round() as i16;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

/// 16-bit little-endian PCM as samples in [-1, 1], appended to `out`.
///
/// # Errors
/// [`AudioError::OddPcmLength`] when `bytes` is not whole samples.
pub fn pcm16_le_samples(bytes: &[u8], out: &mut Vec<f32>) -> Result<(), AudioError> {
    if bytes.len() % 2 != 0 {
        return Err(AudioError::OddPcmLength { len: bytes.len() });
    }
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32_768.0),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_one_step() {
        let samples = [0.0, 0.5, -0.5, 1.0, -1.0, 0.123];
        let mut back = Vec::new();
        pcm16_le_samples(&pcm16_le_bytes(&samples), &mut back).unwrap();
        for (a, b) in samples.iter().zip(&back) {
            assert!((a - b).abs() < 1.0 / 16_000.0, "{a} vs {b}");
        }
        assert_eq!(pcm16_le_bytes(&[2.0]), i16::MAX.to_le_bytes());
    }

    #[test]
    fn half_a_sample_is_refused() {
        let err = pcm16_le_samples(&[1, 2, 3], &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("3 bytes"), "{err}");
    }
}
