//! The exposition parser against prometheus-parse 0.2.5 on the same ~5 MB body: counters with
//! several labels, histograms, summaries, recording-rule names with `:`, and label values
//! holding `,` `=` `}` and escapes (what a real /metrics of a busy service looks like).
//!
//! Run: `cargo bench --bench exposition`. Figures in README.md, "Performance".

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A realistic exposition of about 5 MB.
pub fn body() -> String {
    let mut s = String::with_capacity(5_300_000);
    let mut i = 0;
    while s.len() < 5_000_000 {
        let svc = format!("svc-{}", i % 50);
        s.push_str("# HELP http_requests_total Total HTTP requests.\n# TYPE http_requests_total counter\n");
        for code in ["200", "201", "301", "404", "500", "503"] {
            for method in ["GET", "POST", "PUT"] {
                s.push_str(&format!(
                    "http_requests_total{{service=\"{svc}\",instance=\"10.0.{}.{}:8080\",method=\"{method}\",code=\"{code}\",handler=\"/api/v1/items/{{id}}\"}} {} 1700000000000\n",
                    i % 256,
                    i % 200,
                    i * 7 + 3
                ));
            }
        }
        s.push_str("# TYPE http_request_duration_seconds histogram\n");
        let mut cum = 0;
        for le in ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"] {
            cum += i % 13 + 1;
            s.push_str(&format!("http_request_duration_seconds_bucket{{service=\"{svc}\",le=\"{le}\"}} {cum}\n"));
        }
        s.push_str(&format!("http_request_duration_seconds_sum{{service=\"{svc}\"}} {}.25\n", i * 3));
        s.push_str(&format!("http_request_duration_seconds_count{{service=\"{svc}\"}} {cum}\n"));
        s.push_str("# TYPE rpc_duration_seconds summary\n");
        for q in ["0.5", "0.9", "0.99"] {
            s.push_str(&format!("rpc_duration_seconds{{service=\"{svc}\",quantile=\"{q}\"}} {}e-3\n", i % 97));
        }
        s.push_str(&format!("job:http_errors:rate5m{{service=\"{svc}\"}} 0.0{}\n", i % 10));
        s.push_str(&format!("queue_depth{{queue=\"orders,priority=high\",selector=\"a=b}}\"}} {}\n", i % 31));
        s.push_str(&format!("build_info{{path=\"C:\\\\builds\\\\{i}\",msg=\"say \\\"hi\\\"\"}} 1\n"));
        s.push_str(&format!("process_open_fds {}\n", i % 1000));
        i += 1;
    }
    s
}

fn parsers(c: &mut Criterion) {
    let text = body();
    let ours = rollwatch::source::exposition::parse(text.as_bytes());
    let theirs = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let lines = text.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!(
        "body {} bytes, {lines} sample lines: rollwatch parsed {} ({} bad), prometheus-parse {}",
        text.len(),
        ours.samples.len(),
        ours.bad_lines,
        theirs.samples.len()
    );
    assert_eq!(ours.samples.len(), lines);
    assert_eq!(ours.bad_lines, 0);

    let mut group = c.benchmark_group("exposition ~5 MB");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.sample_size(20);
    group.bench_function("rollwatch, owned samples", |b| {
        b.iter(|| black_box(rollwatch::source::exposition::parse(text.as_bytes())))
    });
    group.bench_function("rollwatch, borrowed samples (what a known series costs)", |b| {
        b.iter(|| {
            let mut sum = 0.0;
            rollwatch::source::exposition::parse_each(text.as_bytes(), |s| sum += s.value + s.labels.len() as f64);
            black_box(sum)
        })
    });
    group.bench_function("prometheus-parse 0.2.5", |b| {
        b.iter(|| black_box(prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))))
    });
    group.finish();
}

criterion_group!(benches, parsers);
criterion_main!(benches);
