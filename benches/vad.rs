//! VAD speed: one 32 ms frame through each detector, and ten seconds of
//! speech through the whole segmenter (RTF = time / 10 s).
//!
//! `cargo bench --bench vad` (Silero needs `bash models/setup.sh` first).

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parlor::spec::{VadBackend, VadSpec};
use parlor::stages::vad::{self, Segmenter, SegmenterConfig};

const RATE: usize = 16_000;
/// Silero's frame; earshot takes two of its own per one of these.
const FRAME: usize = 512;

/// Real speech when the setup script has fetched it, else seeded noise
/// (both detectors' cost does not depend on what they hear).
fn audio(seconds: usize) -> Vec<f32> {
    let clip = Path::new("models/speech/librivox/sense_and_sensibility_01_austen_64kb-0870.wav");
    let mut samples: Vec<f32> = match hound::WavReader::open(clip) {
        Ok(mut reader) => reader
            .samples::<i16>()
            .map(|s| s.unwrap() as f32 / 32768.0)
            .collect(),
        Err(_) => {
            let mut x: u32 = 1;
            (0..RATE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x as f32 / u32::MAX as f32 - 0.5) * 0.1
                })
                .collect()
        }
    };
    let one = samples.clone();
    while samples.len() < seconds * RATE {
        samples.extend_from_slice(&one);
    }
    samples.truncate(seconds * RATE);
    samples
}

fn spec(backend: VadBackend) -> VadSpec {
    let mut spec: VadSpec = toml::from_str("").expect("defaults");
    spec.backend = backend;
    spec
}

fn bench(c: &mut Criterion) {
    let backends = [
        (VadBackend::Silero, "silero"),
        (VadBackend::Earshot, "earshot"),
    ];
    let speech = audio(10);

    let mut group = c.benchmark_group("vad_frame_32ms");
    group.throughput(Throughput::Elements(1));
    for (backend, name) in backends {
        let mut detector = match vad::detector(&spec(backend)) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        let n = detector.frame_len();
        let mut at = 0;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                // Walk through real audio so the recurrent state stays realistic.
                let frame = &speech[at..at + FRAME];
                at = (at + FRAME) % (speech.len() - FRAME);
                let mut p = 0.0;
                for part in frame.chunks_exact(n) {
                    p += detector.speech_probability(part).unwrap();
                }
                p
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("vad_segmenter_10s");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(speech.len() as u64));
    for (backend, name) in backends {
        let spec = spec(backend);
        let Ok(detector) = vad::detector(&spec) else {
            continue;
        };
        let mut segmenter = Segmenter::new(SegmenterConfig::from_spec(&spec), detector);
        let mut events = Vec::new();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                segmenter.reset();
                for frame in speech.chunks(RATE / 50) {
                    segmenter.push(frame, &mut events).unwrap();
                }
                segmenter.finish(&mut events);
                events.drain(..).count()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
