//! Text to speech: the planner's reply in, spoken audio out.
//!
//! - [`stage`]: the pipeline stage (chunking, resampling, barge-in).
//! - [`chunker`]: where a streamed reply is cut into speakable pieces.
//! - [`voice`]: the [`Voice`] contract and [`load_voice`], over three voices:
//!   - [`piper`] (+ [`phonemes`]): Piper's neural voice through onnxruntime,
//!     phonemes from espeak-ng, no network;
//!   - [`espeak`]: espeak-ng alone, the light fallback;
//!   - [`openai`]: any `/v1/audio/speech` server, audio streamed.

pub mod chunker;
pub mod espeak;
pub mod openai;
pub mod phonemes;
pub mod piper;
pub mod stage;
pub mod voice;

pub use stage::TtsStage;
pub use voice::{load_voice, TtsError, Voice};
