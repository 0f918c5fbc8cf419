//! `GET /v1/realtime` with the official `openai` Python package's realtime
//! client (tests/peers/openai_realtime_client.py) against parlor's own
//! pipeline with the real models: a spoken question streamed at real-time
//! pace is transcribed and answered aloud (Whisper hears the fact in the
//! reply audio); bad events get `error` events and the session goes on; an
//! event type parlor ignores gets no answer; `response.cancel` cancels the
//! reply and `conversation.item.truncate` is acknowledged. Every server
//! event is validated by the package's own pydantic types.
//!
//! Needs `bash models/setup.sh` (models, and the venv with `openai` and
//! `websockets`). One test at a time (two cores).

mod support;

use std::sync::Arc;

use parlor::frame::AudioChunk;
use parlor::server::calls::CallLimits;
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Run the peer in `mode` against a fresh voice server; its JSON report and
/// the reply audio it received (24 kHz).
async fn run_peer(mode: &str) -> (Value, AudioChunk) {
    let server = support::VoiceServer::start(CallLimits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let pcm = dir.path().join("reply.pcm");
    let output = tokio::process::Command::new(support::python())
        .arg(support::root().join("tests/peers/openai_realtime_client.py"))
        .arg(mode)
        .arg(format!("ws://{}/v1", server.addr))
        .arg(support::root().join("models/speech/samples/question.wav"))
        .arg(&pcm)
        .output()
        .await
        .expect("run the peer");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "peer failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "peer output {e}: {:?}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    eprintln!("{report:#}");
    let bytes = std::fs::read(&pcm).unwrap();
    let mut samples = Vec::new();
    parlor::audio::pcm16_le_samples(&bytes, &mut samples).unwrap();
    server.stop.cancel();
    drop(server.state);
    if let Ok(pipeline) = Arc::try_unwrap(server.pipeline) {
        pipeline.shutdown().await;
    }
    (report, AudioChunk::new(24_000, samples))
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_asks_a_spoken_question_and_hears_the_answer() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (report, audio) = run_peer("ask").await;

    assert_eq!(report["created_session_type"], "realtime");
    assert_eq!(report["updated"], "session.updated");
    assert!(
        report["invalid"].as_array().unwrap().is_empty(),
        "events the official types reject: {:#}",
        report["invalid"]
    );
    // The malformed event and the one missing `audio` were answered, with
    // the client's event_id echoed; the ignored type got no answer.
    let bad = &report["bad_answers"];
    assert_eq!(bad[0]["type"], "invalid_request_error");
    assert!(
        bad[0]["message"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{bad}"
    );
    assert_eq!(bad[1]["event_id"], "bad_1");
    assert!(
        bad[1]["message"].as_str().unwrap().contains("audio"),
        "{bad}"
    );
    assert_eq!(
        report["errors"].as_array().unwrap().len(),
        2,
        "only the two bad events got errors: {:#}",
        report["errors"]
    );

    // The turn, in the protocol's order.
    let seen = strings(&report["seen"]);
    let order = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ];
    let mut from = 0;
    for kind in order {
        let at = seen[from..]
            .iter()
            .position(|s| *s == kind)
            .unwrap_or_else(|| panic!("{kind} after {:?} in {seen:?}", seen.get(from)));
        from += at;
    }
    assert_eq!(report["status"], "completed");

    let transcript = report["transcript"].as_str().unwrap_or_default();
    assert!(
        transcript.to_lowercase().contains("order"),
        "{transcript:?}"
    );
    let reply = report["reply_transcript"].as_str().unwrap_or_default();
    assert!(
        support::mentions_any(reply, support::ORDER_1042_FACTS),
        "{reply:?}"
    );
    let heard = support::hear(&audio);
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, support::ORDER_1042_FACTS),
        "heard {heard:?} for {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_cancel_cancels_the_reply_and_truncate_is_acknowledged() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (report, _) = run_peer("cancel").await;
    assert!(
        report["invalid"].as_array().unwrap().is_empty(),
        "{:#}",
        report["invalid"]
    );
    assert_eq!(report["status"], "cancelled", "{report:#}");
    assert_eq!(report["reason"], "client_cancelled");
    assert_eq!(report["truncate_answer"], "conversation.item.truncated");
}
