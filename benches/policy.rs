//! The access policy's cost per tool call (issue 5 goal: the policy layer
//! under 20 µs p99, excluding the audit fsync):
//!
//! - `check`: role rules plus the tool's and server's token buckets, for
//!   one of 100 principals in turn (keyed buckets, the realistic case);
//! - `check + record (no I/O)`: the above plus building and sealing the
//!   audit record (redaction, result hash, serialisation, chain hash): what
//!   a tool call pays before the writer's fsync;
//! - `filter 8 specs`: the role filter on the tools offered each turn.
//!
//! After the criterion groups, p50/p99 of `check + record` over 20,000
//! single-call samples.
//!
//! Then the whole layer as the planner meets it, side by side on one pool
//! (parlor's orders server over stdio, `get_order`): each round makes a
//! bare [`McpPool::call_tool`] and an [`AuditedPool::call`] (secret scan,
//! route, policy, the intent record, the call, the outcome record and its
//! fsync) with the log on tmpfs (`/dev/shm`, where an fsync is all but
//! free: the layer's cost without the disk) and with the log on the
//! target's disk (the same plus real fsyncs). The differences are the
//! layer's cost per call. `POLICY_BENCH_N` rounds (default 1000).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parlor::access::{AccessSpec, Caller};
use parlor::mcp::audit::{Prepared, GENESIS};
use parlor::mcp::servers::orders::open_or_seed;
use parlor::mcp::{AuditContext, AuditEntry, AuditLog, Decision, McpPool, Policy, Verdict};
use parlor::planner::tools::{AuditedPool, Toolbox};
use parlor::spec::McpServerSpec;
use serde_json::json;

/// Rules like a deployment's: an admin-only tool, a deny list over a
/// server, a role list, and tool and server buckets that never run dry here
/// (a refused call is cheaper: it skips the buckets or stops at one).
fn policy() -> Policy {
    let spec: AccessSpec = toml::from_str(
        r#"
        [[tool]]
        tool = "orders__cancel_order"
        admin_only = true
        [[tool]]
        tool = "orders__*"
        deny_roles = ["guest"]
        [[tool]]
        tool = "orders__get_customer"
        roles = ["agent", "admin", "caller"]
        [[limit]]
        tool = "orders__get_order"
        calls = 1000000000
        per_secs = 1
        [[limit]]
        server = "orders"
        calls = 1000000000
        per_secs = 1
        "#,
    )
    .unwrap();
    Policy::new(&spec)
}

fn callers() -> Vec<Caller> {
    (0..100)
        .map(|i| Caller {
            principal: format!("principal-{i}"),
            role: "caller".into(),
            session: Some(format!("call_{i}")),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (policy, callers) = (policy(), callers());
    let args = json!({"order_id": 1042});
    let result = vec![b'x'; 431];
    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % callers.len();
        &callers[i]
    };
    let one_call = |caller: &Caller| {
        let verdict = policy.check(caller, "orders", "orders__get_order");
        assert_eq!(verdict, Verdict::Allow);
        let entry = AuditEntry {
            context: caller,
            decision: Decision::Allowed,
            server: "orders",
            tool: "get_order",
            arguments: &args,
            result: Some(&result),
            tool_error: false,
            latency: Duration::from_micros(900),
            reason: None,
        };
        Prepared::new(&entry).seal(7, GENESIS)
    };

    let mut g = c.benchmark_group("policy");
    g.bench_function("check", |b| {
        b.iter(|| policy.check(next(), "orders", "orders__get_order"))
    });
    g.bench_function("check + record (no I/O)", |b| b.iter(|| one_call(next())));
    let tools = [
        "orders__get_order",
        "orders__find_orders",
        "orders__get_customer",
        "orders__cancel_order",
        "knowledge__search",
        "knowledge__get_article",
        "knowledge__list_topics",
        "knowledge__related",
    ];
    g.bench_function("filter 8 specs", |b| {
        b.iter(|| {
            tools
                .iter()
                .filter(|t| {
                    let server = t.split_once("__").map_or("", |(s, _)| s);
                    policy.permits("caller", server, t)
                })
                .count()
        })
    });
    g.finish();

    let mut samples: Vec<Duration> = (0..20_000)
        .map(|k| {
            let caller = &callers[k % callers.len()];
            let t = Instant::now();
            std::hint::black_box(one_call(caller));
            t.elapsed()
        })
        .collect();
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "policy check + record (no I/O), 20000 calls: p50 {:.1} µs, p99 {:.1} µs (goal p99 < 20 µs)",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
}

/// p50 and p99 of `samples`, in µs.
fn p50_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

/// An audited toolbox over `pool` logging to `dir`, under the bench's rules.
fn audited(pool: &Arc<McpPool>, dir: &Path) -> AuditedPool {
    let log = Arc::new(AuditLog::open(dir.join("audit.jsonl")).expect("open the audit log"));
    AuditedPool::new(pool.clone(), log, AuditContext::default()).with_policy(Arc::new(policy()))
}

fn whole_layer() {
    let n: usize = std::env::var("POLICY_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let data = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("orders.db");
    drop(open_or_seed(&db).expect("seed orders db"));
    let disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir on disk");
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let specs = BTreeMap::from([(
        "orders".to_string(),
        McpServerSpec::Stdio {
            command: env!("CARGO_BIN_EXE_parlor-mcp-orders").into(),
            args: vec!["--db".into(), db.display().to_string()],
            env: BTreeMap::new(),
        },
    )]);
    let pool = Arc::new(
        rt.block_on(McpPool::connect(&specs, &["orders".into()]))
            .expect("orders server"),
    );
    let on_disk = audited(&pool, disk.path());
    let on_tmpfs = shm.as_ref().map(|d| audited(&pool, d.path()));
    let args = json!({"order_id": 1042});
    let (mut bare, mut tmpfs, mut fsynced) = (Vec::new(), Vec::new(), Vec::new());
    rt.block_on(async {
        for round in 0..n + 50 {
            let t = Instant::now();
            let out = pool.call_tool("orders__get_order", args.clone()).await;
            let b = t.elapsed();
            assert!(out.expect("bare call").text.contains("1042"));
            let t = Instant::now();
            if let Some(toolbox) = &on_tmpfs {
                let answer = toolbox.call("orders__get_order", args.clone()).await;
                assert!(!answer.is_error, "{}", answer.text);
            }
            let m = t.elapsed();
            let t = Instant::now();
            let answer = on_disk.call("orders__get_order", args.clone()).await;
            let d = t.elapsed();
            assert!(!answer.is_error, "{}", answer.text);
            // The first rounds warm the session and the page cache.
            if round >= 50 {
                bare.push(b);
                tmpfs.push(m);
                fsynced.push(d);
            }
        }
    });
    let (b50, b99) = p50_p99(&mut bare);
    let (d50, d99) = p50_p99(&mut fsynced);
    println!("whole layer on orders__get_order over stdio, {n} rounds (µs, p50 / p99):");
    println!("  bare pool call                     {b50:8.1} / {b99:8.1}");
    if on_tmpfs.is_some() {
        let (m50, m99) = p50_p99(&mut tmpfs);
        println!(
            "  audited, log on tmpfs              {m50:8.1} / {m99:8.1}   layer: +{:.1} / +{:.1} (goal p99 < 20 µs)",
            m50 - b50,
            m99 - b99
        );
    } else {
        println!("  audited, log on tmpfs              (no /dev/shm here)");
    }
    println!(
        "  audited, log on disk (fsync)       {d50:8.1} / {d99:8.1}   layer + fsync: +{:.1} / +{:.1}",
        d50 - b50,
        d99 - b99
    );
    drop((on_disk, on_tmpfs));
    if let Ok(pool) = Arc::try_unwrap(pool) {
        rt.block_on(pool.shutdown());
    }
}

fn all(c: &mut Criterion) {
    bench(c);
    whole_layer();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = all
}
criterion_main!(benches);
