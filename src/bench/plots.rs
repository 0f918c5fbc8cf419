//! The bench's SVG plots (plotters' SVG backend: no fonts or system
//! libraries): the voice-to-voice latency CDF per pipeline, and each
//! pipeline's p50 latency split into the stages it passes through.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::load::LoadReport;
use super::report::{PipelineReport, Report};
use crate::prices::COST_PARTS;

/// The CDF plot's file name in `--out`.
pub const LATENCY_CDF: &str = "latency_cdf.svg";
/// The stage bars' file name in `--out`.
pub const STAGE_BARS: &str = "stage_bars.svg";
/// The cost bars' file name in `--out`.
pub const COST: &str = "cost.svg";
/// The load ramp's file name in `--out`.
pub const LOAD: &str = "load.svg";

fn err(e: impl std::fmt::Debug) -> String {
    format!("cannot draw a plot: {e:?}")
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The series' legend, boxed, in the given corner.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, at: SeriesLabelPosition) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

/// The category index at x (bars stand at 0, 1, 2, ...), if x is one.
fn category(x: f64) -> Option<usize> {
    let i = x.round();
    ((x - i).abs() < 0.01 && i >= 0.0).then_some(i as usize)
}

/// One step line per pipeline: the fraction of turns answered within x ms.
///
/// # Errors
/// A message when the file cannot be written.
pub fn latency_cdf(path: &Path, pipelines: &[PipelineReport]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let max_ms = pipelines
        .iter()
        .filter_map(|p| p.voice_to_voice_all_ms.last().copied())
        .fold(100.0, f64::max)
        * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption("Voice-to-voice latency (CDF)", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_ms, 0f64..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("end of speech to first reply audio (ms)")
        .y_desc("fraction of turns")
        .draw()
        .map_err(err)?;
    for (i, p) in pipelines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let n = p.voice_to_voice_all_ms.len() as f64;
        let mut points = vec![(0.0, 0.0)];
        for (k, &v) in p.voice_to_voice_all_ms.iter().enumerate() {
            points.push((v, k as f64 / n));
            points.push((v, (k + 1) as f64 / n));
        }
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(p.pipeline.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)
}

/// One bar per pipeline: its stages' p50 first outputs after the end of
/// speech, stacked as the increments between one stage and the next, so
/// each segment is the time that stage added.
///
/// # Errors
/// A message when the file cannot be written.
pub fn stage_bars(path: &Path, pipelines: &[PipelineReport]) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    // Stages in the order their first outputs come (pipeline order).
    let ordered: Vec<Vec<(String, f64)>> = pipelines
        .iter()
        .map(|p| {
            let mut stages: Vec<(String, f64)> = p
                .stage_first_output_p50_ms
                .iter()
                .map(|(s, ms)| (s.clone(), *ms))
                .collect();
            stages.sort_by(|a, b| a.1.total_cmp(&b.1));
            stages
        })
        .collect();
    let top = ordered
        .iter()
        .filter_map(|s| s.last().map(|l| l.1))
        .fold(100.0, f64::max)
        * 1.1;
    let names: Vec<String> = pipelines.iter().map(|p| p.pipeline.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Where the p50 latency goes, stage by stage",
            ("sans-serif", 22),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(names.len() as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(names.len().max(1))
        .x_label_formatter(&|x| {
            category(*x)
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default()
        })
        .y_desc("first output after end of speech, p50 (ms)")
        .draw()
        .map_err(err)?;
    let mut stage_names: Vec<String> = Vec::new();
    for stages in &ordered {
        for (s, _) in stages {
            if !stage_names.contains(s) {
                stage_names.push(s.clone());
            }
        }
    }
    for (si, stage) in stage_names.iter().enumerate() {
        let color = Palette99::pick(si).to_rgba();
        let mut bars = Vec::new();
        for (pi, stages) in ordered.iter().enumerate() {
            if let Some(k) = stages.iter().position(|(s, _)| s == stage) {
                let low = if k == 0 { 0.0 } else { stages[k - 1].1 };
                let x = pi as f64;
                bars.push(Rectangle::new(
                    [(x - 0.3, low), (x + 0.3, stages[k].1)],
                    color.filled(),
                ));
            }
        }
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(stage.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)
}

/// Estimated cost per turn, stacked by what is billed: for each pipeline
/// a bar at its own `[prices]` (none for a local pipeline, which is billed
/// nothing) and, with `--price-as`, a lighter bar beside it at those
/// prices.
///
/// # Errors
/// A message when the file cannot be written.
pub fn cost(path: &Path, report: &Report) -> Result<(), String> {
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let pipelines = &report.pipelines;
    let total = |parts: &std::collections::BTreeMap<String, f64>| parts.values().sum::<f64>();
    let top = pipelines
        .iter()
        .flat_map(|p| {
            [
                Some(total(&p.cost_parts_usd)),
                p.cost_parts_at_reference_usd.as_ref().map(total),
            ]
        })
        .flatten()
        .fold(0.0001, f64::max)
        * 1.15;
    let caption = match &report.reference_prices {
        Some(r) => format!("Estimated cost per turn (light: at {}'s prices)", r.name),
        None => "Estimated cost per turn".to_string(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(pipelines.len() as f64 - 0.5), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(pipelines.len().max(1))
        .x_label_formatter(&|x| {
            let Some(p) = category(*x).and_then(|i| pipelines.get(i)) else {
                return String::new();
            };
            if p.prices.is_some() {
                p.pipeline.clone()
            } else {
                format!("{} (not billed)", p.pipeline)
            }
        })
        .y_label_formatter(&|usd| format!("${usd:.4}"))
        .y_desc("USD per turn (mean)")
        .draw()
        .map_err(err)?;
    for (k, part) in COST_PARTS.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let mut bars = Vec::new();
        for (pi, p) in pipelines.iter().enumerate() {
            let x = pi as f64;
            // (bar's parts, its x range, its shade)
            let own = (p.prices.is_some()).then_some((&p.cost_parts_usd, x - 0.35, 1.0));
            let reference = p
                .cost_parts_at_reference_usd
                .as_ref()
                .map(|parts| (parts, x + 0.02, 0.45));
            for (parts, left, shade) in own.into_iter().chain(reference) {
                let low: f64 = COST_PARTS[..k].iter().filter_map(|q| parts.get(*q)).sum();
                let high = low + parts.get(*part).copied().unwrap_or(0.0);
                bars.push(Rectangle::new(
                    [(left, low), (left + 0.33, high)],
                    color.mix(shade).filled(),
                ));
            }
        }
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(*part)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)
}

/// The load ramp, side by side: voice-to-voice p50 and p90 against calls
/// at once (left), and the process's peak resident memory (right).
///
/// # Errors
/// A message when the file cannot be written.
pub fn load(path: &Path, report: &LoadReport) -> Result<(), String> {
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (left, right) = root.split_horizontally(500);
    let max_calls = report.steps.iter().map(|s| s.calls).max().unwrap_or(1) as f64;
    let x_range = 0.5f64..max_calls + 0.5;

    let percentile_lines = [
        (
            "p50",
            report
                .steps
                .iter()
                .map(|s| (s.calls as f64, s.voice_to_voice_ms.p50))
                .collect::<Vec<_>>(),
        ),
        (
            "p90",
            report
                .steps
                .iter()
                .map(|s| (s.calls as f64, s.voice_to_voice_ms.p90))
                .collect(),
        ),
    ];
    let top_ms = percentile_lines
        .iter()
        .flat_map(|(_, points)| points.iter().filter_map(|p| p.1))
        .fold(100.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("Voice to voice under load ({})", report.pipeline),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x_range.clone(), 0f64..top_ms)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("calls at once")
        .y_desc("end of speech to first reply audio (ms)")
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in percentile_lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points: Vec<(f64, f64)> = points
            .into_iter()
            .filter_map(|(x, y)| Some((x, y?)))
            .collect();
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;

    let memory: Vec<(f64, f64)> = report
        .steps
        .iter()
        .filter_map(|s| Some((s.calls as f64, s.peak_rss_mib?)))
        .collect();
    let top_mib = memory.iter().map(|p| p.1).fold(100.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("Peak resident memory", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(x_range, 0f64..top_mib)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("calls at once")
        .y_desc("peak RSS during the step (MiB)")
        .draw()
        .map_err(err)?;
    let color = Palette99::pick(2).to_rgba();
    chart
        .draw_series(memory.iter().map(|&p| Circle::new(p, 4, color.filled())))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(memory, color.stroke_width(2)))
        .map_err(err)?;
    root.present().map_err(err)
}
