//! Live calls over a real WebSocket (`GET /v1/calls`) with the real
//! models: a spoken question answered aloud, a barge-in, every kind of bad
//! input, and callers that hang up or stop reading (no work left behind:
//! the runtime's tasks are counted).
//!
//! The server runs on the test's own runtime so its tasks can be counted.
//! Needs the models: `bash models/setup.sh`. One test at a time (two cores).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use parlor::audio::{decode_file, resample, DecodeLimits};
use parlor::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};
use parlor::live::client::{self, ClientError, Incoming, PlayOptions};
use parlor::live::ServerEvent;
use parlor::loaded::LoadedPipeline;
use parlor::server::calls::CallLimits;
use parlor::server::AppState;
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::Voice;
use tokio::sync::{mpsc, Mutex};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// 20 ms at 16 kHz.
const FRAME: usize = 320;

struct Server {
    /// `ws://…/v1/calls`.
    url: String,
    http: String,
    state: AppState,
    stop: CancellationToken,
    pipeline: Arc<LoadedPipeline>,
}

impl Server {
    async fn start(limits: CallLimits) -> Self {
        Self::serving(support::VoiceServer::start(limits).await)
    }

    fn serving(server: support::VoiceServer) -> Self {
        Self {
            url: format!("ws://{}/v1/calls", server.addr),
            http: format!("http://{}/v1/calls", server.addr),
            state: server.state,
            stop: server.stop,
            pipeline: server.pipeline,
        }
    }

    /// Wait until no call is registered and the runtime is back to
    /// `baseline` tasks; what is left if it never gets there.
    async fn settles_to(&self, baseline: usize) -> Result<(), String> {
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..300 {
            if self.state.calls.active() == 0 && metrics.num_alive_tasks() <= baseline {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "{} calls and {} tasks still alive (baseline {baseline})",
            self.state.calls.active(),
            metrics.num_alive_tasks()
        ))
    }

    async fn shutdown(self) {
        self.stop.cancel();
        drop(self.state);
        if let Ok(pipeline) = Arc::try_unwrap(self.pipeline) {
            pipeline.shutdown().await;
        }
    }
}

fn question() -> AudioChunk {
    let path = support::root().join("models/speech/samples/question.wav");
    decode_file(&path, &DecodeLimits::default()).unwrap()
}

/// `text` said by espeak-ng, at the pipeline rate.
async fn espeak(text: &str) -> AudioChunk {
    let voice = EspeakVoice::new("en-us", 1.0).expect("espeak-ng is installed");
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(64);
    let collect = async {
        let mut all: Option<AudioChunk> = None;
        while let Some(chunk) = rx.recv().await {
            match &mut all {
                Some(a) => a.samples.extend_from_slice(&chunk.samples),
                None => all = Some(chunk),
            }
        }
        all.unwrap()
    };
    let speak = async move {
        let spoken = voice.speak(text, &tx).await;
        drop(tx);
        spoken
    };
    let (spoken, audio) = tokio::join!(speak, collect);
    spoken.unwrap();
    let samples = resample(&audio.samples, audio.sample_rate, PIPELINE_SAMPLE_RATE).unwrap();
    AudioChunk::new(PIPELINE_SAMPLE_RATE, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_over_a_live_call_is_answered_aloud() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Server::start(CallLimits::default()).await;
    let recording = client::play_file(&server.url, &question(), &PlayOptions::default(), |e| {
        eprintln!("{e:?}")
    })
    .await
    .expect("the call runs");

    let events = &recording.events;
    assert!(
        matches!(
            events.first(),
            Some(ServerEvent::CallStarted {
                output_sample_rate: 24_000,
                ..
            })
        ),
        "{events:?}"
    );
    let transcript = events.iter().find_map(|e| match e {
        ServerEvent::Transcript {
            text,
            is_final: true,
            ..
        } => Some(text.clone()),
        _ => None,
    });
    assert!(
        transcript
            .as_deref()
            .unwrap_or_default()
            .to_lowercase()
            .contains("order"),
        "{transcript:?}"
    );
    let tool = events.iter().find_map(|e| match e {
        ServerEvent::ToolCall {
            server,
            tool,
            arguments,
            ..
        } => Some((server.clone(), tool.clone(), arguments.clone())),
        _ => None,
    });
    let (server_name, tool, arguments) = tool.expect("a tool call event");
    assert_eq!(
        (server_name.as_str(), tool.as_str()),
        ("orders", "get_order")
    );
    assert_eq!(arguments["order_id"].as_i64(), Some(1042));
    let done = events.iter().find_map(|e| match e {
        ServerEvent::TurnDone {
            reply,
            voice_to_voice_ms,
            interrupted,
            ..
        } => Some((reply.clone(), *voice_to_voice_ms, *interrupted)),
        _ => None,
    });
    let (reply, v2v, interrupted) = done.expect("turn.done");
    assert!(!interrupted);
    assert!(
        support::mentions_any(&reply, support::ORDER_1042_FACTS),
        "{reply}"
    );
    eprintln!("voice to voice over the socket: {v2v:?} ms");
    assert!(v2v.is_some_and(|ms| ms > 0.0), "{v2v:?}");
    // Every event of the turn came before its end, and the call ended as
    // the caller asked.
    assert!(
        matches!(events.last(), Some(ServerEvent::CallEnded { reason }) if reason.contains("caller")),
        "{events:?}"
    );
    assert_eq!(recording.close_code, Some(1000));

    let heard = support::hear(&recording.audio_chunk());
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, support::ORDER_1042_FACTS),
        "heard {heard:?} for {reply:?}"
    );

    // The call and its turn were counted, and the call is over.
    let metrics_url = server.http.replace("/v1/calls", "/metrics");
    let metrics = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every get_order the call reported is counted (the 1.5B model now and
    // then asks for the same order twice in one turn).
    let lookups = events
        .iter()
        .filter(|e| matches!(e, ServerEvent::ToolCall { tool, .. } if tool == "get_order"))
        .count();
    for line in [
        "parlor_turns_total{route=\"calls\"} 1\n".to_string(),
        "parlor_calls_total 1\n".to_string(),
        "parlor_active_calls 0\n".to_string(),
        format!(
            "parlor_tool_calls_total{{server=\"orders\",tool=\"get_order\",outcome=\"ok\"}} {lookups}\n"
        ),
    ] {
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_voice_over_a_live_call_is_heard_and_answered_aloud() {
    // A person's recording (PyPI pocketsphinx test data), not a synthetic
    // voice: "go forward ten meters". Not a shop question, so the check
    // is that it is heard right and answered aloud, whatever the answer.
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Server::start(CallLimits::default()).await;
    let path = support::root().join("models/speech/commands/goforward.wav");
    let audio = decode_file(&path, &DecodeLimits::default()).unwrap();
    let recording = client::play_file(&server.url, &audio, &PlayOptions::default(), |e| {
        eprintln!("{e:?}")
    })
    .await
    .expect("the call runs");
    let transcript = recording.events.iter().find_map(|e| match e {
        ServerEvent::Transcript {
            text,
            is_final: true,
            ..
        } => Some(text.to_lowercase()),
        _ => None,
    });
    let transcript = transcript.expect("a transcript");
    assert!(
        transcript.contains("forward") && (transcript.contains("ten") || transcript.contains("10")),
        "{transcript}"
    );
    assert!(
        recording
            .events
            .iter()
            .any(|e| matches!(e, ServerEvent::TurnDone { reply, .. } if !reply.is_empty())),
        "{:?}",
        recording.events
    );
    assert!(
        recording.audio_chunk().duration() > Duration::from_millis(500),
        "the answer was spoken"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_stops_the_reply_and_says_what_the_caller_heard() {
    let _one = ONE_AT_A_TIME.lock().await;
    let server = Server::start(CallLimits::default()).await;
    let interruption = espeak("Wait. What time do you open tomorrow?").await;
    let (mut tx, mut rx) = client::connect(&server.url).await.unwrap();

    // The caller's microphone: the question, an open line, the
    // interruption when told, an open line again until told to hang up.
    let (cue_tx, mut cue) = mpsc::channel::<()>(2);
    let question = question();
    let mic = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let silence = vec![0.0; FRAME];
        for frame in question.samples.chunks(FRAME) {
            tick.tick().await;
            tx.audio(frame).await?;
        }
        let mut said = false;
        loop {
            tick.tick().await;
            match cue.try_recv() {
                Ok(()) if !said => {
                    said = true;
                    for frame in interruption.samples.chunks(FRAME) {
                        tick.tick().await;
                        tx.audio(frame).await?;
                    }
                }
                Ok(()) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => tx.audio(&silence).await?,
            }
        }
        tx.end().await?;
        Ok::<_, ClientError>(())
    });

    let mut events = Vec::new();
    let mut first_turn_audio = 0usize;
    let mut audio_after_barge_in = 0usize;
    let mut barged = false;
    let mut spoken_texts: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let incoming = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("the call goes on")
            .expect("a healthy socket");
        match incoming {
            None => break,
            Some(Incoming::Closed { .. }) => break,
            Some(Incoming::Audio(samples)) => {
                if barged {
                    audio_after_barge_in += samples.len();
                } else {
                    first_turn_audio += samples.len();
                    // About half a second in (a 200 ms lead ahead of the
                    // speaker), the caller starts talking over parlor.
                    if first_turn_audio >= 24_000 / 2
                        && first_turn_audio - samples.len() < 24_000 / 2
                    {
                        cue_tx.send(()).await.unwrap();
                    }
                }
            }
            Some(Incoming::Event(event)) => {
                eprintln!("{event:?}");
                match &event {
                    ServerEvent::ReplyAudio { turn: 1, text } => spoken_texts.push(text.clone()),
                    ServerEvent::BargeIn { .. } => barged = true,
                    // New audio of the next turn: stale frames would have
                    // come before it.
                    ServerEvent::ReplyAudio { .. } | ServerEvent::Filler { .. } if barged => {
                        assert_eq!(
                            audio_after_barge_in, 0,
                            "audio of the cut reply after the barge-in"
                        );
                        barged = false;
                    }
                    ServerEvent::TurnDone { turn: 2, .. } => {
                        let _ = cue_tx.send(()).await;
                    }
                    _ => {}
                }
                events.push(event);
            }
        }
    }
    mic.await.unwrap().unwrap();

    let barge_in = events.iter().find_map(|e| match e {
        ServerEvent::BargeIn {
            turn,
            played_ms,
            heard,
        } => Some((*turn, *played_ms, heard.clone())),
        _ => None,
    });
    let (turn, played_ms, heard) = barge_in.expect("a barge_in event");
    assert_eq!(turn, 1);
    assert!(played_ms > 0, "{played_ms}");
    // What was heard is the start of what was being said, and not all of it.
    let said = spoken_texts.join(" ");
    let said_words: Vec<&str> = said.split_whitespace().collect();
    let heard_words: Vec<&str> = heard.split_whitespace().collect();
    assert!(
        heard_words.len() < said_words.len() || said_words.is_empty(),
        "heard {heard:?} of {said:?}"
    );
    assert_eq!(
        heard_words[..],
        said_words[..heard_words.len()],
        "heard {heard:?} of {said:?}"
    );
    // The first turn ended interrupted; the interruption was its own turn,
    // heard and answered.
    assert!(
        events.iter().any(|e| matches!(
            e,
            ServerEvent::TurnDone {
                turn: 1,
                interrupted: true,
                ..
            }
        )),
        "{events:?}"
    );
    let second = events.iter().find_map(|e| match e {
        ServerEvent::Transcript {
            turn: 2,
            text,
            is_final: true,
        } => Some(text.to_lowercase()),
        _ => None,
    });
    assert!(
        second.as_deref().unwrap_or_default().contains("open"),
        "{second:?}"
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            ServerEvent::TurnDone {
                turn: 2,
                interrupted: false,
                ..
            }
        )),
        "{events:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_error_and_the_call_goes_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let limits = CallLimits {
        max_calls: 1,
        idle_timeout: Duration::from_secs(2),
        // Pings (answered by the client's library as it reads) more often
        // than the idle timeout: pongs alone must not keep a call open.
        ping_interval: Duration::from_millis(500),
        ..CallLimits::default()
    };
    let server = Server::start(limits).await;
    let http = reqwest::Client::new();

    // Refused before the upgrade, each with its reason.
    let plain = http.get(&server.http).send().await.unwrap();
    assert!(plain.status().is_client_error(), "{}", plain.status());
    assert!(plain.text().await.unwrap().contains("WebSocket"));
    for (query, status, says) in [
        ("?sample_rate=5", 400, "sample_rate"),
        ("?sample_rate=lots", 400, "sample_rate"),
        ("?pipeline=elsewhere", 404, "elsewhere"),
    ] {
        let url = format!("{}{query}", server.url);
        match client::connect(&url).await {
            Err(ClientError::Refused { status: s, body }) => {
                assert_eq!(s, status, "{query}: {body}");
                assert!(body.contains(says), "{query}: {body}");
            }
            other => panic!("{query}: {other:?}"),
        }
    }

    // Text where audio was expected, half a sample: an error event each,
    // and the call carries on to a clean end.
    let (mut tx, mut rx) = client::connect(&server.url).await.unwrap();
    // One call slot: a second caller is told to come back later.
    match client::connect(&server.url).await {
        Err(ClientError::Refused { status: 429, body }) => {
            assert!(body.contains("call slot"), "{body}")
        }
        other => panic!("{other:?}"),
    }
    tx.raw(Message::Text("hello, can you hear me?".into()))
        .await
        .unwrap();
    tx.raw(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    tx.audio(&[0.0; FRAME]).await.unwrap();
    tx.end().await.unwrap();
    let mut codes = Vec::new();
    let mut ended = None;
    let mut close = None;
    while let Some(incoming) = rx.next().await.unwrap() {
        match incoming {
            Incoming::Event(ServerEvent::Error { code, message }) => {
                eprintln!("{code}: {message}");
                codes.push(code);
            }
            Incoming::Event(ServerEvent::CallEnded { reason }) => ended = Some(reason),
            Incoming::Closed { code, .. } => close = code,
            _ => {}
        }
    }
    assert_eq!(codes, ["bad_message", "bad_audio"]);
    assert!(ended.unwrap_or_default().contains("caller ended"));
    assert_eq!(close, Some(1000));

    // A message over the size limit ends the call with 1009 and a reason.
    let (mut tx, mut rx) = connect_when_free(&server.url).await;
    let _ = tx.raw(Message::Binary(vec![0u8; 256 * 1024].into())).await;
    let (reason, code) = ending(&mut rx).await;
    // The caller's send may still be in flight when parlor hangs up, and
    // the kernel may then reset the connection before the close frame is
    // read; the call.ended event always comes first.
    assert!(matches!(code, Some(1009) | None), "{code:?} {reason:?}");
    assert!(reason.unwrap_or_default().contains("limit"));

    // A caller who goes quiet (not even silence) is ended after the idle
    // timeout.
    let (_tx, mut rx) = connect_when_free(&server.url).await;
    let (reason, code) = ending(&mut rx).await;
    assert_eq!(code, Some(1008), "{reason:?}");
    assert!(reason.unwrap_or_default().contains("nothing arrived"));

    // A server that shuts down ends its calls cleanly: a reason, then 1001.
    let (_tx, mut rx) = connect_when_free(&server.url).await;
    let _started = rx.next().await.unwrap();
    server.stop.cancel();
    let (reason, code) = ending(&mut rx).await;
    assert_eq!(code, Some(1001), "{reason:?}");
    assert!(reason.unwrap_or_default().contains("shutting down"));
    server.shutdown().await;
}

/// Connect once the previous call has let go of the only slot.
async fn connect_when_free(url: &str) -> (client::CallerTx, client::CallerRx) {
    for _ in 0..100 {
        match client::connect(url).await {
            Ok(halves) => return halves,
            Err(ClientError::Refused { status: 429, .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the call slot was never freed")
}

/// Read to the end of a call: its `call.ended` reason and close code.
async fn ending(rx: &mut client::CallerRx) -> (Option<String>, Option<u16>) {
    let mut reason = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), rx.next()).await {
            Ok(Ok(Some(Incoming::Event(ServerEvent::CallEnded { reason: r })))) => reason = Some(r),
            Ok(Ok(Some(Incoming::Closed { code, .. }))) => return (reason, code),
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => return (reason, None),
            Err(_) => panic!("the call did not end"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_hangs_up_or_stops_reading_leaves_nothing_running() {
    let _one = ONE_AT_A_TIME.lock().await;
    let limits = CallLimits {
        write_timeout: Duration::from_secs(1),
        ..CallLimits::default()
    };
    let server = Server::start(limits).await;
    // Let the server's own tasks start before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    // Hang up mid-turn: while the planner is answering.
    let (mut tx, mut rx) = client::connect(&server.url).await.unwrap();
    let spoken = question();
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let silence = vec![0.0; FRAME];
        for frame in spoken
            .samples
            .chunks(FRAME)
            .chain(std::iter::repeat(&silence[..]))
        {
            tick.tick().await;
            if tx.audio(frame).await.is_err() {
                break;
            }
        }
    });
    loop {
        match rx.next().await.unwrap() {
            Some(Incoming::Event(ServerEvent::Transcript { is_final: true, .. })) => break,
            Some(_) => {}
            None => panic!("the call ended before the question was heard"),
        }
    }
    feeder.abort();
    let _ = feeder.await;
    drop(rx);
    server
        .settles_to(baseline)
        .await
        .expect("a hang-up mid-turn cancels all of the call's work");

    // A caller that keeps talking but never reads: its socket buffers
    // fill with parlor's reply, a send waits past the write timeout, and
    // the call is ended rather than buffered without bound.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    let addr = server
        .url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url.as_str(), stream)
        .await
        .unwrap();
    let (mut sink, _never_read) = futures::StreamExt::split(ws);
    // The handshake completes before the server registers the call: wait
    // for it, or the first "no calls" below would be that gap, not the end.
    for _ in 0..100 {
        if server.state.calls.active() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        server.state.calls.active(),
        1,
        "the call was not registered"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let silence = vec![0.0; FRAME];
    let asked = question();
    let mut ended = false;
    for frame in asked
        .samples
        .chunks(FRAME)
        .chain(std::iter::repeat(&silence[..]))
        .take(50 * 120)
    {
        tick.tick().await;
        let bytes = parlor::audio::pcm16_le_bytes(frame);
        if futures::SinkExt::send(&mut sink, Message::Binary(bytes.into()))
            .await
            .is_err()
        {
            ended = true;
            break;
        }
        if server.state.calls.active() == 0 {
            ended = true;
            break;
        }
    }
    assert!(
        ended,
        "a caller that never reads was kept on for two minutes"
    );
    drop(sink);
    server
        .settles_to(baseline)
        .await
        .expect("ending a call that stopped reading cancels all of its work");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensitive_tool_call_waits_for_the_callers_answer_on_the_socket() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Under the suite's log directory: the secrets check reads its audit log.
    let dir = support::log_dir("live_calls-sensitive");
    let server = Server::serving(
        support::VoiceServer::start_with(support::sensitive_spec(&dir), CallLimits::default())
            .await,
    );
    let asking = espeak("Please cancel order 1043. I changed my mind.").await;
    let options = PlayOptions {
        approve_tools: Some(false),
        ..PlayOptions::default()
    };
    let recording = client::play_file(&server.url, &asking, &options, |e| eprintln!("{e:?}"))
        .await
        .expect("the call runs");
    let events = &recording.events;
    let asked = events.iter().find_map(|e| match e {
        ServerEvent::ToolConfirm {
            tool, arguments, ..
        } => Some((tool.clone(), arguments.clone())),
        _ => None,
    });
    let Some((tool, arguments)) = asked else {
        panic!(
            "the planner did not try to cancel (no tool.confirm), so the question was not asked: {events:?}"
        );
    };
    assert_eq!(tool, "orders__cancel_order");
    assert_eq!(arguments["order_id"], 1043, "{arguments}");
    // The caller said no: the call is reported as refused, the order is
    // untouched, and the refusal is in the audit log.
    let refused = events.iter().any(|e| {
        matches!(e, ServerEvent::ToolCall { tool, is_error: true, .. } if tool == "cancel_order")
    });
    assert!(refused, "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ServerEvent::TurnDone { reply, .. } if !reply.is_empty())),
        "the turn still ends with an answer: {events:?}"
    );
    let cancels = support::audited(&dir, "cancel_order");
    assert!(!cancels.is_empty(), "no cancel_order in the audit log");
    assert!(
        cancels.iter().all(|r| r["decision"] == "denied"),
        "no cancel ran: {cancels:?}"
    );
    assert!(cancels[0]["reason"].as_str().unwrap().contains("declined"));
    server.shutdown().await;
}
