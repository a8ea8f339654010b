//! A loaded deployment: `rollwatch.toml` with the profiles it names compiled into an
//! [`Evaluator`], and the checks that need both — procedures name defined actions and
//! templates, rules read defined targets, windows are not shorter than `eval_interval`. The one
//! place a config and its profiles are put together (`run`, `check`, a SIGHUP reload, `demo`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::{Evaluator, load};
use crate::config::LoadedProfile;
use crate::config::acting::ActingSpec;
use crate::config::deploy::Config;
use crate::config::procedures::{self as steps, Procedures, Step};
use crate::config::raw::RawConfig;
use crate::diag::{Checker, Diagnostics, SourceFile};
use crate::time::Span;

/// A config with its profiles compiled: what `run` runs.
#[derive(Debug)]
pub struct Deployment {
    pub config: Config,
    pub evaluator: Evaluator,
    /// Each profile's procedures, by profile name.
    pub procedures: BTreeMap<String, Procedures>,
}

/// Loads a config and compiles the profiles it names; every error at once.
pub fn load(path: &Path) -> Result<Deployment, Diagnostics> {
    from_source(SourceFile::read(path)?)
}

/// [`load`] from a file already read.
pub fn from_source(file: SourceFile) -> Result<Deployment, Diagnostics> {
    let mut errors = Diagnostics::default();
    let Some((config, profiles)) = Config::read(&file, &mut errors) else { return Err(errors) };
    let (evaluator, procedures) = match compile(&profiles) {
        Ok(compiled) => compiled,
        Err(e) => {
            errors.0.extend(e.0);
            return Err(errors);
        }
    };
    check_procedures(
        &mut Checker { file: &file, errors: &mut errors },
        &config.raw,
        &config.acting,
        &evaluator,
        &procedures,
    );
    check_targets_read(&mut Checker { file: &file, errors: &mut errors }, &config.raw, &evaluator);
    check_windows(&profiles, &evaluator, config.eval_interval, &mut errors);
    errors.into_result(Deployment { config, evaluator, procedures })
}

/// Profiles compiled: rules and decision trees into an evaluator, procedures beside it; every
/// error of both, in file order. (`check` of a profile and fixtures load profiles this way too.)
pub fn compile(profiles: &[LoadedProfile]) -> Result<(Evaluator, BTreeMap<String, Procedures>), Diagnostics> {
    let evaluator = load::build(profiles);
    let procedures = steps::compile_all(profiles);
    match (evaluator, procedures) {
        (Ok(ev), Ok(p)) => Ok((ev, p)),
        (ev, p) => {
            let mut errors = Diagnostics::default();
            errors.0.extend(ev.err().into_iter().flat_map(|e| e.0));
            errors.0.extend(p.err().into_iter().flat_map(|e| e.0));
            errors.0.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
            Err(errors)
        }
    }
}

/// A window shorter than `eval_interval` sees samples only now and then: the rule would flap
/// between data and no data. An error at the rule or signal that reads it.
fn check_windows(profiles: &[LoadedProfile], ev: &Evaluator, eval_interval: Span, errors: &mut Diagnostics) {
    let readers = ev
        .rules
        .iter()
        .map(|r| (format!("rule {:?}", r.name), r.shortest_window, &r.span, r.profile))
        .chain(ev.signals.iter().map(|s| (format!("signal {:?}", s.name), s.shortest_window, &s.span, s.profile)));
    for (who, window, span, profile) in readers {
        if let (Some(w), Some(p)) = (window, profiles.get(profile))
            && w < eval_interval
        {
            errors.push(p.file.error(
                span,
                Some(&who),
                format!(
                    "a {w} window is shorter than eval_interval ({eval_interval}): it would see data only now and then"
                ),
            ));
        }
    }
}

/// A rule that reads `up("X")`, `down_for("X")` or `target="X"` for a target the config does not
/// define would be blind forever: an error in a config (a profile alone may name any target).
fn check_targets_read(c: &mut Checker, raw: &RawConfig, ev: &Evaluator) {
    let names: BTreeSet<&str> = raw.target.iter().map(|t| t.get_ref().name.get_ref().as_str()).collect();
    let readers = ev
        .rules
        .iter()
        .map(|r| (format!("rule {:?}", r.name), &r.reads))
        .chain(ev.signals.iter().map(|s| (format!("signal {:?}", s.name), &s.reads)));
    let mut told = BTreeSet::new();
    for (who, reads) in readers {
        for text in reads.iter().filter(|t| !t.starts_with("signal:")) {
            let Ok(sel) = crate::selector::Selector::parse(text) else { continue };
            for m in sel.matchers.iter().filter(|m| m.label == "target" && m.op == crate::selector::MatchOp::Equal) {
                if names.contains(m.value.as_str()) || !told.insert((who.clone(), m.value.clone())) {
                    continue;
                }
                let hint = crate::diag::did_you_mean(&m.value, names.iter().copied());
                let defined: Vec<&str> = names.iter().copied().collect();
                let span = raw.profiles.span();
                c.err(
                    &span,
                    None,
                    format!(
                        "{who} reads target {:?}, which this config does not define{hint} (targets: {}): it would never see data",
                        m.value,
                        if defined.is_empty() { "none".to_string() } else { defined.join(", ") }
                    ),
                );
            }
        }
    }
}

/// Every action a procedure runs or verifies with must be defined in `[actions]`, and every
/// template it announces must exist.
fn check_procedures(
    c: &mut Checker,
    raw: &RawConfig,
    acting: &ActingSpec,
    ev: &Evaluator,
    procedures: &BTreeMap<String, Procedures>,
) {
    let defined: Vec<&str> = raw.actions.keys().map(String::as_str).collect();
    for p in &ev.profiles {
        for (outcome, steps) in procedures.get(&p.name).into_iter().flatten() {
            for (i, step) in steps.iter().enumerate() {
                let (action, verify) = match step {
                    Step::Run { action, verify, .. } => (action, verify),
                    Step::Announce { template, .. } => {
                        if acting.templates.get(template).is_none() {
                            let item = format!("profile {:?} procedure {outcome:?} step {}", p.name, i + 1);
                            let hint = crate::diag::did_you_mean(template, acting.templates.names());
                            c.err(&raw.profiles.span(), Some(&item), format!("announces template {template:?}, which neither rollwatch nor [templates] defines{hint}"));
                        }
                        continue;
                    }
                };
                for name in std::iter::once(action).chain(verify) {
                    if !defined.contains(&name.as_str()) {
                        let item = format!("profile {:?} procedure {outcome:?} step {}", p.name, i + 1);
                        let hint = crate::diag::did_you_mean(name, defined.iter().copied());
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
