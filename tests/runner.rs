//! The runner: backpressure, per-turn cancellation, shutdown, and the
//! per-stage timings each turn carries.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parlor::frame::{AudioChunk, Frame, TurnId, TurnMetrics};
use parlor::runner::Pipeline;
use parlor::stages::passthrough::Passthrough;
use parlor::stages::{Stage, StageContext, StageError, StageIo};

fn audio_frame() -> Frame {
    Frame::Audio(AudioChunk::new(16_000, vec![0.0; 320]))
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Turns each `Transcript` into a "reply" after working on it for
/// `work` — unless the turn is cancelled first. Counts how many replies it
/// finished and how many it abandoned, so tests can see what happened.
struct SlowReplier {
    work: Duration,
    finished: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
}

#[async_trait]
impl Stage for SlowReplier {
    fn name(&self) -> &'static str {
        "replier"
    }

    async fn run(self: Box<Self>, mut io: StageIo, cx: StageContext) -> Result<(), StageError> {
        while let Some(frame) = io.recv().await {
            match frame {
                Frame::Transcript { turn, text, .. } => {
                    if !cx.turns.is_live(turn) {
                        self.abandoned.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let token = cx.turns.token(turn);
                    tokio::select! {
                        _ = token.cancelled() => {
                            self.abandoned.fetch_add(1, Ordering::SeqCst);
                        }
                        _ = tokio::time::sleep(self.work) => {
                            self.finished.fetch_add(1, Ordering::SeqCst);
                            io.send(Frame::ReplyDelta { turn, text: format!("re: {text}") }).await?;
                        }
                    }
                }
                other => io.forward(other).await?,
            }
        }
        Ok(())
    }
}

/// A stage that ignores shutdown and never finishes its one frame: the
/// runner must abort it and say so.
struct Stubborn;

#[async_trait]
impl Stage for Stubborn {
    fn name(&self) -> &'static str {
        "stubborn"
    }

    async fn run(self: Box<Self>, mut io: StageIo, _cx: StageContext) -> Result<(), StageError> {
        while io.recv().await.is_some() {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Ok(())
    }
}

#[tokio::test]
async fn slow_consumer_holds_the_producer_at_the_channel_bound() {
    let capacity = 4;
    let stages = 3;
    let mut pipeline = Pipeline::new(cap(capacity));
    for name in ["a", "b", "c"] {
        pipeline = pipeline.stage(Box::new(Passthrough::new(name)));
    }
    let running = pipeline.start();
    let input = running.input_handle();

    // Nobody reads the output. Push until a send has waited 200 ms.
    let mut accepted = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_millis(200), input.send(audio_frame())).await {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(_)) => panic!("pipeline closed its input"),
            Err(_) => break,
        }
        assert!(accepted < 10_000, "the producer was never held back");
    }
    // Each of the 4 channels holds `capacity` frames and each stage at most
    // one more in hand: beyond that the producer must wait, so the memory
    // held is fixed by the spec, not by how fast the producer is.
    let bound = capacity * (stages + 1) + stages;
    assert!(
        accepted <= bound && accepted >= capacity * (stages + 1),
        "accepted {accepted} frames, expected between {} and {bound}",
        capacity * (stages + 1)
    );

    // Reading one frame at the end makes room for exactly one more upstream
    // (the backpressure propagates, it is not a dead lock).
    let mut running = running;
    assert!(running.output().recv().await.is_some());
    tokio::time::timeout(Duration::from_secs(2), input.send(audio_frame()))
        .await
        .expect("space freed at the end reaches the producer")
        .unwrap();

    let finished = running.shutdown(Duration::from_secs(2)).await;
    assert!(
        finished.aborted.is_empty() && finished.failed.is_empty(),
        "{finished:?}"
    );
}

#[tokio::test]
async fn a_new_turn_cancels_work_in_flight_with_barge_in() {
    let finished = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let running = Pipeline::new(cap(8))
        .stage(Box::new(Passthrough::new("before")))
        .stage(Box::new(SlowReplier {
            work: Duration::from_secs(30),
            finished: finished.clone(),
            abandoned: abandoned.clone(),
        }))
        .stage(Box::new(Passthrough::new("after")))
        .start();
    let input = running.input_handle();
    let turns = running.turns().clone();

    let first = turns.begin();
    input
        .send(Frame::Transcript {
            turn: first,
            text: "one".into(),
            is_final: true,
        })
        .await
        .unwrap();
    // Let the replier start its 30 s of work on turn 1.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let second = turns.begin(); // the caller speaks again: barge-in
    assert!(!turns.is_live(first));
    input
        .send(Frame::Transcript {
            turn: second,
            text: "two".into(),
            is_final: true,
        })
        .await
        .unwrap();

    // Turn 1 is abandoned at once, turn 2 gets its (shortened) answer only
    // because turn 1 stopped: work is 30 s, we wait at most 5.
    let waited = tokio::time::timeout(Duration::from_secs(5), async {
        while abandoned.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "turn 1 was not cancelled");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(finished.load(Ordering::SeqCst), 0);

    // Shutdown cancels turn 2 as well and every stage stops.
    let finished_run = running.shutdown(Duration::from_secs(2)).await;
    assert!(finished_run.aborted.is_empty(), "{finished_run:?}");
    assert!(!turns.is_live(second), "shutdown cancels every turn");
}

#[tokio::test]
async fn without_barge_in_overlapping_turns_all_finish() {
    let finished = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let mut running = Pipeline::new(cap(8))
        .barge_in(false)
        .stage(Box::new(SlowReplier {
            work: Duration::from_millis(20),
            finished: finished.clone(),
            abandoned: abandoned.clone(),
        }))
        .start();
    let input = running.input_handle();
    let turns = running.turns().clone();
    for text in ["one", "two", "three"] {
        let turn = turns.begin();
        input
            .send(Frame::Transcript {
                turn,
                text: text.into(),
                is_final: true,
            })
            .await
            .unwrap();
    }
    running.close_input();
    drop(input);
    let mut replies = Vec::new();
    while let Some(frame) = running.output().recv().await {
        if let Frame::ReplyDelta { text, .. } = frame {
            replies.push(text);
        }
    }
    assert_eq!(replies, ["re: one", "re: two", "re: three"]);
    assert_eq!(abandoned.load(Ordering::SeqCst), 0);
    let finished_run = running.join(Duration::from_secs(2)).await;
    assert!(finished_run.into_result().is_ok());
}

#[tokio::test]
async fn stale_frames_of_a_cancelled_turn_are_dropped() {
    let finished = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let mut running = Pipeline::new(cap(8))
        .stage(Box::new(SlowReplier {
            work: Duration::from_millis(1),
            finished: finished.clone(),
            abandoned: abandoned.clone(),
        }))
        .start();
    let turns = running.turns().clone();
    let old = turns.begin();
    let _new = turns.begin();
    let input = running.input_handle();
    input
        .send(Frame::Transcript {
            turn: old,
            text: "late".into(),
            is_final: true,
        })
        .await
        .unwrap();
    // A turn id nobody ever began is stale too.
    input
        .send(Frame::Transcript {
            turn: TurnId(999),
            text: "bogus".into(),
            is_final: true,
        })
        .await
        .unwrap();
    running.close_input();
    drop(input);
    let mut outputs = 0;
    while running.output().recv().await.is_some() {
        outputs += 1;
    }
    assert_eq!(outputs, 0);
    assert_eq!(abandoned.load(Ordering::SeqCst), 2);
    assert_eq!(finished.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn shutdown_stops_every_stage_and_names_the_stubborn_one() {
    let running = Pipeline::new(cap(2))
        .stage(Box::new(Passthrough::new("a")))
        .stage(Box::new(Stubborn))
        .stage(Box::new(Passthrough::new("c")))
        .start();
    running.input_handle().send(audio_frame()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    let finished = running.shutdown(Duration::from_millis(300)).await;
    assert_eq!(finished.aborted, ["stubborn"]);
    assert!(finished.failed.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2));
    let err = finished.into_result().unwrap_err().to_string();
    assert!(err.contains("stubborn"), "{err}");
}

#[tokio::test]
async fn clean_shutdown_leaves_no_task_running() {
    // Count the runtime's alive tasks before, during and after.
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let mut pipeline = Pipeline::new(cap(4));
    for name in ["a", "b", "c", "d"] {
        pipeline = pipeline.stage(Box::new(Passthrough::new(name)));
    }
    let running = pipeline.start();
    assert_eq!(metrics.num_alive_tasks(), before + 4);
    for _ in 0..10 {
        running.input_handle().send(audio_frame()).await.unwrap();
    }
    let finished = running.shutdown(Duration::from_secs(2)).await;
    assert!(finished.into_result().is_ok());
    // Aborted or finished tasks are reaped asynchronously; give it a moment.
    for _ in 0..100 {
        if metrics.num_alive_tasks() == before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(metrics.num_alive_tasks(), before);
}

#[tokio::test]
async fn each_stage_adds_its_timing_to_the_turn() {
    let finished = Arc::new(AtomicUsize::new(0));
    let abandoned = Arc::new(AtomicUsize::new(0));
    let mut running = Pipeline::new(cap(8))
        .stage(Box::new(Passthrough::new("first")))
        .stage(Box::new(SlowReplier {
            work: Duration::from_millis(30),
            finished,
            abandoned,
        }))
        .stage(Box::new(Passthrough::new("last")))
        .start();
    let turn = running.turns().begin();
    let input = running.input_handle();
    input
        .send(Frame::Transcript {
            turn,
            text: "hi".into(),
            is_final: true,
        })
        .await
        .unwrap();
    input
        .send(Frame::EndOfTurn(TurnMetrics::new(
            turn,
            Duration::from_secs(1),
            Instant::now(),
        )))
        .await
        .unwrap();
    let mut metrics = None;
    while let Some(frame) = running.output().recv().await {
        if let Frame::EndOfTurn(m) = frame {
            metrics = Some(m);
            break;
        }
    }
    let metrics = metrics.expect("end of turn arrives");
    let names: Vec<_> = metrics.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(names, ["first", "replier", "last"]);
    let replier = metrics.stage("replier").unwrap();
    let ttfo = replier
        .time_to_first_output
        .expect("replier produced output");
    assert!(ttfo >= Duration::from_millis(30), "{ttfo:?}");
    assert!(
        replier.busy >= Duration::from_millis(30),
        "{:?}",
        replier.busy
    );
    let json = serde_json::to_value(&metrics).unwrap();
    assert!(json["stages"][1]["time_to_first_output"].as_f64().unwrap() >= 30.0);
    running.shutdown(Duration::from_secs(1)).await;
}
