//! `parlor bench`: spoken tasks played into live calls, scored and reported.
//!
//! # Layout
//! - [`tasks`]: the dataset (`benches/tasks/tasks.json`) and its checks.
//! - [`metrics`]: WER, tool-call precision/recall, fact presence,
//!   percentiles; pure functions with hand-checked tests.

pub mod metrics;
pub mod tasks;
