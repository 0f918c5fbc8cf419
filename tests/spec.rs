//! Spec validation: one test per error class, each asserting that the
//! message names the file, the place and the field.

use std::path::{Path, PathBuf};

use parlor::spec::{PipelineSpec, SpecError, StageSpec, TtsBackend, VadBackend};

/// A working directory holding the files the default specs point at, so
/// "missing file" is the only thing a test controls.
fn base_with_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("models")).unwrap();
    for f in [
        "ggml-tiny.en.bin",
        "silero_vad.onnx",
        "libonnxruntime.so",
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "en_US-joe-medium.onnx",
        "en_US-joe-medium.onnx.json",
    ] {
        std::fs::write(dir.path().join("models").join(f), b"x").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("pipelines/prompts")).unwrap();
    std::fs::write(dir.path().join("pipelines/prompts/shop.md"), b"Be brief.").unwrap();
    dir
}

fn parse(text: &str, base: &Path) -> Result<PipelineSpec, SpecError> {
    PipelineSpec::parse(text, &PathBuf::from("pipelines/test.toml"), base)
}

fn problems(text: &str) -> (String, SpecError) {
    let base = base_with_models();
    let err = parse(text, base.path()).expect_err("spec should be rejected");
    (err.to_string(), err)
}

const VAD: &str = "[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\n";
const STT: &str =
    "[[stage]]\nkind = \"stt\"\nbackend = \"whisper-local\"\nmodel = \"models/ggml-tiny.en.bin\"\n";
/// Allows the orders (stdio, no args) and knowledge (loopback HTTP) servers
/// the MCP tests declare.
const TRUST: &str = "[trust]\nallow = [{ command = \"parlor-mcp-orders\" }, { url = \"http://127.0.0.1:8931/\" }]\n";

#[test]
fn shipped_local_pipeline_is_valid() {
    let base = base_with_models();
    let spec = PipelineSpec::local_default(base.path()).expect("local.toml validates");
    assert_eq!(spec.name, "local");
    let kinds: Vec<_> = spec.stages.iter().map(StageSpec::kind).collect();
    assert_eq!(kinds, ["vad", "stt", "planner", "tts"]);
    assert_eq!(spec.mcp.keys().collect::<Vec<_>>(), ["knowledge", "orders"]);
    match &spec.stages[0] {
        StageSpec::Vad(v) => assert_eq!(v.backend, VadBackend::Silero),
        other => panic!("first stage is {}", other.kind()),
    }
    // The file on disk and the embedded copy are the same spec.
    let from_disk = PipelineSpec::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/local.toml"),
        base.path(),
    )
    .expect("pipelines/local.toml validates");
    assert_eq!(from_disk.stages.len(), spec.stages.len());
}

/// Every shipped example passes the checks `parlor check` runs (the files
/// they name are checked against a project root holding them).
#[test]
fn every_shipped_pipeline_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let base = base_with_models();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = PipelineSpec::load(&path, base.path()) {
                panic!("{}: {e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} pipelines found");
}

#[test]
fn toml_syntax_error_names_the_line() {
    let (msg, _) = problems("name = \"x\"\n[[stage]\nkind = 1\n");
    assert!(msg.starts_with("pipelines/test.toml:"), "{msg}");
    assert!(msg.contains("near line 2"), "{msg}");
}

#[test]
fn unknown_stage_kind_lists_the_valid_ones() {
    let (msg, err) = problems(&format!("name = \"x\"\n{VAD}[[stage]]\nkind = \"sst\"\n"));
    assert_eq!(err.problems.len(), 1, "{msg}");
    let p = &err.problems[0];
    assert_eq!(p.place, "stage 2 (sst)");
    assert_eq!(p.field.as_deref(), Some("kind"));
    assert!(msg.contains("unknown variant `sst`"), "{msg}");
    assert!(msg.contains("`stt`"), "lists valid kinds: {msg}");
}

#[test]
fn unknown_backend_names_the_backend_field() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}[[stage]]\nkind = \"stt\"\nbackend = \"whisper\"\nmodel = \"m\"\n"
    ));
    assert_eq!(err.problems[0].field.as_deref(), Some("backend"), "{msg}");
    assert!(msg.contains("whisper-local"), "{msg}");
}

#[test]
fn misspelt_field_is_rejected_with_the_valid_fields() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\nend_of_turn = 300\n{STT}"
    ));
    let p = &err.problems[0];
    assert_eq!(p.place, "stage 1 (vad)");
    assert_eq!(p.field.as_deref(), Some("end_of_turn"), "{msg}");
    assert!(
        msg.contains("end_of_turn_ms"),
        "suggests the real field: {msg}"
    );
}

#[test]
fn missing_required_field_is_named() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}[[stage]]\nkind = \"stt\"\nbackend = \"whisper-local\"\n"
    ));
    assert_eq!(err.problems[0].field.as_deref(), Some("model"), "{msg}");
    assert!(msg.contains("missing field `model`"), "{msg}");
}

#[test]
fn out_of_range_values_name_field_and_a_fix() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\nchannel_capacity = 0\n[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\nthreshold = 1.5\nend_of_turn_ms = 10\nquiet_dbfs = -10\n{STT}"
    ));
    let fields: Vec<_> = err
        .problems
        .iter()
        .map(|p| p.field.clone().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "channel_capacity",
            "threshold",
            "end_of_turn_ms",
            "quiet_dbfs"
        ],
        "{msg}"
    );
    assert!(msg.contains("threshold = 0.5"), "gives a fix: {msg}");
}

#[test]
fn missing_model_file_says_how_to_get_it() {
    let empty = tempfile::tempdir().unwrap();
    let err = PipelineSpec::local_default(empty.path()).expect_err("no models here");
    let msg = err.to_string();
    let fields: Vec<_> = err
        .problems
        .iter()
        .map(|p| (p.place.as_str(), p.field.as_deref().unwrap()))
        .collect();
    assert_eq!(
        fields,
        [
            ("stage 1 (vad)", "model"),
            ("stage 1 (vad)", "onnxruntime"),
            ("stage 2 (stt)", "model"),
            ("stage 3 (planner)", "model"),
            ("stage 3 (planner)", "instructions"),
            ("stage 4 (tts)", "model"),
            ("stage 4 (tts)", "model"),
            ("stage 4 (tts)", "onnxruntime"),
        ],
        "{msg}"
    );
    assert!(
        msg.contains("file models/ggml-tiny.en.bin not found"),
        "{msg}"
    );
    assert!(msg.contains("bash models/setup.sh"), "{msg}");
}

#[test]
fn unknown_mcp_server_lists_the_declared_ones() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"planner\"\nbackend = \"local\"\nmcp = [\"orders\", \"knowlege\"]\n\n[mcp.orders]\ntransport = \"stdio\"\ncommand = \"parlor-mcp-orders\"\n\n[mcp.knowledge]\ntransport = \"streamable-http\"\nurl = \"http://127.0.0.1:8931/mcp\"\n{TRUST}"
    ));
    assert_eq!(err.problems.len(), 1, "{msg}");
    assert_eq!(err.problems[0].field.as_deref(), Some("mcp"));
    assert!(msg.contains("unknown MCP server \"knowlege\""), "{msg}");
    assert!(msg.contains("knowledge, orders"), "{msg}");
}

#[test]
fn bad_mcp_transport_is_named() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}\n[mcp.orders]\ntransport = \"websocket\"\nurl = \"ws://x\"\n"
    ));
    assert_eq!(err.problems[0].place, "mcp.orders", "{msg}");
    assert_eq!(err.problems[0].field.as_deref(), Some("transport"), "{msg}");
    assert!(msg.contains("streamable-http"), "{msg}");
}

#[test]
fn realtime_mixed_with_chained_stages_is_refused() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"realtime\"\n[[stage]]\nkind = \"tts\"\nbackend = \"local\"\n"
    ));
    let mixed: Vec<_> = err
        .problems
        .iter()
        .filter(|p| {
            p.message
                .contains("cannot be mixed with the realtime stage")
        })
        .map(|p| p.place.as_str())
        .collect();
    // The realtime model finds its own turns, so a vad stage is refused too.
    assert_eq!(
        mixed,
        ["stage 1 (vad)", "stage 2 (stt)", "stage 4 (tts)"],
        "{msg}"
    );
}

#[test]
fn stage_order_and_duplicates_are_checked() {
    let (msg, err) = problems(&format!("name = \"x\"\n{STT}{VAD}{VAD}"));
    let messages: Vec<_> = err.problems.iter().map(|p| p.message.as_str()).collect();
    assert!(messages.contains(&"a second vad stage"), "{msg}");
    assert!(messages.contains(&"vad must come before stt"), "{msg}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("the first stage is stt")),
        "{msg}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let (msg, err) = problems(
        "chanel_capacity = 8\n[[stage]]\nkind = \"vad\"\nbackend = \"silero\"\nthreshold = 2.0\nmodel = \"nope.onnx\"\n[[stage]]\nkind = \"stt\"\nbackend = \"whisper-local\"\nmodel = \"gone.bin\"\n",
    );
    // name missing, unknown top-level field, threshold, silero model, stt model.
    assert_eq!(err.problems.len(), 5, "{msg}");
    assert!(msg.contains("5 problems"), "{msg}");
    assert!(
        msg.contains("field `chanel_capacity`: unknown field"),
        "{msg}"
    );
    assert!(msg.contains("file nope.onnx not found"), "{msg}");
    assert!(msg.contains("file gone.bin not found"), "{msg}");
}

#[test]
fn unreadable_file_names_the_path() {
    let err = PipelineSpec::load(Path::new("pipelines/does-not-exist.toml"), Path::new("."))
        .expect_err("no such file");
    let msg = err.to_string();
    assert!(msg.starts_with("pipelines/does-not-exist.toml:"), "{msg}");
    assert!(msg.contains("--pipeline"), "{msg}");
}

#[test]
fn planner_fields_are_checked_together() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"planner\"\nbackend = \"local\"\nmodel = \"models/nope.gguf\"\ninstructions = \"prompts/nope.md\"\nmcp = [\"orders\"]\nprompt = {{ server = \"knowledge\", name = \"answer_style\" }}\nresources = [\"orders:orders://recent\", \"no-server-here\", \"knowledge:config://settings\"]\nmax_steps = 0\nturn_timeout_ms = 0\n\n[mcp.orders]\ntransport = \"stdio\"\ncommand = \"parlor-mcp-orders\"\n\n[mcp.knowledge]\ntransport = \"streamable-http\"\nurl = \"http://127.0.0.1:8931/mcp\"\n{TRUST}"
    ));
    let fields: Vec<_> = err
        .problems
        .iter()
        .map(|p| p.field.as_deref().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "model",
            "instructions",
            "prompt",
            "resources",
            "resources",
            "max_steps",
            "turn_timeout_ms"
        ],
        "{msg}"
    );
    assert!(msg.contains("file models/nope.gguf not found"), "{msg}");
    assert!(
        msg.contains("\"no-server-here\" is not \"server:uri\""),
        "{msg}"
    );
    assert!(
        msg.contains("server \"knowledge\" is not in this stage's mcp list"),
        "{msg}"
    );
}

#[test]
fn tts_checks_speed_instructions_and_the_piper_files() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"tts\"\nbackend = \"local\"\nmodel = \"models/nope.onnx\"\nspeed = 5.0\ninstructions = \"Cheerful.\"\n"
    ));
    let fields: Vec<_> = err
        .problems
        .iter()
        .map(|p| p.field.as_deref().unwrap())
        .collect();
    assert_eq!(fields, ["speed", "instructions", "model", "model"], "{msg}");
    assert!(msg.contains("must be from 0.25 to 4.0, got 5"), "{msg}");
    assert!(
        msg.contains("only the openai backend takes instructions"),
        "{msg}"
    );
    assert!(msg.contains("file models/nope.onnx not found"), "{msg}");
    assert!(
        msg.contains("file models/nope.onnx.json not found"),
        "{msg}"
    );
    assert!(msg.contains("bash models/setup.sh"), "{msg}");
}

#[test]
fn tts_backends_parse_and_espeak_needs_no_model() {
    let base = base_with_models();
    for (backend, expected) in [
        ("espeak", TtsBackend::Espeak),
        ("openai", TtsBackend::Openai),
        ("local", TtsBackend::Local),
    ] {
        let spec = parse(
            &format!("name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"tts\"\nbackend = \"{backend}\"\nspeed = 1.25\n"),
            base.path(),
        )
        .unwrap_or_else(|e| panic!("{backend}: {e}"));
        match &spec.stages[2] {
            StageSpec::Tts(t) => {
                assert_eq!(t.backend, expected);
                assert_eq!(t.speed, 1.25);
            }
            other => panic!("{}", other.kind()),
        }
    }
    // Only whisper's file: the espeak voice needs none of its own.
    let empty = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(empty.path().join("models")).unwrap();
    std::fs::write(empty.path().join("models/ggml-tiny.en.bin"), b"x").unwrap();
    parse(
        &format!("name = \"x\"\n{VAD}{STT}[[stage]]\nkind = \"tts\"\nbackend = \"espeak\"\nvoice = \"en-gb\"\n"),
        empty.path(),
    )
    .expect("espeak names no file");
}

#[test]
fn audit_table_gives_the_log_path() {
    let base = base_with_models();
    let spec = parse(
        &format!("name = \"t\"\n{VAD}[audit]\npath = \"audit/tools.jsonl\"\n"),
        base.path(),
    )
    .unwrap();
    assert_eq!(
        spec.audit.map(|a| a.path),
        Some(PathBuf::from("audit/tools.jsonl"))
    );
    let none = parse(&format!("name = \"t\"\n{VAD}"), base.path()).unwrap();
    assert!(none.audit.is_none(), "no [audit] table: no audit log");
}

#[test]
fn misspelt_audit_field_is_named() {
    let (msg, _) = problems(&format!("name = \"t\"\n{VAD}[audit]\npth = \"x.jsonl\"\n"));
    assert!(msg.contains("audit, field `pth`: unknown field"), "{msg}");
    let (msg, _) = problems(&format!("name = \"t\"\n{VAD}[audit]\npath = \"\"\n"));
    assert!(
        msg.contains("audit, field `path`: must not be empty"),
        "{msg}"
    );
}

#[test]
fn prices_are_optional_and_the_openai_specs_carry_list_prices() {
    let base = base_with_models();
    let local = PipelineSpec::local_default(base.path()).unwrap();
    assert_eq!(local.prices, None, "a local pipeline is billed nothing");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["openai-chained.toml", "openai-realtime.toml"] {
        let spec = PipelineSpec::load(&root.join("pipelines").join(name), base.path()).unwrap();
        let prices = spec
            .prices
            .unwrap_or_else(|| panic!("{name} has no [prices]"));
        assert!(prices.input_text_per_1m_tokens > 0.0, "{name}: {prices:?}");
        assert!(prices.output_text_per_1m_tokens > 0.0, "{name}: {prices:?}");
    }
    let spec = parse(
        &format!("name = \"x\"\n{VAD}{STT}[prices]\ntranscription_per_minute = 0.006\nspeech_per_1m_characters = 15\n"),
        base.path(),
    )
    .expect("an integer price is a price");
    let prices = spec.prices.unwrap();
    assert_eq!(prices.transcription_per_minute, 0.006);
    assert_eq!(prices.speech_per_1m_characters, 15.0);
    assert_eq!(prices.output_text_per_1m_tokens, 0.0, "unset prices are 0");
}

#[test]
fn bad_prices_name_the_field() {
    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[prices]\ninput_text_per_1m_tokens = -0.4\n"
    ));
    assert_eq!(err.problems.len(), 1, "{msg}");
    assert_eq!(err.problems[0].place, "prices");
    assert_eq!(
        err.problems[0].field.as_deref(),
        Some("input_text_per_1m_tokens")
    );
    assert!(msg.contains("must not be negative"), "{msg}");

    let (msg, err) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[prices]\ninput_per_1m_tokens = 0.4\n"
    ));
    assert_eq!(
        err.problems[0].field.as_deref(),
        Some("input_per_1m_tokens"),
        "{msg}"
    );
    assert!(
        msg.contains("input_text_per_1m_tokens"),
        "lists the valid fields: {msg}"
    );

    let (msg, _) = problems(&format!(
        "name = \"x\"\n{VAD}{STT}[prices]\ninput_text_per_1m_tokens = \"cheap\"\n"
    ));
    assert!(msg.contains("prices"), "{msg}");
    assert!(msg.contains("invalid type"), "{msg}");
}
