//! espeak-ng alone: a formant synthesiser, robotic but instant and needing
//! no model file.
//!
//! A process per chunk rather than the library (which the Piper voice uses
//! for phonemes, [`super::espeak_ipa`]): a spawn costs ~10 ms against a
//! sentence of speech, and synthesis through the library would hold its
//! one global lock for the whole sentence, every caller's phonemes
//! waiting behind it.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

use super::voice::{send_pieces, TtsError, Voice};
use crate::frame::AudioChunk;

/// espeak-ng's own default voice for English.
pub const DEFAULT_VOICE: &str = "en-us";

/// espeak-ng's default rate, which `speed = 1.0` keeps.
const DEFAULT_WPM: f32 = 175.0;
/// espeak-ng refuses rates below 80 words per minute; above ~450 it is
/// unintelligible.
const WPM_RANGE: (f32, f32) = (80.0, 450.0);

/// Runs `espeak-ng ARGS --stdin`, writing `text` to its stdin (so text that
/// starts with `-` is never read as an option) and returning its stdout.
/// The process is killed if the future is dropped (the turn was cancelled).
///
/// # Errors
/// [`TtsError::EspeakMissing`] when espeak-ng cannot be started,
/// [`TtsError::Espeak`] when it fails.
async fn run(args: &[&str], text: &str) -> Result<Vec<u8>, TtsError> {
    let mut child = Command::new("espeak-ng")
        .args(args)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TtsError::EspeakMissing,
            _ => TtsError::Espeak(format!("cannot start it: {e}")),
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let line = one_line(text);
    let write = async move {
        stdin.write_all(line.as_bytes()).await?;
        stdin.write_all(b"\n").await?;
        stdin.shutdown().await
    };
    // Writing and reading at once: a long text could fill the stdout pipe
    // while stdin is still being written.
    let (written, output) = tokio::join!(write, child.wait_with_output());
    let output = output.map_err(|e| TtsError::Espeak(e.to_string()))?;
    if !output.status.success() {
        return Err(TtsError::Espeak(format!(
            "{} ({})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        )));
    }
    written.map_err(|e| TtsError::Espeak(format!("cannot write the text to it: {e}")))?;
    Ok(output.stdout)
}

/// Whether espeak-ng can be started and knows `voice`.
fn check(voice: &str) -> Result<(), TtsError> {
    let out = std::process::Command::new("espeak-ng")
        .args(["-q", "-v", voice, "--stdin"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => TtsError::EspeakMissing,
            _ => TtsError::Espeak(format!("cannot start it: {e}")),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        return Err(TtsError::Espeak(format!(
            "voice \"{voice}\": {} (fix: `espeak-ng --voices` lists the voices)",
            stderr.trim()
        )));
    }
    Ok(())
}

/// espeak-ng speaking directly.
#[derive(Debug, Clone)]
pub struct EspeakVoice {
    voice: String,
    wpm: u32,
}

impl EspeakVoice {
    /// A voice speaking espeak-ng's `voice` (`en-us`, `en+f3`...) at
    /// `speed` times its normal rate. Blocking: starts espeak-ng once to
    /// check it is there and knows the voice.
    ///
    /// # Errors
    /// [`TtsError::EspeakMissing`], or [`TtsError::Espeak`] for an unknown voice.
    pub fn new(voice: &str, speed: f32) -> Result<Self, TtsError> {
        check(voice)?;
        Ok(Self {
            voice: voice.to_string(),
            wpm: (DEFAULT_WPM * speed)
                .clamp(WPM_RANGE.0, WPM_RANGE.1)
                .round() as u32,
        })
    }
}

#[async_trait::async_trait]
impl Voice for EspeakVoice {
    fn name(&self) -> &'static str {
        "espeak"
    }

    async fn speak_at(
        &self,
        text: &str,
        speed: f32,
        out: &mpsc::Sender<AudioChunk>,
    ) -> Result<(), TtsError> {
        if text.trim().is_empty() || out.is_closed() {
            return Ok(());
        }
        let wpm = ((self.wpm as f32 * speed).round() as u32).to_string();
        let args = ["--stdout", "-v", &self.voice, "-s", &wpm];
        // espeak-ng writes the WAV only when done; a chunk is one sentence,
        // a few ms of work, so there is nothing to gain from reading early.
        let wav = tokio::select! {
            wav = run(&args, text) => wav?,
            () = out.closed() => return Ok(()),
        };
        let audio = crate::audio::read_wav_bytes(&wav)
            .map_err(|e| TtsError::Espeak(format!("its WAV output is unreadable: {e}")))?;
        send_pieces(out, audio.sample_rate, &audio.samples).await;
        Ok(())
    }
}

/// `text` with each control character as a space, for espeak-ng: a newline
/// would end a clause (and the process's input line) where the text does
/// not, and a NUL would end the text.
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
