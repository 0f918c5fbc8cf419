//! Text to speech: the planner's reply in, spoken audio out.
//!
//! - [`stage`]: the pipeline stage (chunking, resampling, barge-in).
//! - [`chunker`]: where a streamed reply is cut into speakable pieces.
//! - [`voice`]: the [`Voice`] contract and [`load_voice`].

pub mod chunker;
pub mod stage;
pub mod voice;

pub use stage::TtsStage;
pub use voice::{load_voice, TtsError, Voice};
