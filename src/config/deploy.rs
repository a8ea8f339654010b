//! `rollwatch.toml`, one deployment's binding: which profiles, which targets to poll, the policy
//! and the channels and actions the profiles' procedures name. Read into [`RawConfig`], then
//! checked as a whole with every error placed: durations, kinds, unique target names, listen
//! address, and every procedure step naming an action the config defines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::diag::{Diagnostics, SourceFile};
use super::profile::LoadedProfile;
use super::raw::RawConfig;
use crate::rules::{Evaluator, Step, load};
use crate::time::{Span, parse_duration};

/// Kinds of target the poller knows.
pub const TARGET_KINDS: &[&str] = &["health", "prometheus", "promql", "tcp", "alertmanager"];
/// Kinds of action the dispatcher knows.
pub const ACTION_KINDS: &[&str] = &["exec", "http", "file"];
/// Kinds of notification channel.
pub const CHANNEL_KINDS: &[&str] = &["slack", "email", "webhook", "console"];
/// Policy modes.
pub const MODES: &[&str] = &["auto", "approve", "dry-run"];

/// A checked config and the evaluator compiled from its profiles.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub raw: RawConfig,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub eval_interval: Span,
    /// Each target's poll interval and timeout, in file order.
    pub target_timing: Vec<(String, Span, Span)>,
}

impl Config {
    pub fn load(path: &Path) -> Result<(Config, Evaluator), Diagnostics> {
        Config::from_source(SourceFile::read(path)?)
    }

    pub fn from_source(file: SourceFile) -> Result<(Config, Evaluator), Diagnostics> {
        let raw: RawConfig = file.parse_toml()?;
        let mut errors = Diagnostics::default();
        let mut err = |span: Range<usize>, item: Option<&str>, msg: String| {
            errors.push(file.error(&span, item, msg))
        };
        let duration = |v: &Option<Spanned<String>>,
                        default: Span,
                        item: Option<&str>,
                        field: &str,
                        err: &mut dyn FnMut(Range<usize>, Option<&str>, String)|
         -> Span {
            match v {
                None => default,
                Some(s) => parse_duration(s.get_ref()).unwrap_or_else(|e| {
                    err(s.span(), item, format!("{field}: {e}"));
                    default
                }),
            }
        };
        let one_of =
            |v: &Spanned<String>,
             allowed: &[&str],
             item: Option<&str>,
             field: &str,
             err: &mut dyn FnMut(Range<usize>, Option<&str>, String)| {
                if !allowed.contains(&v.get_ref().as_str()) {
                    err(
                        v.span(),
                        item,
                        format!(
                            "{field} must be one of {}, not {:?}",
                            allowed.join(", "),
                            v.get_ref()
                        ),
                    );
                }
            };

        let eval_interval = duration(
            &raw.eval_interval,
            Span::from_secs(15),
            None,
            "eval_interval",
            &mut err,
        );
        let state_dir = PathBuf::from(
            raw.state_dir
                .as_ref()
                .map(|s| s.get_ref().as_str())
                .unwrap_or("/var/lib/rollwatch"),
        );
        let listen = match &raw.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 9464)),
            Some(l) => l.get_ref().parse().unwrap_or_else(|e| {
                err(
                    l.span(),
                    None,
                    format!("listen must be an address such as \"127.0.0.1:9464\": {e}"),
                );
                SocketAddr::from(([127, 0, 0, 1], 9464))
            }),
        };

        let mut names = BTreeSet::new();
        let mut target_timing = Vec::new();
        for t in &raw.target {
            let t = t.get_ref();
            let item = format!("target {:?}", t.name.get_ref());
            if !names.insert(t.name.get_ref().clone()) {
                err(t.name.span(), Some(&item), "duplicate target name".into());
            }
            one_of(&t.kind, TARGET_KINDS, Some(&item), "kind", &mut err);
            let needs = match t.kind.get_ref().as_str() {
                "health" | "prometheus" | "promql" => Some(("url", t.url.is_some())),
                "tcp" => Some(("address", t.address.is_some())),
                _ => None,
            };
            if let Some((field, false)) = needs {
                err(
                    t.kind.span(),
                    Some(&item),
                    format!("a {} target needs {field} = \"...\"", t.kind.get_ref()),
                );
            }
            if let Some(url) = &t.url
                && !(url.get_ref().starts_with("http://") || url.get_ref().starts_with("https://"))
            {
                err(
                    url.span(),
                    Some(&item),
                    format!(
                        "url must start with http:// or https://, got {:?}",
                        url.get_ref()
                    ),
                );
            }
            let interval = duration(
                &t.interval,
                Span::from_secs(5),
                Some(&item),
                "interval",
                &mut err,
            );
            let timeout = duration(
                &t.timeout,
                Span::from_secs(2),
                Some(&item),
                "timeout",
                &mut err,
            );
            if interval.is_zero() {
                err(
                    t.name.span(),
                    Some(&item),
                    "interval must be longer than 0s".into(),
                );
            }
            target_timing.push((t.name.get_ref().clone(), interval, timeout));
        }
        if let Some(v) = &raw.version
            && !names.contains(v.get_ref().target.get_ref())
        {
            err(
                v.get_ref().target.span(),
                Some("version"),
                format!("no target named {:?}", v.get_ref().target.get_ref()),
            );
        }
        if let Some(p) = &raw.policy {
            let p = p.get_ref();
            if let Some(m) = &p.mode {
                one_of(m, MODES, Some("policy"), "mode", &mut err);
            }
            for (v, field) in [
                (&p.cooldown, "cooldown"),
                (&p.verify_for, "verify_for"),
                (&p.slow_rollback, "slow_rollback"),
                (&p.blind_after, "blind_after"),
            ] {
                duration(v, Span::ZERO, Some("policy"), field, &mut err);
            }
            if let Some(m) = &p.max_rollbacks {
                duration(
                    &Some(m.get_ref().per.clone()),
                    Span::ZERO,
                    Some("policy"),
                    "max_rollbacks.per",
                    &mut err,
                );
            }
        }
        for (name, c) in &raw.channels {
            one_of(
                &c.get_ref().kind,
                CHANNEL_KINDS,
                Some(&format!("channel {name:?}")),
                "kind",
                &mut err,
            );
        }
        for (name, a) in &raw.actions {
            let item = format!("action {name:?}");
            let a = a.get_ref();
            one_of(&a.kind, ACTION_KINDS, Some(&item), "kind", &mut err);
            if a.kind.get_ref() == "exec" && a.argv.is_empty() {
                err(
                    a.kind.span(),
                    Some(&item),
                    "an exec action needs argv = [\"program\", \"arg\", ...]".into(),
                );
            }
            duration(&a.timeout, Span::ZERO, Some(&item), "timeout", &mut err);
        }

        let mut profiles = Vec::new();
        let mut placed = Vec::new();
        for p in raw.profiles.get_ref() {
            let resolved = file.resolve(p.get_ref());
            match LoadedProfile::read(&resolved) {
                Ok(lp) => profiles.push(lp),
                Err(d) if d.line.is_none() => err(
                    p.span(),
                    None,
                    format!("profile {}: {}", resolved.display(), d.message),
                ),
                Err(d) => placed.push(d),
            }
        }
        errors.0.extend(placed);
        let evaluator = match load::build(&profiles) {
            Ok(ev) => Some(ev),
            Err(e) => {
                errors.0.extend(e.0);
                None
            }
        };
        if let Some(ev) = &evaluator {
            check_procedures(&file, &raw, ev, &mut errors);
        }
        let Some(ev) = evaluator else {
            return Err(errors);
        };
        let config = Config {
            path: file.path.clone(),
            raw,
            state_dir,
            listen,
            eval_interval,
            target_timing,
        };
        errors.into_result((config, ev))
    }
}

/// Every action a procedure runs or verifies with must be defined in `[actions]`.
fn check_procedures(file: &SourceFile, raw: &RawConfig, ev: &Evaluator, errors: &mut Diagnostics) {
    let defined: BTreeMap<&str, ()> = raw.actions.keys().map(|k| (k.as_str(), ())).collect();
    for p in &ev.profiles {
        for (outcome, steps) in &p.procedures {
            for (i, step) in steps.iter().enumerate() {
                let Step::Run { action, verify, .. } = step else {
                    continue;
                };
                for name in std::iter::once(action).chain(verify) {
                    if !defined.contains_key(name.as_str()) {
                        errors.push(file.error(
                            &raw.profiles.span(),
                            Some(&format!("profile {:?} procedure {outcome:?} step {}", p.name, i + 1)),
                            format!("runs action {name:?}, which this config does not define in [actions.{name}]{}", super::did_you_mean(name, defined.keys().copied())),
                        ));
                    }
                }
            }
        }
    }
}
