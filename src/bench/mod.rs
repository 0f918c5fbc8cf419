//! `parlor bench`: spoken tasks played into live calls, scored and reported.
//!
//! # Layout
//! - [`tasks`]: the dataset (`benches/tasks/tasks.json`) and its checks.
//! - [`metrics`]: WER, tool-call precision/recall, fact presence,
//!   percentiles; pure functions with hand-checked tests.
//! - [`run`]: one task as a live call, scored.
//! - [`report`]: per-pipeline summaries, markdown and JSON.
//! - [`plots`]: the SVG plots.
//!
//! The command itself (`parlor bench` in main.rs) serves each pipeline
//! in-process and calls [`run_pipeline`] against it.

pub mod metrics;
pub mod plots;
pub mod report;
pub mod run;
pub mod tasks;

use std::path::Path;

use indicatif::ProgressBar;

use report::Report;
use run::{run_task, Hearer, TurnResult};
use tasks::Dataset;

/// The report's file names in `--out`.
pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";

/// Every task of `data` (the first `limit`), `repeat` times, as live calls
/// to `url`, one at a time; `progress` ticks once a call.
pub async fn run_pipeline(
    url: &str,
    data: &Dataset,
    limit: usize,
    repeat: usize,
    hearer: &mut Hearer,
    progress: &ProgressBar,
) -> Vec<TurnResult> {
    let mut results = Vec::new();
    for round in 0..repeat {
        for task in data.tasks.iter().take(limit) {
            progress.set_message(task.id.clone());
            let result = run_task(url, data, task, round, hearer).await;
            if let Some(e) = &result.error {
                progress.println(format!("{}: {e}", task.id));
            }
            results.push(result);
            progress.inc(1);
        }
    }
    results
}

/// Write report.md, report.json and the plots into `out` (created).
///
/// # Errors
/// A message naming the file that could not be written.
pub fn write_report(out: &Path, report: &Report) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(REPORT_MD, report.markdown())?;
    write(
        REPORT_JSON,
        serde_json::to_string_pretty(report).expect("a report is serialisable"),
    )?;
    plots::latency_cdf(&out.join(plots::LATENCY_CDF), &report.pipelines)?;
    plots::stage_bars(&out.join(plots::STAGE_BARS), &report.pipelines)?;
    Ok(())
}
