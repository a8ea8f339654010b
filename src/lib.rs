//! # rollwatch
//!
//! An automated rollback trigger engine: it watches a deployment's health endpoints and metrics,
//! decides the way a runbook decides whether to roll back, and acts on that decision: runs the runbook's procedure, verifies, escalates and tells people.
//!
//! # Layout
//!
//! - [`time`]: timestamps, spans, duration parsing, the clock — the only reader of wall time.
//! - [`selector`]: series keys and PromQL-style selectors.
//! - [`window`]: per-series ring buffers and the window aggregates rules read.
//! - [`expr`]: evalexpr integration — window functions, load-time compilation, three-valued evaluation.
//! - [`rules`]: the rule state machine, the decision tree, and the evaluator that runs both each tick.
//! - [`config`]: TOML loading (profiles, `rollwatch.toml`), every error with file:line:col.
//! - [`source`]: the Prometheus text exposition parser (the pollers come with the live sidecar).
//! - [`fixture`]: the fixture format, promtool's series notation, and replay on fixture time.
//! - [`journal`]: the append-only, fsynced JSONL journal in `state_dir`.
//! - [`status`]: the snapshot behind `/status` and `/metrics`.
//! - [`server`]: own endpoints — `/metrics`, `/healthz`, `/status`, `POST /hooks/alertmanager`.
//! - [`record`]: a live run written as a fixture (`rollwatch record`).
//! - [`act`]: acting on decisions — templates, actions, policy, the dispatcher, history.
//! - [`notify`]: notification channels (console, webhook, Slack, email), templates, retries.
//! - [`engine`]: the live pipeline — pollers → store → evaluator on wall-clock ticks → journal.
//! - [`demo`]: a simulated deployment watched by the SOLVEREIGN profile through the real engine.
//! - [`cli`]: the command line (`check`, `test`, `replay`, `run`, `record`, `demo`, `approve`, `pause`,
//!   `resume`, `silence`, `notify`, `history`, `annotate`).
#![forbid(unsafe_code)]

pub mod act;
pub mod cli;
pub mod config;
pub mod demo;
pub mod engine;
pub mod expr;
pub mod fixture;
pub mod journal;
pub mod notify;
pub mod record;
pub mod rules;
pub mod selector;
pub mod server;
pub mod source;
pub mod status;
pub mod time;
pub mod window;

/// An error with its causes on one line (`a: b: c`), for logs and journal lines.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
