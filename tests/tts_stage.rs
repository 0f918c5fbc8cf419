//! The tts stage with real voices: streamed reply text becomes audio a
//! piece at a time, at the spec's rate; barge-in stops it mid-reply; a
//! voice that fails costs its piece, not the call.
//!
//! espeak-ng is the voice here (fast, no model file); Piper is covered by
//! tests/tts.rs and the whole chain by tests/voice_turns.rs.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor::frame::{Frame, TurnId, TurnMetrics};
use parlor::runner::{Pipeline, RunningPipeline};
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::openai::OpenAiVoice;
use parlor::stages::tts::{TtsStage, Voice};

fn start(voice: Arc<dyn Voice>, rate: u32, barge_in: bool) -> RunningPipeline {
    Pipeline::new(NonZeroUsize::new(8).unwrap())
        .barge_in(barge_in)
        .stage(Box::new(TtsStage::new(voice, rate)))
        .start()
}

fn espeak() -> Arc<dyn Voice> {
    Arc::new(EspeakVoice::new("en-us", 1.0).expect("espeak-ng is installed"))
}

async fn say(running: &RunningPipeline, turn: TurnId, pieces: &[&str]) {
    let input = running.input().unwrap();
    for text in pieces {
        input
            .send(Frame::ReplyDelta {
                turn,
                text: text.to_string(),
            })
            .await
            .unwrap();
    }
}

async fn end(running: &RunningPipeline, turn: TurnId) {
    let metrics = TurnMetrics::new(turn, Duration::from_secs(1), Instant::now());
    running
        .input()
        .unwrap()
        .send(Frame::EndOfTurn(metrics))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_reply_is_spoken_piece_by_piece_at_the_output_rate() {
    let mut running = start(espeak(), 16_000, false);
    let turn = running.turns().begin();
    say(
        &running,
        turn,
        &[
            "Your order 1042",
            " shipped on Monday,",
            " and it arrives",
            " on Friday. Thanks!",
        ],
    )
    .await;
    end(&running, turn).await;
    running.close_input();

    let mut frames = Vec::new();
    while let Some(frame) = running.output().recv().await {
        frames.push(frame);
    }
    let kinds: Vec<&str> = frames.iter().map(Frame::kind).collect();
    assert_eq!(kinds.last(), Some(&"end_of_turn"), "{kinds:?}");
    // The text passes on for display, all of it, before the end of turn.
    let shown: String = frames
        .iter()
        .filter_map(|f| match f {
            Frame::ReplyDelta { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        shown,
        "Your order 1042 shipped on Monday, and it arrives on Friday. Thanks!"
    );
    // Spoken in three pieces: the first clause, then sentence by sentence.
    let pieces: Vec<&str> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::ReplyAudio { text: Some(t), .. } => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        pieces,
        [
            "Your order 1042 shipped on Monday,",
            "and it arrives on Friday.",
            "Thanks!"
        ]
    );
    let mut total = 0;
    for frame in &frames {
        if let Frame::ReplyAudio { audio, turn: t, .. } = frame {
            assert_eq!(audio.sample_rate, 16_000);
            assert_eq!(*t, turn);
            total += audio.samples.len();
        }
    }
    assert!(total > 16_000 * 2, "{total} samples is under two seconds");
    // The first piece was spoken before the reply was complete: the tts
    // stage's first output came from its first input, not its last.
    let Some(Frame::EndOfTurn(metrics)) = frames.last() else {
        unreachable!()
    };
    let timing = metrics.stage("tts").unwrap();
    assert!(timing.time_to_first_output.is_some(), "{metrics:?}");
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_old_reply_and_the_next_turn_is_spoken() {
    let mut running = start(espeak(), 24_000, true);
    let first = running.turns().begin();
    let long: Vec<String> = (1..=12)
        .map(|i| format!("This is sentence number {i} of a long answer. "))
        .collect();
    // Fed from its own task: the stage blocks on its full output until the
    // loop below reads it.
    let input = running.input_handle();
    let feeder = tokio::spawn(async move {
        for text in long {
            let _ = input.send(Frame::ReplyDelta { turn: first, text }).await;
        }
        let metrics = TurnMetrics::new(first, Duration::from_secs(1), Instant::now());
        let _ = input.send(Frame::EndOfTurn(metrics)).await;
    });

    // Wait for the first audio of the first reply, then the caller speaks.
    loop {
        let frame = running.output().recv().await.expect("audio comes");
        if matches!(frame, Frame::ReplyAudio { .. }) {
            break;
        }
    }
    let second = running.turns().begin(); // cancels the first turn
    assert!(!running.turns().is_live(first));
    let input = running.input_handle();
    let feeder = tokio::spawn(async move {
        feeder.await.unwrap();
        let _ = input
            .send(Frame::ReplyDelta {
                turn: second,
                text: "Yes, it is.".into(),
            })
            .await;
        let metrics = TurnMetrics::new(second, Duration::from_secs(1), Instant::now());
        let _ = input.send(Frame::EndOfTurn(metrics)).await;
    });
    running.close_input();

    let mut first_audio_after = 0;
    let mut second_pieces = Vec::new();
    while let Some(frame) = running.output().recv().await {
        match frame {
            Frame::ReplyAudio { turn, text, .. } if turn == first => {
                first_audio_after += 1;
                let _ = text;
            }
            Frame::ReplyAudio {
                turn,
                text: Some(t),
                ..
            } if turn == second => second_pieces.push(t),
            _ => {}
        }
    }
    // At most what was already queued in the channel (8 frames) of the old
    // reply gets out; its eleven other sentences are never spoken.
    assert!(
        first_audio_after <= 8,
        "{first_audio_after} frames of the cancelled reply"
    );
    assert_eq!(second_pieces, ["Yes, it is."]);
    feeder.await.unwrap();
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_voice_costs_its_piece_not_the_call() {
    // A real client against a port nothing listens on.
    let down: Arc<dyn Voice> =
        Arc::new(OpenAiVoice::new("http://127.0.0.1:9/v1", "tts-1", "alloy"));
    let mut running = start(down, 24_000, false);
    let turn = running.turns().begin();
    say(&running, turn, &["Hello there."]).await;
    end(&running, turn).await;
    running.close_input();
    let mut errors = Vec::new();
    let mut ended = false;
    while let Some(frame) = running.output().recv().await {
        match frame {
            Frame::TurnError { stage, message, .. } => errors.push(format!("{stage}: {message}")),
            Frame::EndOfTurn(_) => ended = true,
            Frame::ReplyAudio { .. } => panic!("no audio can come from a server that is down"),
            _ => {}
        }
    }
    assert!(ended, "the turn still ends");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("tts: could not speak \"Hello there.\""),
        "{errors:?}"
    );
    running
        .join(Duration::from_secs(5))
        .await
        .into_result()
        .unwrap();
}
