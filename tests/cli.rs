//! `parlor transcribe` end to end: the real binary, the real models (from
//! `bash models/setup.sh`), audio made with espeak-ng.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn parlor(args: &[&str]) -> Output {
    let models = root().join("models/ggml-tiny.en.bin");
    assert!(
        models.exists(),
        "{} is missing: run `bash models/setup.sh` first",
        models.display()
    );
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("run parlor")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 16 kHz mono samples of `text` spoken by espeak-ng.
fn speak(text: &str, dir: &Path) -> Vec<i16> {
    let wav = dir.join("speech.wav");
    let status = Command::new("espeak-ng")
        .args(["-v", "en-us", "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .expect("espeak-ng is installed by models/setup.sh");
    assert!(status.success());
    // espeak-ng writes 22.05 kHz; sox is installed with it.
    let out = dir.join("speech16k.wav");
    let status = Command::new("sox")
        .arg(&wav)
        .args(["-r", "16000", "-c", "1", "-b", "16"])
        .arg(&out)
        .status()
        .expect("sox");
    assert!(status.success());
    hound::WavReader::open(&out)
        .unwrap()
        .samples::<i16>()
        .map(Result::unwrap)
        .collect()
}

fn write_wav(path: &Path, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for s in samples {
        w.write_sample(*s).unwrap();
    }
    w.finalize().unwrap();
}

fn silence(seconds: f32) -> Vec<i16> {
    vec![0; (seconds * 16_000.0) as usize]
}

/// Share of the expected words found in the transcript, order ignored: a
/// loose check that the right turn came out (WER is measured in tests/stt.rs).
fn word_recall(expected: &str, got: &str) -> f32 {
    let norm = |s: &str| -> Vec<String> {
        s.split_whitespace()
            .map(|w| {
                w.trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase()
            })
            .filter(|w| !w.is_empty())
            .collect()
    };
    let got = norm(got);
    let expected = norm(expected);
    let hits = expected.iter().filter(|w| got.contains(w)).count();
    hits as f32 / expected.len() as f32
}

#[test]
fn two_questions_give_two_turns_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let first = "where is my order";
    let second = "please cancel the delivery for tomorrow";
    let mut audio = silence(0.7);
    audio.extend(speak(first, dir.path()));
    audio.extend(silence(1.5));
    audio.extend(speak(second, dir.path()));
    audio.extend(silence(0.8));
    let file = dir.path().join("two.wav");
    write_wav(&file, &audio);

    let out = parlor(&["transcribe", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let turns: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(turns.len(), 2, "{}", stdout(&out));
    let text = |i: usize| turns[i]["text"].as_str().unwrap().to_string();
    assert!(word_recall(first, &text(0)) >= 0.75, "turn 1: {}", text(0));
    assert!(word_recall(second, &text(1)) >= 0.75, "turn 2: {}", text(1));
    let start1 = turns[0]["start_s"].as_f64().unwrap();
    assert!((0.3..=0.9).contains(&start1), "turn 1 starts at {start1}");
    // Per-stage timings come with each turn.
    let stages: Vec<_> = turns[0]["metrics"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stages, ["vad", "stt"]);
    assert!(
        turns[0]["metrics"]["stages"][1]["time_to_first_output"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn human_output_has_transcript_lines_and_a_timing_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut audio = silence(0.5);
    audio.extend(speak("what time is it", dir.path()));
    audio.extend(silence(0.6));
    let file = dir.path().join("q.wav");
    write_wav(&file, &audio);
    let out = parlor(&["transcribe", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with('['), "{text}");
    assert!(word_recall("what time is it", lines[0]) >= 0.75, "{text}");
    let timings: serde_json::Value = serde_json::from_str(lines[1]).expect("JSON timing line");
    assert_eq!(timings["timings"].as_array().unwrap().len(), 1);
}

#[test]
fn silence_and_noise_are_no_turn_and_no_words() {
    let dir = tempfile::tempdir().unwrap();
    // Seeded white noise at a moderate level, then digital silence.
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut audio: Vec<i16> = (0..16_000 * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 48) as i16) / 16
        })
        .collect();
    audio.extend(silence(2.0));
    let file = dir.path().join("noise.wav");
    write_wav(&file, &audio);
    let out = parlor(&["transcribe", file.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "", "no turn expected");
    let out = parlor(&["transcribe", file.to_str().unwrap()]);
    assert!(stdout(&out).starts_with("(no speech detected)"));
}

#[test]
fn bad_audio_exits_1_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.wav");
    std::fs::write(&file, "this is not audio at all, just text\n".repeat(20)).unwrap();
    let out = parlor(&["transcribe", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("notes.wav"), "names the file: {err}");
    assert!(stdout(&out).is_empty());

    let empty = dir.path().join("empty.wav");
    std::fs::write(&empty, b"").unwrap();
    let out = parlor(&["transcribe", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).to_lowercase().contains("empty"),
        "{}",
        stderr(&out)
    );

    let out = parlor(&["transcribe", "/nonexistent/x.wav"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/x.wav"));
}

#[test]
fn bad_spec_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("broken.toml");
    std::fs::write(
        &spec,
        "name = \"broken\"\n[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\nend_of_turn_ms = 1\n[[stage]]\nkind = \"stt\"\nbackend = \"whisper-local\"\nmodel = \"models/missing.bin\"\n",
    )
    .unwrap();
    let out = parlor(&[
        "transcribe",
        "whatever.wav",
        "--pipeline",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("broken.toml: 2 problems"), "{err}");
    assert!(err.contains("field `end_of_turn_ms`"), "{err}");
    assert!(err.contains("file models/missing.bin not found"), "{err}");
}

#[test]
fn check_lists_the_default_pipeline() {
    let out = parlor(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("local (pipelines/local.toml): valid"),
        "{text}"
    );
    assert!(text.contains("stage 2: stt"), "{text}");
}
