//! The tts stage: reply text in, reply audio out, a sentence at a time.
//!
//! `ReplyDelta`s pass on (for display) and are cut into pieces by the
//! [`SentenceChunker`]; each piece
//! is spoken as soon as it is complete, so the first sentence plays while the
//! planner still writes the rest. The voice's audio is resampled once, here,
//! to the spec's output rate and sent as [`Frame::ReplyAudio`] in the pieces
//! the voice produces (about 100 ms), so playback can stop mid-sentence.
//!
//! A [`Frame::Filler`] is spoken the same way, its audio carrying no text.
//!
//! Barge-in cancels the turn's token: the piece being spoken stops at once
//! and the turn's queued text is dropped. A voice that fails (a speech server
//! down) costs that piece, not the call: a [`Frame::TurnError`] says why.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::chunker::SentenceChunker;
use super::voice::Voice;
use crate::audio::StreamResampler;
use crate::first_audio::FirstAudio;
use crate::frame::{AudioChunk, Frame, TurnId, Usage};
use crate::stages::{Stage, StageContext, StageError, StageIo};

/// Audio pieces a voice may have made ahead of the stage sending them on.
const VOICE_BUFFER: usize = 8;

/// Resampler chunk: short, as the first audio out is what the caller waits for.
const RESAMPLE_CHUNK: Duration = Duration::from_millis(20);

pub struct TtsStage {
    voice: Arc<dyn Voice>,
    /// Output sample rate (the spec's `sample_rate`).
    rate: u32,
}

impl TtsStage {
    pub fn new(voice: Arc<dyn Voice>, rate: u32) -> Self {
        Self { voice, rate }
    }
}

/// The reply being spoken: which turn, and its text not yet spoken.
struct Reply {
    turn: TurnId,
    chunker: SentenceChunker,
    /// Whether a piece of it has been spoken (the first goes first; see
    /// [`crate::first_audio`]).
    spoken: bool,
}

impl Reply {
    /// What `speak` is told of the next piece: reply text, and whether it
    /// is the first.
    fn next_piece(&mut self) -> Piece {
        let first = !self.spoken;
        self.spoken = true;
        Piece::Reply { first }
    }
}

/// What a spoken piece is.
#[derive(Clone, Copy)]
enum Piece {
    Reply { first: bool },
    Filler,
}

#[async_trait]
impl Stage for TtsStage {
    fn name(&self) -> &'static str {
        "tts"
    }

    async fn run(self: Box<Self>, mut io: StageIo, cx: StageContext) -> Result<(), StageError> {
        let mut reply: Option<Reply> = None;
        loop {
            let frame = io.recv_until(&cx.shutdown).await;
            let Some(frame) = frame else {
                return Ok(());
            };
            match frame {
                Frame::ReplyDelta { turn, text } => {
                    if !cx.turns.is_live(turn) {
                        continue;
                    }
                    let reply = match &mut reply {
                        Some(r) if r.turn == turn => r,
                        slot => slot.insert(Reply {
                            turn,
                            chunker: SentenceChunker::new(),
                            spoken: false,
                        }),
                    };
                    let pieces = reply.chunker.push(&text);
                    io.forward_consumed(Frame::ReplyDelta { turn, text })
                        .await?;
                    for text in pieces {
                        let piece = reply.next_piece();
                        self.speak(&mut io, &cx, turn, text, piece).await?;
                    }
                }
                Frame::Filler { turn, text } => {
                    if !cx.turns.is_live(turn) {
                        continue;
                    }
                    io.forward_consumed(Frame::Filler {
                        turn,
                        text: text.clone(),
                    })
                    .await?;
                    self.speak(&mut io, &cx, turn, text, Piece::Filler).await?;
                }
                Frame::EndOfTurn(metrics) => {
                    let turn = metrics.turn;
                    if let Some(mut done) = reply.take_if(|r| r.turn == turn) {
                        if let Some(rest) = done.chunker.finish() {
                            if cx.turns.is_live(turn) {
                                let piece = done.next_piece();
                                self.speak(&mut io, &cx, turn, rest, piece).await?;
                            }
                        }
                    }
                    io.forward(Frame::EndOfTurn(metrics)).await?;
                }
                other => io.forward(other).await?,
            }
        }
    }
}

impl TtsStage {
    /// Speak one piece of the turn's reply (or a filler, whose audio
    /// carries no text), sending its audio on as it is made. Returns early
    /// (Ok) when the turn is cancelled.
    async fn speak(
        &self,
        io: &mut StageIo,
        cx: &StageContext,
        turn: TurnId,
        text: String,
        piece: Piece,
    ) -> Result<(), StageError> {
        let cancel = cx.turns.token(turn);
        if cancel.is_cancelled() {
            return Ok(());
        }
        // Billed by the character sent, whether or not the caller hears it all.
        io.add_usage(
            turn,
            Usage {
                spoken_characters: text.chars().count() as u64,
                ..Usage::default()
            },
        );
        let (tx, rx) = mpsc::channel(VOICE_BUFFER);
        let voice = self.voice.clone();
        let said = text.clone();
        let first = matches!(piece, Piece::Reply { first: true });
        let synthesis = async move {
            let _making = first.then(|| FirstAudio::global().making());
            voice.speak(&said, &tx).await
        };
        let is_reply = matches!(piece, Piece::Reply { .. });
        let playback = self.send_audio(io, turn, is_reply.then(|| text.clone()), rx);
        let spoken = async { tokio::join!(synthesis, playback) };
        let (synthesised, sent) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            both = spoken => both,
        };
        sent?;
        if let Err(error) = synthesised {
            tracing::warn!(message = "Speech synthesis failed.", turn = %turn, voice = self.voice.name(), %error);
            io.send(Frame::TurnError {
                turn,
                stage: "tts",
                message: format!("could not speak \"{}\": {error}", preview(&text)),
            })
            .await?;
        }
        Ok(())
    }

    /// Resample the voice's audio to the output rate and send it on, the
    /// piece's text (if any) on its first frame.
    async fn send_audio(
        &self,
        io: &mut StageIo,
        turn: TurnId,
        mut text: Option<String>,
        mut rx: mpsc::Receiver<AudioChunk>,
    ) -> Result<(), StageError> {
        let mut resampler: Option<StreamResampler> = None;
        let mut out = Vec::new();
        while let Some(chunk) = rx.recv().await {
            io.add_usage(
                turn,
                Usage {
                    spoken_seconds: chunk.duration().as_secs_f64(),
                    ..Usage::default()
                },
            );
            let resampler = match &mut resampler {
                Some(r) if r.input_rate() == chunk.sample_rate => r,
                slot => slot.insert(
                    StreamResampler::with_chunk(chunk.sample_rate, self.rate, RESAMPLE_CHUNK)
                        .map_err(|e| StageError::failed("tts", e.to_string()))?,
                ),
            };
            resampler
                .process(&chunk.samples, &mut out)
                .map_err(|e| StageError::failed("tts", e.to_string()))?;
            if !out.is_empty() {
                let audio = AudioChunk::new(self.rate, std::mem::take(&mut out));
                io.send(Frame::ReplyAudio {
                    turn,
                    audio,
                    text: text.take(),
                })
                .await?;
            }
        }
        if let Some(resampler) = &mut resampler {
            resampler
                .finish(&mut out)
                .map_err(|e| StageError::failed("tts", e.to_string()))?;
            if !out.is_empty() {
                io.send(Frame::ReplyAudio {
                    turn,
                    audio: AudioChunk::new(self.rate, out),
                    text: text.take(),
                })
                .await?;
            }
        }
        Ok(())
    }
}

/// The start of a piece of text, for an error message.
fn preview(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}
