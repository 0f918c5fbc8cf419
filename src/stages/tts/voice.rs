//! PLACEHOLDER until the voices land from the `tts` branch.
use std::sync::Arc;

use crate::frame::AudioChunk;

#[derive(Debug, thiserror::Error)]
pub enum TtsError {
    #[error("{0}")]
    Other(String),
}

/// A synthesiser: text in, mono audio out.
#[async_trait::async_trait]
pub trait Voice: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn speak(
        &self,
        text: &str,
        out: &tokio::sync::mpsc::Sender<AudioChunk>,
    ) -> Result<(), TtsError>;
}

pub fn load_voice(_spec: &crate::spec::TtsSpec) -> Result<Arc<dyn Voice>, TtsError> {
    Err(TtsError::Other("not yet".into()))
}
