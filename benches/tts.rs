//! TTS speed for a one-sentence reply, Piper beside espeak-ng: time to the
//! first audio piece (what a caller waits for after the planner's first
//! sentence), and the whole sentence (real-time factor = time / audio
//! length, printed before the groups run along with Piper's load time).
//! Piper twice: streamed (`piper`, encoder once, then the decoder window by
//! window: src/stages/tts/piper_stream.rs) and `piper-whole` (one model
//! call per sentence).
//!
//! `cargo bench --bench tts` (Piper needs `bash models/setup.sh` first).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parlor::frame::AudioChunk;
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::piper::PiperVoice;
use parlor::stages::tts::Voice;
use tokio::sync::mpsc;

const REPLY: &str = "Your order ships on Friday and should arrive by Tuesday.";

fn voices() -> Vec<(&'static str, Arc<dyn Voice>)> {
    let (model, runtime) = (
        Path::new("models/en_US-joe-medium.onnx"),
        Path::new("models/libonnxruntime.so"),
    );
    let started = Instant::now();
    let piper =
        PiperVoice::load(model, runtime, 1.0).expect("Piper voice (run bash models/setup.sh)");
    eprintln!(
        "piper load: {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        piper.streams(),
        "the voice's halves are missing: run bash models/setup.sh"
    );
    let whole = PiperVoice::load_whole(model, runtime, 1.0).expect("Piper voice");
    let espeak = EspeakVoice::new("en-us", 1.0).expect("espeak-ng");
    vec![
        ("piper", Arc::new(piper)),
        ("piper-whole", Arc::new(whole)),
        ("espeak", Arc::new(espeak)),
    ]
}

/// Time to the first audio piece, then the voice is stopped by dropping
/// the receiver (as a barge-in would).
async fn first_audio(voice: Arc<dyn Voice>) -> Duration {
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(64);
    let started = Instant::now();
    let speaking = tokio::spawn(async move { voice.speak(REPLY, &tx).await });
    rx.recv().await.expect("audio");
    let first = started.elapsed();
    drop(rx);
    speaking.await.unwrap().expect("speak");
    first
}

/// The whole sentence: (time, audio length).
async fn whole(voice: &dyn Voice) -> (Duration, Duration) {
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(1024);
    let started = Instant::now();
    voice.speak(REPLY, &tx).await.expect("speak");
    let took = started.elapsed();
    drop(tx);
    let mut audio = Duration::ZERO;
    while let Some(c) = rx.recv().await {
        audio += c.duration();
    }
    (took, audio)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let voices = voices();
    for (name, voice) in &voices {
        // Warm-up, then one measured run for the real-time factor.
        rt.block_on(whole(&**voice));
        let (took, audio) = rt.block_on(whole(&**voice));
        eprintln!(
            "{name}: {:.2} s of audio in {:.0} ms, real-time factor {:.3}",
            audio.as_secs_f64(),
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() / audio.as_secs_f64()
        );
    }

    let mut group = c.benchmark_group("tts_first_audio");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    for (name, voice) in &voices {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let voice = voice.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += first_audio(voice.clone()).await;
                    }
                    total
                }
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("tts_sentence");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for (name, voice) in &voices {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| {
                let voice = voice.clone();
                async move { whole(&*voice).await }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
