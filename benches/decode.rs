//! Decode + resample to 16 kHz mono: how many times faster than real time.
//!
//! Inputs, 45 s each, made in a temp dir at start-up from one synthesized
//! signal (tones, glides and noise, so FLAC cannot compress it to nothing):
//! - `wav_44k1_stereo`: 16-bit PCM, written with hound.
//! - `flac_48k_stereo`, `mp3_48k_stereo`, `ogg_48k_stereo`: encoded from a
//!   48 kHz WAV with `sox` (Rust has no encoders for them). Skipped, with a
//!   note, when sox or its MP3 handler (`libsox-fmt-mp3`) is missing.
//! - `resample_only_48k`: the resampler alone on 45 s of 48 kHz mono.
//!
//! After the criterion groups, a table prints each input's ×-real-time
//! (audio seconds per wall-clock second, best of five runs, one thread).
//! The goal is over 200×.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use parlor::audio::{decode_file, resample, DecodeLimits};

const SECONDS: f32 = 45.0;

/// A speech-band test signal: two tones gliding across 200-3000 Hz, a
/// 4 Hz syllable-rate envelope, and a little white noise. Deterministic.
fn signal(rate: u32, channel: usize) -> Vec<f32> {
    let n = (rate as f32 * SECONDS) as usize;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ channel as u64;
    let (mut ph1, mut ph2) = (0f32, 0f32);
    (0..n)
        .map(|i| {
            let t = i as f32 / rate as f32;
            let f1 = 200.0 + 800.0 * (0.5 + 0.5 * (0.31 * t).sin());
            let f2 = 1200.0 + 1800.0 * (0.5 + 0.5 * (0.17 * t + channel as f32).sin());
            ph1 = (ph1 + std::f32::consts::TAU * f1 / rate as f32) % std::f32::consts::TAU;
            ph2 = (ph2 + std::f32::consts::TAU * f2 / rate as f32) % std::f32::consts::TAU;
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            let noise =
                (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let env = 0.5 + 0.5 * (std::f32::consts::TAU * 4.0 * t).sin();
            env * (0.4 * ph1.sin() + 0.2 * ph2.sin()) + 0.05 * noise
        })
        .collect()
}

fn write_wav(path: &Path, rate: u32) {
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let (l, r) = (signal(rate, 0), signal(rate, 1));
    let mut w = hound::WavWriter::create(path, spec).expect("create bench WAV");
    for (a, b) in l.iter().zip(&r) {
        w.write_sample((a * 32767.0) as i16).unwrap();
        w.write_sample((b * 32767.0) as i16).unwrap();
    }
    w.finalize().unwrap();
}

/// Encodes `wav` to `out` with sox; `None` (and a note) if sox cannot.
fn sox(wav: &Path, out: PathBuf, args: &[&str]) -> Option<PathBuf> {
    let status = Command::new("sox")
        .arg(wav)
        .args(args)
        .arg(&out)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        _ => {
            eprintln!(
                "note: skipping {}: sox could not write it (install sox and libsox-fmt-mp3)",
                out.display()
            );
            None
        }
    }
}

struct Inputs {
    _dir: tempfile::TempDir,
    files: Vec<(&'static str, PathBuf)>,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().expect("temp dir");
    let wav44 = dir.path().join("in_44k1.wav");
    write_wav(&wav44, 44_100);
    let wav48 = dir.path().join("in_48k.wav");
    write_wav(&wav48, 48_000);
    let mut files = vec![("wav_44k1_stereo", wav44)];
    let encoded = [
        ("flac_48k_stereo", "b.flac", &[][..]),
        ("mp3_48k_stereo", "b.mp3", &["-C", "128"][..]),
        ("ogg_48k_stereo", "b.ogg", &["-C", "3"][..]),
    ];
    for (name, file, args) in encoded {
        if let Some(path) = sox(&wav48, dir.path().join(file), args) {
            files.push((name, path));
        }
    }
    Inputs { _dir: dir, files }
}

fn benches(c: &mut Criterion, inputs: &Inputs) {
    let limits = DecodeLimits::default();
    let mut g = c.benchmark_group("decode");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    // Throughput in audio seconds (as "elements"), so criterion's rate is
    // directly the ×-real-time figure.
    g.throughput(Throughput::Elements(SECONDS as u64));
    for (name, path) in &inputs.files {
        g.bench_function(*name, |b| b.iter(|| decode_file(path, &limits).unwrap()));
    }
    let mono48 = signal(48_000, 0);
    g.bench_function("resample_only_48k", |b| {
        b.iter(|| resample(&mono48, 48_000, 16_000).unwrap())
    });
    g.finish();
}

fn real_time_table(inputs: &Inputs) {
    let limits = DecodeLimits::default();
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    println!("\ndecode + resample to 16 kHz mono, {SECONDS} s of audio, best of 5:");
    for (name, path) in &inputs.files {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let mut out_len = 0;
        let t = best(&mut || out_len = decode_file(path, &limits).unwrap().samples.len());
        println!(
            "  {name:<18} {:>8.1} ms  {:>6.0}× real time  ({} KB in, {} samples out)",
            t.as_secs_f64() * 1e3,
            SECONDS as f64 / t.as_secs_f64(),
            size / 1024,
            out_len
        );
    }
    let mono48 = signal(48_000, 0);
    let t = best(&mut || {
        resample(&mono48, 48_000, 16_000).unwrap();
    });
    println!(
        "  {:<18} {:>8.1} ms  {:>6.0}× real time",
        "resample_only_48k",
        t.as_secs_f64() * 1e3,
        SECONDS as f64 / t.as_secs_f64()
    );
}

fn all(c: &mut Criterion) {
    let inputs = inputs();
    benches(c, &inputs);
    real_time_table(&inputs);
}

criterion_group!(decode_benches, all);

fn main() {
    decode_benches();
    Criterion::default().configure_from_args().final_summary();
}
