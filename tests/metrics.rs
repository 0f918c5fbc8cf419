//! `GET /metrics` on the real server: a real transcription through the
//! pipeline's vad and stt is counted, requests are labelled by route
//! template, and unknown URLs all share one `unmatched` label.
//!
//! Needs the models: `bash models/setup.sh`. The pipeline is the listening
//! half only (Silero, Whisper tiny.en), the cheapest one that makes turns.

use crate::support;

use std::path::Path;
use std::sync::Arc;

use parlor::llm::{LocalLlm, LocalLlmOptions};
use parlor::loaded::LoadedPipeline;
use parlor::server::{AppState, ServedModel};
use parlor::spec::PipelineSpec;
use reqwest::StatusCode;

const EARS: &str = "name = \"ears\"\n\
    [[stage]]\nkind = \"vad\"\nbackend = \"silero\"\n\
    [[stage]]\nkind = \"stt\"\nbackend = \"whisper-local\"\nmodel = \"models/ggml-tiny.en.bin\"\n";

async fn scrape(base: &str) -> String {
    let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcription_and_an_unknown_url_show_up_in_the_metrics() {
    let root = support::root();
    let spec = PipelineSpec::parse(EARS, Path::new("ears.toml"), root).expect("spec");
    let pipeline = Arc::new(LoadedPipeline::load(&spec, root).await.expect("load"));
    // The chat model is the small one: this test uses no chat route.
    let path = support::model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let llm = LocalLlm::load(&path, LocalLlmOptions::default()).unwrap();
    let state = AppState::new(ServedModel::new(llm, &path)).with_pipeline(pipeline, 1);
    let base = support::serve_state(state);

    let before = scrape(&base).await;
    assert!(!before.contains("parlor_turns_total{"), "{before}");
    assert!(before.contains("parlor_active_calls 0\n"), "{before}");

    let wav = std::fs::read(root.join("models/speech/samples/question.wav")).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions"))
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap().to_lowercase();
    assert!(text.contains("order"), "{text}");

    // Streamed: each segment's turn is counted as it is sent.
    let wav = std::fs::read(root.join("models/speech/samples/question.wav")).unwrap();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/audio/transcriptions?stream=true"))
        .header("content-type", "audio/wav")
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let events = response.text().await.unwrap();
    assert!(events.contains("transcript.text.done"), "{events}");

    // Two different unknown URLs: one label value between them.
    for junk in ["/wp-login.php", "/v1/no-such-route/12345"] {
        let response = reqwest::get(format!("{base}{junk}")).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    let after = scrape(&base).await;
    eprintln!("{after}");
    for line in [
        "parlor_turns_total{route=\"transcriptions\"} 2\n",
        "parlor_stage_first_output_seconds_count{stage=\"stt\"} 2\n",
        "parlor_http_requests_total{route=\"/v1/audio/transcriptions\",status=\"200\"} 2\n",
        // The first scrape, counted once it was answered.
        "parlor_http_requests_total{route=\"/metrics\",status=\"200\"} 1\n",
        "parlor_http_requests_total{route=\"unmatched\",status=\"404\"} 2\n",
    ] {
        assert!(after.contains(line), "missing {line:?}");
    }
    assert!(
        !after.contains("wp-login") && !after.contains("12345"),
        "raw URLs must not become labels"
    );
    // No tts stage: no voice-to-voice latency to observe.
    assert!(after.contains("parlor_voice_to_voice_seconds_count 0\n"));
    assert!(after.ends_with("# EOF\n"));
}
