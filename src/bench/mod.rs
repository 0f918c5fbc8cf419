//! `parlor bench`: spoken tasks played into live calls, scored and reported.
//!
//! # Layout
//! - [`tasks`]: the dataset (`benches/tasks/tasks.json`) and its checks.
//! - [`metrics`]: WER, tool-call precision/recall, fact presence,
//!   percentiles; pure functions with hand-checked tests.
//! - [`run`]: one task as a live call, scored.
//! - [`barge`]: barge-in reaction time, a call talked over.
//! - [`peers`]: `--peers pipecat`, the same tasks through Pipecat.
//! - [`load`]: `--load`, calls at once ramped up.
//! - [`report`]: per-pipeline summaries, markdown and JSON.
//! - [`plots`]: the SVG plots.
//!
//! The command itself (`parlor bench` in main.rs) serves each pipeline
//! in-process and calls [`run_pipeline`] against it.

pub mod barge;
pub mod load;
pub mod metrics;
pub mod peers;
pub mod plots;
pub mod report;
pub mod run;
pub mod tasks;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use indicatif::ProgressBar;

use report::Report;
use run::{run_task, rusage, Hearer, TurnResult};
use tasks::Dataset;

/// The report's file names in `--out`.
pub const REPORT_MD: &str = "report.md";
pub const REPORT_JSON: &str = "report.json";

/// How [`run_pipeline`] plays the tasks.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// The first this many tasks.
    pub limit: usize,
    /// Rounds over them.
    pub repeat: usize,
    /// Calls at once: the tasks are dealt out to this many callers.
    pub concurrency: usize,
    /// Also call each task a second time and talk over the reply, for the
    /// barge-in reaction time.
    pub barge_in: bool,
}

/// What [`run_pipeline`] measured.
#[derive(Debug)]
pub struct PipelineRun {
    /// One per task and round, in task order within each round (whatever
    /// order the calls finished in).
    pub results: Vec<TurnResult>,
    /// CPU seconds of the whole process over the calls (not hearing the
    /// replies back): the honest per-turn figure when calls overlap.
    pub cpu_s: f64,
}

/// Every task of `data` (the first `limit`), `repeat` times, as live calls
/// to `url`, `concurrency` at once; `progress` ticks once a call. The
/// replies are heard back once every call has ended.
pub async fn run_pipeline(
    url: &str,
    data: &Dataset,
    options: RunOptions,
    hearer: &mut Hearer,
    progress: &ProgressBar,
) -> PipelineRun {
    let jobs: Vec<(usize, &tasks::Task)> = (0..options.repeat)
        .flat_map(|round| {
            data.tasks
                .iter()
                .take(options.limit)
                .map(move |task| (round, task))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let (cpu_before, _) = rusage();
    // Each caller takes the next task not yet taken until none is left.
    let caller = || async {
        let mut done = Vec::new();
        while let Some(&(round, task)) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
            progress.set_message(task.id.clone());
            let played = run_task(url, data, task, round, options.barge_in).await;
            if let Some(e) = &played.result.error {
                progress.println(format!("{}: {e}", task.id));
            }
            progress.inc(1);
            done.push((task, played));
        }
        done
    };
    let callers = (0..options.concurrency.max(1)).map(|_| caller());
    let mut played: Vec<(&tasks::Task, run::Played)> = futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    let (cpu_after, _) = rusage();
    // Task order within each round, whichever call finished first.
    played.sort_by_key(|(task, p)| {
        let index = data.tasks.iter().position(|t| t.id == task.id);
        (p.result.round, index)
    });
    progress.set_message("hearing the replies back");
    let results = played
        .into_iter()
        .map(|(task, p)| p.hear(task, hearer))
        .collect();
    PipelineRun {
        results,
        cpu_s: cpu_after - cpu_before,
    }
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
    plots::cost(&out.join(plots::COST), report)?;
    Ok(())
}
