//! Decode, resample and WAV out, on real files: WAVs written here with hound
//! in every sample format, and small FLAC, MP3, Ogg/Vorbis and AIFF fixtures
//! made once with sox (tests/fixtures/audio/, a 1 kHz tone at half scale).

use std::f32::consts::TAU;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parlor::audio::{
    decode_bytes, decode_file, resample, to_pipeline_rate, wav_bytes, write_wav, AudioError,
    DecodeLimits, StreamResampler,
};
use parlor::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};

const TONE_HZ: f32 = 1000.0;
const TONE_AMP: f32 = 0.5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audio")
        .join(name)
}

fn tone(rate: u32, secs: f32, freq: f32, amp: f32) -> Vec<f32> {
    let n = (rate as f32 * secs).round() as usize;
    (0..n)
        .map(|i| amp * (TAU * freq * i as f32 / rate as f32).sin())
        .collect()
}

/// Fits `a·sin + b·cos` at `freq` to the middle of `samples` (edges hold
/// resampler and codec transients) and returns the fitted amplitude and
/// the signal-to-residual ratio in dB.
fn tone_fit(samples: &[f32], rate: u32, freq: f32) -> (f32, f32) {
    let edge = rate as usize / 20;
    assert!(
        samples.len() > 4 * edge,
        "too short to analyse: {} samples",
        samples.len()
    );
    let mid = &samples[edge..samples.len() - edge];
    let (mut s, mut c) = (0f64, 0f64);
    for (i, &x) in mid.iter().enumerate() {
        let ph = std::f64::consts::TAU * freq as f64 * (i + edge) as f64 / rate as f64;
        s += x as f64 * ph.sin();
        c += x as f64 * ph.cos();
    }
    let n = mid.len() as f64;
    let (a, b) = (2.0 * s / n, 2.0 * c / n);
    let mut resid = 0f64;
    for (i, &x) in mid.iter().enumerate() {
        let ph = std::f64::consts::TAU * freq as f64 * (i + edge) as f64 / rate as f64;
        let e = x as f64 - (a * ph.sin() + b * ph.cos());
        resid += e * e;
    }
    let amp = (a * a + b * b).sqrt();
    let signal = amp * amp / 2.0 * n;
    let snr = 10.0 * (signal / resid.max(1e-20)).log10();
    (amp as f32, snr as f32)
}

/// Where the 1 kHz tone in `samples` sits relative to `sin(ωt)`, in
/// samples (positive = late), within ± half a period.
fn tone_lag(samples: &[f32], rate: u32, freq: f32) -> f32 {
    let (mut s, mut c) = (0f64, 0f64);
    for (i, &x) in samples.iter().enumerate() {
        let ph = std::f64::consts::TAU * freq as f64 * i as f64 / rate as f64;
        s += x as f64 * ph.sin();
        c += x as f64 * ph.cos();
    }
    let phase = c.atan2(s);
    (-phase / std::f64::consts::TAU * rate as f64 / freq as f64) as f32
}

fn assert_tone(chunk: &AudioChunk, secs: f32, secs_tol: f32, amp: f32, min_snr: f32) {
    // Lossy codecs (low SNR allowed) may also shift the level a little.
    let amp_tol = if min_snr < 30.0 { 0.05 } else { 0.01 };
    assert_eq!(chunk.sample_rate, PIPELINE_SAMPLE_RATE);
    let got = chunk.duration().as_secs_f32();
    assert!(
        (got - secs).abs() <= secs_tol,
        "duration {got} s, expected {secs} ± {secs_tol} s"
    );
    let (a, snr) = tone_fit(&chunk.samples, chunk.sample_rate, TONE_HZ);
    assert!(
        (a - amp).abs() < amp_tol,
        "amplitude {a}, expected {amp} ± {amp_tol}"
    );
    assert!(snr > min_snr, "SNR {snr:.1} dB, expected over {min_snr} dB");
}

#[derive(Clone, Copy, Debug)]
enum Fmt {
    U8,
    I16,
    I24,
    I32,
    F32,
}

/// Writes a WAV with hound; `channels[i]` gives channel i's samples.
fn write_test_wav(path: &Path, rate: u32, fmt: Fmt, channels: &[Vec<f32>]) {
    let (bits, sample_format) = match fmt {
        Fmt::U8 => (8, hound::SampleFormat::Int),
        Fmt::I16 => (16, hound::SampleFormat::Int),
        Fmt::I24 => (24, hound::SampleFormat::Int),
        Fmt::I32 => (32, hound::SampleFormat::Int),
        Fmt::F32 => (32, hound::SampleFormat::Float),
    };
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: bits,
        sample_format,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..channels[0].len() {
        for ch in channels {
            let x = ch[i];
            match fmt {
                Fmt::F32 => w.write_sample(x).unwrap(),
                Fmt::U8 => w.write_sample((x * 127.0).round() as i8).unwrap(),
                Fmt::I16 => w.write_sample((x * 32767.0).round() as i16).unwrap(),
                Fmt::I24 => w.write_sample((x * 8_388_607.0).round() as i32).unwrap(),
                Fmt::I32 => w
                    .write_sample((x as f64 * 2_147_483_647.0).round() as i32)
                    .unwrap(),
            }
        }
    }
    w.finalize().unwrap();
}

fn tone_wav(dir: &Path, name: &str, rate: u32, fmt: Fmt, channels: usize, secs: f32) -> PathBuf {
    let path = dir.join(name);
    let t = tone(rate, secs, TONE_HZ, TONE_AMP);
    write_test_wav(&path, rate, fmt, &vec![t; channels]);
    path
}

fn limits() -> DecodeLimits {
    DecodeLimits::default()
}

// ---------------------------------------------------------------- formats

#[test]
fn wav_every_sample_format_rate_and_layout_decodes_to_16k_mono() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (Fmt::U8, 8_000, 1, 30.0),
        (Fmt::U8, 44_100, 2, 30.0),
        (Fmt::I16, 16_000, 1, 60.0),
        (Fmt::I16, 44_100, 2, 50.0),
        (Fmt::I16, 48_000, 1, 50.0),
        (Fmt::I16, 11_025, 1, 50.0),
        (Fmt::I24, 48_000, 2, 50.0),
        (Fmt::I32, 22_050, 1, 50.0),
        (Fmt::F32, 48_000, 2, 50.0),
        (Fmt::F32, 96_000, 1, 50.0),
        (Fmt::I16, 44_101, 1, 50.0), // no common factor with 16 kHz: sinc path
        (Fmt::I16, 8_000, 6, 50.0),
    ];
    for (fmt, rate, channels, snr) in cases {
        let name = format!("{fmt:?}_{rate}_{channels}.wav");
        let path = tone_wav(dir.path(), &name, rate, fmt, channels, 1.0);
        let chunk = decode_file(&path, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(chunk.samples.len(), 16_000, "{name}");
        assert_tone(&chunk, 1.0, 0.001, TONE_AMP, snr);
    }
}

#[test]
fn a_realtime_pipelines_rate_is_decoded_to_directly() {
    // A realtime stage takes 24 kHz: a 48 kHz upload goes there in one
    // step, and a 24 kHz one is not resampled at all.
    let dir = tempfile::tempdir().unwrap();
    let at_24k = DecodeLimits {
        rate: 24_000,
        ..limits()
    };
    for rate in [48_000, 24_000, 16_000] {
        let name = format!("tone_{rate}.wav");
        let path = tone_wav(dir.path(), &name, rate, Fmt::I16, 1, 1.0);
        let chunk = decode_file(&path, &at_24k).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(chunk.sample_rate, 24_000, "{name}");
        assert_eq!(chunk.samples.len(), 24_000, "{name}");
        let (amp, snr) = tone_fit(&chunk.samples, 24_000, TONE_HZ);
        assert!(
            (amp - TONE_AMP).abs() < 0.01 && snr > 50.0,
            "{name}: {amp} {snr}"
        );
    }
}

#[test]
fn stereo_is_downmixed_by_averaging_channels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lr.wav");
    let left = tone(48_000, 1.0, TONE_HZ, 0.6);
    let right = tone(48_000, 1.0, TONE_HZ, 0.2);
    write_test_wav(&path, 48_000, Fmt::F32, &[left.clone(), right]);
    let chunk = decode_file(&path, &limits()).unwrap();
    assert_tone(&chunk, 1.0, 0.001, 0.4, 50.0);

    // Opposite phases cancel: the average of x and -x is silence.
    let inverted: Vec<f32> = left.iter().map(|x| -x).collect();
    write_test_wav(&path, 48_000, Fmt::F32, &[left, inverted]);
    let chunk = decode_file(&path, &limits()).unwrap();
    let peak = chunk.samples.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(peak < 1e-4, "peak {peak}");
}

#[test]
fn compressed_fixtures_decode_to_the_tone() {
    // (file, seconds, tolerance, minimum SNR in dB)
    let cases = [
        ("tone1k_48k_mono.flac", 0.5, 0.001, 50.0),
        ("tone1k_8k_stereo.flac", 1.0, 0.001, 50.0),
        // These MP3s have no LAME tag (sox does not write one), so the
        // encoder's delay and padding (~50-80 ms) stay in.
        ("tone1k_44k_stereo.mp3", 1.05, 0.05, 15.0),
        ("tone1k_16k_mono.mp3", 1.05, 0.05, 15.0),
        // symphonia 0.5 does not trim the last Vorbis packet to the final
        // granule position, so up to a block (~22 ms here) of padding stays.
        ("tone1k_48k_stereo.ogg", 1.0, 0.03, 15.0),
        ("tone1k_22k_mono.ogg", 1.0, 0.03, 15.0),
    ];
    for (name, secs, tol, snr) in cases {
        let chunk = decode_file(fixture(name), &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_tone(&chunk, secs, tol, TONE_AMP, snr);
    }
}

#[test]
fn bytes_decode_like_files_with_or_without_a_hint() {
    for (name, hint) in [
        ("tone1k_48k_mono.flac", Some("flac")),
        ("tone1k_44k_stereo.mp3", Some("audio/mpeg")),
        ("tone1k_48k_stereo.ogg", Some(".ogg")),
        ("tone1k_44k_stereo.mp3", None),
        ("tone1k_48k_stereo.ogg", None),
        ("tone1k_48k_mono.flac", Some("wav")), // a wrong hint: the content decides
    ] {
        let from_file = decode_file(fixture(name), &limits()).unwrap();
        let bytes = std::fs::read(fixture(name)).unwrap();
        let from_bytes =
            decode_bytes(bytes, hint, &limits()).unwrap_or_else(|e| panic!("{name} {hint:?}: {e}"));
        assert_eq!(from_file, from_bytes, "{name} {hint:?}");
    }
}

// ---------------------------------------------------------------- WAV out

#[test]
fn write_wav_then_decode_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = AudioChunk::new(16_000, tone(16_000, 0.5, TONE_HZ, TONE_AMP));
    let path = dir.path().join("out.wav");
    write_wav(&path, &chunk).unwrap();
    let back = decode_file(&path, &limits()).unwrap();
    assert_eq!(back.samples.len(), chunk.samples.len());
    for (a, b) in chunk.samples.iter().zip(&back.samples) {
        assert!((a - b).abs() <= 1.0 / 32_000.0, "{a} vs {b}");
    }

    let bytes = wav_bytes(&chunk).unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    assert_eq!(
        decode_bytes(bytes, Some("audio/wav"), &limits()).unwrap(),
        back
    );

    let spec = hound::WavReader::open(&path).unwrap().spec();
    assert_eq!(
        (spec.channels, spec.bits_per_sample, spec.sample_rate),
        (1, 16, 16_000)
    );
}

#[test]
fn wav_out_clamps_overshoot_and_silences_nan() {
    let chunk = AudioChunk::new(24_000, vec![2.0, -2.0, f32::NAN, 0.5]);
    let bytes = wav_bytes(&chunk).unwrap();
    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).unwrap();
    assert_eq!(r.spec().sample_rate, 24_000);
    let s: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    assert_eq!(s, vec![32767, -32767, 0, 16384]);
}

#[test]
fn write_wav_to_a_missing_directory_says_where() {
    let err = write_wav(
        "/nonexistent-dir/x.wav",
        &AudioChunk::new(16_000, vec![0.0]),
    )
    .unwrap_err();
    assert!(matches!(err, AudioError::Write { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent-dir/x.wav"), "{err}");
}

// ---------------------------------------------------------------- resampling

#[test]
fn resample_gives_exact_lengths_and_keeps_the_tone() {
    for from in [
        8_000, 11_025, 22_050, 32_000, 44_100, 48_000, 96_000, 44_101,
    ] {
        let input = tone(from, 1.0, TONE_HZ, TONE_AMP);
        let out = resample(&input, from, 16_000).unwrap();
        assert_eq!(out.len(), 16_000, "from {from}");
        let (a, snr) = tone_fit(&out, 16_000, TONE_HZ);
        assert!(
            (a - TONE_AMP).abs() < 0.01 && snr > 50.0,
            "from {from}: amp {a} snr {snr}"
        );
        // Aligned in time: the resampler's delay is trimmed. The sinc path
        // (44 101 Hz) is within a sample, the FFT path within a hundredth.
        let lag = tone_lag(&out, 16_000, TONE_HZ);
        let max_lag = if from == 44_101 { 1.0 } else { 0.01 };
        assert!(
            lag.abs() < max_lag,
            "from {from}: output is {lag} samples late"
        );
    }
    assert_eq!(
        resample(&[0.25; 100], 16_000, 16_000).unwrap(),
        vec![0.25; 100]
    );
    assert_eq!(resample(&[], 48_000, 16_000).unwrap(), Vec::<f32>::new());
}

#[test]
fn streaming_in_20ms_frames_matches_one_shot() {
    let input = tone(48_000, 1.0, TONE_HZ, TONE_AMP);
    let whole = resample(&input, 48_000, 16_000).unwrap();
    let mut r = StreamResampler::new(48_000).unwrap();
    let mut out = Vec::new();
    let mut first_output_after = None;
    for (i, frame) in input.chunks(960).enumerate() {
        r.process(frame, &mut out).unwrap();
        if first_output_after.is_none() && !out.is_empty() {
            first_output_after = Some(i + 1);
        }
    }
    r.finish(&mut out).unwrap();
    assert_eq!(out.len(), whole.len());
    assert!(
        first_output_after.unwrap() <= 3,
        "output only after {first_output_after:?} frames"
    );
    assert!(r.latency() < Duration::from_millis(60), "{:?}", r.latency());
    let max_diff = out
        .iter()
        .zip(&whole)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff < 0.01, "stream vs one-shot differ by {max_diff}");

    // Odd-sized pieces and reuse after finish give the same result.
    let mut again = Vec::new();
    let mut rest = &input[..];
    let mut size = 1;
    while !rest.is_empty() {
        let n = size.min(rest.len());
        r.process(&rest[..n], &mut again).unwrap();
        rest = &rest[n..];
        size = size * 3 + 7;
    }
    r.finish(&mut again).unwrap();
    assert_eq!(again.len(), out.len());
    let max_diff = out
        .iter()
        .zip(&again)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(max_diff < 1e-4, "{max_diff}");
}

#[test]
fn pipeline_rate_chunks_pass_through_untouched() {
    let chunk = AudioChunk::new(16_000, vec![0.1, 0.2, 0.3]);
    assert_eq!(to_pipeline_rate(chunk.clone()).unwrap(), chunk);
    let up = to_pipeline_rate(AudioChunk::new(8_000, tone(8_000, 0.5, 440.0, 0.5))).unwrap();
    assert_eq!((up.sample_rate, up.samples.len()), (16_000, 8_000));
}

#[test]
fn resampler_rejects_absurd_rates() {
    for rate in [0, 1, 3_999, 384_001, u32::MAX] {
        let err = StreamResampler::new(rate).err().unwrap();
        assert!(
            matches!(err, AudioError::BadSampleRate { rate: r } if r == rate),
            "{err:?}"
        );
        assert!(resample(&[0.0; 10], rate, 16_000).is_err());
    }
}

// ---------------------------------------------------------------- bad input

fn expect_err(result: Result<AudioChunk, AudioError>, words: &[&str]) -> AudioError {
    let err = result.expect_err("expected an error");
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
    err
}

#[test]
fn empty_input_is_empty() {
    let err = expect_err(
        decode_bytes(Vec::new(), Some("wav"), &limits()),
        &["empty", "0 bytes", "WAV"],
    );
    assert!(matches!(err, AudioError::Empty));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.mp3");
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        decode_file(&path, &limits()),
        Err(AudioError::Empty)
    ));
}

#[test]
fn missing_file_names_the_path() {
    let err = expect_err(
        decode_file("/no/such/file.wav", &limits()),
        &["/no/such/file.wav"],
    );
    assert!(matches!(err, AudioError::Read { .. }));
}

#[test]
fn too_large_is_refused_before_reading() {
    let small = DecodeLimits {
        max_bytes: 1_000,
        ..DecodeLimits::default()
    };
    let path = fixture("tone1k_48k_stereo.ogg");
    let size = std::fs::metadata(&path).unwrap().len();
    let err = expect_err(
        decode_file(&path, &small),
        &[&size.to_string(), "1000 bytes", "limit"],
    );
    assert!(matches!(err, AudioError::TooLarge { size: s, limit: 1_000 } if s == size));
    let err = decode_bytes(std::fs::read(&path).unwrap(), None, &small).unwrap_err();
    assert!(matches!(err, AudioError::TooLarge { .. }));
    assert_eq!(DecodeLimits::default().max_bytes, 25 * 1024 * 1024);
    assert_eq!(
        DecodeLimits::default().max_duration,
        Duration::from_secs(600)
    );
}

#[test]
fn too_long_is_refused_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = tone_wav(dir.path(), "long.wav", 16_000, Fmt::I16, 1, 3.0);
    let short = DecodeLimits {
        max_duration: Duration::from_secs(2),
        ..DecodeLimits::default()
    };
    let err = expect_err(decode_file(&path, &short), &["3.0 s", "2.0 s", "limit"]);
    assert!(
        matches!(
            err,
            AudioError::TooLong {
                at_least: false,
                ..
            }
        ),
        "{err:?}"
    );
    for name in [
        "tone1k_48k_mono.flac",
        "tone1k_44k_stereo.mp3",
        "tone1k_48k_stereo.ogg",
    ] {
        let tiny = DecodeLimits {
            max_duration: Duration::from_millis(200),
            ..DecodeLimits::default()
        };
        let err = decode_file(fixture(name), &tiny).unwrap_err();
        assert!(matches!(err, AudioError::TooLong { .. }), "{name}: {err:?}");
    }
}

#[test]
fn too_long_is_caught_while_decoding_when_the_header_does_not_say() {
    // A streamed WAV: the writer could not know the length, so the sizes
    // are placeholders and the decoder has to count.
    let dir = tempfile::tempdir().unwrap();
    let path = tone_wav(dir.path(), "stream.wav", 16_000, Fmt::I16, 1, 3.0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    let ok = decode_bytes(bytes.clone(), Some("wav"), &limits()).unwrap();
    assert!(
        (ok.duration().as_secs_f32() - 3.0).abs() < 0.01,
        "{:?}",
        ok.duration()
    );
    let short = DecodeLimits {
        max_duration: Duration::from_secs(2),
        ..DecodeLimits::default()
    };
    let err = expect_err(
        decode_bytes(bytes, Some("wav"), &short),
        &["at least", "2.0 s"],
    );
    assert!(
        matches!(err, AudioError::TooLong { at_least: true, .. }),
        "{err:?}"
    );
}

#[test]
fn text_and_images_are_not_audio() {
    let err = expect_err(
        decode_bytes(
            b"hello, this is a transcript, not a recording\n".to_vec(),
            Some("wav"),
            &limits(),
        ),
        &["not audio", "text", "WAV", "FLAC", "MP3"],
    );
    assert!(
        matches!(
            err,
            AudioError::NotAudio {
                looks_like: Some("text")
            }
        ),
        "{err:?}"
    );

    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend((0..500u32).map(|i| (i * 37 % 251) as u8));
    let err = expect_err(
        decode_bytes(png, Some("image/png"), &limits()),
        &["not audio", "PNG"],
    );
    assert!(matches!(err, AudioError::NotAudio { .. }));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.mp3");
    std::fs::write(&path, "Ünïcödé notes, still text\n".repeat(10)).unwrap();
    let err = decode_file(&path, &limits()).unwrap_err();
    assert!(matches!(err, AudioError::NotAudio { .. }), "{err:?}");
}

#[test]
fn truncated_headers_are_corrupt_headers() {
    let dir = tempfile::tempdir().unwrap();
    let wav = std::fs::read(tone_wav(dir.path(), "t.wav", 16_000, Fmt::I16, 1, 0.1)).unwrap();
    for (bytes, format) in [
        (wav[..20].to_vec(), "WAV"),
        (wav[..30].to_vec(), "WAV"),
        (
            std::fs::read(fixture("tone1k_48k_mono.flac")).unwrap()[..20].to_vec(),
            "FLAC",
        ),
        (
            std::fs::read(fixture("tone1k_48k_stereo.ogg")).unwrap()[..40].to_vec(),
            "Ogg",
        ),
    ] {
        let err = expect_err(decode_bytes(bytes, None, &limits()), &[format, "truncated"]);
        assert!(
            matches!(err, AudioError::CorruptHeader { .. }),
            "{format}: {err:?}"
        );
    }
}

#[test]
fn unsupported_containers_and_codecs_are_named() {
    let err = expect_err(
        decode_file(fixture("tone1k_16k.aiff"), &limits()),
        &["unsupported", "AIFF", "convert"],
    );
    assert!(matches!(err, AudioError::UnsupportedCodec { .. }));

    let mut m4a = b"\0\0\0\x20ftypM4A \0\0\0\0M4A mp42isom".to_vec();
    m4a.resize(200, 0);
    let err = expect_err(decode_bytes(m4a, Some("m4a"), &limits()), &["MP4"]);
    assert!(matches!(err, AudioError::UnsupportedCodec { .. }));

    // The first page of an Ogg Opus stream.
    let mut opus =
        b"OggS\0\x02\0\0\0\0\0\0\0\0\x01\0\0\0\0\0\0\0\0\0\0\0\x01\x13OpusHead\x01\x01".to_vec();
    opus.resize(200, 0);
    let err = expect_err(decode_bytes(opus, Some("opus"), &limits()), &["Opus"]);
    assert!(matches!(err, AudioError::UnsupportedCodec { .. }));

    // A WAV whose format tag is MPEG Layer 3 (0x0055), which symphonia's WAV reader refuses.
    let mut wav = std::fs::read(tone_wav(
        tempfile::tempdir().unwrap().path(),
        "m.wav",
        16_000,
        Fmt::I16,
        1,
        0.1,
    ))
    .unwrap();
    wav[20..22].copy_from_slice(&0x0055u16.to_le_bytes());
    let err = expect_err(decode_bytes(wav, None, &limits()), &["unsupported"]);
    assert!(
        matches!(err, AudioError::UnsupportedCodec { .. }),
        "{err:?}"
    );
}

#[test]
fn absurd_sample_rates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wav = std::fs::read(tone_wav(dir.path(), "r.wav", 16_000, Fmt::I16, 1, 0.1)).unwrap();
    for rate in [1u32, 2_000, 1_000_000, u32::MAX] {
        let mut bytes = wav.clone();
        bytes[24..28].copy_from_slice(&rate.to_le_bytes());
        let err = expect_err(
            decode_bytes(bytes, Some("wav"), &limits()),
            &[&format!("{rate} Hz"), "4000"],
        );
        assert!(
            matches!(err, AudioError::BadSampleRate { rate: r } if r == rate),
            "{err:?}"
        );
    }
    // 0 Hz: symphonia may reject it itself; either way it is an error, not a panic.
    let mut bytes = wav.clone();
    bytes[24..28].copy_from_slice(&0u32.to_le_bytes());
    let err = decode_bytes(bytes, Some("wav"), &limits()).unwrap_err();
    assert!(
        matches!(
            err,
            AudioError::BadSampleRate { rate: 0 } | AudioError::CorruptHeader { .. }
        ),
        "{err:?}"
    );
}

#[test]
fn a_header_with_no_data_is_corrupt_but_an_empty_wav_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let wav = std::fs::read(tone_wav(dir.path(), "d.wav", 16_000, Fmt::I16, 1, 1.0)).unwrap();
    let err = expect_err(
        decode_bytes(wav[..44].to_vec(), None, &limits()),
        &["corrupt", "missing"],
    );
    assert!(matches!(err, AudioError::Corrupt { .. }), "{err:?}");

    let empty = tone_wav(dir.path(), "e.wav", 16_000, Fmt::I16, 1, 0.0);
    assert!(decode_file(&empty, &limits()).unwrap().samples.is_empty());
}

#[test]
fn data_cut_off_mid_stream_returns_what_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let wav = std::fs::read(tone_wav(dir.path(), "half.wav", 44_100, Fmt::I16, 2, 1.0)).unwrap();
    let half = decode_bytes(wav[..wav.len() / 2].to_vec(), None, &limits()).unwrap();
    assert!(
        (half.duration().as_secs_f32() - 0.5).abs() < 0.01,
        "{:?}",
        half.duration()
    );
    assert_tone(&half, 0.5, 0.01, TONE_AMP, 40.0);

    for name in ["tone1k_8k_stereo.flac", "tone1k_44k_stereo.mp3"] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        let cut = bytes[..bytes.len() * 3 / 4].to_vec();
        let chunk = decode_bytes(cut, None, &limits()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let secs = chunk.duration().as_secs_f32();
        assert!(secs > 0.4 && secs < 0.95, "{name}: {secs} s");
    }
    // The Ogg fixture's audio is one page after 4 KB of Vorbis headers, and
    // an Ogg page is all or nothing: cut anywhere, nothing decodes.
    let ogg = std::fs::read(fixture("tone1k_48k_stereo.ogg")).unwrap();
    assert!(decode_bytes(ogg[..ogg.len() - 100].to_vec(), None, &limits()).is_err());
}

// ---------------------------------------------------------------- never panic

/// xorshift64*: a fixed, dependency-free stream of test bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn all_fixture_bytes() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![
        (
            "u8.wav".to_string(),
            tone_wav(dir.path(), "u8.wav", 8_000, Fmt::U8, 1, 0.2),
        ),
        (
            "f32.wav".to_string(),
            tone_wav(dir.path(), "f32.wav", 48_000, Fmt::F32, 2, 0.2),
        ),
        (
            "i24.wav".to_string(),
            tone_wav(dir.path(), "i24.wav", 44_100, Fmt::I24, 1, 0.2),
        ),
    ];
    for entry in std::fs::read_dir(fixture("")).unwrap() {
        let path = entry.unwrap().path();
        files.push((
            path.file_name().unwrap().to_string_lossy().into_owned(),
            path,
        ));
    }
    files
        .into_iter()
        .map(|(name, path)| (name, std::fs::read(path).unwrap()))
        .collect()
}

/// Any result is fine; a panic (which `decode_bytes` turns into a
/// "failed internally" error) is not.
fn no_panic(bytes: Vec<u8>, hint: Option<&str>, what: &str) {
    let limits = DecodeLimits {
        max_duration: Duration::from_secs(30),
        ..DecodeLimits::default()
    };
    if let Err(e) = decode_bytes(bytes, hint, &limits) {
        assert!(!e.to_string().contains("failed internally"), "{what}: {e}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let hints = [None, Some("wav"), Some("mp3"), Some("flac"), Some("ogg")];
    for i in 0..1_500 {
        let len = (rng.next() % 5_000) as usize;
        let mut bytes = rng.bytes(len);
        // Random bytes with a real magic number reach deeper into the readers.
        match i % 5 {
            1 if len >= 12 => {
                bytes[..4].copy_from_slice(b"RIFF");
                bytes[8..12].copy_from_slice(b"WAVE");
            }
            2 if len >= 4 => bytes[..4].copy_from_slice(b"fLaC"),
            3 if len >= 4 => bytes[..4].copy_from_slice(b"OggS"),
            4 if len >= 2 => bytes[..2].copy_from_slice(&[0xff, 0xfb]),
            _ => {}
        }
        no_panic(bytes, hints[i % hints.len()], &format!("random #{i}"));
    }
}

#[test]
fn every_truncation_and_corruption_of_every_fixture_never_panics() {
    let mut rng = Rng(42);
    for (name, bytes) in all_fixture_bytes() {
        let len = bytes.len();
        let mut cuts: Vec<usize> = (0..len.min(200)).collect();
        cuts.extend((1..64).map(|k| len * k / 64));
        for cut in cuts {
            no_panic(bytes[..cut].to_vec(), None, &format!("{name} cut at {cut}"));
        }
        for round in 0..150 {
            let mut damaged = bytes.clone();
            for _ in 0..1 + round % 8 {
                let at = (rng.next() as usize) % len;
                damaged[at] = rng.next() as u8;
            }
            no_panic(damaged, None, &format!("{name} corrupted, round {round}"));
        }
    }
}
