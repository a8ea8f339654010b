//! The acting half of `rollwatch.toml`: `[policy]`, `[actions.NAME]`, `[channels.NAME]` and
//! `[templates]`, checked at load with every error placed (kinds, required fields, methods,
//! durations, fallbacks, template placeholders), and resolved into live parts when the sidecar
//! starts — secrets read from the environment then, an unset variable named with its channel or
//! action and never a value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::diag::{Checker, Diagnostic, Diagnostics};
use super::raw::RawConfig;
use crate::act::action::{Action, ActionKind};
use crate::act::{Mode, Policy};
use crate::notify::email::{EmailChannel, Security};
use crate::notify::slack::SlackChannel;
use crate::notify::{Channel, ChannelKind, Templates, templates};
use crate::source::Secret;
use crate::time::Span;

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

/// Where an action's secrets come from: env var names, resolved at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionSecrets {
    /// An http action's bearer token.
    pub bearer_env: Option<String>,
    /// An exec action's `env_from`: child variable → rollwatch's environment variable.
    pub env_from: Vec<(String, String)>,
}

impl ActionSecrets {
    /// Every environment variable named.
    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.bearer_env.iter().map(String::as_str).chain(self.env_from.iter().map(|(_, v)| v.as_str()))
    }
}

/// The acting half, checked.
#[derive(Debug, Clone)]
pub struct ActingSpec {
    pub policy: Policy,
    /// Actions with the env vars their secrets come from.
    pub actions: BTreeMap<String, (Action, ActionSecrets)>,
    pub channels: Vec<ChannelSpec>,
    pub templates: Templates,
}

/// Checks `[policy]`, `[actions]`, `[channels]` and `[templates]`.
pub fn check(c: &mut Checker, raw: &RawConfig) -> ActingSpec {
    let mut policy = Policy::default();
    if let Some(p) = &raw.policy {
        let p = p.get_ref();
        let item = Some("policy");
        if let Some(m) = &p.mode
            && c.one_of(m, super::deploy::MODES, item, "mode")
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

    let mut actions = BTreeMap::new();
    for (name, a) in &raw.actions {
        let item = format!("action {name:?}");
        let item = Some(item.as_str());
        let span = a.span();
        let a = a.get_ref();
        let timeout = c.duration(&a.timeout, DEFAULT_ACTION_TIMEOUT, item, "timeout");
        if !c.one_of(&a.kind, super::deploy::ACTION_KINDS, item, "kind") {
            continue;
        }
        let kind = match a.kind.get_ref().as_str() {
            "exec" => {
                if a.argv.is_empty() {
                    c.err(&a.kind.span(), item, "an exec action needs argv = [\"program\", \"arg\", ...]");
                }
                ActionKind::Exec { argv: a.argv.clone(), env: a.env.clone(), secret_env: vec![] }
            }
            "http" => {
                let Some(url) = &a.url else {
                    c.err(&a.kind.span(), item, "an http action needs url = \"http(s)://...\"");
                    continue;
                };
                if !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://")) {
                    c.err(
                        &url.span(),
                        item,
                        format!("url must start with http:// or https://, got {:?}", url.get_ref()),
                    );
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
                for s in &a.expect_status {
                    if !(100..=599).contains(s) {
                        c.err(&span, item, format!("expect_status: {s} is not an HTTP status"));
                    }
                }
                ActionKind::Http {
                    method,
                    url: url.get_ref().clone(),
                    headers: a.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    bearer: None,
                    body: a.body.clone(),
                    expect_status: a.expect_status.clone(),
                }
            }
            _ => {
                let Some(path) = &a.path else {
                    c.err(&a.kind.span(), item, "a file action needs path = \"/run/rollwatch/killswitch\"");
                    continue;
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
        let action = Action { name: name.clone(), kind, timeout };
        for t in action.templates() {
            if let Err(e) = templates::check(t) {
                c.err(&span, item, e);
            }
        }
        if !a.env_from.is_empty() && a.kind.get_ref() != "exec" {
            c.err(&a.kind.span(), item, "env_from is for exec actions");
        }
        let secrets = ActionSecrets {
            bearer_env: a.bearer_token_env.as_ref().map(|t| t.get_ref().clone()),
            env_from: a.env_from.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        actions.insert(name.clone(), (action, secrets));
    }

    let mut channels = Vec::new();
    for (name, ch) in &raw.channels {
        let item = format!("channel {name:?}");
        let item = Some(item.as_str());
        let ch = ch.get_ref();
        if !c.one_of(&ch.kind, super::deploy::CHANNEL_KINDS, item, "kind") {
            continue;
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
            _ => {
                let security = match &ch.smtp_security {
                    None => Security::StartTls,
                    Some(s) if c.one_of(s, &["starttls", "tls", "none"], item, "smtp_security") => {
                        match s.get_ref().as_str() {
                            "tls" => Security::Tls,
                            "none" => Security::None,
                            _ => Security::StartTls,
                        }
                    }
                    Some(_) => Security::StartTls,
                };
                if ch.to.is_empty() {
                    c.err(&at, item, "an email channel needs to = [\"oncall@example.com\"]");
                }
                if ch.smtp_user.is_some() != ch.smtp_password_env.is_some() {
                    c.err(&at, item, "authenticate with both smtp_user and smtp_password_env, or neither");
                }
                let host =
                    ch.smtp.as_ref().map(|s| s.get_ref().rsplit_once(':').map_or(s.get_ref().as_str(), |(h, _)| h));
                let loopback = host.is_some_and(|h| {
                    h == "localhost"
                        || h.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
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
        };
        if let Some(f) = &ch.fallback {
            if f.get_ref() == name {
                c.err(&f.span(), item, "a channel cannot be its own fallback");
            } else if !raw.channels.contains_key(f.get_ref()) {
                let hint = super::did_you_mean(f.get_ref(), raw.channels.keys().map(String::as_str));
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
        channels.push(ChannelSpec {
            name: name.clone(),
            kind,
            fallback: ch.fallback.as_ref().map(|f| f.get_ref().clone()),
            attempts,
            backoff: c.duration(&ch.backoff, Span::from_secs(1), item, "backoff"),
        });
    }

    for (name, text) in &raw.templates {
        if let Err(e) = templates::check(text.get_ref()) {
            c.err(&text.span(), Some(&format!("template {name:?}")), e);
        }
    }
    let templates = Templates::with(raw.templates.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())));
    ActingSpec { policy, actions, channels, templates }
}

impl ActingSpec {
    /// Actions with their secrets read through `env`.
    pub fn actions(
        &self,
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<BTreeMap<String, Action>, Diagnostics> {
        let mut errors = Diagnostics::default();
        let mut out = BTreeMap::new();
        for (name, (action, secrets)) in &self.actions {
            let mut action = action.clone();
            let mut read = |var: &str| {
                let value = env(var).map(Secret);
                if value.is_none() {
                    errors.push(Diagnostic::file(
                        path,
                        format!("action {name:?}: environment variable {var} is not set"),
                    ));
                }
                value
            };
            match &mut action.kind {
                ActionKind::Http { bearer, .. } => {
                    if let Some(var) = &secrets.bearer_env {
                        *bearer = read(var);
                    }
                }
                ActionKind::Exec { secret_env, .. } => {
                    for (child, var) in &secrets.env_from {
                        if let Some(v) = read(var) {
                            secret_env.push((child.clone(), v));
                        }
                    }
                }
                ActionKind::File { .. } => {}
            }
            out.insert(name.clone(), action);
        }
        errors.into_result(out)
    }

    /// Live channels, secrets read through `env`.
    pub fn channels(
        &self,
        path: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<Channel>, Diagnostics> {
        let mut errors = Diagnostics::default();
        let mut out = Vec::new();
        for spec in &self.channels {
            let mut secret = |var: &str| match env(var) {
                Some(v) => Some(Secret(v)),
                None => {
                    errors.push(Diagnostic::file(
                        path,
                        format!("channel {:?}: environment variable {var} is not set", spec.name),
                    ));
                    None
                }
            };
            let kind = match &spec.kind {
                ChannelSpecKind::Console => Some(ChannelKind::Console),
                ChannelSpecKind::Webhook { url, token_env } => {
                    let bearer = token_env.as_ref().map(|v| secret(v));
                    match bearer {
                        Some(None) => None,
                        b => Some(ChannelKind::Webhook { url: url.clone(), bearer: b.flatten() }),
                    }
                }
                ChannelSpecKind::Slack { channel, token_env, api_url } => secret(token_env).and_then(|token| {
                    SlackChannel::new(channel.clone(), &token, api_url.as_deref())
                        .map(ChannelKind::Slack)
                        .map_err(|e| errors.push(Diagnostic::file(path, format!("channel {:?}: {e}", spec.name))))
                        .ok()
                }),
                ChannelSpecKind::Email { smtp, security, from, to, user, password_env } => {
                    let credentials = match (user, password_env) {
                        (Some(u), Some(p)) => secret(p).map(|pw| Some((u.clone(), pw))),
                        _ => Some(None),
                    };
                    credentials.and_then(|creds| {
                        EmailChannel::new(smtp, *security, from, to, creds, Duration::from_secs(10))
                            .map(ChannelKind::Email)
                            .map_err(|e| errors.push(Diagnostic::file(path, format!("channel {:?}: {e}", spec.name))))
                            .ok()
                    })
                }
            };
            if let Some(kind) = kind {
                out.push(Channel {
                    name: spec.name.clone(),
                    kind,
                    fallback: spec.fallback.clone(),
                    attempts: spec.attempts,
                    backoff: spec.backoff,
                });
            }
        }
        errors.into_result(out)
    }
}
