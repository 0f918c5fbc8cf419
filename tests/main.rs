//! The integration tests, as one test binary: each file beside this one is
//! a module (`cargo test --release --test suite access:: --
//! --test-threads=1` runs one file).
//!
//! One binary, not one per file: each test binary links the whole library
//! with whisper.cpp and llama.cpp and its debug info, and monomorphises the
//! same async code again, so 29 binaries took most of CI's time to build
//! (26 min 13 s on a slow machine; this one, 2 min 45 s). Two files stay
//! binaries of their own, declared in Cargo.toml: `oauth.rs` and `stt.rs`
//! each install the process's one global tracing subscriber to check what
//! parlor logged, and `oauth.rs` sets `PARLOR_CREDENTIALS`, which would
//! reach the parlor processes other files start.
//!
//! tests/run.sh runs this binary with `--test-threads=1`. Most tests here
//! run the real models with a thread per core, and llama.cpp's and
//! whisper.cpp's threads busy-wait between steps: two such tests at once
//! on 2 cores (a file's own tests used to be kept apart by that file's
//! locks) slowed turns past their 60 s deadline.

mod support;

mod access;
mod attacks;
mod audio;
mod audit;
mod bench_cli;
mod cli;
mod live_calls;
mod llm_local;
mod mcp;
mod mcp_servers;
mod metrics;
mod openai_specs;
mod planner;
mod planner_local;
mod planner_openai;
mod realtime_route;
mod realtime_stage;
mod runner;
mod server_chat;
mod server_responses;
mod spec;
mod trust;
mod tts;
mod tts_stage;
mod vad;
mod voice_turns;
mod web_page;
