//! The full chained turn with real models: a spoken question through VAD,
//! Whisper, the local planner with parlor's MCP servers (stdio) and the
//! Piper voice, in process and through `POST /v1/turns` over real HTTP.
//! The spoken answer is checked by ear: the local Whisper must hear the
//! looked-up fact in it.
//!
//! Needs the models: `bash models/setup.sh`. Each test loads the default
//! pipeline; they run one at a time (two cores).

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use parlor::audio::{decode_bytes, decode_file, DecodeLimits};
use parlor::file_call;
use parlor::llm::{LocalLlm, LocalLlmOptions};
use parlor::loaded::LoadedPipeline;
use parlor::server::{AppState, ServedModel};
use parlor::spec::PipelineSpec;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

async fn load_default() -> LoadedPipeline {
    let root = support::root();
    let spec = PipelineSpec::local_default(root).expect("the default spec");
    let pipeline = LoadedPipeline::load(&spec, root)
        .await
        .expect("load the default pipeline");
    // As a server does before it takes calls (tests/support, VoiceServer).
    pipeline.warm_up().await;
    pipeline
}

fn question() -> &'static Path {
    Box::leak(
        support::root()
            .join("models/speech/samples/question.wav")
            .into_boxed_path(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_is_answered_aloud_with_the_looked_up_fact() {
    let _one = ONE_AT_A_TIME.lock().await;
    let pipeline = load_default().await;
    let audio = decode_file(question(), &DecodeLimits::default()).unwrap();
    let turns = file_call::play(pipeline.call().unwrap(), audio)
        .await
        .expect("the turn runs");
    pipeline.shutdown().await;

    assert_eq!(turns.len(), 1, "{turns:#?}");
    let turn = &turns[0];
    eprintln!("{turn:#?}");
    assert!(
        turn.transcript.to_lowercase().contains("order"),
        "{}",
        turn.transcript
    );
    let call = turn.tools.first().expect("a tool call");
    assert_eq!(call.name, "orders__get_order");
    assert_eq!(call.arguments["order_id"].as_i64(), Some(1042));
    assert!(turn.errors.is_empty(), "{:?}", turn.errors);
    assert!(
        support::mentions_any(&turn.reply, support::ORDER_1042_FACTS),
        "{}",
        turn.reply
    );

    let spoken = turn.audio.as_ref().expect("the reply is spoken");
    assert_eq!(spoken.sample_rate, 24_000, "the spec's output rate");
    assert!(
        spoken.duration().as_secs_f64() > 1.0,
        "{:?}",
        spoken.duration()
    );
    let heard = support::hear(spoken);
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, support::ORDER_1042_FACTS),
        "heard {heard:?} for {:?}",
        turn.reply
    );

    // Every stage reported, in pipeline order; the voice-to-voice latency
    // is the tts stage's first audio after the end of speech.
    let stages: Vec<&str> = turn
        .metrics
        .stages
        .iter()
        .map(|s| s.stage.as_str())
        .collect();
    assert_eq!(stages, ["vad", "stt", "planner", "tts"]);
    let v2v = turn.voice_to_voice().expect("voice-to-voice latency");
    let planner_first = turn
        .metrics
        .stage("planner")
        .unwrap()
        .first_output_after_speech_end
        .unwrap();
    assert!(
        v2v >= planner_first,
        "audio cannot come before the words: {v2v:?} < {planner_first:?}"
    );
    assert!(turn
        .metrics
        .stage("tts")
        .unwrap()
        .time_to_first_output
        .is_some());
}

/// A `multipart/form-data` body with the audio as `file` and other fields.
fn form(file_name: &str, audio: &[u8], fields: &[(&str, &str)]) -> (String, Vec<u8>) {
    const BOUNDARY: &str = "parlor-test-boundary-7d1f";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(audio);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={BOUNDARY}"), body)
}

async fn post(
    url: &str,
    content_type: &str,
    body: Vec<u8>,
    accept: Option<&str>,
) -> (StatusCode, Vec<u8>) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Announce an upload of `length` bytes, send none of it, and read the
/// answer: the server must turn it away on the announced length alone.
/// (A client that writes the whole body, as reqwest does, races the
/// server's close after its 413 and can fail on a broken pipe instead of
/// reading the answer; so can one that leaves unread bytes behind, which
/// makes the server's close a reset.)
async fn announce_huge_upload(url: &str, length: usize) -> (StatusCode, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(url).unwrap();
    let address = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/octet-stream\r\n\
         content-length: {length}\r\nconnection: close\r\n\r\n",
        url.path()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // Read the head, then as many body bytes as it announces.
    let mut answer = Vec::new();
    let read_answer = async {
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&answer).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let head = head.to_ascii_lowercase();
                assert!(
                    !head.contains("transfer-encoding"),
                    "a sized answer: {head}"
                );
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("a content-length: {head}"));
                if body.len() >= length {
                    return (head, body[..length].to_string());
                }
            }
            let n = stream.read(&mut buf).await.expect("the answer is read");
            assert!(n > 0, "the server closed before answering: {text:?}");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    let (head, body) = tokio::time::timeout(Duration::from_secs(30), read_answer)
        .await
        .expect("the server answers before the body is sent");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head:?}"));
    (StatusCode::from_u16(status).unwrap(), body.into_bytes())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// A server with the default pipeline behind `/v1/turns`. The chat model is
/// the small one: these tests do not use the chat routes.
async fn start(max_turns: usize) -> (String, Arc<LoadedPipeline>) {
    let path = support::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let llm = LocalLlm::load(&path, LocalLlmOptions::default()).unwrap();
    let pipeline = Arc::new(load_default().await);
    let state =
        AppState::new(ServedModel::new(llm, &path)).with_pipeline(pipeline.clone(), max_turns);
    (support::serve_state(state), pipeline)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_route_answers_with_transcript_tools_reply_timings_and_audio() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (base, _pipeline) = start(2).await;
    let url = format!("{base}/v1/turns");
    let wav = std::fs::read(question()).unwrap();

    let ready: Value = reqwest::get(format!("{base}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["pipeline"], "local");
    assert_eq!(ready["voice"], "piper");
    let servers: Vec<&str> = ready["mcp"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["knowledge", "orders"], "{ready}");

    let (content_type, body) = form("question.wav", &wav, &[("pipeline", "local")]);
    let (status, answer) = post(&url, &content_type, body, None).await;
    let answer = json(&answer);
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&answer)
            .unwrap()
            .chars()
            .take(3000)
            .collect::<String>()
    );
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["pipeline"], "local");
    let turn = &answer["turns"][0];
    assert!(turn["transcript"]
        .as_str()
        .unwrap()
        .to_lowercase()
        .contains("order"));
    let call = &turn["tool_calls"][0];
    assert_eq!(call["server"], "orders");
    assert_eq!(call["tool"], "get_order");
    assert_eq!(call["arguments"]["order_id"], 1042);
    assert!(call["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(
        support::mentions_any(turn["reply"].as_str().unwrap(), support::ORDER_1042_FACTS),
        "{turn}"
    );
    assert!(turn["timings"]["voice_to_voice_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(turn["timings"]["stages"].as_array().unwrap().len(), 4);
    let audio = &turn["audio"];
    assert_eq!(audio["format"], "wav");
    assert_eq!(audio["sample_rate"], 24_000);
    let wav_reply = base64::engine::general_purpose::STANDARD
        .decode(audio["data"].as_str().unwrap())
        .unwrap();
    let decoded = decode_bytes(wav_reply, Some("wav"), &DecodeLimits::default()).unwrap();
    assert!(decoded.duration().as_secs_f64() > 1.0);

    // The raw body, asking for the audio itself.
    let (status, spoken) = post(&url, "audio/wav", wav, Some("audio/wav")).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&spoken)
    );
    assert_eq!(&spoken[..4], b"RIFF");
    let decoded = decode_bytes(spoken, Some("wav"), &DecodeLimits::default()).unwrap();
    let heard = support::hear(&decoded);
    eprintln!("heard back: {heard}");
    assert!(
        support::mentions_any(&heard, support::ORDER_1042_FACTS),
        "{heard}"
    );
}

/// Each upload is a session of its own: the answer names it and so do the
/// audit records of its tool calls, as a live call's do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_upload_is_a_session_its_audit_records_name() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Under the suite's log directory: the secrets check reads its audit log.
    let dir = support::log_dir("voice_turns-sessions");
    let audit = dir.join("audit/tools.jsonl");
    let root = support::root();
    let local = std::fs::read_to_string(root.join("pipelines/local.toml")).unwrap();
    let text = format!(
        "{local}\n[audit]\npath = {:?}\n",
        audit.display().to_string()
    );
    let spec = PipelineSpec::parse(&text, &root.join("pipelines/local.toml"), root).unwrap();
    let pipeline = Arc::new(LoadedPipeline::load(&spec, root).await.expect("load"));
    let path = support::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let llm = LocalLlm::load(&path, LocalLlmOptions::default()).unwrap();
    let state = AppState::new(ServedModel::new(llm, &path)).with_pipeline(pipeline, 1);
    let base = support::serve_state(state);
    let url = format!("{base}/v1/turns?audio=none");
    let wav = std::fs::read(question()).unwrap();

    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (status, answer) = post(&url, "audio/wav", wav.clone(), None).await;
        let answer = json(&answer);
        assert_eq!(status, StatusCode::OK, "{answer}");
        let session = answer["session"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"));
        assert!(session.starts_with("upload_"), "{session}");
        assert_eq!(
            answer["turns"][0]["tool_calls"][0]["tool"], "get_order",
            "{answer}"
        );
        sessions.push(session.to_string());
    }
    assert_ne!(sessions[0], sessions[1], "each upload has its own session");
    let records: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for session in &sessions {
        let mut named = records.iter().filter(|r| r["session"] == session.as_str());
        assert!(
            named.any(|r| r["tool"] == "get_order" && r["decision"] == "allowed"),
            "no get_order of {session} in {records:#?}"
        );
    }
    assert!(
        records.iter().all(|r| r["session"].is_string()),
        "every record names its upload: {records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_precise_errors_and_the_server_keeps_serving() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (base, _pipeline) = start(2).await;
    let url = format!("{base}/v1/turns");
    let wav = std::fs::read(question()).unwrap();

    let expect = |status: StatusCode, body: &[u8], want: StatusCode, words: &[&str]| {
        let body = json(body);
        let message = body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(status, want, "{body}");
        for w in words {
            assert!(message.contains(w), "{message:?} should say {w:?}");
        }
    };

    let (s, b) = post(&url, "audio/wav", Vec::new(), None).await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["empty"]);
    let (s, b) = post(&url, "application/json", b"{\"file\": 1}".to_vec(), None).await;
    expect(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &["multipart/form-data", "`file`"],
    );
    let (s, b) = post(&url, "text/plain", b"hello".to_vec(), None).await;
    expect(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, &["text/plain"]);
    let (s, b) = post(&url, "application/octet-stream", wav[..30].to_vec(), None).await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["truncated"]);
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".repeat(10);
    let (s, b) = post(&url, "application/octet-stream", png, None).await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["not audio", "PNG"]);
    let (s, b) = announce_huge_upload(&url, 26 * 1024 * 1024).await;
    expect(s, &b, StatusCode::PAYLOAD_TOO_LARGE, &["limit"]);
    let (ct, body) = form("question.wav", &wav, &[("pipeline", "elsewhere")]);
    let (s, b) = post(&url, &ct, body, None).await;
    expect(s, &b, StatusCode::NOT_FOUND, &["elsewhere", "local"]);
    let (ct, body) = form("question.wav", &wav, &[("audio", "mp3")]);
    let (s, b) = post(&url, &ct, body, None).await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["base64", "none"]);
    let (ct, mut body) = form("question.wav", &wav, &[]);
    body.truncate(body.len() / 2); // the form never ends
    let (s, b) = post(&url, &ct, body, None).await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["upload"]);
    let no_file =
        "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nx\r\n--b--\r\n".to_string();
    let (s, b) = post(
        &url,
        "multipart/form-data; boundary=b",
        no_file.into_bytes(),
        None,
    )
    .await;
    expect(s, &b, StatusCode::BAD_REQUEST, &["`file`"]);

    // Silence is not an error: no turns. Asking for its audio is a 422.
    let silence =
        parlor::audio::wav_bytes(&parlor::frame::AudioChunk::new(16_000, vec![0.0; 16_000]))
            .unwrap();
    let (s, b) = post(&url, "audio/wav", silence.clone(), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["turns"], serde_json::json!([]));
    let (s, b) = post(&url, "audio/wav", silence, Some("audio/wav")).await;
    expect(s, &b, StatusCode::UNPROCESSABLE_ENTITY, &["no speech"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_capacity_is_a_429_not_a_queue() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (base, _pipeline) = start(0).await;
    let wav = std::fs::read(question()).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/turns"))
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_at_capacity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_turn_frees_its_slot() {
    let _one = ONE_AT_A_TIME.lock().await;
    // One slot: while a turn holds it, every other upload gets a 429.
    let (base, _pipeline) = start(1).await;
    let wav = std::fs::read(question()).unwrap();
    let client = reqwest::Client::new();
    let send = |timeout: Duration| {
        client
            .post(format!("{base}/v1/turns"))
            .header("content-type", "audio/wav")
            .timeout(timeout)
            .body(wav.clone())
            .send()
    };
    // Hang up a second in: Whisper has the question, the planner is busy.
    let hung_up = send(Duration::from_secs(1)).await;
    assert!(hung_up.is_err(), "{hung_up:?}");
    // The server notices, cancels the turn and frees the slot: a new
    // upload soon gets in (and is answered) instead of a 429.
    let started = std::time::Instant::now();
    loop {
        let response = send(Duration::from_secs(300)).await.unwrap();
        if response.status() != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.status(), StatusCode::OK);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the hung-up turn still holds the slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transcription_route_serves_the_openai_client_and_the_openai_stt_stage() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (base, _pipeline) = start(2).await;

    // The official client: json, text, verbose_json, a stream, a refusal.
    let out = tokio::process::Command::new(support::python())
        .arg(support::root().join("tests/peers/openai_transcription_client.py"))
        .arg(format!("{base}/v1"))
        .arg(question())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{seen:#}");
    let text = seen["json"].as_str().unwrap().to_lowercase();
    assert!(text.contains("where is my order"), "{text}");
    assert_eq!(seen["text"].as_str().unwrap().trim().to_lowercase(), text);
    assert_eq!(seen["verbose"]["language"], "english");
    let segments = seen["verbose"]["segments"].as_array().unwrap();
    assert_eq!(segments.len(), 1, "{segments:?}");
    let (start, end) = (
        segments[0]["start"].as_f64().unwrap(),
        segments[0]["end"].as_f64().unwrap(),
    );
    // The file has half a second of silence before the question.
    assert!(
        (0.2..0.8).contains(&start) && end > start + 1.0,
        "{start}..{end}"
    );
    assert_eq!(
        seen["stream"],
        serde_json::json!(["transcript.text.delta", "transcript.text.done"])
    );
    assert!(
        seen["french"].as_str().unwrap().contains("`en` only"),
        "{}",
        seen["french"]
    );

    // SubRip over plain HTTP.
    let (ct, body) = form(
        "question.wav",
        &std::fs::read(question()).unwrap(),
        &[("response_format", "srt")],
    );
    let (status, srt) = post(&format!("{base}/v1/audio/transcriptions"), &ct, body, None).await;
    let srt = String::from_utf8_lossy(&srt);
    assert_eq!(status, StatusCode::OK, "{srt}");
    assert!(
        srt.starts_with("1\n00:00:00,") && srt.contains(" --> "),
        "{srt}"
    );

    // parlor's own `openai` stt stage, pointed at the route, in a pipeline.
    let spec_text = format!(
        "name = \"remote-ears\"\n\
         [[stage]]\nkind = \"vad\"\nbackend = \"silero\"\n\
         [[stage]]\nkind = \"stt\"\nbackend = \"openai\"\nmodel = \"whisper-1\"\nbase_url = \"{base}/v1\"\n"
    );
    let root = support::root();
    let spec = PipelineSpec::parse(&spec_text, Path::new("remote-ears.toml"), root).expect("spec");
    let ears = LoadedPipeline::load(&spec, root).await.expect("load");
    let audio = decode_file(question(), &DecodeLimits::default()).unwrap();
    let turns = file_call::play(ears.listening_call().unwrap(), audio)
        .await
        .unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0].transcript.to_lowercase(), text);

    // A server that is down costs the turn, with the reason, not the call.
    let spec = PipelineSpec::parse(
        &spec_text.replace(&base, "http://127.0.0.1:9"),
        Path::new("down.toml"),
        root,
    )
    .unwrap();
    let deaf = LoadedPipeline::load(&spec, root).await.expect("load");
    let audio = decode_file(question(), &DecodeLimits::default()).unwrap();
    let turns = file_call::play(deaf.call().unwrap(), audio).await.unwrap();
    assert_eq!(turns.len(), 1);
    assert!(turns[0].transcript.is_empty());
    assert!(
        turns[0]
            .errors
            .iter()
            .any(|e| e.starts_with("stt: transcription server") && e.contains("unreachable")),
        "{:?}",
        turns[0].errors
    );
}
