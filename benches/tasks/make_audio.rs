//! Regenerates the bench dataset's audio (`benches/tasks/audio/*.wav`) from
//! `benches/tasks/tasks.json`: each task's `speech` says how.
//!
//! - `piper`: parlor's Piper voice (models/en_US-joe-medium.onnx) at `speed`;
//! - `espeak`: espeak-ng's `voice` at `speed`;
//! - `recording`: a real recording under models/speech (models/setup.sh
//!   fetches them from PyPI pocketsphinx), copied.
//!
//! Every clip is resampled to 16 kHz mono, given 0.3 s of silence before
//! and 0.6 s after (a caller's line is quiet around a question), and, with
//! `noise`, mixed with white noise at `snr_db` (speech power over noise
//! power, measured on the unpadded speech) drawn from SplitMix64 seeded with
//! `seed`, so the noise is the same on every run. espeak-ng is
//! deterministic; Piper samples its durations and so differs slightly from
//! run to run, which is why the WAVs are committed.
//!
//! Run from the project root: `cargo run --release --example make_audio`
//! (`-- ID...` remakes only those tasks). Needs `bash models/setup.sh` and
//! espeak-ng.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use parlor::audio::{decode_file, resample, write_wav, DecodeLimits};
use parlor::bench::tasks::{Dataset, Noise, Speech};
use parlor::frame::AudioChunk;
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::{load_voice, Voice};
use tokio::sync::mpsc;

const RATE: u32 = 16_000;
const LEAD_S: f32 = 0.3;
const TAIL_S: f32 = 0.6;

#[tokio::main]
async fn main() -> Result<()> {
    let only: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = Dataset::load(&root.join("benches/tasks"), false)?;
    let mut piper: Option<Arc<dyn Voice>> = None;
    let mut total_bytes = 0u64;
    for task in &data.tasks {
        if !only.is_empty() && !only.contains(&task.id) {
            continue;
        }
        let speech = match &task.speech {
            Speech::Piper { speed } => {
                if piper.is_none() {
                    let spec: parlor::spec::TtsSpec = toml::from_str("backend = \"local\"")?;
                    piper = Some(tokio::task::spawn_blocking(move || load_voice(&spec)).await??);
                }
                speak(piper.as_deref().unwrap(), &task.text, *speed).await?
            }
            Speech::Espeak { voice, speed } => {
                let voice = EspeakVoice::new(voice, 1.0)?;
                speak(&voice, &task.text, *speed).await?
            }
            Speech::Recording { source } => {
                decode_file(root.join(source), &DecodeLimits::default())
                    .with_context(|| format!("{} (run bash models/setup.sh)", source.display()))?
                    .samples
            }
        };
        if speech.is_empty() {
            bail!("task {:?}: no speech was made", task.id);
        }
        let mut samples = vec![0.0; (LEAD_S * RATE as f32) as usize];
        samples.extend_from_slice(&speech);
        samples.extend(std::iter::repeat_n(0.0, (TAIL_S * RATE as f32) as usize));
        if let Some(noise) = task.noise {
            add_noise(&mut samples, power(&speech), noise);
        }
        let path = data.audio_path(task);
        std::fs::create_dir_all(path.parent().unwrap())?;
        write_wav(&path, &AudioChunk::new(RATE, samples))?;
        let bytes = std::fs::metadata(&path)?.len();
        total_bytes += bytes;
        println!(
            "{} ({} KiB, {})",
            path.display(),
            bytes / 1024,
            task.speech.label()
        );
    }
    println!("{:.1} MiB written", total_bytes as f64 / (1 << 20) as f64);
    Ok(())
}

/// `text` spoken by `voice` at `speed`, at 16 kHz.
async fn speak(voice: &dyn Voice, text: &str, speed: f32) -> Result<Vec<f32>> {
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(1024);
    let collect = async {
        let mut rate = RATE;
        let mut samples = Vec::new();
        while let Some(chunk) = rx.recv().await {
            rate = chunk.sample_rate;
            samples.extend_from_slice(&chunk.samples);
        }
        (rate, samples)
    };
    let (spoken, (rate, samples)) = tokio::join!(
        async move {
            let r = voice.speak_at(text, speed, &tx).await;
            drop(tx);
            r
        },
        collect
    );
    spoken?;
    Ok(resample(&samples, rate, RATE)?)
}

/// Mean square of `samples`.
fn power(samples: &[f32]) -> f64 {
    samples
        .iter()
        .map(|&s| f64::from(s) * f64::from(s))
        .sum::<f64>()
        / samples.len() as f64
}

/// Adds uniform white noise whose power is `speech_power / 10^(snr/10)`.
fn add_noise(samples: &mut [f32], speech_power: f64, noise: Noise) {
    // Uniform on [-a, a] has power a²/3.
    let noise_power = speech_power / 10f64.powf(f64::from(noise.snr_db) / 10.0);
    let amplitude = (3.0 * noise_power).sqrt();
    let mut state = noise.seed;
    for s in samples.iter_mut() {
        let u = splitmix64(&mut state) as f64 / u64::MAX as f64; // [0, 1]
        let n = (2.0 * u - 1.0) * amplitude;
        *s = (f64::from(*s) + n).clamp(-1.0, 1.0) as f32;
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, well-known generator,
/// here only so the noise is the same on every machine and run.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
