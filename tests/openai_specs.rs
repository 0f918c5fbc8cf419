//! The shipped OpenAI specs, `pipelines/openai-chained.toml` and
//! `pipelines/openai-realtime.toml`, run unchanged against an
//! OpenAI-compatible server that is not OpenAI: `parlor serve` on the local
//! pipeline, answering to `gpt-4.1-mini` as well (`--model-alias`), reached
//! through `OPENAI_BASE_URL` as OpenAI's own SDKs reach another server.
//! This machine has no route to OpenAI; what is shown is that nothing in
//! the specs or the `openai` backends needs the server to be OpenAI's:
//! transcription, chat with tools, speech and the Realtime protocol all go
//! over real HTTP and WebSocket to the server named by the environment.
//!
//! Needs `bash models/setup.sh`.

use crate::support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// `parlor serve` on the local pipeline, killed on drop.
struct Served {
    child: std::process::Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(log: &Path) -> Served {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["serve", "--pipeline", "pipelines/local.toml", "--addr"])
        .arg(addr.to_string())
        .args(["--model-alias", "gpt-4.1-mini"])
        .env("PARLOR_LOG", "info")
        .current_dir(support::root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start parlor serve");
    let served = Served {
        child,
        base: format!("http://{addr}/v1"),
    };
    let ready = format!("http://{addr}/readyz");
    // Loading the models takes a while on two cores; the bound only guards
    // a server that never comes up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for _ in 0..600 {
        let up = runtime.block_on(async {
            reqwest::get(&ready)
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if up {
            return served;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("parlor serve did not get ready: see {}", log.display());
}

/// `parlor turn question.wav` through the shipped spec `name`, with only
/// the environment pointing it at `served`. The turn's JSON report.
fn turn_through(name: &str, served: &Served, out: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["turn", "models/speech/samples/question.wav", "--json"])
        .args(["--pipeline", &format!("pipelines/{name}")])
        .arg("--out")
        .arg(out)
        .env("OPENAI_BASE_URL", &served.base)
        .env("OPENAI_API_KEY", "sk-local-test")
        .current_dir(support::root())
        .output()
        .expect("run parlor turn");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name}: {stdout}\n{stderr}");
    let turns: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(turns.len(), 1, "{name}: {stdout}\n{stderr}");
    turns.into_iter().next().unwrap()
}

#[test]
fn the_shipped_openai_specs_run_unchanged_against_an_openai_compatible_server() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve(&support::log_dir("openai_specs").join("serve.log"));
    for (name, last_stage) in [
        ("openai-chained.toml", "tts"),
        ("openai-realtime.toml", "realtime"),
    ] {
        let out = dir.path().join(format!("{name}.wav"));
        let turn = turn_through(name, &served, &out);
        eprintln!("{name}: {turn:#}");
        let transcript = turn["transcript"].as_str().unwrap().to_lowercase();
        assert!(transcript.contains("order"), "{name}: {transcript}");
        let tools = turn["tools"].as_array().unwrap();
        let call = tools
            .first()
            .unwrap_or_else(|| panic!("{name}: no tool call"));
        assert_eq!(call["name"], "orders__get_order", "{name}: {call}");
        assert_eq!(call["arguments"]["order_id"], 1042, "{name}: {call}");
        assert_eq!(turn["errors"], serde_json::json!([]), "{name}");
        let reply = turn["reply"].as_str().unwrap();
        assert!(
            support::mentions_any(reply, support::ORDER_1042_FACTS),
            "{name}: {reply}"
        );
        // Spoken back, by the server's voice.
        let spoken = parlor::audio::decode_file(&out, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", out.display()));
        assert!(spoken.duration() > Duration::from_secs(1), "{name}");
        let stage = turn["metrics"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stage"] == last_stage)
            .unwrap_or_else(|| panic!("{name}: no {last_stage} stage in {turn}"));
        assert!(
            stage["first_output_after_speech_end"].as_f64().is_some(),
            "{name}: voice to voice is measured: {stage}"
        );
    }
}
