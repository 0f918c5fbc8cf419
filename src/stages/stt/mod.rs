//! Speech to text: turns each turn's speech into a transcript.

use crate::spec::SttSpec;

use super::Stage;

pub fn build(spec: &SttSpec) -> Result<Box<dyn Stage>, anyhow::Error> {
    let _ = spec;
    anyhow::bail!("stt: not built yet")
}
