//! The audit log's cost per tool call, side by side:
//!
//! - `record (no I/O)`: redact the arguments, hash the result, serialise
//!   and seal one record into the chain (SHA-256 of the line): the part of
//!   the policy layer's cost that is not the disk;
//! - `append, alone`: one record appended and fsynced with nothing else in
//!   flight (a log fsync plus the head's temp-file fsync and rename);
//! - `append, 32 at once`: 32 concurrent appends sharing group commits,
//!   reported per record (criterion's throughput).
//!
//! After the criterion groups, p50/p99 of the no-I/O record over 20,000
//! samples (the goal is p99 < 20 µs for the policy layer excluding
//! the fsync). The log lives in a temp dir on the target's file system
//! (`TMPDIR` picks another).

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parlor::mcp::audit::Prepared;
use parlor::mcp::{AuditContext, AuditEntry, AuditLog, Decision};
use serde_json::{json, Value};

fn arguments() -> Value {
    json!({"order_id": 1042, "email": "ada@example.com", "api_key": "sk-bench-0123456789"})
}

fn entry<'a>(ctx: &'a AuditContext, args: &'a Value, result: &'a [u8]) -> AuditEntry<'a> {
    AuditEntry {
        context: ctx,
        decision: Decision::Allowed,
        server: "orders",
        tool: "get_order",
        arguments: args,
        result: Some(result),
        tool_error: false,
        latency: Duration::from_micros(900),
        reason: None,
    }
}

/// A 431-byte result, the size of a `get_order` answer.
fn sample_result() -> Vec<u8> {
    vec![b'x'; 431]
}

fn bench(c: &mut Criterion) {
    let (ctx, args, result) = (AuditContext::default(), arguments(), sample_result());
    let prev = parlor::mcp::audit::GENESIS;
    let mut g = c.benchmark_group("audit");
    g.bench_function("record (no I/O)", |b| {
        b.iter(|| Prepared::new(&entry(&ctx, &args, &result)).seal(7, prev))
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(AuditLog::open(dir.path().join("alone.jsonl")).unwrap());
    g.bench_function("append, alone", |b| {
        b.to_async(&rt)
            .iter(|| async { log.append(&entry(&ctx, &args, &result)).await.unwrap() })
    });
    let alone_fsyncs = log.fsyncs();

    let log = Arc::new(AuditLog::open(dir.path().join("group.jsonl")).unwrap());
    g.throughput(Throughput::Elements(32));
    g.bench_function("append, 32 at once", |b| {
        b.to_async(&rt).iter(|| {
            let log = log.clone();
            async move {
                let tasks = (0..32).map(|_| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let (ctx, args, result) =
                            (AuditContext::default(), arguments(), sample_result());
                        log.append(&entry(&ctx, &args, &result)).await.unwrap();
                    })
                });
                futures::future::join_all(tasks).await;
            }
        })
    });
    g.finish();
    let records = parlor::mcp::audit::verify(&dir.path().join("group.jsonl"))
        .unwrap()
        .records;
    println!(
        "group commit: {records} records in {} fsyncs ({:.1} records per fsync); alone: {alone_fsyncs} fsyncs",
        log.fsyncs(),
        records as f64 / log.fsyncs().max(1) as f64
    );

    let mut samples: Vec<Duration> = (0..20_000)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(Prepared::new(&entry(&ctx, &args, &result)).seal(i, prev));
            t.elapsed()
        })
        .collect();
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    println!(
        "record (no I/O): p50 {:.2} µs, p99 {:.2} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
