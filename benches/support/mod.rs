//! What the live-call benches share: a `parlor serve` child to measure,
//! spoken questions, and the statistics.
#![allow(dead_code)] // each bench uses its own subset

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use parlor::audio::resample;
use parlor::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};
use parlor::stages::tts::espeak::EspeakVoice;
use parlor::stages::tts::Voice;
use tokio::sync::mpsc;

/// `parlor serve` as a child, killed on drop.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Serve `spec` (the embedded local pipeline if `None`) on a free
    /// port, with room for `max_calls` live calls. `serve` always loads a
    /// local model for its text routes too; the benches do not use it.
    pub fn start(spec: Option<&Path>, max_calls: usize) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // Another build's binary (an absolute path) can be served instead,
        // to compare two builds in one sitting on this noisy machine.
        let binary = std::env::var_os("PARLOR_BENCH_SERVER")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_parlor").into());
        let mut command = Command::new(binary);
        command.args([
            "serve",
            "--addr",
            &addr.to_string(),
            "--max-calls",
            &max_calls.to_string(),
        ]);
        if let Some(spec) = spec {
            command.arg("--pipeline").arg(spec);
        }
        let child = command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start parlor serve");
        Self { child, addr }
    }

    /// Wait for `/readyz`; a server that exits instead is a panic.
    pub async fn ready(&mut self) {
        let url = format!("http://{}/readyz", self.addr);
        let started = Instant::now();
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("parlor serve exited: {status} (run `parlor check --pipeline` on the spec)");
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "server not ready"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's resident memory.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// `ws://…/v1/calls`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/calls", self.addr)
    }
}

/// `text` spoken by espeak-ng, at the pipeline's 16 kHz.
pub async fn espeak(text: &str) -> AudioChunk {
    let voice = EspeakVoice::new("en-us", 1.0).expect("espeak-ng is installed");
    let (tx, mut rx) = mpsc::channel::<AudioChunk>(64);
    let speak = async move {
        let spoken = voice.speak(text, &tx).await;
        drop(tx);
        spoken
    };
    let collect = async {
        let mut rate = 0;
        let mut samples = Vec::new();
        while let Some(chunk) = rx.recv().await {
            rate = chunk.sample_rate;
            samples.extend_from_slice(&chunk.samples);
        }
        (rate, samples)
    };
    let (spoken, (rate, samples)) = tokio::join!(speak, collect);
    spoken.unwrap();
    let samples = resample(&samples, rate, PIPELINE_SAMPLE_RATE).unwrap();
    AudioChunk::new(PIPELINE_SAMPLE_RATE, samples)
}

/// The nearest-rank percentile `p` (0–100) of sorted values; NaN if none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A whole number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small talk, for a pipeline without tools.
pub const CHAT: &[&str] = &[
    "What is the capital of France?",
    "How are you today?",
    "Tell me a fun fact about cats.",
    "What colour is the sky?",
    "Can you recommend a good book?",
];

/// How long `audio` is quiet at its end (below about -40 dBFS): added to
/// "last frame sent → first reply audio" it gives the wait a caller feels
/// from the end of their words.
pub fn trailing_silence(audio: &AudioChunk) -> Duration {
    let voiced_end = audio
        .samples
        .iter()
        .rposition(|s| s.abs() > 0.01)
        .map_or(0, |i| i + 1);
    let quiet = audio.samples.len() - voiced_end;
    Duration::from_secs_f64(quiet as f64 / f64::from(audio.sample_rate))
}
