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
//! Side by side: when `bash benches/peers/setup.sh` has installed Pipecat,
//! `benches/peers/pipecat_runner.py` measures it in the same run, on the same
//! shape of work, and a ratio table is printed at the end. (Pipecat 1.14 on
//! this kind of machine, per issue #3: 71 µs per frame with its optional
//! processors off, 150 µs by default; paced p50 ≈ 100 µs.)

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
            speech_end: chunk.duration(),
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
/// are parked, so this includes four task wake-ups. Returns p50, p90, p99.
fn paced_latency() -> [Duration; 3] {
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
    [pct(0.5), pct(0.9), pct(0.99)]
}

/// Time per frame through 4 stages (median of 20 runs of 1,000 frames), fed
/// from a spawned task like a call handler, to put beside the peer's figure.
fn throughput_per_frame() -> Duration {
    let rt = runtime();
    rt.block_on(async {
        tokio::spawn(async {
            let mut runs = Vec::with_capacity(20);
            for _ in 0..20 {
                let mut running = four_stages();
                let input = running.input_handle();
                let started = Instant::now();
                let feeder = tokio::spawn(async move {
                    for _ in 0..1_000 {
                        input.send(audio()).await.unwrap();
                    }
                });
                for _ in 0..1_000 {
                    running.output().recv().await.unwrap();
                }
                runs.push(started.elapsed() / 1_000);
                feeder.await.unwrap();
            }
            runs.sort();
            runs[runs.len() / 2]
        })
        .await
        .unwrap()
    })
}

/// Run the Pipecat peer if its venv exists; one JSON object per config.
fn pipecat_figures() -> Vec<serde_json::Value> {
    let cache = std::env::var("PARLOR_CACHE").unwrap_or_else(|_| {
        format!(
            "{}/.cache/parlor",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let python = std::path::Path::new(&cache).join("peers-venv/bin/python");
    if !python.exists() {
        println!(
            "pipecat: not installed; `bash benches/peers/setup.sh` adds the side-by-side figures"
        );
        return Vec::new();
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/benches/peers/pipecat_runner.py"
    );
    match std::process::Command::new(python).arg(script).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Ok(out) => {
            println!("pipecat: failed: {}", String::from_utf8_lossy(&out.stderr));
            Vec::new()
        }
        Err(e) => {
            println!("pipecat: cannot run: {e}");
            Vec::new()
        }
    }
}

fn side_by_side(paced: [Duration; 3], per_frame: Duration) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("\n| 4 pass-through stages, 20 ms frames | per frame (µs) | paced p50 (µs) | paced p99 (µs) |");
    println!("|---|---|---|---|");
    println!(
        "| parlor | {:.2} | {:.1} | {:.1} |",
        us(per_frame),
        us(paced[0]),
        us(paced[2])
    );
    for peer in pipecat_figures() {
        let f = |k: &str| peer[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| Pipecat {} ({}) | {:.1} ({:.0}× parlor) | {:.1} ({:.0}×) | {:.1} ({:.0}×) |",
            peer["version"].as_str().unwrap_or("?"),
            peer["config"].as_str().unwrap_or("?"),
            f("throughput_us_per_frame"),
            f("throughput_us_per_frame") / us(per_frame),
            f("paced_p50_us"),
            f("paced_p50_us") / us(paced[0]),
            f("paced_p99_us"),
            f("paced_p99_us") / us(paced[2]),
        );
    }
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
    let paced = paced_latency();
    side_by_side(paced, throughput_per_frame());
    Criterion::default().configure_from_args().final_summary();
}
