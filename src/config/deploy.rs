//! `rollwatch.toml`, one deployment's binding: which profiles, which targets to poll, the policy
//! and the channels and actions the profiles' procedures name. Read into [`RawConfig`], then
//! checked as a whole with every error placed: durations, kinds, unique target names, listen
//! address, and every procedure step naming an action the config defines.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::LoadedProfile;
use super::acting::ActingSpec;
use super::profile::read_listed;
use super::raw::{RawConfig, RawHa, RawTarget, RawVersion};
use crate::diag::{Checker, Diagnostics, SourceFile};
use crate::secret::Secret;
use crate::source::{Auth, DEFAULT_MAX_BODY, Target, TargetKind};
use crate::time::Span;
use toml::Spanned;

/// Kinds of target the poller knows.
pub const TARGET_KINDS: &[&str] = &["health", "prometheus", "promql", "tcp"];

/// Where a target's secret comes from (resolved when the sidecar starts, never stored here).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthEnv {
    Bearer { token_env: String },
    Basic { username: String, password_env: String },
}

/// A checked target; [`Config::targets`] turns it into a pollable [`Target`].
#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub name: String,
    /// `None` for `alertmanager` (its alerts arrive on the webhook, nothing is polled).
    pub kind: Option<TargetKind>,
    pub interval: Span,
    pub timeout: Span,
    pub critical: bool,
    pub max_body: usize,
    pub auth: Option<AuthEnv>,
    /// At most this many samples kept from one poll.
    pub sample_limit: usize,
}

/// A checked config (the raw file kept for the parts later stages read).
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub raw: RawConfig,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub eval_interval: Span,
    /// Alerts not re-sent for this long end (none: they fire until resolved).
    pub alert_expiry: Option<Span>,
    /// Connections the own server holds at once.
    pub max_connections: usize,
    /// Targets in file order.
    pub targets: Vec<TargetConfig>,
    /// Env var holding the API bearer token (hook, approvals).
    pub api_token_env: Option<String>,
    /// Policy, actions, channels and templates.
    pub acting: ActingSpec,
    /// `[ha]`: replicas coordinated on etcd (none: this process runs alone).
    pub ha: Option<HaSpec>,
    /// `version = { target, field }`: where the deployed version is read.
    pub version: Option<VersionSource>,
    /// In a fleet (`deployments = [...]`): which deployment this is; `None` for a
    /// `rollwatch.toml` that is one deployment.
    pub member: Option<Member>,
}

/// A deployment of a fleet: its name, the fleet's top file, and what the top file shares.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// The top `rollwatch.toml` (a reload reads the fleet again from it).
    pub fleet: PathBuf,
    /// The actions, channels and templates every deployment may use.
    pub shared: super::acting::Shared,
}

/// Where the deployed version is read: a field of a target's health response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionSource {
    pub target: String,
    pub field: String,
}

/// The `[ha]` section, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HaSpec {
    pub etcd: Vec<String>,
    pub key: String,
    pub ttl: Span,
    pub replica: Option<String>,
    /// Where other replicas reach this one (commands and hooks are forwarded to the leader).
    pub advertise: Option<String>,
    /// etcd auth: the env vars holding the user name and the password.
    pub auth_env: Option<(String, String)>,
    /// PEM files: the CA to trust for etcd, and a client certificate with its key.
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl HaSpec {
    /// Plain `http://` endpoints, no auth: what `[ha]` with only `etcd`, `key`, `ttl` and
    /// `replica` says (tools, tests, benchmarks).
    pub fn plain(etcd: Vec<String>, key: &str, ttl: Span, replica: Option<&str>) -> HaSpec {
        HaSpec {
            etcd,
            key: key.to_string(),
            ttl,
            replica: replica.map(str::to_string),
            advertise: None,
            auth_env: None,
            ca_file: None,
            client_cert: None,
        }
    }
}

/// The shortest lease `[ha]` accepts: shorter, a busy leader loses it between renewals.
pub const HA_MIN_TTL: Span = Span(2_000);

/// Checks `[ha]`.
fn ha_spec(c: &mut Checker, raw: &toml::Spanned<crate::config::raw::RawHa>) -> Option<HaSpec> {
    let ha = raw.get_ref();
    let item = Some("[ha]");
    let endpoints: Vec<String> = match &ha.etcd {
        None => {
            c.err(&raw.span(), item, "etcd = [\"http://127.0.0.1:2379\"] is required: the endpoints replicas elect on");
            vec![]
        }
        Some(list) if list.get_ref().is_empty() => {
            c.err(&list.span(), item, "etcd needs at least one endpoint, such as \"http://127.0.0.1:2379\"");
            vec![]
        }
        Some(list) => list.get_ref().iter().map(|e| e.get_ref().clone()).collect(),
    };
    for e in ha.etcd.iter().flat_map(|l| l.get_ref()) {
        let url = e.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(url).is_err() {
            c.err(&e.span(), item, format!("etcd endpoints are URLs starting with http:// or https://, not {url:?}"));
        }
    }
    let key = match &ha.key {
        None => {
            c.err(
                &raw.span(),
                item,
                "key = \"/rollwatch/NAME\" is required: replicas guarding one deployment share it",
            );
            String::new()
        }
        Some(k) => {
            let key = k.get_ref();
            if !key.starts_with('/') || key.len() < 2 {
                c.err(&k.span(), item, format!("key must be a path such as \"/rollwatch/api\", not {key:?}"));
            }
            key.clone()
        }
    };
    let ttl = match &ha.ttl {
        None => Span::from_secs(10),
        Some(t) => match c.positive_duration(t, item, "ttl") {
            Some(ttl) if ttl < HA_MIN_TTL => {
                c.err(&t.span(), item, "ttl must be at least 2s: a shorter lease is lost between renewals");
                HA_MIN_TTL
            }
            Some(ttl) => ttl,
            None => Span::from_secs(10),
        },
    };
    let replica = ha.replica.as_ref().map(|r| r.get_ref().clone());
    if let Some(r) = &ha.replica
        && r.get_ref().trim().is_empty()
    {
        c.err(&r.span(), item, "replica must not be empty (leave it out for host name and pid)");
    }
    let text = |f: &Option<toml::Spanned<String>>| f.as_ref().map(|v| v.get_ref().clone());
    let advertise = text(&ha.advertise);
    if let Some(a) = &ha.advertise {
        let url = a.get_ref();
        if !(url.starts_with("http://") || url.starts_with("https://")) || reqwest::Url::parse(url).is_err() {
            c.err(&a.span(), item, format!("advertise is the URL other replicas reach this one at, such as \"http://10.0.0.5:9464\", not {url:?}"));
        }
    }
    let mut pair = |a: &Option<toml::Spanned<String>>, b: &Option<toml::Spanned<String>>, what: &str| match (a, b) {
        (Some(a), Some(b)) => Some((a.get_ref().clone(), b.get_ref().clone())),
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => {
            c.err(&x.span(), item, format!("{what}: give both or neither"));
            None
        }
    };
    let auth_env = pair(&ha.username_env, &ha.password_env, "username_env and password_env");
    let client_cert =
        pair(&ha.cert_file, &ha.key_file, "cert_file and key_file").map(|(c, k)| (PathBuf::from(c), PathBuf::from(k)));
    let ca_file = text(&ha.ca_file).map(PathBuf::from);
    // The certificate files are read now, so that `check` catches what `run` could not use.
    let files = [("ca_file", &ha.ca_file), ("cert_file", &ha.cert_file), ("key_file", &ha.key_file)];
    for (label, file) in files {
        let Some(f) = file else { continue };
        let path = f.get_ref();
        match std::fs::read(path) {
            Err(e) => c.err(&f.span(), item, format!("{label}: cannot read {path}: {e}")),
            Ok(bytes) => {
                if let Err(why) = pem_holds(label, &bytes) {
                    c.err(&f.span(), item, format!("{label}: {path} {why}"));
                }
            }
        }
        if !endpoints.iter().any(|e| e.starts_with("https://")) {
            c.err(&f.span(), item, format!("{label} is for https:// endpoints; every endpoint here is http://"));
        }
    }
    Some(HaSpec { etcd: endpoints, key, ttl, replica, advertise, auth_env, ca_file, client_cert })
}

/// Whether a PEM file holds what its `[ha]` field needs: `ca_file` certificates a trust store
/// takes, `cert_file` certificates, `key_file` a private key. `Err` says what is wrong.
fn pem_holds(label: &str, bytes: &[u8]) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err("is not PEM (no -----BEGIN line)".into());
    }
    if label == "key_file" {
        return PrivateKeyDer::from_pem_slice(bytes)
            .map(drop)
            .map_err(|e| format!("holds no usable private key ({e})"));
    }
    let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("holds a certificate that does not decode ({e})"))?;
    if certs.is_empty() {
        return Err("holds no certificate (a key, or another PEM kind)".into());
    }
    if label == "ca_file" {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| format!("holds a certificate that cannot be trusted as a CA ({e})"))?;
        }
    }
    Ok(())
}

/// The process-wide keys as written: from `rollwatch.toml` alone, or from a fleet's top file.
pub struct ProcessKeys<'a> {
    pub state_dir: &'a Option<Spanned<String>>,
    pub listen: &'a Option<Spanned<String>>,
    pub api_token_env: &'a Option<Spanned<String>>,
    pub eval_interval: &'a Option<Spanned<String>>,
    pub max_connections: &'a Option<Spanned<u32>>,
    pub alert_expiry: &'a Option<Spanned<String>>,
    pub ha: &'a Option<Spanned<RawHa>>,
}

impl<'a> ProcessKeys<'a> {
    /// The keys of a one-deployment `rollwatch.toml`.
    pub fn of(raw: &'a RawConfig) -> ProcessKeys<'a> {
        ProcessKeys {
            state_dir: &raw.state_dir,
            listen: &raw.listen,
            api_token_env: &raw.api_token_env,
            eval_interval: &raw.eval_interval,
            max_connections: &raw.max_connections,
            alert_expiry: &raw.alert_expiry,
            ha: &raw.ha,
        }
    }
}

/// The process-wide keys, checked: one set per process, whatever the number of deployments.
#[derive(Debug, Clone)]
pub struct Process {
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub eval_interval: Span,
    pub alert_expiry: Option<Span>,
    pub max_connections: usize,
    pub api_token_env: Option<String>,
    pub ha: Option<HaSpec>,
}

impl Process {
    /// Checks the process-wide keys: durations, the listen address (beyond loopback only with
    /// a token), `[ha]`.
    pub fn check(c: &mut Checker, raw: ProcessKeys) -> Process {
        let eval_interval = match raw.eval_interval {
            Some(e) => c.positive_duration(e, None, "eval_interval").unwrap_or(Span::from_secs(15)),
            None => Span::from_secs(15),
        };
        let alert_expiry = raw.alert_expiry.as_ref().and_then(|e| c.positive_duration(e, None, "alert_expiry"));
        let max_connections = match raw.max_connections {
            None => 256,
            Some(m) if (1..=65_536).contains(m.get_ref()) => *m.get_ref() as usize,
            Some(m) => {
                c.err(&m.span(), None, "max_connections must be 1 to 65536");
                256
            }
        };
        let state_dir = PathBuf::from(raw.state_dir.as_ref().map_or("/var/lib/rollwatch", |s| s.get_ref().as_str()));
        let listen = check_listen(c, &raw);
        let api_token_env = raw.api_token_env.as_ref().map(|t| t.get_ref().clone());
        let ha = raw.ha.as_ref().and_then(|h| ha_spec(c, h));
        if let (Some(spec), Some(raw_ha)) = (&ha, raw.ha)
            && spec.advertise.is_none()
            && listen.ip().is_unspecified()
        {
            c.err(
                &raw_ha.span(),
                Some("[ha]"),
                format!(
                    "advertise = \"http://HOST:{}\" is required when listen is {}: the other replicas send commands and hooks there",
                    listen.port(),
                    listen.ip()
                ),
            );
        }
        Process { state_dir, listen, eval_interval, alert_expiry, max_connections, api_token_env, ha }
    }
}

/// `listen`: an address; beyond loopback only with `api_token_env`.
fn check_listen(c: &mut Checker, raw: &ProcessKeys) -> SocketAddr {
    let default_listen = SocketAddr::from(([127, 0, 0, 1], 9464));
    let listen = match raw.listen {
        None => default_listen,
        Some(l) => l.get_ref().parse().unwrap_or_else(|e| {
            c.err(&l.span(), None, format!("listen must be an address such as \"127.0.0.1:9464\": {e}"));
            default_listen
        }),
    };
    if !listen.ip().is_loopback() && raw.api_token_env.is_none() {
        let span = raw.listen.as_ref().map(|l| l.span()).unwrap_or(0..0);
        c.err(
            &span,
            None,
            "listening beyond loopback needs api_token_env: a forged alert must not roll back production",
        );
    }
    listen
}

/// Checks every `[[target]]`: kinds, the fields each kind needs, durations, auth, limits;
/// target names unique.
fn check_targets(c: &mut Checker, raw: &[Spanned<RawTarget>]) -> Vec<TargetConfig> {
    let mut names = BTreeSet::new();
    let mut targets = Vec::new();
    for t in raw {
        let t = t.get_ref();
        let item = format!("target {:?}", t.name.get_ref());
        if !names.insert(t.name.get_ref().clone()) {
            c.err(&t.name.span(), Some(&item), "duplicate target name");
        }
        targets.push(check_target(c, t, &item));
    }
    targets
}

/// One `[[target]]`: its kind and what the kind needs, its timing, its auth, its limits.
fn check_target(c: &mut Checker, t: &RawTarget, item: &str) -> TargetConfig {
    let item = Some(item);
    let kind = target_kind(c, t, item);
    let (interval, timeout) = target_timing(c, t, item);
    let auth = target_auth(c, t, item);
    let (max_body, sample_limit) = target_limits(c, t, item);
    TargetConfig {
        name: t.name.get_ref().clone(),
        kind,
        interval,
        timeout,
        critical: t.critical,
        max_body,
        auth,
        sample_limit,
    }
}

/// A target's `kind` and the fields it needs (`url`, `address`, `query`); `None` for a kind
/// that is not polled or not known (already an error).
fn target_kind(c: &mut Checker, t: &RawTarget, item: Option<&str>) -> Option<TargetKind> {
    if t.kind.get_ref() == "alertmanager" {
        // Accepted once and never polled: alerts are pushed, not pulled.
        c.err(
            &t.kind.span(),
            item,
            "there is no alertmanager target: Alertmanager posts its alerts to POST /hooks/alertmanager \
                 (see the README's Alertmanager section)",
        );
    } else {
        c.one_of(&t.kind, TARGET_KINDS, item, "kind");
    }
    let needs = match t.kind.get_ref().as_str() {
        "health" | "prometheus" | "promql" => Some(("url", t.url.is_some())),
        "tcp" => Some(("address", t.address.is_some())),
        _ => None,
    };
    if let Some((field, false)) = needs {
        c.err(&t.kind.span(), item, format!("a {} target needs {field} = \"...\"", t.kind.get_ref()));
    }
    match (t.kind.get_ref().as_str(), &t.query) {
        ("promql", None) => c.err(
            &t.kind.span(),
            item,
            "a promql target needs query = \"...\" (an instant query, e.g. 'sum(rate(http_requests_total[1m]))')",
        ),
        ("promql", Some(q)) if q.get_ref().trim().is_empty() => c.err(&q.span(), item, "query must not be empty"),
        ("promql", _) => {}
        (kind, Some(q)) => c.err(&q.span(), item, format!("query is for promql targets, not {kind}")),
        _ => {}
    }
    if let Some(url) = &t.url
        && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
    {
        c.err(&url.span(), item, format!("url must start with http:// or https://, got {:?}", url.get_ref()));
    }
    let url = t.url.as_ref().map(|u| u.get_ref().clone()).unwrap_or_default();
    match t.kind.get_ref().as_str() {
        "health" => Some(TargetKind::Health { url }),
        "prometheus" => Some(TargetKind::Prometheus { url }),
        "promql" => {
            Some(TargetKind::Promql { url, query: t.query.as_ref().map(|q| q.get_ref().clone()).unwrap_or_default() })
        }
        "tcp" => Some(TargetKind::Tcp { address: t.address.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default() }),
        _ => None,
    }
}

/// `interval` and `timeout`, both longer than 0s.
fn target_timing(c: &mut Checker, t: &RawTarget, item: Option<&str>) -> (Span, Span) {
    let interval = c.duration(&t.interval, Span::from_secs(5), item, "interval");
    let timeout = c.duration(&t.timeout, Span::from_secs(2), item, "timeout");
    if interval.is_zero() {
        c.err(&t.name.span(), item, "interval must be longer than 0s");
    }
    if timeout.is_zero() {
        let span = t.timeout.as_ref().map_or(t.name.span(), |s| s.span());
        c.err(&span, item, "timeout must be longer than 0s: a 0s timeout reads a healthy target as down");
    }
    (interval, timeout)
}

/// A bearer token, or basic auth (a user and its password's variable), or none.
fn target_auth(c: &mut Checker, t: &RawTarget, item: Option<&str>) -> Option<AuthEnv> {
    match (&t.bearer_token_env, &t.basic_auth_user, &t.basic_auth_password_env) {
        (None, None, None) => None,
        (Some(token), None, None) => Some(AuthEnv::Bearer { token_env: token.get_ref().clone() }),
        (None, Some(user), Some(pw)) => {
            Some(AuthEnv::Basic { username: user.clone(), password_env: pw.get_ref().clone() })
        }
        _ => {
            c.err(
                &t.name.span(),
                item,
                "authenticate with bearer_token_env, or with basic_auth_user and basic_auth_password_env",
            );
            None
        }
    }
}

/// `max_body` and `sample_limit`, within their bounds.
fn target_limits(c: &mut Checker, t: &RawTarget, item: Option<&str>) -> (usize, usize) {
    let max_body = match &t.max_body {
        None => DEFAULT_MAX_BODY,
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > 1 << 30 => {
            c.err(&m.span(), item, "max_body must be between 1 byte and 1 GiB");
            DEFAULT_MAX_BODY
        }
        Some(m) => *m.get_ref() as usize,
    };
    let sample_limit = match &t.sample_limit {
        None => crate::source::DEFAULT_SAMPLE_LIMIT,
        Some(m) if *m.get_ref() == 0 || *m.get_ref() > 10_000_000 => {
            c.err(&m.span(), item, "sample_limit must be between 1 and 10,000,000");
            crate::source::DEFAULT_SAMPLE_LIMIT
        }
        Some(m) => *m.get_ref() as usize,
    };
    (max_body, sample_limit)
}

/// `version = { target, field }` names a defined target.
fn check_version(
    c: &mut Checker,
    raw: &Option<Spanned<RawVersion>>,
    targets: &[TargetConfig],
) -> Option<VersionSource> {
    let v = raw.as_ref()?.get_ref();
    if !targets.iter().any(|t| t.name == *v.target.get_ref()) {
        c.err(&v.target.span(), Some("version"), format!("no target named {:?}", v.target.get_ref()));
    }
    Some(VersionSource { target: v.target.get_ref().clone(), field: v.field.get_ref().clone() })
}

impl Config {
    /// Reads and checks a config and reads the profiles it names, adding every error to
    /// `errors`; `None` when the file is not TOML of this shape. The config is returned even
    /// with errors, so that the caller (`act::deployment`) reports the profiles' errors too.
    pub fn read(file: &SourceFile, errors: &mut Diagnostics) -> Option<(Config, Vec<LoadedProfile>)> {
        let raw = file.parse_toml::<RawConfig>(errors)?;
        let mut c = Checker { file, errors };
        let process = Process::check(&mut c, ProcessKeys::of(&raw));
        Some(Config::deployment(&mut c, raw, process, None))
    }

    /// A deployment's own part, checked in the file `c` reads: targets, the version source,
    /// policy, actions, channels and templates (with what a fleet's top file shares, if any),
    /// and the profiles it names, read.
    pub fn deployment(
        c: &mut Checker,
        raw: RawConfig,
        process: Process,
        member: Option<Member>,
    ) -> (Config, Vec<LoadedProfile>) {
        let targets = check_targets(c, &raw.target);
        let version = check_version(c, &raw.version, &targets);
        let mut acting = super::acting::check(c, &raw);
        if let Some(m) = &member {
            super::acting::share(c, &raw, &mut acting, &m.shared);
        }
        let profiles = read_listed(c.file, &raw.profiles, c.errors);
        let Process { state_dir, listen, eval_interval, alert_expiry, max_connections, api_token_env, ha } = process;
        let config = Config {
            path: c.file.path.clone(),
            version,
            raw,
            state_dir,
            listen,
            eval_interval,
            alert_expiry,
            max_connections,
            targets,
            api_token_env,
            acting,
            ha,
            member,
        };
        (config, profiles)
    }
}

impl Config {
    /// Every environment variable this config reads a secret from.
    pub fn secret_vars(&self) -> Vec<&str> {
        let mut vars: Vec<&str> = self.api_token_env.iter().map(String::as_str).collect();
        for t in &self.targets {
            match &t.auth {
                Some(AuthEnv::Bearer { token_env }) => vars.push(token_env),
                Some(AuthEnv::Basic { password_env, .. }) => vars.push(password_env),
                None => {}
            }
        }
        vars.extend(self.acting.actions.values().flat_map(|a| a.kind.secrets()).map(String::as_str));
        for c in &self.acting.channels {
            match &c.kind {
                super::acting::ChannelSpecKind::Webhook { token_env: Some(v), .. }
                | super::acting::ChannelSpecKind::Slack { token_env: v, .. }
                | super::acting::ChannelSpecKind::Email { password_env: Some(v), .. } => vars.push(v),
                _ => {}
            }
        }
        vars
    }

    /// The targets the poller runs, secrets read through `env` (the process environment in
    /// production). A secret whose variable is unset is an error naming the target and variable
    /// — never the value.
    pub fn targets(&self, env: impl Fn(&str) -> Option<String>) -> Result<Vec<Target>, Diagnostics> {
        let mut errors = Diagnostics::default();
        let mut out = Vec::new();
        for t in &self.targets {
            let Some(kind) = t.kind.clone() else { continue };
            let mut secret = |var: &str| match env(var) {
                Some(v) => Some(Secret(v)),
                None => {
                    errors.push(crate::diag::Diagnostic::file(
                        &self.path,
                        format!("target {:?}: environment variable {var} is not set", t.name),
                    ));
                    None
                }
            };
            let auth = match &t.auth {
                None => None,
                Some(AuthEnv::Bearer { token_env }) => secret(token_env).map(Auth::Bearer),
                Some(AuthEnv::Basic { username, password_env }) => {
                    secret(password_env).map(|password| Auth::Basic { username: username.clone(), password })
                }
            };
            out.push(Target {
                name: t.name.clone(),
                kind,
                interval: t.interval,
                timeout: t.timeout,
                critical: t.critical,
                max_body: t.max_body,
                auth,
                keep: None,
                sample_limit: t.sample_limit,
            });
        }
        errors.into_result(out)
    }
}
