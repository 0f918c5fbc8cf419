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

use crate::support;

use std::sync::Arc;

use parlor::frame::AudioChunk;
use parlor::server::calls::CallLimits;
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// Run the peer in `mode` against a fresh voice server; its JSON report and
/// the reply audio it received (24 kHz).
async fn run_peer(mode: &str) -> (Value, AudioChunk) {
    run_peer_saying(
        mode,
        &support::root().join("models/speech/samples/question.wav"),
    )
    .await
}

/// [`run_peer`] with the caller saying `wav`.
async fn run_peer_saying(mode: &str, wav: &std::path::Path) -> (Value, AudioChunk) {
    let server = support::VoiceServer::start(CallLimits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let pcm = dir.path().join("reply.pcm");
    let output = tokio::process::Command::new(support::python())
        .arg(support::root().join("tests/peers/openai_realtime_client.py"))
        .arg(mode)
        .arg(format!("ws://{}/v1", server.addr))
        .arg(wav)
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

/// `text` said by espeak-ng into a WAV file in `dir`.
fn espeak_wav(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let wav = dir.join("said.wav");
    let status = std::process::Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is installed");
    assert!(status.success());
    wav
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_function_tool_is_called_and_its_output_is_spoken() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let wav = espeak_wav(dir.path(), "When is your store in Lisbon open?");
    let (report, audio) = run_peer_saying("tool", &wav).await;

    assert!(
        report["invalid"].as_array().unwrap().is_empty(),
        "events the official types reject: {:#}",
        report["invalid"]
    );
    assert!(
        report["errors"].as_array().unwrap().is_empty(),
        "{:#}",
        report["errors"]
    );
    assert_eq!(report["updated_tools"][0], "get_store_hours");
    // The planner offered only the client's tool and called it.
    let call = &report["calls"][0];
    assert_eq!(call["name"], "get_store_hours", "{report:#}");
    assert!(
        call["arguments"]["city"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase()
            .contains("lisbon"),
        "{call}"
    );
    assert_eq!(report["call_response_status"], "completed");
    assert_eq!(report["output_answers"][0], "conversation.item.added");

    // The function call's events, then the spoken answer's, in order.
    let seen = strings(&report["seen"]);
    let order = [
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.done",
        "response.done",
    ];
    let mut from = 0;
    for kind in order {
        let at = seen[from..]
            .iter()
            .position(|s| *s == kind)
            .unwrap_or_else(|| panic!("{kind} after {:?} in {seen:?}", seen.get(from)));
        from += at + 1;
    }
    assert_eq!(report["status"], "completed");

    // The client's fact reached the answer, in words and in audio.
    let facts = ["midnight", "12", "twelve", "8", "eight"];
    let reply = report["reply_transcript"].as_str().unwrap_or_default();
    assert!(support::mentions_any(reply, &facts), "{reply:?}");
    let heard = support::hear(&audio);
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, &facts),
        "heard {heard:?} for {reply:?}"
    );
}

/// A `function_call_output` for a call nobody made gets an `error` event
/// naming `item.call_id`, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_for_an_unknown_call_is_an_error_and_the_session_goes_on() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let _one = ONE_AT_A_TIME.lock().await;
    let server = support::VoiceServer::start(CallLimits::default()).await;
    let url = format!("ws://{}/v1/realtime?model=gpt-realtime", server.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let created = loop {
        if let Message::Text(text) = socket.next().await.expect("open").expect("a message") {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    assert_eq!(created["type"], "session.created");
    let send = |value: Value| Message::Text(value.to_string().into());
    let tools = serde_json::json!({"type": "session.update", "session": {
        "type": "realtime",
        "tools": [{"type": "function", "name": "get_store_hours",
                   "parameters": {"type": "object", "properties": {}}}]}});
    socket.send(send(tools)).await.unwrap();
    socket
        .send(send(serde_json::json!({
            "type": "conversation.item.create", "event_id": "out_1",
            "item": {"type": "function_call_output", "call_id": "call_nobody", "output": "x"}})))
        .await
        .unwrap();
    socket
        .send(send(
            serde_json::json!({"type": "response.create", "event_id": "create_1"}),
        ))
        .await
        .unwrap();
    let bad_tool = serde_json::json!({"type": "session.update", "event_id": "upd_2",
        "session": {"type": "realtime", "tools": [{"type": "mcp", "name": "x"}]}});
    socket.send(send(bad_tool)).await.unwrap();
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let message = socket.next().await.expect("open").expect("a message");
        if let Message::Text(text) = message {
            answers.push(serde_json::from_str::<Value>(&text).unwrap());
        }
    }
    eprintln!("{answers:#?}");
    assert_eq!(answers[0]["type"], "session.updated");
    assert_eq!(answers[0]["session"]["tools"][0]["name"], "get_store_hours");
    let unknown = &answers[1];
    assert_eq!(unknown["type"], "error");
    assert_eq!(unknown["error"]["type"], "invalid_request_error");
    assert_eq!(unknown["error"]["param"], "item.call_id");
    assert_eq!(unknown["error"]["event_id"], "out_1");
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call_nobody"),
        "{unknown}"
    );
    // Nothing waits for an output: response.create starts nothing.
    assert_eq!(answers[2]["type"], "error");
    assert_eq!(answers[2]["error"]["event_id"], "create_1");
    // The session still reads: a non-function tool is refused by name.
    assert_eq!(answers[3]["type"], "error");
    assert_eq!(answers[3]["error"]["param"], "session.tools");
    assert_eq!(answers[3]["error"]["event_id"], "upd_2");
    server.stop.cancel();
}

/// What a Realtime session that says `wav` saw: every server event, in
/// order, until the response of its turn is done.
///
/// The caller is a plain WebSocket client: `wav` at real-time pace as 24 kHz
/// `input_audio_buffer.append` events, then silence (an open microphone);
/// every `parlor.tool.confirm` question is answered with `approved`.
async fn realtime_turn_answering(
    addr: std::net::SocketAddr,
    wav: &std::path::Path,
    approved: bool,
) -> Vec<Value> {
    use base64::Engine;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let said = parlor::audio::decode_file(wav, &parlor::audio::DecodeLimits::default()).unwrap();
    let said = parlor::audio::resample(&said.samples, said.sample_rate, 24_000).unwrap();
    let frame = 24_000 / 50; // 20 ms
    let speech_frames = said.len().div_ceil(frame);
    let mut frames = said
        .chunks(frame)
        .map(<[f32]>::to_vec)
        .collect::<Vec<_>>()
        .into_iter()
        .chain(std::iter::repeat(vec![0.0; frame]));
    let mut sent = 0;

    let url = format!("ws://{addr}/v1/realtime?model=gpt-realtime");
    let (socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut sink, mut stream) = socket.split();
    let json = |value: Value| Message::Text(value.to_string().into());
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    let mut events = Vec::new();
    let give_up = tokio::time::sleep(std::time::Duration::from_secs(240));
    tokio::pin!(give_up);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let pcm = parlor::audio::pcm16_le_bytes(&frames.next().unwrap());
                let audio = base64::engine::general_purpose::STANDARD.encode(pcm);
                let append = serde_json::json!({"type": "input_audio_buffer.append", "audio": audio});
                sink.send(json(append)).await.expect("the session reads");
                sent += 1;
            }
            message = stream.next() => {
                let Some(Ok(message)) = message else {
                    panic!("the session ended early: {events:#?}")
                };
                let Message::Text(text) = message else { continue };
                let event: Value = serde_json::from_str(&text).unwrap();
                if event["type"] != "response.output_audio.delta" {
                    eprintln!("{event}");
                }
                if event["type"] == "parlor.tool.confirm" {
                    let answer = serde_json::json!({
                        "type": "parlor.tool.confirm", "id": event["id"], "approved": approved});
                    sink.send(json(answer)).await.expect("the session reads");
                }
                let done = event["type"] == "response.done";
                events.push(event);
                // The turn that asked is over, or every turn heard is
                // answered and nothing was asked (the caller is done).
                let count = |kind: &str| events.iter().filter(|e| e["type"] == kind).count();
                let asked = count("parlor.tool.confirm") > 0;
                let all_answered = sent >= speech_frames
                    && count("response.done") >= count("input_audio_buffer.speech_started");
                if done && (asked || all_answered) {
                    break;
                }
            }
            () = &mut give_up => panic!("no response.done within 4 minutes: {events:#?}"),
        }
    }
    let _ = sink.close().await;
    events
}

/// The order's status in the orders database at `db`.
fn order_status(db: &std::path::Path, order: i64) -> String {
    let db = rusqlite::Connection::open(db).unwrap();
    db.query_row("SELECT status FROM orders WHERE id = ?1", [order], |row| {
        row.get(0)
    })
    .unwrap()
}

/// A sensitive tool of the pipeline's (cancel_order, with untrusted text
/// in the context) asks the Realtime client with `parlor.tool.confirm`:
/// approved, it runs and the audit log says the caller confirmed it;
/// declined, it does not run and the audit log says the caller declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_tool_runs_only_when_the_realtime_client_approves() {
    let _one = ONE_AT_A_TIME.lock().await;
    let said = tempfile::tempdir().unwrap();
    let wav = espeak_wav(said.path(), "Please cancel order 1043. I changed my mind.");
    for approved in [true, false] {
        // Under the suite's log directory: the secrets check reads its
        // audit log.
        let dir = support::log_dir(&format!("realtime_route-confirm-{approved}"));
        let server =
            support::VoiceServer::start_with(support::sensitive_spec(&dir), CallLimits::default())
                .await;
        let events = realtime_turn_answering(server.addr, &wav, approved).await;
        server.stop.cancel();
        drop(server.state);
        if let Ok(pipeline) = Arc::try_unwrap(server.pipeline) {
            pipeline.shutdown().await;
        }

        let asked = events
            .iter()
            .find(|e| e["type"] == "parlor.tool.confirm")
            .unwrap_or_else(|| {
                panic!("the planner did not try to cancel, so nothing was asked: {events:#?}")
            });
        assert_eq!(asked["tool"], "orders__cancel_order", "{asked}");
        assert_eq!(asked["server"], "orders", "{asked}");
        assert_eq!(asked["arguments"]["order_id"], 1043, "{asked}");
        assert!(asked["timeout_ms"].as_u64().unwrap() > 0, "{asked}");
        let done = events.last().unwrap();
        assert_eq!(done["response"]["status"], "completed", "{done}");
        assert!(
            !events.iter().any(|e| e["type"] == "error"),
            "the answer was taken: {events:#?}"
        );

        let cancels = support::audited(&dir, "cancel_order");
        let status = order_status(&dir.join("orders.db"), 1043);
        if approved {
            let ran = cancels
                .iter()
                .find(|r| r["decision"] == "allowed")
                .unwrap_or_else(|| panic!("the approved cancel did not run: {cancels:?}"));
            assert_eq!(ran["reason"], "confirmed by the caller", "{ran}");
            assert_eq!(status, "cancelled");
        } else {
            assert!(!cancels.is_empty(), "the refusal is audited");
            assert!(
                cancels.iter().all(|r| r["decision"] == "denied"),
                "no cancel ran: {cancels:?}"
            );
            assert!(
                cancels[0]["reason"].as_str().unwrap().contains("declined"),
                "{cancels:?}"
            );
            assert_eq!(status, "processing");
        }
    }
}
