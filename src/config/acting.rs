//! The acting half of `rollwatch.toml`: `[policy]`, `[actions.NAME]`, `[channels.NAME]` and
//! `[templates]`, checked at load with every error placed (kinds, required fields, methods,
//! durations, fallbacks, template placeholders) into specs whose secrets are still named by
//! their environment variables. Actions and channels build themselves from these specs at start
//! (`Action::build`, `Channel::build`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::policy::{Mode, Policy};
use super::raw::{RawAction, RawChannel, RawConfig};
use crate::diag::Checker;
use crate::template::messages::{self as templates, Templates};
use crate::time::Span;

/// Kinds of action the dispatcher knows.
pub const ACTION_KINDS: &[&str] = &["exec", "http", "file"];
/// Kinds of notification channel.
pub const CHANNEL_KINDS: &[&str] = &["slack", "email", "webhook", "console"];
/// Policy modes.
pub const MODES: &[&str] = &["auto", "approve", "dry-run"];

/// Default timeout of an `exec` or `http` action.
pub const DEFAULT_ACTION_TIMEOUT: Span = Span(60_000);

/// A checked channel, secrets still named by their env var.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelSpec {
    pub name: String,
    pub kind: ChannelSpecKind,
    pub fallback: Option<String>,
    pub attempts: u32,
    pub backoff: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChannelSpecKind {
    Console,
    Webhook {
        url: String,
        token_env: Option<String>,
    },
    Slack {
        channel: String,
        token_env: String,
        api_url: Option<String>,
    },
    Email {
        smtp: String,
        security: Security,
        from: String,
        to: Vec<String>,
        user: Option<String>,
        password_env: Option<String>,
    },
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    StartTls,
    Tls,
    /// Plain SMTP: only for a relay on loopback.
    None,
}

/// What an action does. `S` is how a secret is held: the name of its environment variable in a
/// spec, its value ([`crate::secret::Secret`]) once the action is built at start.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionKind<S> {
    Exec {
        argv: Vec<String>,
        /// Set in the child's environment, on top of a clean one ([`crate::secret::INHERITED_ENV`]).
        env: BTreeMap<String, String>,
        /// Secrets the config hands the child (`env_from = { TOKEN = "DEPLOY_TOKEN" }`): the
        /// only way one reaches an action.
        secret_env: Vec<(String, S)>,
    },
    Http {
        method: reqwest::Method,
        url: String,
        headers: Vec<(String, String)>,
        /// Sent as `Authorization: Bearer …`.
        bearer: Option<S>,
        body: Option<String>,
        /// Statuses that count as success (empty: any 2xx).
        expect_status: Vec<u16>,
    },
    File {
        path: PathBuf,
        /// `true` creates the marker, `false` removes it.
        present: bool,
    },
}

impl<S> ActionKind<S> {
    /// The texts with placeholders (checked against the known names at load).
    pub fn templates(&self) -> Vec<&str> {
        match self {
            ActionKind::Exec { argv, env, .. } => argv.iter().chain(env.values()).map(String::as_str).collect(),
            ActionKind::Http { url, headers, body, .. } => std::iter::once(url.as_str())
                .chain(headers.iter().map(|h| h.1.as_str()))
                .chain(body.as_deref())
                .collect(),
            ActionKind::File { .. } => vec![],
        }
    }

    /// The secrets it names.
    pub fn secrets(&self) -> Vec<&S> {
        match self {
            ActionKind::Exec { secret_env, .. } => secret_env.iter().map(|(_, s)| s).collect(),
            ActionKind::Http { bearer, .. } => bearer.iter().collect(),
            ActionKind::File { .. } => vec![],
        }
    }

    /// The same action with each secret turned into `T` by `f` (an env var name into its value).
    pub fn map_secrets<T, E>(&self, mut f: impl FnMut(&S) -> Result<T, E>) -> Result<ActionKind<T>, E> {
        Ok(match self {
            ActionKind::Exec { argv, env, secret_env } => ActionKind::Exec {
                argv: argv.clone(),
                env: env.clone(),
                secret_env: secret_env.iter().map(|(k, s)| f(s).map(|v| (k.clone(), v))).collect::<Result<_, E>>()?,
            },
            ActionKind::Http { method, url, headers, bearer, body, expect_status } => ActionKind::Http {
                method: method.clone(),
                url: url.clone(),
                headers: headers.clone(),
                bearer: bearer.as_ref().map(&mut f).transpose()?,
                body: body.clone(),
                expect_status: expect_status.clone(),
            },
            ActionKind::File { path, present } => ActionKind::File { path: path.clone(), present: *present },
        })
    }
}

/// A checked action (`[actions.NAME]`), its secrets named by their environment variables.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    pub name: String,
    pub kind: ActionKind<String>,
    pub timeout: Span,
}

/// The acting half, checked.
#[derive(Debug, Clone)]
pub struct ActingSpec {
    pub policy: Policy,
    pub actions: BTreeMap<String, ActionSpec>,
    pub channels: Vec<ChannelSpec>,
    pub templates: Templates,
}

/// Checks `[policy]`, `[actions]`, `[channels]` and `[templates]`, each in its own phase; every
/// problem is reported.
pub fn check(c: &mut Checker, raw: &RawConfig) -> ActingSpec {
    let policy = policy(c, raw);
    let actions = raw.actions.iter().filter_map(|(name, a)| action(c, name, a).map(|a| (name.clone(), a))).collect();
    let channels = raw.channels.iter().filter_map(|(name, ch)| channel(c, raw, name, ch.get_ref())).collect();
    for (name, text) in &raw.templates {
        if let Err(e) = templates::check(text.get_ref()) {
            c.err(&text.span(), Some(&format!("template {name:?}")), e);
        }
    }
    let templates = Templates::with(raw.templates.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())));
    ActingSpec { policy, actions, channels, templates }
}

/// `[policy]`: the mode, the durations (verify_stable within verify_for), the loop guard.
fn policy(c: &mut Checker, raw: &RawConfig) -> Policy {
    let mut policy = Policy::default();
    if let Some(p) = &raw.policy {
        let p = p.get_ref();
        let item = Some("policy");
        if let Some(m) = &p.mode
            && c.one_of(m, MODES, item, "mode")
        {
            policy.mode = Mode::parse(m.get_ref()).unwrap_or(Mode::Auto);
        }
        policy.cooldown = c.duration(&p.cooldown, policy.cooldown, item, "cooldown");
        policy.verify_for = c.duration(&p.verify_for, policy.verify_for, item, "verify_for");
        // Unset, verify_stable is 1m, or half of a shorter verify_for.
        let stable_default = policy.verify_stable.min(crate::time::Span(policy.verify_for.0 / 2));
        policy.verify_stable = c.duration(&p.verify_stable, stable_default, item, "verify_stable");
        policy.bake = c.duration(&p.bake, policy.bake, item, "bake");
        if policy.verify_stable > policy.verify_for {
            let span = p.verify_stable.as_ref().or(p.verify_for.as_ref()).map(|s| s.span()).unwrap_or(0..0);
            c.err(
                &span,
                item,
                format!(
                    "verify_stable ({}) must not exceed verify_for ({}): a rollback could never verify",
                    policy.verify_stable, policy.verify_for
                ),
            );
        }
        policy.slow_rollback = c.duration(&p.slow_rollback, policy.slow_rollback, item, "slow_rollback");
        policy.blind_after = c.duration(&p.blind_after, policy.blind_after, item, "blind_after");
        policy.approval_timeout = c.duration(&p.approval_timeout, policy.approval_timeout, item, "approval_timeout");
        if let Some(m) = &p.max_rollbacks {
            let m = m.get_ref();
            policy.max_rollbacks = m.count;
            if let Some(per) = c.positive_duration(&m.per, item, "max_rollbacks.per") {
                policy.max_rollbacks_per = per;
            }
        }
    }

    policy
}

/// `[actions.NAME]`: its kind's fields, its templates; `None` when it cannot be built.
fn action(c: &mut Checker, name: &str, a: &toml::Spanned<RawAction>) -> Option<ActionSpec> {
    let item = format!("action {name:?}");
    let item = Some(item.as_str());
    let span = a.span();
    let a = a.get_ref();
    let timeout = c.duration(&a.timeout, DEFAULT_ACTION_TIMEOUT, item, "timeout");
    if !c.one_of(&a.kind, ACTION_KINDS, item, "kind") {
        return None;
    }
    let kind = match a.kind.get_ref().as_str() {
        "exec" => {
            if a.argv.is_empty() {
                c.err(&a.kind.span(), item, "an exec action needs argv = [\"program\", \"arg\", ...]");
            }
            ActionKind::Exec {
                argv: a.argv.clone(),
                env: a.env.clone(),
                secret_env: a.env_from.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            }
        }
        "http" => http_action(c, item, &span, a)?,
        _ => {
            let Some(path) = &a.path else {
                c.err(&a.kind.span(), item, "a file action needs path = \"/run/rollwatch/killswitch\"");
                return None;
            };
            let present = match &a.state {
                Some(s) if c.one_of(s, &["present", "absent"], item, "state") => s.get_ref() == "present",
                Some(_) => true,
                None => {
                    c.err(&a.kind.span(), item, "a file action needs state = \"present\" or \"absent\"");
                    true
                }
            };
            ActionKind::File { path: PathBuf::from(path.get_ref()), present }
        }
    };
    let action = ActionSpec { name: name.to_string(), kind, timeout };
    for t in action.kind.templates() {
        if let Err(e) = templates::check(t) {
            c.err(&span, item, e);
        }
    }
    if !a.env_from.is_empty() && a.kind.get_ref() != "exec" {
        c.err(&a.kind.span(), item, "env_from is for exec actions");
    }
    Some(action)
}

/// `[channels.NAME]`: its kind's fields, its fallback, its retries; `None` when its kind is
/// unknown.
fn channel(c: &mut Checker, raw: &RawConfig, name: &str, ch: &RawChannel) -> Option<ChannelSpec> {
    let item = format!("channel {name:?}");
    let item = Some(item.as_str());
    if !c.one_of(&ch.kind, CHANNEL_KINDS, item, "kind") {
        return None;
    }
    let at = ch.kind.span();
    let need = |c: &mut Checker, v: Option<String>, field: &str| {
        v.unwrap_or_else(|| {
            c.err(&at, item, format!("a {} channel needs {field}", ch.kind.get_ref()));
            String::new()
        })
    };
    let kind = match ch.kind.get_ref().as_str() {
        "console" => ChannelSpecKind::Console,
        "webhook" => ChannelSpecKind::Webhook {
            url: need(c, ch.url.as_ref().map(|u| u.get_ref().clone()), "url"),
            token_env: ch.token_env.as_ref().map(|t| t.get_ref().clone()),
        },
        "slack" => ChannelSpecKind::Slack {
            channel: need(c, ch.channel.clone(), "channel = \"#incidents\""),
            token_env: need(c, ch.token_env.as_ref().map(|t| t.get_ref().clone()), "token_env"),
            api_url: ch.api_url.as_ref().map(|u| u.get_ref().clone()),
        },
        _ => email_channel(c, item, ch),
    };
    if let Some(f) = &ch.fallback {
        if f.get_ref() == name {
            c.err(&f.span(), item, "a channel cannot be its own fallback");
        } else if !raw.channels.contains_key(f.get_ref()) {
            let hint = crate::diag::did_you_mean(f.get_ref(), raw.channels.keys().map(String::as_str));
            c.err(&f.span(), item, format!("fallback names no channel {:?}{hint}", f.get_ref()));
        }
    }
    let attempts = match &ch.attempts {
        None => 4,
        Some(a) if *a.get_ref() == 0 || *a.get_ref() > 20 => {
            c.err(&a.span(), item, "attempts must be between 1 and 20");
            4
        }
        Some(a) => *a.get_ref(),
    };
    Some(ChannelSpec {
        name: name.to_string(),
        kind,
        fallback: ch.fallback.as_ref().map(|f| f.get_ref().clone()),
        attempts,
        backoff: c.duration(&ch.backoff, Span::from_secs(1), item, "backoff"),
    })
}

/// An `http` action: its url, method, headers (text a header can carry) and expected statuses.
fn http_action(
    c: &mut Checker,
    item: Option<&str>,
    span: &std::ops::Range<usize>,
    a: &RawAction,
) -> Option<ActionKind<String>> {
    let Some(url) = &a.url else {
        c.err(&a.kind.span(), item, "an http action needs url = \"http(s)://...\"");
        return None;
    };
    if !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://")) {
        c.err(&url.span(), item, format!("url must start with http:// or https://, got {:?}", url.get_ref()));
    }
    let method = match &a.method {
        None => reqwest::Method::POST,
        Some(m) => match m.get_ref().to_ascii_uppercase().parse::<reqwest::Method>() {
            Ok(m) => m,
            Err(_) => {
                c.err(&m.span(), item, format!("method {:?} is not an HTTP method", m.get_ref()));
                reqwest::Method::POST
            }
        },
    };
    // The config's own header text must make a header; values filled in are
    // percent-encoded where needed (template::header), so they always do.
    for (k, v) in &a.headers {
        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
            c.err(span, item, format!("header {k:?}: not a valid HTTP header name"));
        }
        let own_text = crate::template::own_text(v);
        if reqwest::header::HeaderValue::from_str(&own_text).is_err() {
            c.err(
                span,
                item,
                format!(
                    "header {k:?}: its text {v:?} has a character a header cannot carry (a control character such as CR or LF); write it percent-encoded"
                ),
            );
        }
    }
    for s in &a.expect_status {
        if !(100..=599).contains(s) {
            c.err(span, item, format!("expect_status: {s} is not an HTTP status"));
        }
    }
    Some(ActionKind::Http {
        method,
        url: url.get_ref().clone(),
        headers: a.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        bearer: a.bearer_token_env.as_ref().map(|t| t.get_ref().clone()),
        body: a.body.clone(),
        expect_status: a.expect_status.clone(),
    })
}

/// An `email` channel: SMTP, its security (no password in clear beyond loopback), from, to.
fn email_channel(c: &mut Checker, item: Option<&str>, ch: &RawChannel) -> ChannelSpecKind {
    let at = ch.kind.span();
    let need = |c: &mut Checker, v: Option<String>, field: &str| {
        v.unwrap_or_else(|| {
            c.err(&at, item, format!("an email channel needs {field}"));
            String::new()
        })
    };
    let security = match &ch.smtp_security {
        None => Security::StartTls,
        Some(s) if c.one_of(s, &["starttls", "tls", "none"], item, "smtp_security") => match s.get_ref().as_str() {
            "tls" => Security::Tls,
            "none" => Security::None,
            _ => Security::StartTls,
        },
        Some(_) => Security::StartTls,
    };
    if ch.to.is_empty() {
        c.err(&at, item, "an email channel needs to = [\"oncall@example.com\"]");
    }
    if ch.smtp_user.is_some() != ch.smtp_password_env.is_some() {
        c.err(&at, item, "authenticate with both smtp_user and smtp_password_env, or neither");
    }
    let host = ch.smtp.as_ref().map(|s| s.get_ref().rsplit_once(':').map_or(s.get_ref().as_str(), |(h, _)| h));
    let loopback = host.is_some_and(|h| {
        h == "localhost" || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    if matches!(security, Security::None)
        && ch.smtp_password_env.is_some()
        && !loopback
        && !ch.smtp_allow_plaintext_password
    {
        c.err(
            &at,
            item,
            "smtp_security = \"none\" would send the SMTP password in clear beyond loopback: use starttls or tls \
             (or set smtp_allow_plaintext_password = true if this network is trusted)",
        );
    }
    ChannelSpecKind::Email {
        smtp: need(c, ch.smtp.as_ref().map(|s| s.get_ref().clone()), "smtp = \"host:port\""),
        security,
        from: need(c, ch.from.clone(), "from = \"rollwatch@example.com\""),
        to: ch.to.clone(),
        user: ch.smtp_user.clone(),
        password_env: ch.smtp_password_env.as_ref().map(|p| p.get_ref().clone()),
    }
}

/// What a fleet's top file defines for every deployment: actions, channels and template
/// overrides, checked there.
#[derive(Debug, Clone, Default)]
pub struct Shared {
    pub actions: BTreeMap<String, ActionSpec>,
    pub channels: Vec<ChannelSpec>,
    pub templates: Vec<(String, String)>,
    /// The file that defines them (for messages).
    pub path: PathBuf,
}

/// Adds what the top file shares to a deployment's own acting spec: an action or channel the
/// deployment defines again is an error at the deployment's definition (one name, one meaning);
/// a template both override reads the deployment's.
pub fn share(c: &mut Checker, raw: &RawConfig, acting: &mut ActingSpec, shared: &Shared) {
    let top = shared.path.display();
    for (name, a) in &shared.actions {
        if let Some(own) = raw.actions.get(name) {
            let item = format!("action {name:?}");
            c.err(&own.span(), Some(&item), format!("also defined in {top}, for every deployment: rename one"));
            continue;
        }
        acting.actions.insert(name.clone(), a.clone());
    }
    for ch in &shared.channels {
        if let Some(own) = raw.channels.get(&ch.name) {
            let item = format!("channel {:?}", ch.name);
            c.err(&own.span(), Some(&item), format!("also defined in {top}, for every deployment: rename one"));
            continue;
        }
        acting.channels.push(ch.clone());
    }
    let own = raw.templates.iter().map(|(k, v)| (k.clone(), v.get_ref().clone()));
    acting.templates = Templates::with(shared.templates.iter().cloned().chain(own));
}
