//! Barge-in reaction time: a call in which the caller asks the task's
//! question, and once the reply has been playing for [`BARGE_IN_AFTER`]
//! starts speaking again (the first [`INTERRUPTION`] of its own question,
//! from where the speech starts). The sample is the time from the first
//! frame of that speech leaving the caller to the `barge_in` event arriving:
//! what a person talking over parlor waits before it goes quiet (parlor
//! stops the reply's audio when it sends the event, and the caller drops the
//! few hundred ms it had buffered).
//!
//! A reply that had already finished playing when the interruption began is
//! no sample: there was nothing to stop.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};
use crate::live::client::{connect, ClientError, Incoming};
use crate::live::ServerEvent;

/// How long the reply plays (from its first audio arriving) before the
/// caller talks over it.
pub const BARGE_IN_AFTER: Duration = Duration::from_millis(500);
/// How much of the question the caller says again over the reply: longer
/// than the echo guard's `barge_in_min_ms` (400 ms by default).
pub const INTERRUPTION: Duration = Duration::from_millis(1500);
/// Longest wait for the reply to start, or for parlor to react.
const PATIENCE: Duration = Duration::from_secs(90);
/// 20 ms at the pipeline rate: the frame a caller sends.
const FRAME: usize = PIPELINE_SAMPLE_RATE as usize / 50;

/// What became of a barge-in attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// parlor stopped the reply: a sample.
    Reacted,
    /// The reply had finished playing before the interruption began: no
    /// sample.
    ReplyFinishedFirst,
    /// The reply was playing when the interruption began and parlor played
    /// it to the end, or did not react within the patience.
    Missed,
    /// No reply audio came to talk over.
    NoReply,
    /// The call failed.
    Failed,
}

impl Outcome {
    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Reacted => "reacted",
            Outcome::ReplyFinishedFirst => "reply finished first",
            Outcome::Missed => "missed",
            Outcome::NoReply => "no reply",
            Outcome::Failed => "failed",
        }
    }
}

/// One barge-in attempt.
#[derive(Debug, Clone, Serialize)]
pub struct BargeInSample {
    pub outcome: Outcome,
    /// First frame of the interruption sent to the `barge_in` event
    /// received; only for [`Outcome::Reacted`].
    pub reaction_ms: Option<f64>,
    /// Why the call failed, for [`Outcome::Failed`].
    pub error: Option<String>,
}

impl BargeInSample {
    fn of(outcome: Outcome) -> Self {
        Self {
            outcome,
            reaction_ms: None,
            error: None,
        }
    }
}

/// The part of `samples` (16 kHz) the caller says again: [`INTERRUPTION`]
/// from the first 20 ms frame at least a tenth as loud as the loudest, so
/// leading silence (or a noise bed quieter than the voice) is skipped and
/// the clock starts with the speech.
pub fn interruption(samples: &[f32]) -> &[f32] {
    let rms =
        |frame: &[f32]| (frame.iter().map(|s| s * s).sum::<f32>() / frame.len() as f32).sqrt();
    let loudest = samples.chunks(FRAME).map(rms).fold(0.0, f32::max);
    let onset = samples
        .chunks(FRAME)
        .position(|frame| rms(frame) >= loudest / 10.0 && loudest > 0.0)
        .unwrap_or(0)
        * FRAME;
    let length = (INTERRUPTION.as_secs_f64() * f64::from(PIPELINE_SAMPLE_RATE)) as usize;
    &samples[onset..(onset + length).min(samples.len())]
}

/// What the caller's microphone is told.
enum Cue {
    /// Start the interruption at this moment.
    InterruptAt(Instant),
}

/// Ask `audio` (16 kHz) in a call at `url`, talk over the reply and time
/// how long parlor takes to stop. The call is dropped once the outcome is
/// known and the interruption has been said (parlor cancels the call's
/// turns when the socket goes).
pub async fn measure(url: &str, audio: &AudioChunk) -> BargeInSample {
    match attempt(url, audio).await {
        Ok(sample) => sample,
        Err(e) => BargeInSample {
            error: Some(e.to_string()),
            ..BargeInSample::of(Outcome::Failed)
        },
    }
}

async fn attempt(url: &str, audio: &AudioChunk) -> Result<BargeInSample, ClientError> {
    let (mut tx, mut rx) = connect(url).await?;
    let question = audio.samples.clone();
    let again = interruption(&audio.samples).to_vec();
    let (cue_tx, mut cue) = mpsc::channel::<Cue>(1);
    // When the interruption's first frame was sent, and when the question's
    // last one was.
    let spoke_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let asked_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mic = {
        let (spoke_at, asked_at) = (spoke_at.clone(), asked_at.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for frame in question.chunks(FRAME) {
                tick.tick().await;
                tx.audio(frame).await?;
            }
            *asked_at.lock().expect("not poisoned") = Some(Instant::now());
            let silence = vec![0.0; FRAME];
            let mut interrupt_at = None;
            loop {
                tick.tick().await;
                if let Ok(Cue::InterruptAt(at)) = cue.try_recv() {
                    interrupt_at = Some(at);
                }
                if interrupt_at.is_some_and(|at| Instant::now() >= at) {
                    break;
                }
                tx.audio(&silence).await?;
            }
            for (i, frame) in again.chunks(FRAME).enumerate() {
                if i > 0 {
                    tick.tick().await;
                }
                if i == 0 {
                    *spoke_at.lock().expect("not poisoned") = Some(Instant::now());
                }
                tx.audio(frame).await?;
            }
            // An open line until the call is dropped (or parlor is given up on).
            let give_up = Instant::now() + PATIENCE;
            while Instant::now() < give_up {
                tick.tick().await;
                tx.audio(&silence).await?;
            }
            Ok::<(), ClientError>(())
        })
    };
    let spoke = || *spoke_at.lock().expect("not poisoned");
    let deadline = Instant::now() + PATIENCE;
    let mut speaking_turn = None;
    let mut first_audio = false;
    let (mut started, mut done) = (0usize, 0usize);
    let outcome = loop {
        // Reacting is judged from the interruption on; before it, from the
        // start of the call.
        let until = spoke().map_or(deadline, |at| at + PATIENCE.min(Duration::from_secs(20)));
        let incoming = match tokio::time::timeout_at(until, rx.next()).await {
            Err(_) if spoke().is_some() => break BargeInSample::of(Outcome::Missed),
            Err(_) => break BargeInSample::of(Outcome::NoReply),
            Ok(incoming) => incoming,
        };
        match incoming? {
            None | Some(Incoming::Closed { .. }) => {
                break BargeInSample::of(if first_audio {
                    Outcome::Missed
                } else {
                    Outcome::NoReply
                })
            }
            Some(Incoming::Audio(_)) => {
                if !first_audio {
                    first_audio = true;
                    let _ = cue_tx.try_send(Cue::InterruptAt(Instant::now() + BARGE_IN_AFTER));
                }
            }
            Some(Incoming::Event(event)) => match event {
                ServerEvent::SpeechStarted { .. } => started += 1,
                ServerEvent::ReplyAudio { turn, .. } | ServerEvent::Filler { turn, .. } => {
                    speaking_turn.get_or_insert(turn);
                }
                ServerEvent::BargeIn { .. } => {
                    let now = Instant::now();
                    break match spoke() {
                        Some(at) if at <= now => BargeInSample {
                            reaction_ms: Some(now.duration_since(at).as_secs_f64() * 1e3),
                            ..BargeInSample::of(Outcome::Reacted)
                        },
                        // A barge-in before the interruption: the question's
                        // own tail cut a reply short; not this measurement.
                        _ => BargeInSample::of(Outcome::Missed),
                    };
                }
                ServerEvent::TurnDone { turn, .. } => {
                    done += 1;
                    if speaking_turn == Some(turn) {
                        break BargeInSample::of(match spoke() {
                            None => Outcome::ReplyFinishedFirst,
                            Some(_) => Outcome::Missed,
                        });
                    }
                    let asked = asked_at.lock().expect("not poisoned").is_some();
                    if asked && !first_audio && started == done {
                        break BargeInSample::of(Outcome::NoReply);
                    }
                }
                _ => {}
            },
        }
    };
    if outcome.outcome == Outcome::Reacted {
        // A person who talks over a reply finishes saying it: the call
        // stays up until then, so what parlor does after the cut (a
        // realtime stage truncating the model's reply) happens as on a
        // real call.
        if let Some(at) = spoke() {
            tokio::time::sleep_until(at + INTERRUPTION).await;
        }
    }
    mic.abort();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interruption_starts_where_the_speech_does() {
        let rate = PIPELINE_SAMPLE_RATE as usize;
        // 0.5 s of silence, then 3 s of a loud tone.
        let mut samples = vec![0.0; rate / 2];
        samples.extend((0..3 * rate).map(|i| 0.5 * (i as f32 * 0.05).sin()));
        let part = interruption(&samples);
        assert_eq!(part.len(), rate * 3 / 2);
        assert!(part[..FRAME].iter().any(|s| s.abs() > 0.1), "begins loud");
        // A quiet noise bed before the voice is skipped too.
        let mut noisy = vec![0.01; rate / 2];
        noisy.extend_from_slice(&samples[rate / 2..rate]);
        let part = interruption(&noisy);
        assert_eq!(part.len(), rate / 2, "clamped to what there is");
        assert!(part[..FRAME].iter().any(|s| s.abs() > 0.1));
        // Silence throughout: from the start.
        assert_eq!(interruption(&[0.0; 4000]).len(), 4000);
        assert!(interruption(&[]).is_empty());
    }
}
