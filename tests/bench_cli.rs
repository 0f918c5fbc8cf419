//! `parlor bench` end to end on the first 3 tasks of the shipped dataset
//! with the default local pipeline: real models, real live calls. Checks
//! the report's files, structure and that its metrics are sane, never how
//! fast anything was (timings belong in benches/).
//!
//! Needs the models: `bash models/setup.sh`.

mod support;

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_on_three_tasks_writes_the_table_the_json_and_the_plots() {
    let out = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args([
            "bench",
            "--pipelines",
            "pipelines/local.toml",
            "--limit",
            "3",
            "--out",
        ])
        .arg(out.path())
        .current_dir(support::root())
        .output()
        .expect("run parlor bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");

    // The table, printed and written.
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(stdout.contains(&md), "the table is printed");
    assert!(
        md.contains("| pipeline | turns | success | v2v p50 |"),
        "{md}"
    );
    assert!(md.contains("| local | 3 |"), "{md}");

    // The JSON: one pipeline, three turns, sane metrics.
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["tasks"], 3);
    let pipelines = json["pipelines"].as_array().unwrap();
    assert_eq!(pipelines.len(), 1);
    let p = &pipelines[0];
    assert_eq!(p["pipeline"], "local");
    assert_eq!(p["turns"], 3);
    let results = p["results"].as_array().unwrap();
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["task"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["order-1042", "hours-sunday", "hello"]);
    for r in results {
        assert!(r["error"].is_null(), "{r:#}");
        assert!(!r["transcript"].as_str().unwrap().is_empty(), "{r:#}");
        assert!(r["voice_to_voice_ms"].as_f64().unwrap() > 0.0, "{r:#}");
        assert!(r["cpu_s"].as_f64().unwrap() > 0.0, "{r:#}");
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 0.0, "{r:#}");
        assert!(
            !r["heard"].as_str().unwrap().is_empty(),
            "a reply was spoken: {r:#}"
        );
        let stages = r["stage_first_output_ms"].as_object().unwrap();
        for stage in ["stt", "planner", "tts"] {
            assert!(stages[stage].as_f64().unwrap() > 0.0, "{stage}: {r:#}");
        }
    }
    // Clear synthetic speech: Whisper gets most words right.
    let wer = p["wer"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&wer), "WER {wer}");
    let successes = p["successes"].as_u64().unwrap();
    assert!(successes <= 3);
    for key in ["tool_precision", "tool_recall"] {
        let v = p[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    // The first task asks for an order, so the planner was expected to call.
    assert_eq!(p["tools"]["expected"], 2);
    let v2v = &p["voice_to_voice_ms"];
    let (p50, p99) = (v2v["p50"].as_f64().unwrap(), v2v["p99"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{v2v}");

    // The plots: SVG with a line per pipeline and a bar per stage.
    for (file, marks) in [
        ("latency_cdf.svg", "<polyline"),
        ("stage_bars.svg", "<rect"),
    ] {
        let svg = std::fs::read_to_string(out.path().join(file)).unwrap();
        assert!(svg.starts_with("<svg"), "{file}");
        assert!(svg.contains(marks), "{file} has no {marks}");
        assert!(svg.contains("local"), "{file} names the pipeline");
    }
    let bars = std::fs::read_to_string(out.path().join("stage_bars.svg")).unwrap();
    assert!(
        bars.contains("planner") && bars.contains("tts"),
        "stage legend"
    );
}

#[test]
fn a_missing_task_directory_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args([
            "bench",
            "--pipelines",
            "pipelines/local.toml",
            "--tasks",
            "no/such/dir",
        ])
        .current_dir(support::root())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no/such/dir/tasks.json"), "{stderr}");
}
