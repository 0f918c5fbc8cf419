//! MCP tool round trip: parlor's pool against the Python `mcp` client, both
//! calling `add(a=2, b=3)` on the same Python server
//! (tests/peers/py_mcp_server.py), one call at a time, over stdio and
//! Streamable HTTP. The Python side is benches/peers/mcp_client_bench.py.
//! Prints p50/p99 per client and transport and the ratio Python / parlor.
//!
//! Needs the peers from `bash models/setup.sh` (venv with mcp==2.3.0).
//! `MCP_BENCH_N` sets the number of timed calls (default 500).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use parlor::mcp::McpPool;
use parlor::spec::McpServerSpec;
use serde_json::{json, Value};

struct Stats {
    p50_us: f64,
    p99_us: f64,
    mean_us: f64,
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

async fn parlor_round_trips(spec: McpServerSpec, n: usize) -> Stats {
    let specs = BTreeMap::from([("py".to_string(), spec)]);
    let pool = McpPool::connect(&specs, &["py".to_string()])
        .await
        .expect("connect");
    pool.tools().await;
    for _ in 0..20 {
        pool.call_tool("py__add", json!({"a": 2, "b": 3}))
            .await
            .expect("warm-up");
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let out = pool
            .call_tool("py__add", json!({"a": 2, "b": 3}))
            .await
            .expect("call");
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        assert_eq!(out.text, "5");
    }
    pool.shutdown().await;
    stats(samples)
}

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

fn main() {
    let n: usize = std::env::var("MCP_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let python = cache().join("venv/bin/python").display().to_string();
    let server = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/py_mcp_server.py").to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let stdio = McpServerSpec::Stdio {
        command: python.clone(),
        args: vec![server.clone(), "stdio".into()],
        env: BTreeMap::new(),
    };
    let parlor_stdio = rt.block_on(parlor_round_trips(stdio, n));
    let py_stdio = python_round_trips(&[
        "stdio".into(),
        python.clone(),
        server.clone(),
        n.to_string(),
    ]);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = std::process::Command::new(&python)
        .args([server.as_str(), "streamable-http", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn python server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "server not listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let parlor_http = rt.block_on(parlor_round_trips(
        McpServerSpec::StreamableHttp { url: url.clone() },
        n,
    ));
    let py_http = python_round_trips(&["streamable-http".into(), url, n.to_string()]);
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "\nMCP tool round trip, add(2, 3) on the Python mcp 2.3.0 server, {n} sequential calls"
    );
    println!(
        "{:<16} {:<14} {:>10} {:>10} {:>10}",
        "transport", "client", "p50 µs", "p99 µs", "mean µs"
    );
    for (transport, parlor, py) in [
        ("stdio", &parlor_stdio, &py_stdio),
        ("streamable-http", &parlor_http, &py_http),
    ] {
        println!(
            "{:<16} {:<14} {:>10.0} {:>10.0} {:>10.0}",
            transport, "parlor (rmcp)", parlor.p50_us, parlor.p99_us, parlor.mean_us
        );
        match py {
            Some(py) => {
                println!(
                    "{:<16} {:<14} {:>10.0} {:>10.0} {:>10.0}",
                    transport, "python mcp", py.p50_us, py.p99_us, py.mean_us
                );
                println!(
                    "{:<16} {:<14} {:>10.2} {:>10.2} {:>10.2}",
                    transport,
                    "ratio py/parlor",
                    py.p50_us / parlor.p50_us,
                    py.p99_us / parlor.p99_us,
                    py.mean_us / parlor.mean_us
                );
            }
            None => {
                println!("{transport:<16} python mcp     (not measured: run bash models/setup.sh)")
            }
        }
    }
}
