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

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use parlor::access::{AccessSpec, Caller};
use parlor::mcp::audit::{Prepared, GENESIS};
use parlor::mcp::{AuditEntry, Decision, Policy, Verdict};
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

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
