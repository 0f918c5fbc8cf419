//! Runner overhead: what it costs to move frames through stages.
//!
//! - `runner/throughput/4_stages`: N 20 ms audio frames pushed through four
//!   pass-through stages as fast as they go; time per frame.
//! - `runner/turn/4_stages`: one whole turn's control frames (speech started,
//!   speech ended, transcript, end of turn with timings) end to end.
//! - paced latency: one 20 ms frame every 2 ms (a live call is every 20 ms;
//!   the runtime is idle between frames either way), p50/p99 from send to
//!   arrival at the end, printed after the criterion groups.
//!
//! Pipecat 1.14, measured on this kind of machine (issue #3): 71 µs per frame
//! through 4 pass-through processors with optional processors off, 150 µs by
//! default; paced p50 ≈ 100 µs. `benches/peers/pipecat_runner.py` measures
//! it side by side when pipecat-ai is installed.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use parlor::frame::{AudioChunk, Frame, TurnId, TurnMetrics, Utterance};
use parlor::runner::{Pipeline, RunningPipeline};
use parlor::stages::passthrough::Passthrough;

const STAGES: usize = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn four_stages() -> RunningPipeline {
    let mut pipeline = Pipeline::new(NonZeroUsize::new(32).unwrap());
    for name in ["s1", "s2", "s3", "s4"] {
        pipeline = pipeline.stage(Box::new(Passthrough::new(name)));
    }
    pipeline.start()
}

fn audio() -> Frame {
    Frame::Audio(AudioChunk::new(16_000, vec![0.0; 320]))
}

fn turn_frames(turn: TurnId) -> Vec<Frame> {
    let chunk = Arc::new(AudioChunk::new(16_000, vec![0.0; 16_000]));
    vec![
        Frame::SpeechStarted {
            turn,
            at: Duration::ZERO,
        },
        Frame::SpeechEnded(Utterance {
            turn,
            audio: chunk,
            start: Duration::ZERO,
            ended_at: Instant::now(),
        }),
        Frame::Transcript {
            turn,
            text: "where is my order".into(),
            is_final: true,
        },
        Frame::EndOfTurn(TurnMetrics::new(
            turn,
            Duration::from_secs(1),
            Instant::now(),
        )),
    ]
}

fn throughput(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("runner");
    const FRAMES: usize = 1_000;
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("throughput/4_stages", |b| {
        b.to_async(&rt).iter_batched(
            four_stages,
            |mut running| async move {
                let input = running.input_handle();
                let feeder = tokio::spawn(async move {
                    for _ in 0..FRAMES {
                        input.send(audio()).await.unwrap();
                    }
                });
                for _ in 0..FRAMES {
                    running.output().recv().await.unwrap();
                }
                feeder.await.unwrap();
                // Dropped untimed: closing the input ends the stages.
                running
            },
            BatchSize::PerIteration,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("turn/4_stages", |b| {
        b.to_async(&rt).iter_batched(
            four_stages,
            |mut running| async move {
                let turn = running.turns().begin();
                let input = running.input_handle();
                for frame in turn_frames(turn) {
                    input.send(frame).await.unwrap();
                }
                loop {
                    if let Frame::EndOfTurn(m) = running.output().recv().await.unwrap() {
                        assert_eq!(m.stages.len(), STAGES);
                        break;
                    }
                }
                running
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// Latency of a frame that arrives alone (the live-call case): the stages
/// are parked, so this includes four task wake-ups.
fn paced_latency() {
    let rt = runtime();
    // Spawned, like a live call's handler task, rather than run on the
    // block_on thread (which would add a cross-thread wake-up each way).
    let mut samples = rt.block_on(async { tokio::spawn(paced_samples()).await.unwrap() });
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "runner/paced/4_stages: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs over {} frames (goal: p50 < 20 µs; Pipecat ≈ 100 µs)",
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.9).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples.len()
    );
}

async fn paced_samples() -> Vec<Duration> {
    let mut running = four_stages();
    let input = running.input_handle();
    let mut samples = Vec::with_capacity(2_000);
    for i in 0..2_100 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let sent = Instant::now();
        input.send(audio()).await.unwrap();
        running.output().recv().await.unwrap();
        if i >= 100 {
            samples.push(sent.elapsed());
        }
    }
    running.shutdown(Duration::from_secs(1)).await;
    samples
}

criterion_group!(benches, throughput);

fn main() {
    benches();
    paced_latency();
    Criterion::default().configure_from_args().final_summary();
}
