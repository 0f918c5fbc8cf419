//! The audit log: the hash chain under concurrent appends (and group
//! commit), every kind of tampering named, torn tails from a SIGKILLed
//! writer, redaction, and real tool calls through the MCP pool.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor::mcp::audit::{verify, AuditError};
use parlor::mcp::{AuditContext, AuditEntry, AuditLog, Decision, McpPool};
use parlor::planner::{AuditedPool, Toolbox};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const SECRETS: [&str; 2] = ["sk-test-SECRET123", "hunter2"];

fn entry<'a>(context: &'a AuditContext, arguments: &'a Value) -> AuditEntry<'a> {
    AuditEntry {
        context,
        decision: Decision::Allowed,
        server: "srv",
        tool: "t",
        arguments,
        result: Some(b"result"),
        tool_error: false,
        latency: Duration::from_micros(1500),
        reason: None,
    }
}

/// A log of `n` records appended one after another, in the suite's log
/// directory `name` (so the secrets check reads it).
async fn log_of(name: &str, n: usize) -> PathBuf {
    let path = support::log_dir(name).join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let (ctx, args) = (AuditContext::default(), json!({"i": 1}));
    for _ in 0..n {
        log.append(&entry(&ctx, &args)).await.unwrap();
    }
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(
        path,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

fn records(path: &Path) -> Vec<Value> {
    lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_chain_and_share_fsyncs() {
    let dir = support::log_dir("audit-concurrent_appends_chain_and_share_fsyncs");
    let path = dir.join("nested/dir/audit.jsonl");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let tasks = (0..8).map(|task| {
        let log = log.clone();
        tokio::spawn(async move {
            let ctx = AuditContext::default();
            let args = json!({ "task": task });
            let mut seqs = Vec::new();
            for _ in 0..50 {
                seqs.push(log.append(&entry(&ctx, &args)).await.unwrap().seq);
            }
            seqs
        })
    });
    let mut seqs: Vec<u64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>(), "every seq once");
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.head_seq), (400, Some(400)));
    assert_eq!(report.torn_tail_bytes, 0);
    let fsyncs = log.fsyncs();
    assert!(
        fsyncs < 400,
        "group commit batched: {fsyncs} fsyncs for 400 records"
    );
    eprintln!("400 records, {fsyncs} fsyncs");
}

#[tokio::test]
async fn an_edited_record_is_named_by_seq() {
    let path = log_of("audit-an_edited_record_is_named_by_seq", 10).await;
    let mut l = lines(&path);
    assert!(l[4].contains("\"tool\":\"t\""));
    l[4] = l[4].replace("\"tool\":\"t\"", "\"tool\":\"x\"");
    write_lines(&path, &l);
    match verify(&path) {
        Err(AuditError::Altered { seq: 5 }) => {}
        other => panic!("expected altered seq 5, got {other:?}"),
    }
    assert!(
        AuditLog::open(&path).is_err(),
        "a tampered log is not appended to"
    );
}

#[tokio::test]
async fn a_deleted_record_breaks_the_link() {
    let path = log_of("audit-a_deleted_record_breaks_the_link", 10).await;
    let mut l = lines(&path);
    l.remove(4);
    write_lines(&path, &l);
    let err = verify(&path).unwrap_err();
    assert!(matches!(err, AuditError::BrokenLink { seq: 6 }), "{err:?}");
    assert!(err.to_string().contains("broken link at seq 6"), "{err}");
}

#[tokio::test]
async fn a_cut_tail_is_truncation_by_the_head() {
    let path = log_of("audit-a_cut_tail_is_truncation_by_the_head", 10).await;
    let l = lines(&path);
    write_lines(&path, &l[..7]);
    let err = verify(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Truncated {
                head_seq: 10,
                last_seq: 7
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "truncated: the head says seq 10, the file ends at seq 7"
    );
}

#[tokio::test]
async fn a_torn_tail_is_accepted_and_the_chain_continues() {
    let path = log_of("audit-a_torn_tail_is_accepted_and_the_chain_continues", 5).await;
    let last = lines(&path)[4].clone();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &last.as_bytes()[..40]).unwrap();
    drop(f);
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes), (5, 40));

    let log = AuditLog::open(&path).unwrap();
    let (ctx, args) = (AuditContext::default(), json!({}));
    let receipt = log.append(&entry(&ctx, &args)).await.unwrap();
    assert_eq!(receipt.seq, 6);
    let report = verify(&path).unwrap();
    assert_eq!((report.records, report.torn_tail_bytes), (6, 0));
    assert_eq!(report.last_hash, receipt.hash);
}

#[tokio::test]
async fn secrets_in_arguments_and_reasons_never_reach_the_file() {
    let dir = support::log_dir("audit-secrets_in_arguments_and_reasons_never_reach_the_file");
    let path = dir.join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let ctx = AuditContext::default();
    let args =
        json!({"api_key": "sk-test-SECRET123", "nested": {"password": "hunter2"}, "q": "ok"});
    let mut failed = entry(&ctx, &args);
    failed.decision = Decision::Failed;
    failed.result = None;
    failed.reason = Some("invalid type: string \"hunter2\", expected i64");
    log.append(&entry(&ctx, &args)).await.unwrap();
    log.append(&failed).await.unwrap();
    drop(log);
    for file in std::fs::read_dir(&dir).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} written: {text}");
        }
    }
    let r = records(&path);
    assert_eq!(r[0]["arguments"]["api_key"], "[redacted]");
    assert_eq!(r[0]["arguments"]["nested"]["password"], "[redacted]");
    assert_eq!(r[0]["arguments"]["q"], "ok");
    assert!(r[1]["reason"].as_str().unwrap().contains("[redacted]"));
    verify(&path).unwrap();
}

/// A writer SIGKILLed mid-stream (`parlor audit stress`, 8 tasks appending
/// flat out) leaves a log that verifies, at worst with an unacknowledged
/// torn tail, and that a new writer continues.
#[tokio::test]
async fn the_chain_survives_kill_9_mid_write() {
    let dir = support::log_dir("audit-the_chain_survives_kill_9_mid_write");
    let path = dir.join("audit.jsonl");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["audit", "stress"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0 {
        assert!(Instant::now() < deadline, "the stress writer wrote nothing");
        assert!(child.try_wait().unwrap().is_none(), "stress writer exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let report = verify(&path).unwrap();
    assert!(report.records > 0);
    eprintln!(
        "killed after {} records (head at {:?}), torn tail {} bytes",
        report.records, report.head_seq, report.torn_tail_bytes
    );
    let log = AuditLog::open(&path).unwrap();
    let (ctx, args) = (AuditContext::default(), json!({}));
    let receipt = log.append(&entry(&ctx, &args)).await.unwrap();
    assert_eq!(receipt.seq, report.last_seq + 1);
    let after = verify(&path).unwrap();
    assert_eq!((after.last_seq, after.torn_tail_bytes), (receipt.seq, 0));
    assert!(!std::fs::read_to_string(&path)
        .unwrap()
        .contains("stress-SECRET"));
}

/// Real calls through the pool to parlor's orders server: the record of
/// each is on disk, with the right fields, when the answer comes back.
#[tokio::test]
async fn tool_calls_through_the_pool_are_audited_before_the_answer() {
    let dir = support::log_dir("audit-tool_calls_through_the_pool_are_audited_before_the_answer");
    let specs =
        std::collections::BTreeMap::from([("orders".to_string(), support::orders_server(&dir))]);
    let pool = Arc::new(McpPool::connect(&specs, &["orders".into()]).await.unwrap());
    let path = dir.join("audit/tools.jsonl");
    let log = Arc::new(AuditLog::open(&path).unwrap());
    let context = AuditContext {
        session: Some("call_1".into()),
        ..AuditContext::default()
    };
    let tools = AuditedPool::new(pool.clone(), log.clone(), context);
    assert!(tools
        .specs()
        .await
        .iter()
        .any(|s| s.name == "orders__get_order"));

    let answer = tools
        .call("orders__get_order", json!({"order_id": 1042}))
        .await;
    assert!(!answer.is_error, "{}", answer.text);
    let r = records(&path);
    assert_eq!(r.len(), 2, "recorded by the time the answer returned");
    // The intent, written before the call was sent...
    let intent = &r[0];
    assert_eq!(intent["seq"], 1);
    assert_eq!(intent["decision"], "calling");
    assert_eq!(intent["tool"], "get_order");
    assert_eq!(intent["arguments"], json!({"order_id": 1042}));
    assert!(intent["result_sha256"].is_null() && intent["result_bytes"].is_null());
    // ...then the outcome.
    let ok = &r[1];
    assert_eq!(ok["seq"], 2);
    assert_eq!(ok["prev"], intent["hash"]);
    assert_eq!(ok["decision"], "allowed");
    assert_eq!(ok["principal"], "anonymous");
    assert_eq!(ok["role"], "caller");
    assert_eq!(ok["session"], "call_1");
    assert_eq!(
        (ok["server"].as_str(), ok["tool"].as_str()),
        (Some("orders"), Some("get_order"))
    );
    assert_eq!(ok["arguments"], json!({"order_id": 1042}));
    assert_eq!(ok["result_bytes"], answer.text.len());
    assert_eq!(
        ok["result_sha256"],
        hex::encode(Sha256::digest(answer.text.as_bytes()))
    );
    assert!(ok["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["reason"].is_null());
    assert!(chrono::DateTime::parse_from_rfc3339(ok["time"].as_str().unwrap()).is_ok());

    // Not an order number: the tool runs and reports an error (data for
    // the model): allowed, with `tool_error`.
    let answer = tools
        .call(
            "orders__get_order",
            json!({"order_id": "sk-test-SECRET123", "token": "hunter2"}),
        )
        .await;
    assert!(answer.is_error);
    let r = records(&path);
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(r[2]["decision"], "calling");
    let tool_error = &r[3];
    assert_eq!(tool_error["decision"], "allowed", "{tool_error}");
    assert_eq!(tool_error["tool_error"], true);
    assert_eq!(tool_error["prev"], r[2]["hash"]);
    assert_eq!(tool_error["result_bytes"], answer.text.len());

    // No such tool: the call fails in the pool, nothing ran (and, sent
    // nowhere, it had no intent).
    let answer = tools.call("orders__no_such_tool", json!({})).await;
    assert!(answer.is_error);
    let r = records(&path);
    assert_eq!(r.len(), 5, "{r:?}");
    let failed = &r[4];
    assert_eq!(failed["decision"], "failed", "{failed}");
    assert_eq!(failed["tool"], "orders__no_such_tool");
    assert!(failed["result_sha256"].is_null() && failed["result_bytes"].is_null());
    assert_eq!(failed["reason"], "unknown tool \"orders__no_such_tool\"");
    let text = std::fs::read_to_string(&path).unwrap();
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret} written: {text}");
    }
    assert_eq!(verify(&path).unwrap().records, 5);
    drop(tools);
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

/// `parlor mcp call` SIGKILLed while its tool runs (the Python peer's
/// `slow`): the intent is on record and the chain verifies. Before intents
/// were written, a call in flight at a kill left nothing.
#[test]
fn a_call_in_flight_at_kill_9_is_on_record() {
    let dir = support::log_dir("audit-a_call_in_flight_at_kill_9_is_on_record");
    let spec = dir.join("spec.toml");
    let python = support::python();
    let server = support::root().join("tests/peers/py_mcp_server.py");
    std::fs::write(
        &spec,
        format!(
            r#"name = "kill"
[[stage]]
kind = "vad"
backend = "earshot"
[mcp.py]
transport = "stdio"
command = "{python}"
args = ["{server}"]
[trust]
allow = [{{ command = "{python}", args = ["{server}"] }}]
lock = "{lock}"
[audit]
path = "{log}"
"#,
            server = server.display(),
            lock = dir.join("py.mcp.lock").display(),
            log = dir.join("tools.jsonl").display(),
        ),
    )
    .unwrap();
    let parlor = env!("CARGO_BIN_EXE_parlor");
    let trusted = std::process::Command::new(parlor)
        .args(["mcp", "trust", "--pipeline"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(trusted.status.success(), "{trusted:?}");
    // The whole path once, to a result: intent, then outcome.
    let mcp_call = |tool: &str, arguments: &str| {
        let mut command = std::process::Command::new(parlor);
        command
            .args(["mcp", "call", tool, arguments, "--pipeline"])
            .arg(&spec);
        command
    };
    let quick = mcp_call("py__add", r#"{"a": 2, "b": 3}"#).output().unwrap();
    assert!(quick.status.success(), "{quick:?}");
    assert_eq!(String::from_utf8_lossy(&quick.stdout).trim(), "5");

    let log = dir.join("tools.jsonl");
    let mut child = mcp_call("py__slow", r#"{"seconds": 60}"#)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the intent (the server is connecting, then the call runs).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let lines_in = |path: &Path| {
        std::fs::read_to_string(path)
            .map(|t| t.matches('\n').count())
            .unwrap_or(0)
    };
    while lines_in(&log) < 3 {
        assert!(std::time::Instant::now() < deadline, "no intent written");
        assert!(child.try_wait().unwrap().is_none(), "the call ended early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let r = records(&log);
    let decisions: Vec<_> = r.iter().map(|r| r["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["calling", "allowed", "calling"], "{r:?}");
    assert_eq!(r[2]["tool"], "slow");
    assert_eq!(r[2]["principal"], "cli");
    assert_eq!(r[2]["arguments"], json!({"seconds": 60}));
    let report = verify(&log).unwrap();
    assert_eq!(report.records, 3, "{report:?}");
    // The next process opens the log, carries the chain on, and the head
    // covers everything.
    let again = mcp_call("py__add", r#"{"a": 1, "b": 1}"#).output().unwrap();
    assert!(again.status.success(), "{again:?}");
    let report = verify(&log).unwrap();
    assert_eq!(report.records, 5, "{report:?}");
    assert_eq!(report.head_seq, Some(5), "{report:?}");
}

/// `parlor audit verify`: OK and exit 0 on a good log, the precise problem
/// and exit 1 on a tampered one; `--json` is one object.
#[tokio::test]
async fn the_verify_command_reports_and_exits_1_on_tampering() {
    let path = log_of(
        "audit-the_verify_command_reports_and_exits_1_on_tampering",
        4,
    )
    .await;
    let run = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_parlor"));
        cmd.args(["audit", "verify"]).arg(&path);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("records: 4") && stdout.contains("OK"),
        "{stdout}"
    );
    let out = run(true);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["ok"].as_bool(), v["report"]["last_seq"].as_u64()),
        (Some(true), Some(4))
    );

    let mut l = lines(&path);
    l[1] = l[1].replace("\"srv\"", "\"other\"");
    write_lines(&path, &l);
    let out = run(false);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("record seq 2 was altered"), "{stderr}");
}
