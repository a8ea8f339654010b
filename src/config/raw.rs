//! The files as written: serde structs for profiles (`rules/*.toml`) and `rollwatch.toml`,
//! unknown fields rejected, fields that need semantic checks wrapped in [`Spanned`] so that
//! validation can name their line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A profile: one runbook's signals, rules, decision tree and procedures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Defaults to the file's stem (`rules/mdm.toml` → `mdm`).
    pub name: Option<Spanned<String>>,
    pub description: Option<String>,
    /// Named numeric expressions rules can read as variables.
    #[serde(default)]
    pub signals: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    /// Outcome when no question holds; `monitor` if unset.
    pub default: Option<Spanned<String>>,
    /// A `consider` outcome acts by itself after this long without an answer (unset: never).
    pub consider_auto_after: Option<Spanned<String>>,
    #[serde(default)]
    pub decide: Vec<Spanned<RawQuestion>>,
    /// Steps per outcome (`[[procedure.rollback]]`), bound to actions by the config.
    #[serde(default)]
    pub procedure: BTreeMap<String, Vec<Spanned<RawStep>>>,
    /// Service level objectives; each generates the rules `<name>-page` and `<name>-ticket`.
    #[serde(default)]
    pub slo: Vec<Spanned<RawSlo>>,
}

/// `[[slo]]`: an objective over a period on two counters (checked in `rules::slo`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlo {
    pub name: Spanned<String>,
    /// `"99.9%"` or `0.999`.
    pub objective: Spanned<toml::Value>,
    /// Default `30d`.
    pub period: Option<Spanned<String>>,
    /// Bad events (counters), or `good` instead: exactly one of the two.
    pub errors: Option<Spanned<String>>,
    pub good: Option<Spanned<String>>,
    /// All events (counters).
    pub total: Spanned<String>,
    /// A traffic floor: a burn-rate window with fewer events is no data (default: none).
    pub min_events: Option<Spanned<f64>>,
    /// `deployment` (default: the generated rules judge the deployed version's own burn) or
    /// `environment` (the service's, across deploys).
    pub scope: Option<Spanned<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub when: Spanned<String>,
    #[serde(rename = "for")]
    pub for_: Option<Spanned<String>>,
    pub keep_firing_for: Option<Spanned<String>>,
    pub on_no_data: Option<Spanned<String>>,
    pub severity: Option<Spanned<String>>,
    pub summary: Option<Spanned<String>>,
    pub value: Option<Spanned<String>>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `deployment` (default: judged on the deployed version's evidence) or `environment`.
    pub scope: Option<Spanned<String>>,
    /// The share of each window the rule reads that must hold data (`"90%"` or `0.9`); below
    /// it the rule is unknown.
    pub min_coverage: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuestion {
    pub ask: Spanned<String>,
    #[serde(rename = "if")]
    pub if_: Spanned<String>,
    pub then: Spanned<String>,
    /// Which procedure level this answer calls for (`fast`, `full`, `feature-flag`, …).
    pub level: Option<Spanned<String>>,
}

/// One procedure step: announce a template, or run an action (optionally verified by another).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub announce: Option<Spanned<String>>,
    pub run: Option<Spanned<String>>,
    pub verify: Option<Spanned<String>>,
    /// Only for these levels (empty: every level).
    #[serde(default)]
    pub levels: Vec<Spanned<String>>,
}

/// `rollwatch.toml`: what to watch and how to act for one deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub profiles: Spanned<Vec<Spanned<String>>>,
    pub state_dir: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    /// Env var holding the bearer token for the hook and approval endpoints.
    pub api_token_env: Option<Spanned<String>>,
    pub eval_interval: Option<Spanned<String>>,
    /// Connections the own server holds at once (default 256); more are closed at once.
    pub max_connections: Option<Spanned<u32>>,
    /// Ends an alert not re-sent for this long (default: alerts fire until resolved).
    pub alert_expiry: Option<Spanned<String>>,
    pub version: Option<Spanned<RawVersion>>,
    #[serde(default)]
    pub target: Vec<Spanned<RawTarget>>,
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub channels: BTreeMap<String, Spanned<RawChannel>>,
    #[serde(default)]
    pub actions: BTreeMap<String, Spanned<RawAction>>,
    /// Overrides of the notification templates, by name (`rollback_in_progress`, …).
    #[serde(default)]
    pub templates: BTreeMap<String, Spanned<String>>,
    /// High availability on etcd (several replicas, one acts).
    pub ha: Option<Spanned<RawHa>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHa {
    /// etcd endpoints (`http://` or `https://`). Required (checked with the other fields, so that
    /// every error in the section is reported at once).
    pub etcd: Option<Spanned<Vec<Spanned<String>>>>,
    /// The key replicas guarding one deployment share. Required.
    pub key: Option<Spanned<String>>,
    /// The leader's lease: a dead leader is replaced within about this (at least 2 s).
    pub ttl: Option<Spanned<String>>,
    /// This replica's name (default: host name and pid).
    pub replica: Option<Spanned<String>>,
    /// The URL other replicas reach this one's endpoints at (default: `http://` + `listen`).
    pub advertise: Option<Spanned<String>>,
    /// Env vars holding the etcd user and password (etcd auth), both or neither.
    pub username_env: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    /// PEM files: the CA that signed etcd's certificate, and this replica's client certificate
    /// and key (both or neither).
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVersion {
    pub target: Spanned<String>,
    pub field: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Spanned<String>,
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub address: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub critical: bool,
    /// Largest body read, in bytes (default 10 MiB).
    pub max_body: Option<Spanned<u64>>,
    /// At most this many samples (of series the rules read) from one poll (default 100,000).
    pub sample_limit: Option<Spanned<u64>>,
    /// Name of the environment variable holding a bearer token.
    pub bearer_token_env: Option<Spanned<String>>,
    /// Basic auth: the user name, and the env var holding the password.
    pub basic_auth_user: Option<String>,
    pub basic_auth_password_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub mode: Option<Spanned<String>>,
    pub cooldown: Option<Spanned<String>>,
    pub max_rollbacks: Option<Spanned<RawRateLimit>>,
    pub verify_for: Option<Spanned<String>>,
    pub verify_stable: Option<Spanned<String>>,
    pub bake: Option<Spanned<String>>,
    pub slow_rollback: Option<Spanned<String>>,
    pub blind_after: Option<Spanned<String>>,
    /// How long a `consider` approval stays open.
    pub approval_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub count: u32,
    pub per: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub kind: Spanned<String>,
    /// Slack: the conversation to post to.
    pub channel: Option<String>,
    /// Slack: the env var holding the bot token; webhook: an optional bearer token.
    pub token_env: Option<Spanned<String>>,
    /// Slack: the Web API base URL (default `https://slack.com/api/`).
    pub api_url: Option<Spanned<String>>,
    /// Webhook: where to POST.
    pub url: Option<Spanned<String>>,
    /// Email: recipients, sender, SMTP relay `host:port`.
    #[serde(default)]
    pub to: Vec<String>,
    pub from: Option<String>,
    pub smtp: Option<Spanned<String>>,
    /// Email: `starttls` (default), `tls`, or `none` (loopback only).
    pub smtp_security: Option<Spanned<String>>,
    pub smtp_user: Option<String>,
    pub smtp_password_env: Option<Spanned<String>>,
    /// Allows a password over plain SMTP beyond loopback (default: refused).
    #[serde(default)]
    pub smtp_allow_plaintext_password: bool,
    /// Another channel to use when this one keeps failing.
    pub fallback: Option<Spanned<String>>,
    /// Attempts before giving up (default 4) and the first backoff (default 1s, doubling).
    pub attempts: Option<Spanned<u32>>,
    pub backoff: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub kind: Spanned<String>,
    /// exec: the program and its arguments, each one argument (no shell).
    #[serde(default)]
    pub argv: Vec<String>,
    /// exec: extra environment for the child.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// exec: secrets handed to the child, `CHILD_VAR = "ROLLWATCH_ENV_VAR"` (nothing else of
    /// rollwatch's environment reaches it but PATH, HOME, LANG and the like).
    #[serde(default)]
    pub env_from: BTreeMap<String, String>,
    /// http: the request.
    pub url: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub bearer_token_env: Option<Spanned<String>>,
    pub body: Option<String>,
    #[serde(default)]
    pub expect_status: Vec<u16>,
    /// file: the marker, and whether the step makes it `present` or `absent`.
    pub path: Option<Spanned<String>>,
    pub state: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
}

/// `rollwatch.toml` of a fleet: the process-wide keys, the deployment files, and channels,
/// actions and templates every deployment may use. A deployment's own keys here are errors
/// (they are kept, as values, only to say so at their place).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    /// Globs of deployment files, relative to this file (`["deploy/*.toml"]`).
    pub deployments: Spanned<Vec<Spanned<String>>>,
    /// The alert label that names an alert's deployment (default `deployment`).
    pub route_alerts_by: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub listen: Option<Spanned<String>>,
    pub api_token_env: Option<Spanned<String>>,
    pub eval_interval: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u32>>,
    pub alert_expiry: Option<Spanned<String>>,
    pub ha: Option<Spanned<RawHa>>,
    #[serde(default)]
    pub channels: BTreeMap<String, Spanned<RawChannel>>,
    #[serde(default)]
    pub actions: BTreeMap<String, Spanned<RawAction>>,
    #[serde(default)]
    pub templates: BTreeMap<String, Spanned<String>>,
    /// Keys of a deployment, misplaced at the top.
    pub name: Option<Spanned<toml::Value>>,
    pub profiles: Option<Spanned<toml::Value>>,
    pub version: Option<Spanned<toml::Value>>,
    pub target: Option<Spanned<toml::Value>>,
    pub policy: Option<Spanned<toml::Value>>,
}

/// One deployment file of a fleet: its name and its own keys. Process-wide keys here are
/// errors (kept as values only to say so at their place).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMember {
    pub name: Option<Spanned<String>>,
    pub profiles: Spanned<Vec<Spanned<String>>>,
    pub version: Option<Spanned<RawVersion>>,
    #[serde(default)]
    pub target: Vec<Spanned<RawTarget>>,
    pub policy: Option<Spanned<RawPolicy>>,
    #[serde(default)]
    pub channels: BTreeMap<String, Spanned<RawChannel>>,
    #[serde(default)]
    pub actions: BTreeMap<String, Spanned<RawAction>>,
    #[serde(default)]
    pub templates: BTreeMap<String, Spanned<String>>,
    /// Process-wide keys, misplaced in a deployment file.
    pub deployments: Option<Spanned<toml::Value>>,
    pub route_alerts_by: Option<Spanned<toml::Value>>,
    pub state_dir: Option<Spanned<toml::Value>>,
    pub listen: Option<Spanned<toml::Value>>,
    pub api_token_env: Option<Spanned<toml::Value>>,
    pub eval_interval: Option<Spanned<toml::Value>>,
    pub max_connections: Option<Spanned<toml::Value>>,
    pub alert_expiry: Option<Spanned<toml::Value>>,
    pub ha: Option<Spanned<toml::Value>>,
}
