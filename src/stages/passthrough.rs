//! A stage that forwards every frame unchanged.
//!
//! It measures the runner itself (benches/runner.rs: the cost of moving a
//! frame through N stages) and is the smallest correct example of the stage
//! contract: forward what you don't handle, stop on shutdown, treat a closed
//! downstream as the normal end.

use async_trait::async_trait;

use super::{Stage, StageContext, StageError, StageIo};

pub struct Passthrough {
    name: &'static str,
}

impl Passthrough {
    pub fn new(name: &'static str) -> Self {
        Self { name }
    }
}

#[async_trait]
impl Stage for Passthrough {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(self: Box<Self>, mut io: StageIo, cx: StageContext) -> Result<(), StageError> {
        while let Some(frame) = io.recv_until(&cx.shutdown).await {
            io.forward(frame).await?;
        }
        Ok(())
    }
}
