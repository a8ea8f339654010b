//! `rollwatch.toml`, one deployment's binding: which profiles, which targets to poll, the policy
//! and the channels and actions the profiles' procedures name. Read into [`RawConfig`], then
//! checked as a whole with every error placed: durations, kinds, unique target names, listen
//! address, and every procedure step naming an action the config defines.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::diag::{Checker, Diagnostics, SourceFile};
use super::profile::read_listed;
use super::raw::RawConfig;
use crate::rules::{Evaluator, Step, load};
use crate::time::Span;

/// Kinds of target the poller knows.
pub const TARGET_KINDS: &[&str] = &["health", "prometheus", "promql", "tcp", "alertmanager"];
/// Kinds of action the dispatcher knows.
pub const ACTION_KINDS: &[&str] = &["exec", "http", "file"];
/// Kinds of notification channel.
pub const CHANNEL_KINDS: &[&str] = &["slack", "email", "webhook", "console"];
/// Policy modes.
pub const MODES: &[&str] = &["auto", "approve", "dry-run"];

/// A target's polling schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetTiming {
    pub name: String,
    pub interval: Span,
    pub timeout: Span,
}

/// A checked config (the raw file kept for the parts later stages read).
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub raw: RawConfig,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub eval_interval: Span,
    /// Each target's poll interval and timeout, in file order.
    pub targets: Vec<TargetTiming>,
}

impl Config {
    /// Loads a config and compiles the profiles it names into an evaluator.
    pub fn load(path: &Path) -> Result<(Config, Evaluator), Diagnostics> {
        Config::from_source(SourceFile::read(path)?)
    }

    pub fn from_source(file: SourceFile) -> Result<(Config, Evaluator), Diagnostics> {
        let mut errors = Diagnostics::default();
        let Some(raw) = file.parse_toml::<RawConfig>(&mut errors) else { return Err(errors) };
        let mut c = Checker { file: &file, errors: &mut errors };

        let eval_interval = c.duration(&raw.eval_interval, Span::from_secs(15), None, "eval_interval");
        let state_dir = PathBuf::from(raw.state_dir.as_ref().map_or("/var/lib/rollwatch", |s| s.get_ref().as_str()));
        let default_listen = SocketAddr::from(([127, 0, 0, 1], 9464));
        let listen = match &raw.listen {
            None => default_listen,
            Some(l) => l.get_ref().parse().unwrap_or_else(|e| {
                c.err(&l.span(), None, format!("listen must be an address such as \"127.0.0.1:9464\": {e}"));
                default_listen
            }),
        };

        let mut names = BTreeSet::new();
        let mut targets = Vec::new();
        for t in &raw.target {
            let t = t.get_ref();
            let item = format!("target {:?}", t.name.get_ref());
            let item = Some(item.as_str());
            if !names.insert(t.name.get_ref().clone()) {
                c.err(&t.name.span(), item, "duplicate target name");
            }
            c.one_of(&t.kind, TARGET_KINDS, item, "kind");
            let needs = match t.kind.get_ref().as_str() {
                "health" | "prometheus" | "promql" => Some(("url", t.url.is_some())),
                "tcp" => Some(("address", t.address.is_some())),
                _ => None,
            };
            if let Some((field, false)) = needs {
                c.err(&t.kind.span(), item, format!("a {} target needs {field} = \"...\"", t.kind.get_ref()));
            }
            if let Some(url) = &t.url
                && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
            {
                c.err(&url.span(), item, format!("url must start with http:// or https://, got {:?}", url.get_ref()));
            }
            let interval = c.duration(&t.interval, Span::from_secs(5), item, "interval");
            let timeout = c.duration(&t.timeout, Span::from_secs(2), item, "timeout");
            if interval.is_zero() {
                c.err(&t.name.span(), item, "interval must be longer than 0s");
            }
            targets.push(TargetTiming { name: t.name.get_ref().clone(), interval, timeout });
        }
        if let Some(v) = &raw.version
            && !names.contains(v.get_ref().target.get_ref())
        {
            c.err(
                &v.get_ref().target.span(),
                Some("version"),
                format!("no target named {:?}", v.get_ref().target.get_ref()),
            );
        }
        if let Some(p) = &raw.policy {
            let p = p.get_ref();
            if let Some(m) = &p.mode {
                c.one_of(m, MODES, Some("policy"), "mode");
            }
            for (v, field) in [
                (&p.cooldown, "cooldown"),
                (&p.verify_for, "verify_for"),
                (&p.slow_rollback, "slow_rollback"),
                (&p.blind_after, "blind_after"),
            ] {
                c.duration(v, Span::ZERO, Some("policy"), field);
            }
            if let Some(m) = &p.max_rollbacks {
                c.positive_duration(&m.get_ref().per, Some("policy"), "max_rollbacks.per");
            }
        }
        for (name, ch) in &raw.channels {
            c.one_of(&ch.get_ref().kind, CHANNEL_KINDS, Some(&format!("channel {name:?}")), "kind");
        }
        for (name, a) in &raw.actions {
            let item = format!("action {name:?}");
            let a = a.get_ref();
            c.one_of(&a.kind, ACTION_KINDS, Some(&item), "kind");
            if a.kind.get_ref() == "exec" && a.argv.is_empty() {
                c.err(&a.kind.span(), Some(&item), "an exec action needs argv = [\"program\", \"arg\", ...]");
            }
            c.duration(&a.timeout, Span::ZERO, Some(&item), "timeout");
        }

        let profiles = read_listed(&file, &raw.profiles, c.errors);
        let evaluator = match load::build(&profiles) {
            Ok(ev) => ev,
            Err(e) => {
                errors.0.extend(e.0);
                return Err(errors);
            }
        };
        check_procedures(&mut Checker { file: &file, errors: &mut errors }, &raw, &evaluator);
        let config = Config { path: file.path.clone(), raw, state_dir, listen, eval_interval, targets };
        errors.into_result((config, evaluator))
    }
}

/// Every action a procedure runs or verifies with must be defined in `[actions]`.
fn check_procedures(c: &mut Checker, raw: &RawConfig, ev: &Evaluator) {
    let defined: Vec<&str> = raw.actions.keys().map(String::as_str).collect();
    for p in &ev.profiles {
        for (outcome, steps) in &p.procedures {
            for (i, step) in steps.iter().enumerate() {
                let Step::Run { action, verify, .. } = step else {
                    continue;
                };
                for name in std::iter::once(action).chain(verify) {
                    if !defined.contains(&name.as_str()) {
                        let item = format!("profile {:?} procedure {outcome:?} step {}", p.name, i + 1);
                        let hint = super::did_you_mean(name, defined.iter().copied());
                        c.err(
                            &raw.profiles.span(),
                            Some(&item),
                            format!(
                                "runs action {name:?}, which this config does not define in [actions.{name}]{hint}"
                            ),
                        );
                    }
                }
            }
        }
    }
}
