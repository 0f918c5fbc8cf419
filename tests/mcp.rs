//! The MCP client pool against servers parlor did not write, over every
//! transport: `@modelcontextprotocol/server-everything` (npm) and a server
//! written with the Python `mcp` SDK (tests/peers/py_mcp_server.py). Both
//! are installed by `bash models/setup.sh` into $PARLOR_CACHE.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use parlor::mcp::{McpError, McpPool, McpPoolOptions, ToolCallError};
use parlor::spec::McpServerSpec;
use serde_json::json;
use tokio::process::{Child, Command};

fn cache() -> PathBuf {
    std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/parlor")
        })
}

fn python() -> String {
    let p = cache().join("venv/bin/python");
    assert!(
        p.exists(),
        "{} missing: run bash models/setup.sh",
        p.display()
    );
    p.display().to_string()
}

fn py_server() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/py_mcp_server.py").into()
}

fn everything_js() -> String {
    let p = cache().join("npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    assert!(
        p.exists(),
        "{} missing: run bash models/setup.sh",
        p.display()
    );
    p.display().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits (bounded) until something accepts on `port`.
async fn wait_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("peer exited before listening on {port}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "peer not listening on {port} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Python peer over HTTP (`sse` or `streamable-http`), killed on drop.
async fn spawn_py(transport: &str, port: u16) -> Child {
    let mut child = Command::new(python())
        .args([py_server(), transport.into(), port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python peer");
    wait_port(port, &mut child).await;
    child
}

/// server-everything over HTTP (`sse` or `streamableHttp`), killed on drop.
async fn spawn_everything(transport: &str, port: u16) -> Child {
    let mut child = Command::new("node")
        .args([everything_js(), transport.into()])
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server-everything");
    wait_port(port, &mut child).await;
    child
}

fn py_stdio(env: &[(&str, &str)]) -> McpServerSpec {
    McpServerSpec::Stdio {
        command: python(),
        args: vec![py_server(), "stdio".into()],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn everything_stdio() -> McpServerSpec {
    McpServerSpec::Stdio {
        command: "node".into(),
        args: vec![everything_js(), "stdio".into()],
        env: BTreeMap::new(),
    }
}

fn specs(list: Vec<(&str, McpServerSpec)>) -> (BTreeMap<String, McpServerSpec>, Vec<String>) {
    let names = list.iter().map(|(n, _)| n.to_string()).collect();
    (
        list.into_iter().map(|(n, s)| (n.to_string(), s)).collect(),
        names,
    )
}

async fn pool(list: Vec<(&str, McpServerSpec)>) -> McpPool {
    let (specs, names) = specs(list);
    McpPool::connect(&specs, &names).await.expect("connect")
}

/// Tools (schema intact), a tool error as data, resources within a budget,
/// a prompt with arguments: the same checks over every transport.
async fn check_python_peer(pool: &McpPool) {
    let tools = pool.tools().await;
    let add = tools
        .iter()
        .find(|t| t.name == "py__add")
        .expect("py__add offered");
    assert_eq!(add.server, "py");
    assert_eq!(add.tool, "add");
    assert_eq!(add.description.as_deref(), Some("Add two integers."));
    assert_eq!(
        add.input_schema,
        json!({
            "properties": {"a": {"title": "A", "type": "integer"}, "b": {"title": "B", "type": "integer"}},
            "required": ["a", "b"], "type": "object", "title": "addArguments"
        }),
        "schema passed through intact"
    );

    let out = pool
        .call_tool("py__add", json!({"a": 2, "b": 3}))
        .await
        .expect("add");
    assert_eq!(out.text, "5");
    assert!(!out.is_error);

    let out = pool
        .call_tool("py__fail", json!({"reason": "test"}))
        .await
        .expect("tool error is data");
    assert!(out.is_error);
    // The Python SDK reports the failure without the exception text.
    assert!(out.text.contains("fail"), "{}", out.text);

    let err = pool.call_tool("py__nope", json!({})).await.unwrap_err();
    assert!(matches!(err, ToolCallError::UnknownTool { .. }), "{err}");
    let err = pool.call_tool("py__add", json!([1, 2])).await.unwrap_err();
    assert!(matches!(err, ToolCallError::BadArguments { .. }), "{err}");

    let resources = pool.resources().await;
    assert!(
        resources
            .iter()
            .any(|r| r.uri == "note://greeting" && r.server == "py"),
        "{resources:?}"
    );
    let greeting = pool
        .read_resource("py", "note://greeting")
        .await
        .expect("read");
    assert_eq!(greeting.text, "Hello from the Python peer.");
    let ctx = pool
        .resource_context(
            &[
                ("py".into(), "note://greeting".into()),
                ("py".into(), "note://long".into()),
            ],
            400,
        )
        .await
        .expect("context");
    assert!(ctx.len() <= 400, "{} bytes", ctx.len());
    assert!(ctx.contains("Hello from the Python peer."));
    assert!(ctx.contains("[truncated]"), "{ctx}");

    let prompts = pool.prompts().await;
    let persona = prompts
        .iter()
        .find(|p| p.name == "persona")
        .expect("persona prompt");
    assert!(persona
        .arguments
        .iter()
        .any(|a| a.name == "name" && a.required));
    let args = BTreeMap::from([
        ("name".to_string(), "Ada".to_string()),
        ("tone".to_string(), "dry".to_string()),
    ]);
    let prompt = pool
        .get_prompt("py", "persona", &args)
        .await
        .expect("prompt");
    assert_eq!(prompt.joined(), "You are Ada. Answer in a dry tone.");
}

#[tokio::test]
async fn python_peer_over_stdio() {
    let pool = pool(vec![("py", py_stdio(&[]))]).await;
    check_python_peer(&pool).await;
    let status = &pool.servers()[0];
    assert!(status.connected);
    assert_eq!(status.transport, "stdio");
    assert_eq!(status.protocol_version.as_deref(), Some("2025-11-25"));
}

#[tokio::test]
async fn python_peer_over_legacy_sse() {
    let port = free_port();
    let _peer = spawn_py("sse", port).await;
    let pool = pool(vec![(
        "py",
        McpServerSpec::Sse {
            url: format!("http://127.0.0.1:{port}/sse"),
            oauth: None,
        },
    )])
    .await;
    check_python_peer(&pool).await;
}

#[tokio::test]
async fn python_peer_over_streamable_http() {
    let port = free_port();
    let _peer = spawn_py("streamable-http", port).await;
    let pool = pool(vec![(
        "py",
        McpServerSpec::StreamableHttp {
            url: format!("http://127.0.0.1:{port}/mcp"),
            oauth: None,
        },
    )])
    .await;
    check_python_peer(&pool).await;
}

async fn check_everything(pool: &McpPool) {
    let tools = pool.tools().await;
    let names: Vec<_> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(
        names.contains(&"ev__echo") && names.contains(&"ev__get-sum"),
        "{names:?}"
    );
    let echo = pool
        .call_tool("ev__echo", json!({"message": "hi there"}))
        .await
        .expect("echo");
    assert!(echo.text.contains("hi there"), "{}", echo.text);
    let sum = pool
        .call_tool("ev__get-sum", json!({"a": 2, "b": 40}))
        .await
        .expect("sum");
    assert!(sum.text.contains("42"), "{}", sum.text);
    let resources = pool.resources().await;
    let first = resources.first().expect("some resources");
    let content = pool.read_resource("ev", &first.uri).await.expect("read");
    assert!(!content.text.is_empty());
    let args = BTreeMap::from([("city".to_string(), "Oslo".to_string())]);
    let prompt = pool
        .get_prompt("ev", "args-prompt", &args)
        .await
        .expect("prompt");
    assert!(prompt.joined().contains("Oslo"), "{prompt:?}");
}

#[tokio::test]
async fn everything_over_stdio() {
    let pool = pool(vec![("ev", everything_stdio())]).await;
    check_everything(&pool).await;
}

#[tokio::test]
async fn everything_over_legacy_sse() {
    let port = free_port();
    let _peer = spawn_everything("sse", port).await;
    let pool = pool(vec![(
        "ev",
        McpServerSpec::Sse {
            url: format!("http://127.0.0.1:{port}/sse"),
            oauth: None,
        },
    )])
    .await;
    check_everything(&pool).await;
}

#[tokio::test]
async fn everything_over_streamable_http() {
    let port = free_port();
    let _peer = spawn_everything("streamableHttp", port).await;
    let pool = pool(vec![(
        "ev",
        McpServerSpec::StreamableHttp {
            url: format!("http://127.0.0.1:{port}/mcp"),
            oauth: None,
        },
    )])
    .await;
    check_everything(&pool).await;
}

#[tokio::test]
async fn many_servers_at_once_names_never_collide() {
    let port = free_port();
    let _peer = spawn_everything("streamableHttp", port).await;
    let pool = pool(vec![
        ("a", py_stdio(&[])),
        ("b", py_stdio(&[])),
        // `x.y` sanitises to `x_y`: the second gets a suffix, not a clash.
        ("x.y", py_stdio(&[])),
        ("x_y", py_stdio(&[])),
        (
            "ev",
            McpServerSpec::StreamableHttp {
                url: format!("http://127.0.0.1:{port}/mcp"),
                oauth: None,
            },
        ),
    ])
    .await;
    let tools = pool.tools().await;
    let mut names: Vec<_> = tools.iter().map(|t| t.name.clone()).collect();
    let n = names.len();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "duplicate names");
    assert!(names.iter().all(|n| n
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')));
    for name in ["a__add", "b__add", "x_y__add", "x_y__add_2"] {
        let out = pool
            .call_tool(name, json!({"a": 1, "b": 1}))
            .await
            .expect(name);
        assert_eq!(out.text, "2", "{name}");
    }
    assert!(names.contains(&"ev__echo".to_string()));
}

#[tokio::test]
async fn tools_list_changed_refreshes_the_cache() {
    let pool = pool(vec![("py", py_stdio(&[]))]).await;
    assert!(!pool.tools().await.iter().any(|t| t.name == "py__extra"));
    let out = pool
        .call_tool("py__grow", json!({"name": "extra"}))
        .await
        .expect("grow");
    assert_eq!(out.text, "added extra");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pool.tools().await.iter().any(|t| t.name == "py__extra") {
        assert!(Instant::now() < deadline, "list_changed not seen in 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = pool
        .call_tool("py__extra", json!({}))
        .await
        .expect("new tool");
    assert_eq!(out.text, "I am extra");
}

#[tokio::test]
async fn invalidate_forces_a_fresh_list() {
    let pool = pool(vec![("py", py_stdio(&[]))]).await;
    let before = pool.tools().await;
    pool.invalidate();
    assert_eq!(pool.tools().await, before);
}

#[tokio::test]
async fn crash_mid_call_fails_cleanly_then_reconnects() {
    let pool = pool(vec![("py", py_stdio(&[])), ("other", py_stdio(&[]))]).await;
    pool.tools().await;
    let started = Instant::now();
    let err = pool.call_tool("py__crash", json!({})).await.unwrap_err();
    assert!(matches!(err, ToolCallError::Disconnected { .. }), "{err}");
    assert!(err.to_string().contains("\"py\""), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.as_output().is_error);
    // The other server never noticed.
    let out = pool
        .call_tool("other__add", json!({"a": 1, "b": 2}))
        .await
        .expect("other");
    assert_eq!(out.text, "3");
    // The next call to the crashed one spawns it again and succeeds.
    let out = pool
        .call_tool("py__add", json!({"a": 4, "b": 5}))
        .await
        .expect("after reconnect");
    assert_eq!(out.text, "9");
}

/// Start the Python peer on `transport`, make one call, kill the server,
/// start it again on the same port: the next call must reconnect and succeed.
async fn server_dies_mid_session_next_call_reconnects(
    transport: &str,
    spec: impl Fn(u16) -> McpServerSpec,
) {
    let port = free_port();
    let peer = spawn_py(transport, port).await;
    let pool = pool(vec![("py", spec(port))]).await;
    assert_eq!(
        pool.call_tool("py__add", json!({"a": 1, "b": 1}))
            .await
            .expect("first")
            .text,
        "2"
    );
    drop(peer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _peer = spawn_py(transport, port).await;
    let out = pool
        .call_tool("py__add", json!({"a": 2, "b": 2}))
        .await
        .expect("after restart");
    assert_eq!(out.text, "4");
}

#[tokio::test]
async fn http_server_dies_mid_session_next_call_reconnects() {
    server_dies_mid_session_next_call_reconnects("streamable-http", |port| {
        McpServerSpec::StreamableHttp {
            url: format!("http://127.0.0.1:{port}/mcp"),
            oauth: None,
        }
    })
    .await;
}

#[tokio::test]
async fn sse_server_dies_mid_session_next_call_reconnects() {
    server_dies_mid_session_next_call_reconnects("sse", |port| McpServerSpec::Sse {
        url: format!("http://127.0.0.1:{port}/sse"),
        oauth: None,
    })
    .await;
}

#[tokio::test]
async fn a_slow_tool_times_out_and_the_session_survives() {
    let (specs, names) = specs(vec![("py", py_stdio(&[]))]);
    let options = McpPoolOptions {
        call_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let pool = McpPool::connect_with(&specs, &names, options)
        .await
        .expect("connect");
    pool.tools().await;
    let started = Instant::now();
    let err = pool
        .call_tool("py__slow", json!({"seconds": 10}))
        .await
        .unwrap_err();
    assert!(matches!(err, ToolCallError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let out = pool
        .call_tool("py__slow", json!({"seconds": 0.01}))
        .await
        .expect("fast one");
    assert_eq!(out.text, "done");
}

#[tokio::test]
async fn stdio_child_gets_only_its_own_env() {
    std::env::set_var("PARLOR_TEST_PARENT_SECRET", "leaked");
    std::env::set_var("PARLOR_TEST_ORDERS_TOKEN", "t-456");
    let pool = pool(vec![(
        "py",
        py_stdio(&[
            ("ORDERS_KEY", "k-123"),
            // Named, not written: the value comes from parlor's environment.
            ("ORDERS_TOKEN", "${PARLOR_TEST_ORDERS_TOKEN}"),
        ]),
    )])
    .await;
    let get = |name: &'static str| pool.call_tool("py__env", json!({ "name": name }));
    assert_eq!(get("ORDERS_KEY").await.expect("env").text, "k-123");
    assert_eq!(get("ORDERS_TOKEN").await.expect("env").text, "t-456");
    assert_eq!(
        get("PARLOR_TEST_ORDERS_TOKEN").await.expect("env").text,
        "<unset>"
    );
    assert_eq!(
        get("PARLOR_TEST_PARENT_SECRET").await.expect("env").text,
        "<unset>"
    );
    assert_eq!(get("HOME").await.expect("env").text, "<unset>");
    assert_ne!(get("PATH").await.expect("env").text, "<unset>");
}

#[tokio::test]
async fn an_env_value_naming_an_unset_variable_is_a_connect_error() {
    let (specs, names) = specs(vec![(
        "py",
        py_stdio(&[("ORDERS_TOKEN", "${PARLOR_TEST_NEVER_SET_TOKEN}")]),
    )]);
    let Err(err) = McpPool::connect(&specs, &names).await else {
        panic!("connected with an unset variable");
    };
    assert_eq!(
        err.to_string(),
        "MCP server \"py\": cannot connect: env ORDERS_TOKEN: \
         ${PARLOR_TEST_NEVER_SET_TOKEN} is not set in parlor's environment"
    );
}

#[tokio::test]
async fn resource_subscription_sees_updates() {
    let pool = pool(vec![("ev", everything_stdio())]).await;
    let uri = pool
        .resources()
        .await
        .first()
        .expect("a resource")
        .uri
        .clone();
    pool.subscribe("ev", &uri).await.expect("subscribe");
    pool.read_resource("ev", &uri).await.expect("read");
    pool.call_tool("ev__toggle-subscriber-updates", json!({}))
        .await
        .expect("toggle");
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let updated = pool.take_updated_resources();
        if updated.contains(&("ev".to_string(), uri.clone())) {
            break;
        }
        assert!(Instant::now() < deadline, "no resources/updated in 12 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn subscribing_where_unsupported_says_so() {
    let pool = pool(vec![("py", py_stdio(&[]))]).await;
    let err = pool.subscribe("py", "note://greeting").await.unwrap_err();
    assert!(matches!(err, McpError::Unsupported { .. }), "{err}");
}

async fn start_error(list: Vec<(&str, McpServerSpec)>) -> String {
    let (specs, names) = specs(list);
    let options = McpPoolOptions {
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let started = Instant::now();
    let err = match McpPool::connect_with(&specs, &names, options).await {
        Ok(_) => panic!("connected to a server that is not there"),
        Err(e) => e.to_string(),
    };
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    err
}

#[tokio::test]
async fn wrong_command_or_url_fails_at_start_naming_the_server() {
    let closed = free_port();
    let err = start_error(vec![(
        "orders",
        McpServerSpec::Stdio {
            command: "/no/such/parlor-mcp".into(),
            args: vec![],
            env: BTreeMap::new(),
        },
    )])
    .await;
    assert!(
        err.contains("\"orders\"") && err.contains("/no/such/parlor-mcp"),
        "{err}"
    );

    let err = start_error(vec![(
        "kb",
        McpServerSpec::StreamableHttp {
            url: format!("http://127.0.0.1:{closed}/mcp"),
            oauth: None,
        },
    )])
    .await;
    assert!(err.contains("\"kb\""), "{err}");

    let err = start_error(vec![(
        "legacy",
        McpServerSpec::Sse {
            url: format!("http://127.0.0.1:{closed}/sse"),
            oauth: None,
        },
    )])
    .await;
    assert!(err.contains("\"legacy\""), "{err}");

    let err = start_error(vec![(
        "bad",
        McpServerSpec::Sse {
            url: "not a url".into(),
            oauth: None,
        },
    )])
    .await;
    assert!(err.contains("\"bad\""), "{err}");

    // A command that is not an MCP server: the handshake fails, named.
    let err = start_error(vec![(
        "mute",
        McpServerSpec::Stdio {
            command: "true".into(),
            args: vec![],
            env: BTreeMap::new(),
        },
    )])
    .await;
    assert!(err.contains("\"mute\""), "{err}");

    // Several at once: every failure is listed.
    let err = start_error(vec![
        (
            "one",
            McpServerSpec::Sse {
                url: format!("http://127.0.0.1:{closed}/sse"),
                oauth: None,
            },
        ),
        (
            "two",
            McpServerSpec::Stdio {
                command: "/no/such".into(),
                args: vec![],
                env: BTreeMap::new(),
            },
        ),
        ("fine", py_stdio(&[])),
    ])
    .await;
    assert!(
        err.contains("\"one\"") && err.contains("\"two\"") && !err.contains("\"fine\""),
        "{err}"
    );

    let (specs, _) = specs(vec![]);
    let err = McpPool::connect(&specs, &["ghost".to_string()])
        .await
        .err()
        .expect("unknown")
        .to_string();
    assert!(err.contains("\"ghost\""), "{err}");
}

#[tokio::test]
async fn a_2024_11_05_server_is_spoken_to_in_its_version() {
    let pool = pool(vec![(
        "old",
        McpServerSpec::Stdio {
            command: python(),
            args: vec![concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/peers/old_protocol_server.py"
            )
            .into()],
            env: BTreeMap::new(),
        },
    )])
    .await;
    assert_eq!(
        pool.servers()[0].protocol_version.as_deref(),
        Some("2024-11-05")
    );
    assert!(pool.tools().await.iter().any(|t| t.name == "old__add"));
    let out = pool
        .call_tool("old__add", json!({"a": 20, "b": 22}))
        .await
        .expect("add");
    assert_eq!(out.text, "42");
    assert!(
        pool.resources().await.is_empty(),
        "no resources capability: no request"
    );
}
