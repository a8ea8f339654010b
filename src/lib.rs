//! # rollwatch
//!
//! An automated rollback trigger engine: it watches a deployment's health endpoints and metrics,
//! decides the way a runbook decides whether to roll back, and acts on that decision: runs the runbook's procedure, verifies, escalates and tells people.
//!
//! # Layout
//!
//! Modules in their layer order (docs/ARCHITECTURE.md, "Layers"; [`LAYERS`] is the same list, checked
//! by the test `layers_are_one_way`, and no file cycle inside a module folder): each uses only modules listed before it, and the modules of one
//! tier (`rules`, `notify`; `status`, `fixture`) do not use each other.
//!
//! - [`time`]: timestamps, spans, duration parsing, the clocks — the only reader of wall time.
//! - [`selector`]: series keys and PromQL-style selectors.
//! - [`diag`]: errors placed at file:line:col, the checker every loader shares, "did you mean".
//! - [`template`]: `{{name}}` rendering with escaping, numbers as people read them, the
//!   notification messages, and the one escape per kind of output (terminal, Markdown, HTML,
//!   HTTP header, TOML) that text from outside passes through.
//! - [`secret`]: secrets from the environment, redaction, what an exec action inherits.
//! - [`journal`]: the append-only JSONL journal in `state_dir`, its group-committing writer, the
//!   `state_dir` lock.
//! - [`window`]: per-series ring buffers and the window aggregates rules read.
//! - [`source`]: the exposition parser, health JSON, promql, Alertmanager payloads, the pollers
//!   and the queue to the evaluator, and the evidence they write (one owner of what was seen).
//! - [`expr`]: evalexpr integration — window functions, load-time compilation, three-valued evaluation,
//!   the baseline judge's statistics.
//! - [`config`]: TOML loading into specs (profiles, `rollwatch.toml`, policy, actions, channels).
//! - [`rules`]: the rule state machine, the decision tree, and the evaluator that runs both each tick;
//!   the deployment (a config with its profiles compiled and cross-checked);
//!   window coverage, and the checkpoint that carries windows and rule states across a restart.
//! - [`notify`]: notification channels (console, webhook, Slack, email), retries, fallback.
//! - [`coord`]: high availability — the leader election on etcd, fenced writes, the shared log.
//! - [`act`]: acting on decisions — the acting core (owners of the acting state, effects), the
//!   executor that applies its effects, actions and procedures, the ledger, history.
//! - [`status`]: the snapshot behind `/status` and `/metrics`.
//! - [`fixture`]: the fixture format, promtool's series notation, and replay on fixture time.
//! - [`record`]: a live run written as a fixture (`rollwatch record`).
//! - [`server`]: own endpoints — `/metrics`, `/healthz`, `/status`, the hooks, operator commands.
//! - [`engine`]: the live pipeline — pollers → store → evaluator on ticks of its steady clock → dispatcher;
//!   a fleet runs one engine per deployment behind one server (`engine::fleet`).
//! - [`demo`]: a simulated deployment watched by the SOLVEREIGN profile through the real engine.
//! - [`cli`]: the command line (`check`, `test`, `replay`, `run`, `record`, `demo`, `approve`, `pause`,
//!   `resume`, `silence`, `notify`, `history`, `annotate`, …).
#![forbid(unsafe_code)]

pub mod act;
pub mod cli;
pub mod config;
pub mod coord;
pub mod demo;
pub mod diag;
pub mod engine;
pub mod expr;
pub mod fixture;
pub mod journal;
pub mod notify;
pub mod record;
pub mod rules;
pub mod secret;
pub mod selector;
pub mod server;
pub mod source;
pub mod status;
pub mod template;
pub mod time;
pub mod window;

/// The layer order, leaves first: a module may use only modules of earlier entries; the
/// modules of one entry do not use each other.
pub const LAYERS: &[&[&str]] = &[
    &["time"],
    &["selector"],
    &["diag"],
    &["template"],
    &["secret"],
    &["journal"],
    &["window"],
    &["source"],
    &["expr"],
    &["config"],
    &["rules", "notify", "coord"],
    &["act"],
    &["status", "fixture"],
    &["record"],
    &["server"],
    &["engine"],
    &["demo"],
    &["cli"],
];

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
