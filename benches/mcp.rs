//! MCP tool round trips, one call at a time, by three clients:
//!
//! - `rmcp raw`: a bare rmcp session (`peer.call_tool`), set up exactly as
//!   the pool sets up its own (same transport code, same `initialize`);
//! - `parlor pool`: [`McpPool::call_tool`], i.e. the raw call plus routing,
//!   the session check, the deadline and the conversion to a `ToolOutput`;
//! - `python mcp`: the Python `mcp` 2.3.0 client
//!   (benches/peers/mcp_client_bench.py).
//!
//! against four servers: the Python `mcp` server (tests/peers/py_mcp_server.py,
//! `add(2, 3)`) over stdio and Streamable HTTP, and parlor's own Rust servers,
//! `parlor-mcp-orders` over stdio (`get_order`) and `parlor-mcp-knowledge`
//! over Streamable HTTP (`search_knowledge`). The raw and pool calls take
//! turns on the same server (over stdio: two children of the same command;
//! over HTTP: two sessions on one process), so the difference of the two (the
//! pool's own cost per call) is measured under the same conditions. A last
//! row runs the orders server in this process over `tokio::io::duplex` with
//! the raw client: the client and protocol cost without processes and pipes
//! (on the same 2-worker runtime as the other rows). (The pool only
//! connects from an `[mcp.NAME]` spec, so it cannot be given that transport
//! without a new public constructor; its in-process cost is about that row
//! plus the pool overhead measured above.)
//!
//! Prints p50/p99/mean per row and the ratios row / pool: the Python rows'
//! ratios are Python / parlor.
//!
//! Needs the peers from `bash models/setup.sh` (venv with mcp==2.3.0); the
//! Python rows are left out without it. `MCP_BENCH_N` sets the number of timed
//! calls per client (default 500).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use parlor::mcp::servers::orders::{open_or_seed, OrdersServer};
use parlor::mcp::{transport, McpPool};
use parlor::spec::McpServerSpec;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::ServiceExt;
use serde_json::{json, Value};

/// Untimed calls per client before measuring (connection set-up, caches).
const WARM_UP: usize = 20;
/// Calls the raw client and the pool make in a row before the other's turn.
const BLOCK: usize = 50;

struct Stats {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
}

/// The tool call every client makes on one server, and what its text must
/// contain.
struct Call {
    tool: &'static str,
    arguments: Value,
    expect: &'static str,
}

impl Call {
    fn params(&self) -> CallToolRequestParams {
        let Value::Object(arguments) = self.arguments.clone() else {
            panic!("tool arguments must be a JSON object");
        };
        CallToolRequestParams::new(self.tool).with_arguments(arguments)
    }

    /// The Python client's options for this call.
    fn python_args(&self, n: usize) -> Vec<String> {
        vec![
            "--tool".into(),
            self.tool.into(),
            "--arguments".into(),
            self.arguments.to_string(),
            "--expect".into(),
            self.expect.into(),
            "-n".into(),
            n.to_string(),
        ]
    }
}

/// One server's measurements.
struct Group {
    transport: &'static str,
    server: &'static str,
    raw: Stats,
    pool: Option<Stats>,
    python: Option<Stats>,
}

fn cache() -> PathBuf {
    std::env::var_os("PARLOR_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/parlor")
        })
}

fn stats(mut samples: Vec<f64>) -> Stats {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    Stats {
        p50_us: samples[n / 2],
        p99_us: samples[(n * 99 / 100).min(n - 1)],
        mean_us: samples.iter().sum::<f64>() / n as f64,
    }
}

fn micros_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e6
}

fn check_raw(result: &CallToolResult, call: &Call) {
    assert_ne!(result.is_error, Some(true), "{} failed", call.tool);
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map_or("", |t| t.text.as_str());
    assert!(
        text.contains(call.expect),
        "{:?} not in {text:?}",
        call.expect
    );
}

/// One raw rmcp call, checked after the clock stops; µs.
async fn time_raw<H: rmcp::ClientHandler>(
    session: &rmcp::service::RunningService<rmcp::RoleClient, H>,
    call: &Call,
) -> f64 {
    let t = Instant::now();
    let result = session.call_tool(call.params()).await.expect("raw call");
    let us = micros_since(t);
    check_raw(&result, call);
    us
}

/// One pool call (`tool` is the pool's `server__tool` name), checked after
/// the clock stops; µs.
async fn time_pool(pool: &McpPool, tool: &str, call: &Call) -> f64 {
    let t = Instant::now();
    let out = pool
        .call_tool(tool, call.arguments.clone())
        .await
        .expect("pool call");
    let us = micros_since(t);
    assert!(!out.is_error && out.text.contains(call.expect), "{out:?}");
    us
}

/// The raw rmcp client and the pool on the same server, taking turns in
/// blocks of [`BLOCK`] calls (which goes first alternates), so both see the
/// same machine load over the run while each still calls its server back to
/// back, as the Python client does.
async fn raw_and_pool_round_trips(spec: McpServerSpec, call: &Call, n: usize) -> (Stats, Stats) {
    let raw = transport::connect(
        "raw",
        &spec,
        transport::client_config(),
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("raw connect");
    let specs = BTreeMap::from([("srv".to_string(), spec)]);
    let pool = McpPool::connect(&specs, &["srv".to_string()])
        .await
        .expect("pool connect");
    pool.tools().await;
    let pool_tool = format!("srv__{}", call.tool);
    let (raw_ref, pool_ref, pool_tool) = (&raw, &pool, pool_tool.as_str());
    let one = |use_raw: bool| async move {
        if use_raw {
            time_raw(raw_ref, call).await
        } else {
            time_pool(pool_ref, pool_tool, call).await
        }
    };

    for _ in 0..WARM_UP {
        one(true).await;
        one(false).await;
    }
    let mut raw_samples = Vec::with_capacity(n);
    let mut pool_samples = Vec::with_capacity(n);
    for block in 0..n.div_ceil(BLOCK) {
        let calls = BLOCK.min(n - block * BLOCK);
        let raw_first = block % 2 == 0;
        for use_raw in [raw_first, !raw_first] {
            // Untimed: over stdio each client has its own server process,
            // idle during the other's block, and the first call wakes it.
            one(use_raw).await;
            let samples = if use_raw {
                &mut raw_samples
            } else {
                &mut pool_samples
            };
            for _ in 0..calls {
                samples.push(one(use_raw).await);
            }
        }
    }
    pool.shutdown().await;
    let _ = raw.cancel().await;
    (stats(raw_samples), stats(pool_samples))
}

/// The raw rmcp client against an orders server running in this process,
/// over an in-memory duplex pipe.
async fn in_process_round_trips(db: &Path, call: &Call, n: usize) -> Stats {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = OrdersServer::new(open_or_seed(db).expect("orders db"));
    // Server and client handshake with each other, so the server must run
    // concurrently with the client's `serve`.
    let server = tokio::spawn(async move {
        let running = server.serve(server_io).await.expect("server handshake");
        let _ = running.waiting().await;
    });
    let client = transport::client_config()
        .serve(client_io)
        .await
        .expect("client handshake");
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let us = time_raw(&client, call).await;
        if i >= WARM_UP {
            samples.push(us);
        }
    }
    let _ = client.cancel().await;
    server.abort();
    stats(samples)
}

/// Runs the Python client with `args`; None when the venv is missing or the
/// run fails (its stderr is shown).
fn python_round_trips(args: &[String]) -> Option<Stats> {
    let out = std::process::Command::new(cache().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/peers/mcp_client_bench.py"
        ))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).ok()?;
    Some(Stats {
        p50_us: v["p50_us"].as_f64()?,
        p99_us: v["p99_us"].as_f64()?,
        mean_us: v["mean_us"].as_f64()?,
    })
}

/// All three clients on a stdio server started as `command args`.
fn stdio_group(
    rt: &tokio::runtime::Runtime,
    server: &'static str,
    command: &str,
    args: Vec<String>,
    call: &Call,
    n: usize,
) -> Group {
    let spec = McpServerSpec::Stdio {
        command: command.into(),
        args: args.clone(),
        env: BTreeMap::new(),
    };
    let (raw, pool) = rt.block_on(raw_and_pool_round_trips(spec, call, n));
    let mut py_args = call.python_args(n);
    py_args.extend(["stdio".into(), command.into()]);
    py_args.extend(args);
    Group {
        transport: "stdio",
        server,
        raw,
        pool: Some(pool),
        python: python_round_trips(&py_args),
    }
}

/// All three clients on an HTTP server started as `command args`, where the
/// args contain `{port}`; the endpoint is `/mcp`. The server is stopped after.
fn http_group(
    rt: &tokio::runtime::Runtime,
    server: &'static str,
    command: &str,
    args: &[&str],
    call: &Call,
    n: usize,
) -> Group {
    let port = free_port();
    let mut child = spawn_quiet(command, args, port);
    wait_listening(port);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let spec = McpServerSpec::StreamableHttp {
        url: url.clone(),
        oauth: None,
    };
    let (raw, pool) = rt.block_on(raw_and_pool_round_trips(spec, call, n));
    let mut py_args = call.python_args(n);
    py_args.extend(["streamable-http".into(), url]);
    let python = python_round_trips(&py_args);
    let _ = child.kill();
    let _ = child.wait();
    Group {
        transport: "streamable-http",
        server,
        raw,
        pool: Some(pool),
        python,
    }
}

/// A port that was free a moment ago (the server binds it next).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn spawn_quiet(command: &str, args: &[&str], port: u16) -> Child {
    let port = port.to_string();
    std::process::Command::new(command)
        .args(args.iter().map(|a| a.replace("{port}", &port)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"))
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server not listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_row(g: &Group, client: &str, s: Option<&Stats>, pool: Option<&Stats>) {
    let head = format!("{:<16} {:<21} {:<12}", g.transport, g.server, client);
    let Some(s) = s else {
        println!("{head} (not measured: run bash models/setup.sh)");
        return;
    };
    let ratios = pool.map_or_else(String::new, |p| {
        format!(
            " {:>10.2} {:>10.2}",
            s.p50_us / p.p50_us,
            s.mean_us / p.mean_us
        )
    });
    println!(
        "{head} {:>9.0} {:>9.0} {:>9.0}{ratios}",
        s.p50_us, s.p99_us, s.mean_us
    );
}

fn print_table(groups: &[Group], n: usize) {
    println!(
        "\nMCP tool round trips, {n} sequential calls per client after {WARM_UP} warm-up calls"
    );
    println!("  python mcp server: add(a=2, b=3) (tests/peers/py_mcp_server.py)");
    println!("  parlor-mcp-orders: get_order(order_id=1042); parlor-mcp-knowledge: search_knowledge(\"return policy\", limit=1)");
    println!("  ratio = row / parlor pool (for python mcp: Python / parlor)");
    println!(
        "{:<16} {:<21} {:<12} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "transport", "server", "client", "p50 µs", "p99 µs", "mean µs", "ratio p50", "ratio mean"
    );
    for g in groups {
        let pool = g.pool.as_ref();
        print_row(g, "rmcp raw", Some(&g.raw), pool);
        if let Some(p) = pool {
            print_row(g, "parlor pool", Some(p), pool);
            print_row(g, "python mcp", g.python.as_ref(), pool);
        }
    }
    println!(
        "\nparlor pool overhead per call (pool − rmcp raw, same server, in turns of {BLOCK} calls)"
    );
    for g in groups {
        if let Some(p) = &g.pool {
            println!(
                "{:<16} {:<21} p50 {:>+6.0} µs   mean {:>+6.0} µs",
                g.transport,
                g.server,
                p.p50_us - g.raw.p50_us,
                p.mean_us - g.raw.mean_us
            );
        }
    }
}

fn main() {
    let n: usize = std::env::var("MCP_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let python = cache().join("venv/bin/python").display().to_string();
    let py_server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/py_mcp_server.py");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let tmp = tempfile::tempdir().expect("tempdir");
    let db = tmp.path().join("orders.db");
    // Seeded once here, so the server processes only ever open it.
    drop(open_or_seed(&db).expect("seed orders db"));

    let add = Call {
        tool: "add",
        arguments: json!({"a": 2, "b": 3}),
        expect: "5",
    };
    let get_order = Call {
        tool: "get_order",
        arguments: json!({"order_id": 1042}),
        expect: "1042",
    };
    let search = Call {
        tool: "search_knowledge",
        arguments: json!({"query": "return policy", "limit": 1}),
        expect: "return",
    };

    let mut groups = vec![
        stdio_group(
            &rt,
            "python mcp server",
            &python,
            vec![py_server.into(), "stdio".into()],
            &add,
            n,
        ),
        http_group(
            &rt,
            "python mcp server",
            &python,
            &[py_server, "streamable-http", "{port}"],
            &add,
            n,
        ),
        stdio_group(
            &rt,
            "parlor-mcp-orders",
            env!("CARGO_BIN_EXE_parlor-mcp-orders"),
            vec!["--db".into(), db.display().to_string()],
            &get_order,
            n,
        ),
        http_group(
            &rt,
            "parlor-mcp-knowledge",
            env!("CARGO_BIN_EXE_parlor-mcp-knowledge"),
            &["--addr", "127.0.0.1:{port}"],
            &search,
            n,
        ),
    ];
    groups.push(Group {
        transport: "in-process",
        server: "OrdersServer",
        raw: rt.block_on(in_process_round_trips(&db, &get_order, n)),
        pool: None,
        python: None,
    });
    print_table(&groups, n);
}
