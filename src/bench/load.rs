//! `parlor bench --load`: live calls at once on one served pipeline,
//! ramped 1, 2, 4, ... up to `--max-calls`, and what the extra calls cost
//! each caller (voice-to-voice latency against the 1-call step) and the
//! process (peak resident memory during the step).
//!
//! Replies are not heard back here: a Whisper running after one call would
//! slow the calls still running and blur the figure being measured.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use indicatif::ProgressBar;
use serde::Serialize;

use super::metrics::{doubling_steps, ratio_to};
use super::report::Percentiles;
use super::run::{run_task, TurnResult};
use super::tasks::Dataset;

/// The load report's file names in `--out`.
pub const LOAD_MD: &str = "load.md";
pub const LOAD_JSON: &str = "load.json";

/// How often the resident memory is sampled during a step.
const RSS_EVERY: Duration = Duration::from_millis(50);

/// One step of the ramp: `calls` calls at once, `waves` times.
#[derive(Debug, Clone, Serialize)]
pub struct LoadStep {
    /// Calls at once.
    pub calls: usize,
    pub turns: usize,
    /// Calls that failed or whose stages reported an error (a call refused
    /// at capacity counts here).
    pub errors: usize,
    pub voice_to_voice_ms: Percentiles,
    /// This step's p50 and p90 over the 1-call step's: 1.0 is no added
    /// latency.
    pub p50_vs_one_call: Option<f64>,
    pub p90_vs_one_call: Option<f64>,
    /// The process's largest resident memory seen during the step
    /// (sampled every 50 ms from /proc/self/statm).
    pub peak_rss_mib: Option<f64>,
    pub results: Vec<TurnResult>,
}

/// The whole ramp, as written to load.json.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The spec's `name`.
    pub pipeline: String,
    /// The spec file.
    pub spec: String,
    /// Tasks the calls are dealt from (call i of a step plays task i mod
    /// this).
    pub tasks: usize,
    /// Waves of calls per step (`--repeat`).
    pub waves: usize,
    pub steps: Vec<LoadStep>,
}

/// The process's resident memory now, in MiB; `None` off Linux.
pub fn current_rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as f64 / (1024.0 * 1024.0))
}

/// Ramp calls to `url` up to `max_calls` at once, dealing the first
/// `limit` tasks of `data` round-robin; `progress` ticks once a call.
pub async fn run_load(
    url: &str,
    data: &Dataset,
    limit: usize,
    max_calls: usize,
    waves: usize,
    progress: &ProgressBar,
) -> Vec<LoadStep> {
    let tasks: Vec<_> = data.tasks.iter().take(limit.max(1)).collect();
    let mut steps: Vec<LoadStep> = Vec::new();
    for calls in doubling_steps(max_calls) {
        progress.set_message(format!("{calls} call(s) at once"));
        let peak = std::sync::Arc::new(std::sync::Mutex::new(current_rss_mib()));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(RSS_EVERY);
                loop {
                    tick.tick().await;
                    let now = current_rss_mib();
                    let mut peak = peak.lock().expect("not poisoned");
                    *peak = match (*peak, now) {
                        (Some(p), Some(n)) => Some(p.max(n)),
                        (p, n) => p.or(n),
                    };
                }
            })
        };
        let mut results = Vec::new();
        for wave in 0..waves {
            let wave_calls = (0..calls).map(|i| {
                let task = tasks[(wave * calls + i) % tasks.len()];
                async move {
                    let result = run_task(url, data, task, wave, false).await.result;
                    if let Some(e) = &result.error {
                        progress.println(format!("{calls} at once, {}: {e}", task.id));
                    }
                    progress.inc(1);
                    result
                }
            });
            results.extend(futures::future::join_all(wave_calls).await);
        }
        sampler.abort();
        let peak_rss_mib = *peak.lock().expect("not poisoned");
        let v2v: Vec<f64> = results.iter().filter_map(|r| r.voice_to_voice_ms).collect();
        let voice_to_voice_ms = Percentiles::of(&v2v);
        let one = steps.first().map(|s| s.voice_to_voice_ms);
        steps.push(LoadStep {
            calls,
            turns: results.len(),
            errors: results.iter().filter(|r| r.error.is_some()).count(),
            p50_vs_one_call: ratio_to(
                voice_to_voice_ms.p50,
                one.map_or(voice_to_voice_ms.p50, |o| o.p50),
            ),
            p90_vs_one_call: ratio_to(
                voice_to_voice_ms.p90,
                one.map_or(voice_to_voice_ms.p90, |o| o.p90),
            ),
            voice_to_voice_ms,
            peak_rss_mib,
            results,
        });
    }
    steps
}

/// How many calls [`run_load`] makes in all (for the progress bar).
pub fn total_calls(max_calls: usize, waves: usize) -> usize {
    doubling_steps(max_calls).iter().sum::<usize>() * waves
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.0}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.2}×"))
}

impl LoadReport {
    /// A row per step.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# parlor bench --load: {} ({})\n\nLive calls at once at real-time pace, {} wave(s) a step, dealt from {} task(s). Voice to voice in ms (nearest-rank percentiles); × 1 call is the step's percentile over the 1-call step's; peak RSS is the whole process (server, models, callers) during the step.\n",
            self.pipeline, self.spec, self.waves, self.tasks
        );
        let _ = writeln!(
            out,
            "| calls at once | turns | errors | v2v p50 | v2v p90 | p50 × 1 call | p90 × 1 call | peak RSS MiB |\n|---|---|---|---|---|---|---|---|"
        );
        for s in &self.steps {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.calls,
                s.turns,
                s.errors,
                ms(s.voice_to_voice_ms.p50),
                ms(s.voice_to_voice_ms.p90),
                times(s.p50_vs_one_call),
                times(s.p90_vs_one_call),
                ms(s.peak_rss_mib),
            );
        }
        out
    }
}

/// Write load.md, load.json and the plot into `out` (created).
///
/// # Errors
/// A message naming the file that could not be written.
pub fn write_load_report(out: &Path, report: &LoadReport) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(LOAD_MD, report.markdown())?;
    write(
        LOAD_JSON,
        serde_json::to_string_pretty(report).expect("a report is serialisable"),
    )?;
    super::plots::load(&out.join(super::plots::LOAD), report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(calls: usize, p50: f64, p90: f64, vs: f64) -> LoadStep {
        LoadStep {
            calls,
            turns: calls,
            errors: 0,
            voice_to_voice_ms: Percentiles {
                p50: Some(p50),
                p90: Some(p90),
                p99: Some(p90),
            },
            p50_vs_one_call: Some(vs),
            p90_vs_one_call: None,
            peak_rss_mib: Some(812.4),
            results: Vec::new(),
        }
    }

    #[test]
    fn the_load_table_has_a_row_per_step() {
        let report = LoadReport {
            pipeline: "local".into(),
            spec: "pipelines/local.toml".into(),
            tasks: 3,
            waves: 1,
            steps: vec![step(1, 1000.0, 1200.0, 1.0), step(2, 1500.0, 2000.0, 1.5)],
        };
        let md = report.markdown();
        assert!(
            md.contains("| 1 | 1 | 0 | 1000 | 1200 | 1.00× | – | 812 |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | 2 | 0 | 1500 | 2000 | 1.50× | – | 812 |"),
            "{md}"
        );
    }

    #[test]
    fn resident_memory_is_read_and_plausible() {
        let rss = current_rss_mib().expect("Linux has /proc/self/statm");
        assert!(rss > 1.0 && rss < 1024.0 * 1024.0, "{rss}");
    }

    #[test]
    fn the_ramp_counts_its_calls() {
        assert_eq!(total_calls(16, 1), 31);
        assert_eq!(total_calls(2, 2), 6);
    }
}
