pub mod espeak;
pub mod openai;
pub mod phonemes;
pub mod piper;
pub mod voice;

pub use voice::{load_voice, TtsError, Voice};
