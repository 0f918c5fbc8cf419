//! The web page at `/`, used as a person would: a real headless Chromium
//! whose microphone plays a recorded question, a press on the talk button
//! held while it speaks, and the page showing the transcript, the tool call,
//! the answer and its latency, and playing the answer aloud.
//!
//! Needs the models and chromium: `bash models/setup.sh`.

use crate::support;

#[path = "support/browser.rs"]
mod browser;

use std::time::Duration;

use browser::Browser;
use parlor::server::calls::CallLimits;

/// The one key the server knows: `key:principal:role`.
const PAGE_KEY: &str = "web-key-7c1d:web:caller";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_hears_a_question_and_plays_the_answer() {
    // The server requires API keys: the page sends one (typed into its key
    // field) as a WebSocket subprotocol, since browsers cannot set headers.
    let spec = parlor::spec::PipelineSpec::local_default(support::root()).unwrap();
    let keyring = parlor::access::Keyring::parse(PAGE_KEY, "PARLOR_TEST_KEYS").unwrap();
    let server =
        support::VoiceServer::start_keyed(spec, CallLimits::default(), Some(keyring)).await;
    let url = format!("http://{}/", server.addr);

    let page = reqwest::get(&url).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains(r#"id="talk""#));

    // The fake microphone starts when the page asks for it, a moment before
    // the page is listening: a second of silence first keeps the question
    // whole.
    let dir = tempfile::tempdir().unwrap();
    let question = dir.path().join("question.wav");
    with_leading_silence(
        &support::root().join("models/speech/samples/question.wav"),
        &question,
    );
    let mut browser = Browser::open(&url, &question).await;
    browser
        .wait_for(
            "document.readyState === 'complete' && !!document.getElementById('talk')",
            Duration::from_secs(30),
        )
        .await;

    browser
        .eval("document.getElementById('key').value = 'web-key-7c1d'")
        .await;
    // Hold the button while the question plays (1 + 3.7 s), then let go: the
    // page sends silence from then on, and the VAD ends the turn.
    browser.mouse("#talk", true).await;
    browser
        .wait_for(
            "document.getElementById('status').dataset.state === 'ready'",
            Duration::from_secs(20),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    browser.mouse("#talk", false).await;

    browser
        .wait_for(
            "Number(document.body.dataset.turnsDone || 0) >= 1",
            Duration::from_secs(180),
        )
        .await;
    let text = |id: &str| format!("document.getElementById('{id}').innerText");
    let transcript = browser.eval(&text("transcript")).await;
    let transcript = transcript.as_str().unwrap().to_lowercase();
    // Whisper writes the number as "1042", "10 42" or "1 0 4 2".
    let digits: String = transcript.chars().filter(char::is_ascii_digit).collect();
    assert!(
        transcript.contains("order") && digits.contains("1042"),
        "{transcript}"
    );
    let tools = browser.eval(&text("tools")).await;
    let tools = tools.as_str().unwrap();
    assert!(
        tools.contains("orders.get_order") && tools.contains("1042"),
        "{tools}"
    );
    let reply = browser.eval(&text("reply")).await;
    let reply = reply.as_str().unwrap();
    assert!(
        support::mentions_any(reply, support::ORDER_1042_FACTS),
        "{reply}"
    );
    let latency = browser.eval(&text("latency")).await;
    let latency = latency.as_str().unwrap();
    assert!(
        latency.starts_with('1') && latency.contains(" ms"),
        "{latency}"
    );

    // The answer was played: frames arrived and the page's audio clock
    // played them through (each frame's source reported its end).
    let received = browser
        .eval("Number(document.body.dataset.audioFrames || 0)")
        .await;
    assert!(received.as_u64().unwrap() >= 25, "{received} frames");
    browser
        .wait_for(
            "Number(document.body.dataset.playedFrames || 0) >= 25",
            Duration::from_secs(30),
        )
        .await;

    // Kept for a person to look at when this test fails.
    let shot = std::env::temp_dir().join("parlor-web-page.png");
    browser.screenshot(&shot).await;
    eprintln!(
        "the page showed: {transcript:?} → {tools} → {reply:?}; latency {latency:?}; screenshot {}",
        shot.display()
    );

    // Hanging up ends the call on both sides.
    browser.mouse("#hangup", true).await;
    browser.mouse("#hangup", false).await;
    browser
        .wait_for(
            "document.getElementById('status').dataset.state === 'ended'",
            Duration::from_secs(60),
        )
        .await;
    for _ in 0..100 {
        if server.state.calls.active() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.state.calls.active(), 0);
    assert!(
        browser.console.iter().all(|m| !m.starts_with("exception")),
        "{:#?}",
        browser.console
    );
    browser.close().await;
    server.stop.cancel();
}

/// Copy a 16-bit WAV with one second of silence before it.
fn with_leading_silence(from: &std::path::Path, to: &std::path::Path) {
    let mut reader = hound::WavReader::open(from).unwrap();
    let spec = reader.spec();
    let mut writer = hound::WavWriter::create(to, spec).unwrap();
    for _ in 0..spec.sample_rate * u32::from(spec.channels) {
        writer.write_sample(0i16).unwrap();
    }
    for sample in reader.samples::<i16>() {
        writer.write_sample(sample.unwrap()).unwrap();
    }
    writer.finalize().unwrap();
}
