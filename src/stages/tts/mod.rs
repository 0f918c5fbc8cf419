//! Text to speech: the planner's reply in, spoken audio out.
//!
//! - [`stage`]: the pipeline stage (chunking, resampling, barge-in).
//! - [`chunker`]: where a streamed reply is cut into speakable pieces.
//! - [`voice`]: the [`Voice`] contract and [`load_voice`], over three voices:
//!   - [`piper`] (+ [`phonemes`], [`espeak_ipa`], [`piper_stream`]): Piper's
//!     neural voice through onnxruntime, phonemes from libespeak-ng, no network;
//!   - [`espeak`]: espeak-ng alone, the light fallback;
//!   - [`openai`]: any `/v1/audio/speech` server, audio streamed.

pub mod chunker;
pub mod espeak;
pub mod espeak_ipa;
pub mod openai;
pub mod phonemes;
pub mod piper;
pub mod piper_stream;
pub mod stage;
pub mod voice;

pub use stage::TtsStage;
pub use voice::{load_voice, TtsError, Voice};
