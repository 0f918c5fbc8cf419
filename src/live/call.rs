//! One live call: a started pipeline between a caller's audio and the
//! events and audio sent back, whatever carries them (the WebSocket route
//! in `server/calls.rs` is one carrier).
//!
//! [`open`] splits the call in two halves that run side by side:
//! - [`CallInput`] takes the caller's 16-bit PCM at its own rate, resamples
//!   it once to the pipeline rate and feeds the VAD. Sends wait when the
//!   pipeline is full, which slows the reading of the socket: backpressure,
//!   not a growing buffer.
//! - [`CallOutput`] turns the pipeline's frames into [`Outbound`] items: the
//!   protocol's events, and reply audio in 20 ms frames paced by the
//!   [`Playout`]. It watches the turn being spoken: the moment the VAD
//!   cancels it (barge-in), sending stops, the caller is told how much it
//!   heard, and that text is recorded for the planner's history. While audio
//!   plays it tells the VAD so (the echo guard).
//!
//! Dropping either half's owner ends the call: [`CallOutput`] owns the
//! running pipeline, whose drop cancels every stage.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::playout::Playout;
use super::protocol::ServerEvent;
use crate::audio::{pcm16_le_bytes, pcm16_le_samples, AudioError, StreamResampler};
use crate::file_call::{Reports, TurnReport};
use crate::frame::{AudioChunk, Frame, TurnId};
use crate::runner::{InlineFront, RunningPipeline};
use crate::turns::Turns;

/// Reply audio goes out in frames this long: the most a barge-in can
/// overrun by on parlor's side.
pub const OUTPUT_FRAME: Duration = Duration::from_millis(20);

/// How far reply audio is sent ahead of playback by default: enough to
/// ride over network jitter, short enough that a barge-in is heard at once.
pub const DEFAULT_LEAD: Duration = Duration::from_millis(200);

/// What a call sends its caller.
#[derive(Debug)]
pub enum Outbound {
    Event(ServerEvent),
    /// Reply audio: 16-bit little-endian PCM at the output rate.
    Audio(Vec<u8>),
    /// A turn is over (its `turn.done` event, and its report for whoever
    /// keeps count).
    TurnDone {
        event: ServerEvent,
        report: Box<TurnReport>,
    },
}

/// Open a call on a started pipeline (barge-in on): the caller's audio is
/// at `input_rate`, reply audio goes out at `output_rate`.
///
/// # Errors
/// [`AudioError::BadSampleRate`] for an input rate parlor cannot resample.
pub fn open(
    mut running: RunningPipeline,
    input_rate: u32,
    output_rate: u32,
    lead: Duration,
) -> Result<(CallInput, CallOutput), AudioError> {
    // The one resampling of the caller's audio: to what the pipeline's
    // first stage takes (16 kHz for the VAD, 24 kHz for a realtime model).
    let rate = running.input_rate();
    let resampler = match input_rate {
        same if same == rate => None,
        other => Some(StreamResampler::with_chunk(other, rate, OUTPUT_FRAME)?),
    };
    let feed = match running.take_front() {
        Some(front) => Feed::Inline(front),
        None => Feed::Channel(running.input_handle()),
    };
    let input = CallInput {
        feed,
        rate,
        resampler,
        samples: Vec::new(),
        resampled: Vec::new(),
    };
    running.close_input();
    let (notices_tx, notices) = mpsc::channel(8);
    let turns = running.turns().clone();
    let output = CallOutput {
        running,
        turns,
        playout: Playout::new(output_rate, lead),
        pending: VecDeque::new(),
        reports: Reports::default(),
        interrupted: Vec::new(),
        ended: VecDeque::new(),
        notices,
        notices_tx,
        notice: None,
        input_done: false,
    };
    Ok((input, output))
}

/// Why the caller's audio was not taken.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The pipeline has stopped (the call is ending).
    #[error("the call has ended")]
    Closed,
}

/// Where a call's audio goes: the pipeline's first stage run right here,
/// in the task reading the caller (a live call's VAD: see
/// [`crate::runner::Pipeline::inline_front`]), or the channel to its task.
enum Feed {
    Inline(InlineFront),
    Channel(mpsc::Sender<Frame>),
}

/// The caller's side: audio in.
pub struct CallInput {
    feed: Feed,
    /// The pipeline's input rate.
    rate: u32,
    resampler: Option<StreamResampler>,
    samples: Vec<f32>,
    resampled: Vec<f32>,
}

impl CallInput {
    /// Take one binary frame of the caller's 16-bit PCM.
    ///
    /// # Errors
    /// [`InputError::Audio`] for half a sample (the frame is dropped, the
    /// call goes on); [`InputError::Closed`] when the pipeline has stopped.
    pub async fn push_pcm16(&mut self, bytes: &[u8]) -> Result<(), InputError> {
        self.samples.clear();
        pcm16_le_samples(bytes, &mut self.samples)?;
        let samples = match &mut self.resampler {
            None => std::mem::take(&mut self.samples),
            Some(resampler) => {
                resampler.process(&self.samples, &mut self.resampled)?;
                std::mem::take(&mut self.resampled)
            }
        };
        if samples.is_empty() {
            return Ok(());
        }
        let frame = Frame::Audio(AudioChunk::new(self.rate, samples));
        match &mut self.feed {
            Feed::Inline(front) => match front.push(frame).await {
                Ok(true) => Ok(()),
                // A failure is logged by the front, and ends the call.
                Ok(false) | Err(_) => Err(InputError::Closed),
            },
            Feed::Channel(tx) => tx.send(frame).await.map_err(|_| InputError::Closed),
        }
    }

    /// The caller has ended its audio: the pipeline finishes the turn in
    /// progress. (Dropping the input instead ends the audio as well, but
    /// an inline VAD's held speech is lost with it.)
    pub async fn finish(self) {
        if let Feed::Inline(front) = self.feed {
            // A failure is logged by the front; the call is ending anyway.
            let _ = front.finish().await;
        }
    }
}

/// One item waiting to go out.
#[derive(Debug)]
enum Pending {
    Event(ServerEvent),
    /// A piece of reply audio starts (`text` for the reply, `None` for a
    /// filler); its event goes out with it.
    Piece {
        turn: TurnId,
        text: Option<String>,
        event: Option<ServerEvent>,
    },
    Audio {
        turn: TurnId,
        samples: Vec<f32>,
    },
    Done(Box<TurnReport>),
}

/// parlor's side: events and paced audio out.
pub struct CallOutput {
    running: RunningPipeline,
    turns: Arc<Turns>,
    playout: Playout,
    pending: VecDeque<Pending>,
    reports: Reports,
    /// Turns a barge-in cut short.
    interrupted: Vec<TurnId>,
    /// The last few turns whose end came through.
    ended: VecDeque<TurnId>,
    notices: mpsc::Receiver<ServerEvent>,
    notices_tx: mpsc::Sender<ServerEvent>,
    /// A notice taken off `notices` while waiting for a frame: it goes out
    /// next, before any notice sent after it (queued behind the pipeline's
    /// items it was overtaken by a later one).
    notice: Option<ServerEvent>,
    input_done: bool,
}

impl CallOutput {
    /// A way to slip an event in between the pipeline's (an `error` about
    /// something the caller sent).
    pub fn notices(&self) -> mpsc::Sender<ServerEvent> {
        self.notices_tx.clone()
    }

    /// The call's turns: a carrier that cancels a reply itself (the
    /// Realtime protocol's `response.cancel`) or records what was heard of
    /// one (`conversation.item.truncate`) does it here.
    pub fn turns(&self) -> Arc<Turns> {
        self.turns.clone()
    }

    pub fn output_rate(&self) -> u32 {
        self.playout.rate()
    }

    /// The next item to send, paced; `None` once the pipeline has ended and
    /// every item has gone out and played. Cancel-safe: nothing is taken
    /// off a queue before it is returned.
    pub async fn next(&mut self) -> Option<Outbound> {
        loop {
            if let Some(notice) = self.notice.take().or_else(|| self.notices.try_recv().ok()) {
                return Some(Outbound::Event(notice));
            }
            if let Some(event) = self.barge_in(Instant::now()) {
                return Some(Outbound::Event(event));
            }
            match self.pending.front() {
                Some(Pending::Audio { turn, .. }) => {
                    let turn = *turn;
                    if !self.turns.is_live(turn) {
                        self.pending.pop_front();
                        continue;
                    }
                    let at = self.playout.next_send_at(Instant::now());
                    if at > Instant::now() {
                        let cancelled = self.turns.token(turn);
                        tokio::select! {
                            () = tokio::time::sleep_until(at) => {}
                            () = cancelled.cancelled() => {}
                            notice = self.notices.recv() => {
                                if let Some(notice) = notice {
                                    return Some(Outbound::Event(notice));
                                }
                            }
                        }
                        continue;
                    }
                    let Some(Pending::Audio { turn, samples }) = self.pending.pop_front() else {
                        unreachable!("front was audio")
                    };
                    self.playout.sent(turn, samples.len(), Instant::now());
                    self.turns.set_playing(true);
                    return Some(Outbound::Audio(pcm16_le_bytes(&samples)));
                }
                Some(Pending::Piece { turn, .. }) if !self.turns.is_live(*turn) => {
                    self.pending.pop_front();
                }
                Some(Pending::Piece { .. }) => {
                    let Some(Pending::Piece { turn, text, event }) = self.pending.pop_front()
                    else {
                        unreachable!("front was a piece")
                    };
                    self.playout.start_piece(turn, text, Instant::now());
                    if let Some(event) = event {
                        return Some(Outbound::Event(event));
                    }
                }
                Some(Pending::Done(report)) => {
                    let turn = report.turn;
                    // turn.done follows the turn's audio out of the caller's
                    // speaker, not out of the socket.
                    if let Some(drains) = self
                        .playout
                        .drains_at()
                        .filter(|_| self.playout.turn() == Some(turn))
                    {
                        if drains > Instant::now() && self.turns.is_live(turn) {
                            let cancelled = self.turns.token(turn);
                            tokio::select! {
                                () = tokio::time::sleep_until(drains) => {}
                                () = cancelled.cancelled() => {}
                            }
                            continue;
                        }
                    }
                    let Some(Pending::Done(report)) = self.pending.pop_front() else {
                        unreachable!("front was done")
                    };
                    return Some(self.turn_done(*report));
                }
                Some(Pending::Event(_)) => {
                    let Some(Pending::Event(event)) = self.pending.pop_front() else {
                        unreachable!("front was an event")
                    };
                    return Some(Outbound::Event(event));
                }
                None if self.input_done => {
                    // Let the last audio play out before the call ends.
                    if let Some(drains) = self.playout.drains_at().filter(|d| *d > Instant::now()) {
                        tokio::time::sleep_until(drains).await;
                    }
                    self.turns.set_playing(false);
                    return None;
                }
                None => self.receive().await,
            }
        }
    }

    /// Wait for the next frame (or a barge-in, or the end of playback) and
    /// queue what it means.
    async fn receive(&mut self) {
        let speaking = self.playout.turn().map(|t| self.turns.token(t));
        let drains = self.playout.drains_at().filter(|d| *d > Instant::now());
        let frame = tokio::select! {
            frame = self.running.output().recv() => frame,
            () = async { speaking.as_ref().expect("guarded").cancelled().await }, if speaking.is_some() => return,
            () = async { tokio::time::sleep_until(drains.expect("guarded")).await }, if drains.is_some() => {
                self.turns.set_playing(false);
                return;
            }
            notice = self.notices.recv() => {
                self.notice = notice;
                return;
            }
        };
        match frame {
            Some(frame) => self.queue(frame),
            None => self.input_done = true,
        }
    }

    /// If the turn being spoken was cancelled by a new turn, stop its
    /// audio and say what the caller heard.
    fn barge_in(&mut self, now: Instant) -> Option<ServerEvent> {
        let turn = self.playout.turn()?;
        if self.turns.is_live(turn) {
            return None;
        }
        let played = self.playout.played(now);
        let heard = self.playout.heard(now);
        let finished_playing = !self.playout.is_playing(now) && self.ended.contains(&turn);
        self.playout.stop();
        self.turns.set_playing(false);
        if finished_playing {
            // Cancelled after the caller heard all of it: nothing to cut.
            return None;
        }
        tracing::info!(message = "Barge-in.", turn = %turn, played_ms = played.as_millis() as u64, heard = %heard);
        self.turns.record_heard(turn, heard.clone(), played);
        self.interrupted.push(turn);
        Some(ServerEvent::BargeIn {
            turn: turn.0,
            played_ms: played.as_millis() as u64,
            heard,
        })
    }

    /// What one pipeline frame means for the caller.
    fn queue(&mut self, frame: Frame) {
        let event = match frame {
            Frame::SpeechStarted { turn, at } => {
                self.reports.get(turn).start_s = at.as_secs_f64();
                ServerEvent::SpeechStarted {
                    turn: turn.0,
                    at_ms: at.as_millis() as u64,
                }
            }
            Frame::SpeechEnded(utterance) => ServerEvent::SpeechEnded {
                turn: utterance.turn.0,
                speech_ms: utterance.audio.duration().as_millis() as u64,
            },
            Frame::Transcript {
                turn,
                text,
                is_final,
            } => {
                if is_final {
                    self.reports.get(turn).transcript = text.clone();
                }
                ServerEvent::Transcript {
                    turn: turn.0,
                    text,
                    is_final,
                }
            }
            Frame::ToolCall { turn, record } => {
                let (server, tool) = record.name.split_once("__").unwrap_or(("", &record.name));
                let event = ServerEvent::ToolCall {
                    turn: turn.0,
                    server: server.to_string(),
                    tool: tool.to_string(),
                    arguments: record.arguments.clone(),
                    is_error: record.is_error,
                    latency_ms: (!record.hosted).then(|| ms(record.latency)),
                };
                self.reports.get(turn).tools.push(*record);
                event
            }
            Frame::ReplyDelta { turn, text } => {
                self.reports.get(turn).reply.push_str(&text);
                ServerEvent::ReplyDelta { turn: turn.0, text }
            }
            Frame::Filler { turn, text } => {
                self.pending.push_back(Pending::Piece {
                    turn,
                    text: None,
                    event: Some(ServerEvent::Filler { turn: turn.0, text }),
                });
                return;
            }
            Frame::ReplyAudio { turn, audio, text } => {
                if !self.turns.is_live(turn) {
                    return;
                }
                if let Some(text) = text {
                    self.pending.push_back(Pending::Piece {
                        turn,
                        event: Some(ServerEvent::ReplyAudio {
                            turn: turn.0,
                            text: text.clone(),
                        }),
                        text: Some(text),
                    });
                }
                // The report keeps no copy of the audio: the caller has it,
                // and a long call would hold every reply twice.
                let frame = (audio.sample_rate as f64 * OUTPUT_FRAME.as_secs_f64()) as usize;
                for samples in audio.samples.chunks(frame.max(1)) {
                    self.pending.push_back(Pending::Audio {
                        turn,
                        samples: samples.to_vec(),
                    });
                }
                return;
            }
            Frame::TurnError {
                turn,
                stage,
                message,
            } => {
                self.reports
                    .get(turn)
                    .errors
                    .push(format!("{stage}: {message}"));
                ServerEvent::TurnError {
                    turn: turn.0,
                    stage: stage.to_string(),
                    message,
                }
            }
            Frame::EndOfTurn(metrics) => {
                let mut report = self.reports.take(metrics.turn);
                report.metrics = metrics;
                if self.ended.len() == 8 {
                    self.ended.pop_front();
                }
                self.ended.push_back(report.turn);
                self.pending.push_back(Pending::Done(Box::new(report)));
                return;
            }
            Frame::Audio(_) | Frame::SpeechPaused(_) => return,
        };
        self.pending.push_back(Pending::Event(event));
    }

    fn turn_done(&mut self, report: TurnReport) -> Outbound {
        let turn = report.turn;
        let interrupted = self.interrupted.contains(&turn);
        let voice_to_voice = self.playout.first_sent_at(turn).map(|sent| {
            sent.into_std()
                .saturating_duration_since(report.metrics.speech_ended_at)
        });
        let event = ServerEvent::TurnDone {
            turn: turn.0,
            transcript: report.transcript.clone(),
            reply: report.reply.clone(),
            interrupted,
            voice_to_voice_ms: voice_to_voice.map(ms),
            stages: serde_json::to_value(&report.metrics.stages).unwrap_or_default(),
            usage: report.metrics.usage,
        };
        Outbound::TurnDone {
            event,
            report: Box::new(report),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}
