//! The caller's side of a live call over a WebSocket: `parlor call`, the
//! tests and the bench use it to talk to `GET /v1/calls` as a person's
//! device would (20 ms frames of 16-bit PCM, sent in real time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{self, Message};

use super::protocol::{ClientMessage, ServerEvent};
use crate::audio::{pcm16_le_bytes, pcm16_le_samples};
use crate::dial::{dial, DialError, Socket};
use crate::frame::{AudioChunk, PIPELINE_SAMPLE_RATE};

/// 20 ms at the pipeline rate: the frame a caller sends.
const FRAME: usize = PIPELINE_SAMPLE_RATE as usize / 50;

/// Why a call could not be made or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the server refused the call with {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("the call failed: {0}")]
    Socket(String),
    #[error("the server sent an event parlor does not know: {0}")]
    BadEvent(String),
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        ClientError::Socket(e.to_string())
    }
}

/// What arrives from the server.
#[derive(Debug)]
pub enum Incoming {
    Event(ServerEvent),
    /// Reply audio at the call's output rate.
    Audio(Vec<f32>),
    /// The server closed the socket, with its close code and reason.
    Closed {
        code: Option<u16>,
        reason: String,
    },
}

/// The sending half of a call.
#[derive(Debug)]
pub struct CallerTx {
    sink: SplitSink<Socket, Message>,
}

/// The receiving half of a call.
#[derive(Debug)]
pub struct CallerRx {
    stream: SplitStream<Socket>,
}

/// Connect to a call route (`ws://host:port/v1/calls`), sending audio at
/// 16 kHz.
///
/// # Errors
/// [`ClientError::Refused`] with the server's status and body when it
/// answers the upgrade with an error (429 at capacity...), or
/// [`ClientError::Connect`].
pub async fn connect(url: &str) -> Result<(CallerTx, CallerRx), ClientError> {
    let key = std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty());
    connect_with_key(url, key.as_deref()).await
}

/// The environment variable [`connect`] takes an API key from, for a
/// server with `[auth]`.
pub const API_KEY_ENV: &str = "PARLOR_API_KEY";

/// [`connect`], sending `key` (if any) as `Authorization: Bearer`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with_key(
    url: &str,
    key: Option<&str>,
) -> Result<(CallerTx, CallerRx), ClientError> {
    let url = if url.contains("sample_rate=") {
        url.to_string()
    } else {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sample_rate={PIPELINE_SAMPLE_RATE}")
    };
    let socket = dial(&url, key).await.map_err(|e| match e {
        DialError::Unreachable(message) => ClientError::Connect {
            url: url.clone(),
            message,
        },
        DialError::Refused { status, body } => ClientError::Refused { status, body },
    })?;
    let (sink, stream) = socket.split();
    Ok((CallerTx { sink }, CallerRx { stream }))
}

impl CallerTx {
    /// Send 16 kHz audio as one binary frame.
    ///
    /// # Errors
    /// When the socket is closed.
    pub async fn audio(&mut self, samples: &[f32]) -> Result<(), ClientError> {
        self.sink
            .send(Message::Binary(pcm16_le_bytes(samples).into()))
            .await?;
        Ok(())
    }

    /// Send any message as is (the tests send what a broken client would).
    ///
    /// # Errors
    /// When the socket is closed.
    pub async fn raw(&mut self, message: Message) -> Result<(), ClientError> {
        self.sink.send(message).await?;
        Ok(())
    }

    /// Say there is no more audio.
    ///
    /// # Errors
    /// When the socket is closed.
    pub async fn end(&mut self) -> Result<(), ClientError> {
        self.control(&ClientMessage::End).await
    }

    /// Answer a `tool.confirm` event.
    ///
    /// # Errors
    /// When the socket is closed.
    pub async fn confirm(&mut self, id: &str, approve: bool) -> Result<(), ClientError> {
        self.control(&ClientMessage::Confirm {
            id: id.to_string(),
            approve,
        })
        .await
    }

    async fn control(&mut self, message: &ClientMessage) -> Result<(), ClientError> {
        let text = serde_json::to_string(message).expect("serialisable");
        self.sink.send(Message::Text(text.into())).await?;
        Ok(())
    }
}

impl CallerRx {
    /// The next thing from the server; `None` after the socket has gone.
    ///
    /// # Errors
    /// A broken socket, or an event that is not in the protocol.
    pub async fn next(&mut self) -> Result<Option<Incoming>, ClientError> {
        loop {
            let Some(message) = self.stream.next().await else {
                return Ok(None);
            };
            return Ok(Some(match message? {
                Message::Text(text) => Incoming::Event(
                    serde_json::from_str(&text)
                        .map_err(|e| ClientError::BadEvent(format!("{e}: {text}")))?,
                ),
                Message::Binary(bytes) => {
                    let mut samples = Vec::with_capacity(bytes.len() / 2);
                    pcm16_le_samples(&bytes, &mut samples)
                        .map_err(|e| ClientError::Socket(e.to_string()))?;
                    Incoming::Audio(samples)
                }
                Message::Close(frame) => Incoming::Closed {
                    code: frame.as_ref().map(|f| u16::from(f.code)),
                    reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                },
                _ => continue,
            }));
        }
    }
}

/// How [`play_file`] behaves.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// Send audio in real time, as a person speaks (off: as fast as the
    /// socket takes it).
    pub realtime: bool,
    /// After the file, keep the line open with silence for at most this
    /// long while parlor answers.
    pub linger: Duration,
    /// How to answer `tool.confirm` questions about sensitive tool calls:
    /// approve or decline each at once; `None` leaves them unanswered
    /// (they time out, which is a no).
    pub approve_tools: Option<bool>,
}

impl Default for PlayOptions {
    fn default() -> Self {
        Self {
            realtime: true,
            linger: Duration::from_secs(90),
            approve_tools: None,
        }
    }
}

/// A whole call as the caller experienced it.
#[derive(Debug, Default)]
pub struct Recording {
    pub events: Vec<ServerEvent>,
    /// All reply audio, at `output_rate`.
    pub audio: Vec<f32>,
    pub output_rate: u32,
    /// The close code the server ended with.
    pub close_code: Option<u16>,
    /// When the file's last frame was sent (before the open line).
    pub file_sent_at: Option<Instant>,
    /// When the first reply audio arrived: with `file_sent_at`, the wait a
    /// caller feels, end-of-turn silence included.
    pub first_audio_at: Option<Instant>,
}

impl Recording {
    pub fn audio_chunk(&self) -> AudioChunk {
        AudioChunk::new(self.output_rate.max(1), self.audio.clone())
    }
}

/// Play `audio` (16 kHz) into a call at `url` like a caller saying it,
/// then stay on the line (silence) until every turn it started is done,
/// and hang up. `on_event` sees each event as it arrives.
///
/// # Errors
/// As [`connect`], or a socket that breaks mid-call.
pub async fn play_file(
    url: &str,
    audio: &AudioChunk,
    options: &PlayOptions,
    mut on_event: impl FnMut(&ServerEvent),
) -> Result<Recording, ClientError> {
    debug_assert_eq!(audio.sample_rate, PIPELINE_SAMPLE_RATE);
    let (mut tx, mut rx) = connect(url).await?;
    let all_done = Arc::new(AtomicBool::new(false));
    let samples = audio.samples.clone();
    // Questions go to the sender, which owns the socket's sending half.
    let (answers, mut to_answer) = tokio::sync::mpsc::unbounded_channel::<(String, bool)>();
    let sender = {
        let all_done = all_done.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for frame in samples.chunks(FRAME) {
                if options.realtime {
                    tick.tick().await;
                }
                tx.audio(frame).await?;
                while let Ok((id, approve)) = to_answer.try_recv() {
                    tx.confirm(&id, approve).await?;
                }
            }
            let file_sent_at = Instant::now();
            // Silence, as an open line sounds, until parlor has answered.
            let silence = vec![0.0; FRAME];
            let quiet_since = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                let settled = quiet_since.elapsed() > Duration::from_secs(1);
                if (settled && all_done.load(Ordering::Acquire))
                    || quiet_since.elapsed() > options.linger
                {
                    break;
                }
                tx.audio(&silence).await?;
                while let Ok((id, approve)) = to_answer.try_recv() {
                    tx.confirm(&id, approve).await?;
                }
            }
            tx.end().await?;
            Ok::<_, ClientError>(file_sent_at)
        })
    };

    let mut recording = Recording::default();
    let (mut started, mut done) = (0usize, 0usize);
    while let Some(incoming) = rx.next().await? {
        match incoming {
            Incoming::Event(event) => {
                match &event {
                    ServerEvent::CallStarted {
                        output_sample_rate, ..
                    } => recording.output_rate = *output_sample_rate,
                    ServerEvent::SpeechStarted { .. } => started += 1,
                    ServerEvent::TurnDone { .. } => done += 1,
                    ServerEvent::ToolConfirm { id, .. } => {
                        if let Some(approve) = options.approve_tools {
                            let _ = answers.send((id.clone(), approve));
                        }
                    }
                    _ => {}
                }
                all_done.store(started == done, Ordering::Release);
                on_event(&event);
                recording.events.push(event);
            }
            Incoming::Audio(samples) => {
                recording.first_audio_at.get_or_insert_with(Instant::now);
                recording.audio.extend_from_slice(&samples);
            }
            Incoming::Closed { code, .. } => {
                recording.close_code = code;
                break;
            }
        }
    }
    match sender.await {
        Ok(Ok(sent_at)) => recording.file_sent_at = Some(sent_at),
        // The server may hang up first (it ended the call); that is its
        // right, and the recording says why.
        Ok(Err(_)) => {}
        Err(join) => return Err(ClientError::Socket(join.to_string())),
    }
    Ok(recording)
}
