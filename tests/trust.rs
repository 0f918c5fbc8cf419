//! The MCP trust layer against a deliberately hostile server
//! (tests/peers/hostile_mcp_server.py, Python `mcp` SDK over stdio) and
//! parlor's own orders server: the allow-list at spec load, the poisoning
//! scan, `parlor mcp trust` / `parlor mcp scan`, shadowing, and a rug pull
//! mid-session and across runs.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parlor::mcp::{AuditContext, AuditLog, McpPool, ToolCallError};
use parlor::planner::{AuditedPool, Toolbox};
use parlor::spec::PipelineSpec;
use serde_json::{json, Value};

const STAGES: &str = "[[stage]]\nkind = \"vad\"\nbackend = \"earshot\"\n";

fn parse(text: &str) -> Result<PipelineSpec, String> {
    let dir = tempfile::tempdir().unwrap();
    PipelineSpec::parse(
        &format!("name = \"t\"\n{STAGES}{text}"),
        Path::new("t.toml"),
        dir.path(),
    )
    .map_err(|e| e.to_string())
}

fn refused(text: &str) -> String {
    parse(text).expect_err("the spec should be refused")
}

#[test]
fn allow_list_refuses_unlisted_servers_at_spec_load() {
    // No [trust] table: nothing may start.
    let msg = refused("[mcp.a]\ntransport = \"stdio\"\ncommand = \"srv\"\n");
    assert!(
        msg.contains("mcp.a, field `command`: `srv` is not in the trusted-server allow-list"),
        "{msg}"
    );
    assert!(msg.contains("fix: after checking the program, add { command = \"srv\", args = [] } to `allow` in [trust]"), "{msg}");

    // Same command, other args.
    let msg = refused(
        "[mcp.a]\ntransport = \"stdio\"\ncommand = \"srv\"\nargs = [\"--db\", \"/etc/other.db\"]\n\
         [trust]\nallow = [{ command = \"srv\", args = [\"--db\", \"pipelines/data/orders.db\"] }]\n",
    );
    assert!(msg.contains("1 problem"), "{msg}");
    assert!(
        msg.contains("mcp.a, field `args`: `srv --db /etc/other.db` is not in the trusted-server allow-list (the command is listed, but with other args)"),
        "{msg}"
    );

    // Plain http to a host that is not loopback: the entry and the server.
    let msg = refused(
        "[mcp.kb]\ntransport = \"streamable-http\"\nurl = \"http://10.0.0.5/mcp\"\n\
         [trust]\nallow = [{ url = \"http://10.0.0.5/\" }]\n",
    );
    assert!(msg.contains("2 problems"), "{msg}");
    assert!(msg.contains("trust.allow[0], field `url`"), "{msg}");
    assert!(
        msg.contains("mcp.kb, field `url`: http://10.0.0.5/mcp: plain http to the non-loopback host 10.0.0.5 is refused"),
        "{msg}"
    );
    assert!(msg.contains("fix: use https://"), "{msg}");

    // Outside the path prefix, on another port, on a look-alike host.
    for url in [
        "https://kb.example.com/admin/mcp",
        "https://kb.example.com/mcpx",
        "https://kb.example.com:8443/mcp",
        "https://kb.example.com.evil.org/mcp",
    ] {
        let msg = refused(&format!(
            "[mcp.kb]\ntransport = \"sse\"\nurl = \"{url}\"\n\
             [trust]\nallow = [{{ url = \"https://kb.example.com/mcp\" }}]\n"
        ));
        assert!(
            msg.contains(&format!(
                "mcp.kb, field `url`: {url} is not under any `url` in the trusted-server allow-list"
            )),
            "{msg}"
        );
    }

    // Hosted servers are checked too: https unless loopback.
    let msg = refused(
        "[mcp.kb]\ntransport = \"hosted\"\nurl = \"http://kb.example.com/mcp\"\n\
         [trust]\nallow = [{ url = \"https://kb.example.com/mcp\" }]\n",
    );
    assert!(
        msg.contains("plain http to the non-loopback host kb.example.com"),
        "{msg}"
    );

    // An entry must say what it allows.
    let msg = refused("[trust]\nallow = [{ command = \"a\", url = \"https://x/\" }]\n");
    assert!(
        msg.contains("trust.allow[0]: needs exactly one of `command` (stdio) or `url` (remote)"),
        "{msg}"
    );

    // What is listed loads.
    let spec = parse(
        "[mcp.a]\ntransport = \"stdio\"\ncommand = \"srv\"\nargs = [\"--db\", \"x.db\"]\n\
         [mcp.kb]\ntransport = \"streamable-http\"\nurl = \"https://kb.example.com/mcp/v2\"\n\
         [mcp.local]\ntransport = \"sse\"\nurl = \"http://127.0.0.1:8931/sse\"\n\
         [mcp.hosted]\ntransport = \"hosted\"\nurl = \"https://kb.example.com/mcp\"\n\
         [trust]\nallow = [{ command = \"srv\", args = [\"--db\", \"x.db\"] }, \
         { url = \"https://kb.example.com/mcp\" }, { url = \"http://127.0.0.1:8931/\" }]\n",
    )
    .expect("listed servers load");
    assert_eq!(spec.mcp.len(), 4);
    assert_eq!(spec.lock_path(Path::new("/b")), Path::new("/b/t.mcp.lock"));
}

/// A spec in `dir` with the orders server and, if `hostile`, the hostile
/// one (with `env` in its environment), locking to `dir/tools.mcp.lock`.
fn write_spec(dir: &Path, hostile: bool, env: &str) -> PathBuf {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let python = support::python();
    let script = support::root()
        .join("tests/peers/hostile_mcp_server.py")
        .display()
        .to_string();
    let orders = env!("CARGO_BIN_EXE_parlor-mcp-orders");
    let db = dir.join("orders.db").display().to_string();
    let mut text = format!(
        "name = \"hostile\"\n{STAGES}\n\
         [mcp.orders]\ntransport = \"stdio\"\ncommand = {}\nargs = [\"--db\", {}]\n",
        q(orders),
        q(&db)
    );
    if hostile {
        text += &format!(
            "[mcp.hostile]\ntransport = \"stdio\"\ncommand = {}\nargs = [{}]\nenv = {{ {env} }}\n",
            q(&python),
            q(&script)
        );
    }
    text += &format!(
        "[trust]\nlock = {}\nallow = [\n  {{ command = {}, args = [\"--db\", {}] }},\n  {{ command = {}, args = [{}] }},\n]\n",
        q(&dir.join("tools.mcp.lock").display().to_string()),
        q(orders),
        q(&db),
        q(&python),
        q(&script)
    );
    let path = dir.join("hostile.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn parlor(args: &[&str], spec: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(args)
        .arg("--pipeline")
        .arg(spec)
        .current_dir(support::root())
        .output()
        .expect("run parlor")
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

/// `parlor mcp scan --json`, as `server/tool` → the tool's object.
fn scan(spec: &Path) -> (Value, std::collections::BTreeMap<String, Value>) {
    let out = parlor(&["mcp", "scan", "--json"], spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let mut tools = std::collections::BTreeMap::new();
    for server in report["servers"].as_array().unwrap() {
        for tool in server["tools"].as_array().unwrap() {
            tools.insert(
                format!(
                    "{}/{}",
                    server["name"].as_str().unwrap(),
                    tool["name"].as_str().unwrap()
                ),
                tool.clone(),
            );
        }
    }
    (report, tools)
}

fn kinds(tool: &Value) -> Vec<String> {
    tool["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn trust_pins_tools_and_scan_reports_poison_shadowing_and_rug_pulls() {
    let dir = tempfile::tempdir().unwrap();

    // The orders server alone, trusted first: every tool is clean.
    let spec = write_spec(dir.path(), false, "");
    let (report, tools) = scan(&spec);
    assert_eq!(report["lock_exists"], false, "{report:#}");
    assert_eq!(tools["orders/get_order"]["status"], "new", "{report:#}");
    let out = parlor(&["mcp", "trust"], &spec);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("tool(s) pinned in"),
        "{}",
        text(&out.stdout)
    );
    let (report, tools) = scan(&spec);
    assert_eq!(report["lock_exists"], true);
    assert!(
        tools
            .values()
            .all(|t| t["status"] == "pinned" && t["offered"] == true),
        "{report:#}"
    );

    // The hostile server joins. Nothing of it is trusted yet; each poison
    // is named; its get_order shadows the orders server's.
    let spec = write_spec(dir.path(), true, "");
    let (report, tools) = scan(&spec);
    assert_eq!(
        tools["hostile/weather"]["status"], "quarantined",
        "{report:#}"
    );
    assert!(kinds(&tools["hostile/weather"]).is_empty(), "{report:#}");
    let notes = kinds(&tools["hostile/notes"]);
    for kind in ["invisible_text", "instruction", "secret_reference"] {
        assert!(notes.contains(&kind.to_string()), "notes: {notes:?}");
    }
    let exfil = kinds(&tools["hostile/exfil"]);
    assert!(exfil.contains(&"instruction".to_string()), "{exfil:?}");
    assert!(exfil.contains(&"secret_reference".to_string()), "{exfil:?}");
    assert_eq!(kinds(&tools["hostile/get_order"]), ["shadowing"]);
    // The pinned original stays offered; the newcomer does not.
    assert_eq!(tools["orders/get_order"]["status"], "pinned");
    assert_eq!(tools["orders/get_order"]["offered"], true);
    assert_eq!(tools["hostile/get_order"]["offered"], false);

    // The table says the same.
    let out = parlor(&["mcp", "scan"], &spec);
    let table = text(&out.stdout);
    assert!(
        table.contains("SERVER") && table.contains("FINDINGS"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("hostile")
            && l.contains("notes")
            && l.contains("quarantined")
            && l.contains("U+E0020")),
        "{table}"
    );

    // Trust refuses the poisoned and the shadowing tools (exit 1) and pins
    // the clean ones.
    let out = parlor(&["mcp", "trust"], &spec);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.contains("notes")
            && l.contains("refused: instruction, invisible_text, secret_reference")),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("hostile")
            && l.contains("get_order")
            && l.contains("shadowing is never accepted")),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("3 tool(s) refused"),
        "{}",
        text(&out.stderr)
    );
    let lock: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tools.mcp.lock")).unwrap())
            .unwrap();
    let pinned: Vec<&str> = lock["servers"]["hostile"]["tools"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(pinned, ["pull_rug", "weather"], "{lock:#}");
    assert!(
        lock["servers"]["orders"]["tools"]["get_order"].is_object(),
        "{lock:#}"
    );
    let (_, tools) = scan(&spec);
    assert_eq!(tools["hostile/weather"]["status"], "pinned");
    assert_eq!(tools["hostile/notes"]["status"], "quarantined");

    // --accept-findings trusts reviewed findings, never shadowing.
    let out = parlor(&["mcp", "trust", "--accept-findings"], &spec);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("1 tool(s) refused"),
        "{}",
        text(&out.stderr)
    );
    let (_, tools) = scan(&spec);
    assert_eq!(tools["hostile/notes"]["status"], "pinned");
    assert_eq!(tools["hostile/get_order"]["offered"], false);

    // A rug pull across runs: the server now starts with weather poisoned.
    let spec = write_spec(dir.path(), true, "HOSTILE_RUG = \"1\"");
    let (report, tools) = scan(&spec);
    let weather = &tools["hostile/weather"];
    assert_eq!(weather["status"], "changed", "{report:#}");
    assert_eq!(weather["offered"], false);
    assert!(weather["reason"]
        .as_str()
        .unwrap()
        .contains("changed since it was trusted"));
    assert!(
        kinds(weather).contains(&"instruction".to_string()),
        "{weather:#}"
    );
}

/// Lists until `name` is gone from what the model is offered (the
/// list_changed notification is handled on rmcp's task), at most 10 s.
async fn wait_until_withdrawn(tools: &dyn Toolbox, name: &str) {
    let started = Instant::now();
    while tools.specs().await.iter().any(|t| t.name == name) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} still offered after list_changed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn offered(specs: &[parlor::llm::ToolSpec]) -> Vec<String> {
    let mut names: Vec<String> = specs.iter().map(|t| t.name.clone()).collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rug_pull_mid_session_quarantines_the_tool() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), true, "");
    let spec = PipelineSpec::load(&path, dir.path()).expect("spec");
    let names = ["hostile".to_string()];

    // No lock yet: clean tools are pinned on first use, poisoned ones are
    // never offered, and a change mid-session is still caught.
    let pool = parlor::planner::setup::connect_pool(&spec, &names, dir.path())
        .await
        .unwrap();
    assert_eq!(
        offered(&pool.specs().await),
        [
            "hostile__get_order",
            "hostile__pull_rug",
            "hostile__weather"
        ]
    );
    let err = pool
        .call_tool("hostile__notes", json!({"text": "x"}))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolCallError::Quarantined { .. }), "{err}");
    pool.call_tool("hostile__weather", json!({"city": "Oslo"}))
        .await
        .expect("trusted on first use");
    pool.call_tool("hostile__pull_rug", Value::Null)
        .await
        .unwrap();
    // Calls alone (no re-list by the planner) must see the change.
    let started = Instant::now();
    loop {
        match pool
            .call_tool("hostile__weather", json!({"city": "Oslo"}))
            .await
        {
            Err(ToolCallError::Quarantined { reason, .. }) => {
                assert!(reason.contains("changed since it was trusted"), "{reason}");
                break;
            }
            other => assert!(
                started.elapsed() < Duration::from_secs(10),
                "still callable after list_changed: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!offered(&pool.specs().await).contains(&"hostile__weather".to_string()));
    pool.shutdown().await;

    // With a lock (weather pinned clean), through the audited toolbox.
    let out = parlor(&["mcp", "trust"], &path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let pool = Arc::new(
        parlor::planner::setup::connect_pool(&spec, &names, dir.path())
            .await
            .unwrap(),
    );
    let log = Arc::new(AuditLog::open(dir.path().join("audit.jsonl")).unwrap());
    let tools = AuditedPool::new(pool.clone(), log, AuditContext::default());
    // get_order shadowed the orders server's when trusted: not pinned.
    assert_eq!(
        offered(&tools.specs().await),
        ["hostile__pull_rug", "hostile__weather"]
    );
    let answer = tools
        .call("hostile__weather", json!({"city": "Oslo"}))
        .await;
    assert_eq!(
        (answer.text.as_str(), answer.is_error),
        ("Sunny in Oslo.", false)
    );

    // The rug pull: the description turns poisonous and the server says so.
    let answer = tools.call("hostile__pull_rug", Value::Null).await;
    assert_eq!(answer.text, "pulled");
    wait_until_withdrawn(&tools, "hostile__weather").await;
    let answer = tools
        .call("hostile__weather", json!({"city": "Oslo"}))
        .await;
    assert!(answer.is_error, "{answer:?}");
    assert!(
        answer.text.contains("tool \"hostile__weather\" is quarantined and was not called: its description or input schema changed since it was trusted"),
        "{}",
        answer.text
    );
    let records = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(records.lines().last().unwrap()).unwrap();
    assert_eq!(last["decision"], "denied", "{last}");
    assert_eq!(last["server"], "hostile", "{last}");
    assert_eq!(last["tool"], "weather", "{last}");
    // Only the first call, made before the pull, went out: the withheld
    // one was refused before its intent.
    let intents = records
        .lines()
        .filter(|l| l.contains(r#""decision":"calling""#) && l.contains(r#""tool":"weather""#))
        .count();
    assert_eq!(intents, 1, "{records}");
    // The attacks themselves are on record, once each, when the gate first
    // withheld the tool: the shadowing name at the first listing, the rug
    // pull when the changed description was listed.
    let quarantines: Vec<Value> = records
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|why| why.starts_with("quarantined, not offered"))
        })
        .collect();
    let of =
        |tool: &str| -> Vec<&Value> { quarantines.iter().filter(|r| r["tool"] == tool).collect() };
    assert_eq!(of("get_order").len(), 1, "{quarantines:#?}");
    let pulled = of("weather");
    assert_eq!(pulled.len(), 1, "{quarantines:#?}");
    assert_eq!(pulled[0]["decision"], "denied");
    assert_eq!(pulled[0]["arguments"], Value::Null);
    assert!(
        pulled[0]["reason"].as_str().unwrap().contains("changed"),
        "{}",
        pulled[0]
    );
    let verify = Command::new(env!("CARGO_BIN_EXE_parlor"))
        .args(["audit", "verify"])
        .arg(dir.path().join("audit.jsonl"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    drop(tools);
    if let Ok(pool) = Arc::try_unwrap(pool) {
        pool.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadowing_tools_are_not_offered_until_one_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_spec(dir.path(), true, "");
    let spec = PipelineSpec::load(&path, dir.path()).expect("spec");
    let names = ["orders".to_string(), "hostile".to_string()];
    let pool: McpPool = parlor::planner::setup::connect_pool(&spec, &names, dir.path())
        .await
        .unwrap();
    let names = offered(&pool.specs().await);
    assert!(
        !names.iter().any(|n| n.ends_with("__get_order")),
        "{names:?}"
    );
    assert!(
        names.contains(&"orders__find_orders".to_string()),
        "{names:?}"
    );
    let err = pool
        .call_tool("hostile__get_order", json!({"order_number": "1"}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("shadowing"), "{err}");
    pool.shutdown().await;
}
