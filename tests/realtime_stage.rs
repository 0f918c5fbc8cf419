//! The realtime stage (`kind = "realtime"`): a pipeline whose one stage is
//! a Realtime protocol client, used through the same live-call WebSocket as
//! the chained pipeline.
//!
//! - Against parlor's own `GET /v1/realtime` (the local chained pipeline
//!   behind the protocol, real models): a spoken question is answered
//!   aloud, the tool call made by the stage through its own MCP servers.
//! - Through a relay to that route: talking over the reply cancels it
//!   there and truncates it at what the caller heard.
//! - Against a scripted server, for what a real one cannot be made to do
//!   on demand: talking over the reply (the stage cancels and truncates at
//!   what the caller heard), events parlor does not know or cannot read
//!   (ignored), and the connection dropping mid-reply (the turn ends with a
//!   clear error, and the call reconnects and goes on).
//!
//! Needs `bash models/setup.sh`. One test at a time (two cores).

use crate::support;

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use parlor::live::client::{self, Incoming, PlayOptions};
use parlor::live::ServerEvent;
use parlor::server::calls::CallLimits;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::Message;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// The shipped `pipelines/local-realtime.toml`, pointed at `url`, with its
/// own orders database (the server creates it with the demo data) and an
/// audit log in `dir`.
fn realtime_spec(url: &str, dir: &std::path::Path) -> parlor::spec::PipelineSpec {
    let root = support::root();
    let path = root.join("pipelines/local-realtime.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let shipped_url = "ws://127.0.0.1:8080/v1/realtime";
    assert!(text.contains(shipped_url) && text.contains(support::ORDERS_DB));
    let text = format!(
        "{}\n[audit]\npath = {:?}\n",
        text.replace(shipped_url, url).replace(
            support::ORDERS_DB,
            &dir.join("orders.db").display().to_string()
        ),
        dir.join("audit.jsonl").display().to_string()
    );
    parlor::spec::PipelineSpec::parse(&text, &path, root).expect("the realtime spec")
}

async fn shutdown(server: support::VoiceServer) {
    server.stop.cancel();
    drop(server.state);
    if let Ok(pipeline) = Arc::try_unwrap(server.pipeline) {
        pipeline.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_through_parlors_own_realtime_route_is_answered_with_the_stages_tools() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The model side: parlor's local chained pipeline behind /v1/realtime.
    let backend = support::VoiceServer::start(CallLimits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("ws://{}/v1/realtime", backend.addr);
    let front =
        support::VoiceServer::start_with(realtime_spec(&url, dir.path()), CallLimits::default())
            .await;

    let question = support::root().join("models/speech/samples/question.wav");
    let audio = parlor::audio::decode_file(&question, &Default::default()).unwrap();
    let recording = client::play_file(
        &format!("ws://{}/v1/calls", front.addr),
        &audio,
        &PlayOptions::default(),
        |e| eprintln!("{e:?}"),
    )
    .await
    .expect("the call runs");
    let events = &recording.events;

    // What the caller said, as the backend's Whisper heard it.
    let transcript = events.iter().find_map(|e| match e {
        ServerEvent::Transcript {
            text,
            is_final: true,
            ..
        } => Some(text.to_lowercase()),
        _ => None,
    });
    assert!(
        transcript.as_deref().unwrap_or_default().contains("order"),
        "{transcript:?}"
    );
    // The backend's planner called the function the stage offered; the
    // stage ran it on its own orders server, and its audit log says so.
    let tool = events.iter().find_map(|e| match e {
        ServerEvent::ToolCall {
            server,
            tool,
            arguments,
            is_error,
            ..
        } => Some((server.clone(), tool.clone(), arguments.clone(), *is_error)),
        _ => None,
    });
    let (server_name, tool, arguments, is_error) = tool.expect("a tool call through the stage");
    assert_eq!(
        (server_name.as_str(), tool.as_str()),
        ("orders", "get_order")
    );
    assert_eq!(arguments["order_id"].as_i64(), Some(1042));
    assert!(!is_error);
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.lines().any(|l| l.contains("\"get_order\"")),
        "the stage's own audit log has the call: {audit}"
    );
    let done = events.iter().find_map(|e| match e {
        ServerEvent::TurnDone {
            reply,
            voice_to_voice_ms,
            ..
        } => Some((reply.clone(), *voice_to_voice_ms)),
        _ => None,
    });
    let (reply, v2v) = done.expect("turn.done");
    assert!(
        support::mentions_any(&reply, support::ORDER_1042_FACTS),
        "{reply}"
    );
    assert!(v2v.is_some_and(|ms| ms > 0.0), "{v2v:?}");
    eprintln!("voice to voice through the realtime stage: {v2v:?} ms");
    let heard = support::hear(&recording.audio_chunk());
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, support::ORDER_1042_FACTS),
        "heard {heard:?} for {reply:?}"
    );
    shutdown(front).await;
    shutdown(backend).await;
}

/// One event that crossed the relay: who sent it and what it said (a
/// summary: the audio is left out).
#[derive(Debug, Clone)]
struct Relayed {
    from_client: bool,
    kind: String,
    event: Value,
}

/// A WebSocket relay between the realtime stage and a real `/v1/realtime`
/// (`upstream`), keeping a log of the text events each way: it sees what
/// the stage and the route said to each other without changing a byte.
async fn recording_relay(upstream: String, log: Arc<StdMutex<Vec<Relayed>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (upstream, log) = (upstream.clone(), log.clone());
            tokio::spawn(async move {
                let client = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let (server, _) = tokio_tungstenite::connect_async(upstream.as_str())
                    .await
                    .unwrap();
                let (mut to_client, mut from_client) = client.split();
                let (mut to_server, mut from_server) = server.split();
                let note = |from_client: bool, message: &Message| {
                    let Message::Text(text) = message else {
                        return;
                    };
                    let Ok(mut event) = serde_json::from_str::<Value>(text) else {
                        return;
                    };
                    for big in ["audio", "delta"] {
                        if event.get(big).is_some() {
                            event[big] = json!("…");
                        }
                    }
                    let kind = event["type"].as_str().unwrap_or_default().to_string();
                    log.lock().unwrap().push(Relayed {
                        from_client,
                        kind,
                        event,
                    });
                };
                let up = async {
                    while let Some(Ok(message)) = from_client.next().await {
                        note(true, &message);
                        if to_server.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async {
                    while let Some(Ok(message)) = from_server.next().await {
                        note(false, &message);
                        if to_client.send(message).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::select! { () = up => {}, () = down => {} }
            });
        }
    });
    format!("ws://{addr}/v1/realtime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talking_over_a_reply_from_parlors_own_route_cancels_it_and_truncates_it_there() {
    let _one = ONE_AT_A_TIME.lock().await;
    let backend = support::VoiceServer::start(CallLimits::default()).await;
    let log: Arc<StdMutex<Vec<Relayed>>> = Arc::default();
    let relay = recording_relay(format!("ws://{}/v1/realtime", backend.addr), log.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let front =
        support::VoiceServer::start_with(realtime_spec(&relay, dir.path()), CallLimits::default())
            .await;

    // The caller asks, lets the reply play half a second, then talks over
    // it (the bench's barge-in measurement, a real caller's timing).
    let question = support::root().join("models/speech/samples/question.wav");
    let audio = parlor::audio::decode_file(&question, &Default::default()).unwrap();
    let sample =
        parlor::bench::barge::measure(&format!("ws://{}/v1/calls", front.addr), &audio).await;
    assert_eq!(
        sample.outcome,
        parlor::bench::barge::Outcome::Reacted,
        "the reply stopped for the caller: {sample:?}"
    );

    // The stage told the route what the caller heard, and the route took it.
    let truncated = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if log
                .lock()
                .unwrap()
                .iter()
                .any(|r| !r.from_client && r.kind == "conversation.item.truncated")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let log = log.lock().unwrap().clone();
    let summary: Vec<String> = log
        .iter()
        .map(|r| {
            let side = if r.from_client { "→" } else { "←" };
            match r.kind.as_str() {
                "error" => format!("{side} error: {}", r.event["error"]),
                "conversation.item.truncate" => format!("{side} truncate: {}", r.event),
                kind => format!("{side} {kind}"),
            }
        })
        .collect();
    assert!(
        truncated.is_ok(),
        "no conversation.item.truncated: {summary:#?}"
    );
    // The item cut where the caller stopped hearing (a later, unheard item
    // of the reply would be cut at 0).
    let truncate = log
        .iter()
        .find(|r| {
            r.from_client
                && r.kind == "conversation.item.truncate"
                && r.event["audio_end_ms"].as_u64() > Some(0)
        })
        .unwrap_or_else(|| panic!("the stage sent conversation.item.truncate: {summary:#?}"));
    let played = truncate.event["audio_end_ms"].as_u64().unwrap();
    // The item it cut is the reply the route was speaking.
    let item = truncate.event["item_id"].as_str().unwrap();
    assert!(
        log.iter().any(|r| !r.from_client
            && r.kind == "response.output_item.added"
            && r.event["item"]["id"] == item),
        "{item} is not an item of the route's: {summary:#?}"
    );
    // The reply that was talked over ended cancelled, not completed, and
    // no error answered the stage's cancel or truncate.
    // The reply talked over was cancelled there, unless the route had sent
    // all of it before it heard the caller (the rest was still playing at
    // the caller's end: the truncate is then all the route needs).
    let spoken_done = log
        .iter()
        .position(|r| {
            !r.from_client
                && r.kind == "response.done"
                && r.event["response"]["output"]
                    .as_array()
                    .is_some_and(|items| items.iter().any(|i| i["id"] == item))
        })
        .unwrap_or_else(|| panic!("the spoken reply ended: {summary:#?}"));
    let interrupted_at = log
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == "input_audio_buffer.speech_started")
        .nth(1)
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("the route heard the interruption: {summary:#?}"));
    let status = &log[spoken_done].event["response"]["status"];
    assert!(
        status == "cancelled" || (status == "completed" && spoken_done < interrupted_at),
        "{status} at {spoken_done}, interrupted at {interrupted_at}: {summary:#?}"
    );
    let errors: Vec<&Value> = log
        .iter()
        .filter(|r| !r.from_client && r.kind == "error")
        .map(|r| &r.event)
        .filter(|e| e["error"]["code"] != "response_cancel_not_active")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    eprintln!(
        "barge-in reaction {:?} ms, truncated at {played} ms",
        sample.reaction_ms
    );
    shutdown(front).await;
    shutdown(backend).await;
}

// ------------------------------------------------------- scripted server

/// Client events each connection received, by connection.
type Received = Arc<StdMutex<Vec<Vec<Value>>>>;

/// 24 kHz PCM of a tone, base64, as `response.output_audio.delta` carries.
fn tone(seconds: f64) -> String {
    let n = (24_000.0 * seconds) as usize;
    let samples: Vec<f32> = (0..n)
        .map(|i| 0.3 * (i as f32 * 440.0 * std::f32::consts::TAU / 24_000.0).sin())
        .collect();
    base64::engine::general_purpose::STANDARD.encode(parlor::audio::pcm16_le_bytes(&samples))
}

fn ev(kind: &str, mut fields: Value) -> Message {
    fields["type"] = json!(kind);
    fields["event_id"] = json!(format!("ev_{kind}"));
    Message::text(fields.to_string())
}

fn part(response: &str, item: &str) -> Value {
    json!({"response_id": response, "item_id": item, "output_index": 0, "content_index": 0})
}

fn with(mut base: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

/// A reply of `text` with `seconds` of audio, in the order a server sends
/// it; `done` ends the response.
fn reply(response: &str, item: &str, text: &str, seconds: f64, done: bool) -> Vec<Message> {
    let mut out = vec![
        ev(
            "response.created",
            json!({"response": {"id": response, "object": "realtime.response", "status": "in_progress", "output": []}}),
        ),
        ev(
            "response.output_item.added",
            json!({"response_id": response, "output_index": 0,
            "item": {"type": "message", "id": item, "role": "assistant", "content": []}}),
        ),
        ev(
            "response.output_audio_transcript.delta",
            with(part(response, item), json!({"delta": text})),
        ),
        ev(
            "response.output_audio.delta",
            with(part(response, item), json!({"delta": tone(seconds)})),
        ),
    ];
    if done {
        out.push(ev(
            "response.done",
            json!({"response": {"id": response, "object": "realtime.response", "status": "completed", "output": []}}),
        ));
    }
    out
}

fn user_turn(item: &str, start_ms: u64, transcript: &str) -> Vec<Message> {
    vec![
        ev(
            "input_audio_buffer.speech_started",
            json!({"audio_start_ms": start_ms, "item_id": item}),
        ),
        ev(
            "input_audio_buffer.speech_stopped",
            json!({"audio_end_ms": start_ms + 800, "item_id": item}),
        ),
        ev(
            "input_audio_buffer.committed",
            json!({"item_id": item, "previous_item_id": null}),
        ),
        ev(
            "conversation.item.input_audio_transcription.completed",
            json!({"item_id": item, "content_index": 0, "transcript": transcript,
                   "usage": {"type": "duration", "seconds": 0.8}}),
        ),
    ]
}

/// Wait until the stage sends a client event of `kind`.
async fn wait_for(kinds: &mut mpsc::UnboundedReceiver<String>, kind: &str) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(k) = kinds.recv().await {
            if k == kind {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {kind} from the stage");
}

/// Serve the script: connection 1 answers, is talked over, starts a second
/// reply and drops mid-way; connection 2 sends noise parlor must skip and
/// answers properly.
async fn scripted_server(received: Received) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for connection in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let (mut sink, mut stream) = ws.split();
            received.lock().unwrap().push(Vec::new());
            let (kinds_tx, mut kinds) = mpsc::unbounded_channel::<String>();
            let log = received.clone();
            let reader = tokio::spawn(async move {
                while let Some(Ok(Message::Text(text))) = stream.next().await {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    let kind = value["type"].as_str().unwrap_or("").to_string();
                    if kind != "input_audio_buffer.append" {
                        log.lock().unwrap()[connection].push(value);
                    }
                    let _ = kinds_tx.send(kind);
                }
            });
            wait_for(&mut kinds, "session.update").await;
            wait_for(&mut kinds, "input_audio_buffer.append").await;
            let mut script = Vec::new();
            if connection == 0 {
                script.extend(user_turn("item_u1", 100, "Hello there."));
                script.extend(reply(
                    "resp_1",
                    "item_a1",
                    "Hello, how can I help you today?",
                    3.0,
                    false,
                ));
                for m in script.drain(..) {
                    sink.send(m).await.unwrap();
                }
                // The caller talks over the reply a second in.
                tokio::time::sleep(Duration::from_millis(1000)).await;
                sink.send(ev(
                    "input_audio_buffer.speech_started",
                    json!({"audio_start_ms": 2500, "item_id": "item_u2"}),
                ))
                .await
                .unwrap();
                wait_for(&mut kinds, "conversation.item.truncate").await;
                sink.send(ev("response.done", json!({"response": {"id": "resp_1",
                    "status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"},
                    "output": []}}))).await.unwrap();
                for m in user_turn("item_u2", 2500, "Are you still there?")
                    .into_iter()
                    .skip(1)
                {
                    sink.send(m).await.unwrap();
                }
                for m in reply("resp_2", "item_a2", "Yes, I", 0.3, false) {
                    sink.send(m).await.unwrap();
                }
                // ...and the connection drops mid-reply.
                tokio::time::sleep(Duration::from_millis(300)).await;
                reader.abort();
                let _ = reader.await;
                drop(sink);
                continue;
            }
            script.push(Message::text(
                r#"{"type":"rate_limits.updated","event_id":"x","rate_limits":[]}"#,
            ));
            script.push(Message::text(
                r#"{"type":"response.output_audio.delta","event_id":"y"}"#,
            ));
            script.push(Message::text("this is not json"));
            script.extend(user_turn("item_u3", 100, "Hello again."));
            script.extend(reply("resp_3", "item_a3", "All good.", 0.5, true));
            for m in script {
                sink.send(m).await.unwrap();
            }
            // Keep the line open until the client leaves.
            while kinds.recv().await.is_some() {}
        }
    });
    format!("ws://{addr}/v1/realtime")
}

/// A caller on an open line (silence every 20 ms: the script decides what
/// was "said") who hangs up once turn `last` is done; every event of the
/// call, in order.
async fn open_line_until_turn(addr: std::net::SocketAddr, last: u64) -> Vec<ServerEvent> {
    let (mut tx, mut rx) = client::connect(&format!("ws://{addr}/v1/calls"))
        .await
        .unwrap();
    let (hang_up, mut told) = mpsc::channel::<()>(1);
    let mic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let silence = vec![0.0f32; 320];
        while told.try_recv().is_err() {
            tick.tick().await;
            if tx.audio(&silence).await.is_err() {
                return;
            }
        }
        let _ = tx.end().await;
    });
    let mut events = Vec::new();
    let mut asked_to_hang_up = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let incoming = tokio::time::timeout_at(deadline, rx.next())
            .await
            .unwrap_or_else(|_| panic!("the call stalled: {events:#?}"))
            .expect("a healthy socket");
        match incoming {
            None | Some(Incoming::Closed { .. }) => break,
            Some(Incoming::Audio(_)) => {}
            Some(Incoming::Event(event)) => {
                eprintln!("{event:?}");
                if matches!(event, ServerEvent::TurnDone { turn, .. } if turn == last)
                    && !asked_to_hang_up
                {
                    asked_to_hang_up = true;
                    let _ = hang_up.send(()).await;
                }
                events.push(event);
            }
        }
    }
    mic.await.unwrap();
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talked_over_and_dropped_mid_reply_the_stage_truncates_reports_and_reconnects() {
    let _one = ONE_AT_A_TIME.lock().await;
    let received: Received = Arc::default();
    let url = scripted_server(received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let front =
        support::VoiceServer::start_with(realtime_spec(&url, dir.path()), CallLimits::default())
            .await;

    let events = open_line_until_turn(front.addr, 3).await;

    // Turn 1 was cut short by the caller, and told so.
    let (played_ms, heard) = events
        .iter()
        .find_map(|e| match e {
            ServerEvent::BargeIn {
                turn: 1,
                played_ms,
                heard,
            } => Some((*played_ms, heard.clone())),
            _ => None,
        })
        .expect("a barge-in on turn 1");
    assert!(played_ms > 0 && played_ms < 3000, "{played_ms}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            ServerEvent::TurnDone {
                turn: 1,
                interrupted: true,
                ..
            }
        )),
        "{events:#?}"
    );
    // The stage told the server to stop and where the caller stopped
    // hearing: the audio played, not the audio sent.
    let first: Vec<Value> = received.lock().unwrap()[0].clone();
    assert!(
        first.iter().any(|e| e["type"] == "response.cancel"),
        "{first:#?}"
    );
    let truncate = first
        .iter()
        .find(|e| e["type"] == "conversation.item.truncate")
        .expect("a truncation");
    assert_eq!(truncate["item_id"], "item_a1");
    let at = truncate["audio_end_ms"].as_u64().unwrap();
    assert!(
        at.abs_diff(played_ms) <= 100,
        "truncated at {at} ms, played {played_ms} ms"
    );
    eprintln!("heard before the barge-in: {heard:?}");
    // Turn 2's connection dropped mid-reply: a clear error, and the turn
    // still ended.
    let error = events.iter().find_map(|e| match e {
        ServerEvent::TurnError {
            turn: 2,
            stage,
            message,
        } => Some((stage.clone(), message.clone())),
        _ => None,
    });
    let (stage, message) = error.expect("turn 2 failed visibly");
    assert_eq!(stage, "realtime");
    assert!(message.contains("the connection mid-turn"), "{message}");
    assert!(events
        .iter()
        .any(|e| matches!(e, ServerEvent::TurnDone { turn: 2, .. })));
    // The call went on over a new connection, which opened its own session;
    // the noise before its turn was skipped.
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "one reconnection");
    assert_eq!(received[1][0]["type"], "session.update");
    let third = events.iter().find_map(|e| match e {
        ServerEvent::TurnDone {
            turn: 3,
            transcript,
            reply,
            voice_to_voice_ms,
            ..
        } => Some((transcript.clone(), reply.clone(), *voice_to_voice_ms)),
        _ => None,
    });
    let (transcript, reply, v2v) = third.expect("turn 3 answered");
    assert_eq!(transcript, "Hello again.");
    assert_eq!(reply, "All good.");
    assert!(
        v2v.is_some(),
        "voice-to-voice is measured through the stage"
    );
    shutdown(front).await;
}

/// A realtime pipeline on the Python peer MCP server (`grow` adds a tool
/// and announces `list_changed`), against the script at `url`.
fn growing_spec(url: &str) -> parlor::spec::PipelineSpec {
    let python = support::python();
    let script = support::root().join("tests/peers/py_mcp_server.py");
    let text = format!(
        r#"name = "realtime-growing"
[[stage]]
kind = "realtime"
url = "{url}"
model = "scripted"
mcp = ["py"]

[mcp.py]
transport = "stdio"
command = {python:?}
args = [{script:?}]

[trust]
allow = [{{ command = {python:?}, args = [{script:?}] }}]
"#
    );
    let root = support::root();
    parlor::spec::PipelineSpec::parse(&text, &root.join("pipelines/growing.toml"), root)
        .expect("the growing spec")
}

/// Names of the tools a `session.update` offers.
fn offered(update: &Value) -> Vec<String> {
    update["session"]["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .map(|t| t["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_a_server_adds_mid_call_is_offered_to_the_session_from_the_next_turn() {
    let _one = ONE_AT_A_TIME.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/realtime", listener.local_addr().unwrap());
    let received: Arc<StdMutex<Vec<Value>>> = Arc::default();
    let log = received.clone();
    let seen = received.clone();
    // The script: turn 1's model calls `py__grow`, which adds `fresh`; turn
    // 2 begins, and the stage should tell the session before it answers.
    let script = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let (kinds_tx, mut kinds) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(text))) = stream.next().await {
                let value: Value = serde_json::from_str(&text).unwrap();
                let kind = value["type"].as_str().unwrap_or("").to_string();
                if kind != "input_audio_buffer.append" {
                    log.lock().unwrap().push(value);
                }
                let _ = kinds_tx.send(kind);
            }
        });
        wait_for(&mut kinds, "session.update").await;
        wait_for(&mut kinds, "input_audio_buffer.append").await;
        let mut script = user_turn("item_u1", 100, "Grow a tool.");
        script.push(ev(
            "response.created",
            json!({"response": {"id": "resp_1", "object": "realtime.response", "status": "in_progress", "output": []}}),
        ));
        script.push(ev(
            "response.function_call_arguments.done",
            json!({"response_id": "resp_1", "item_id": "item_f1", "output_index": 0,
                   "call_id": "call_1", "name": "py__grow", "arguments": "{\"name\":\"fresh\"}"}),
        ));
        script.push(ev(
            "response.done",
            json!({"response": {"id": "resp_1", "object": "realtime.response", "status": "completed", "output": []}}),
        ));
        for m in script {
            sink.send(m).await.unwrap();
        }
        wait_for(&mut kinds, "response.create").await;
        for m in reply("resp_2", "item_a2", "Done.", 0.3, true) {
            sink.send(m).await.unwrap();
        }
        for m in user_turn("item_u2", 3000, "Use it.") {
            sink.send(m).await.unwrap();
        }
        // Counted in the log, not waited for in the stream: an update that
        // came early must not be missed.
        let updates = || {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| e["type"] == "session.update")
                .count()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while updates() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for m in reply("resp_3", "item_a3", "Used.", 0.3, true) {
            sink.send(m).await.unwrap();
        }
        while kinds.recv().await.is_some() {}
    });

    let front = support::VoiceServer::start_with(growing_spec(&url), CallLimits::default()).await;
    let events = open_line_until_turn(front.addr, 2).await;
    script.abort();

    let tool = events.iter().find_map(|e| match e {
        ServerEvent::ToolCall {
            tool,
            arguments,
            is_error,
            ..
        } => Some((tool.clone(), arguments.clone(), *is_error)),
        _ => None,
    });
    let (tool, arguments, is_error) = tool.expect("the grow call ran");
    assert!(tool.ends_with("grow"), "{tool}");
    assert_eq!(arguments, json!({"name": "fresh"}));
    assert!(!is_error, "{events:#?}");
    let updates: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "session.update")
        .cloned()
        .collect();
    assert_eq!(updates.len(), 2, "{updates:#?}");
    let (first, then) = (offered(&updates[0]), offered(&updates[1]));
    assert!(first.contains(&"py__grow".to_string()), "{first:?}");
    assert!(!first.contains(&"py__fresh".to_string()), "{first:?}");
    assert!(then.contains(&"py__fresh".to_string()), "{then:?}");
    assert_eq!(then.len(), first.len() + 1, "{first:?} then {then:?}");
    assert_eq!(updates[1]["session"]["tool_choice"], "auto");
    // Only the tools change: the session's audio and voice stay as opened.
    assert!(
        updates[1]["session"].get("audio").is_none(),
        "{:#}",
        updates[1]
    );
    shutdown(front).await;
}
