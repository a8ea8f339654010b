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
    assemble(&file, config, profiles, errors)
}

/// A config's profiles compiled and cross-checked with it; every error, `errors` first.
fn assemble(
    file: &SourceFile,
    config: Config,
    profiles: Vec<LoadedProfile>,
    mut errors: Diagnostics,
) -> Result<Deployment, Diagnostics> {
    let (evaluator, procedures) = match compile(&profiles) {
        Ok(compiled) => compiled,
        Err(e) => {
            errors.0.extend(e.0);
            return Err(errors);
        }
    };
    check_procedures(&mut Checker { file, errors: &mut errors }, &config.raw, &config.acting, &evaluator, &procedures);
    check_targets_read(&mut Checker { file, errors: &mut errors }, &config.raw, &evaluator);
    check_windows(&profiles, &evaluator, config.eval_interval, &mut errors);
    errors.into_result(Deployment { config, evaluator, procedures })
}

/// What `run` runs: one deployment, or a fleet's several.
#[derive(Debug)]
pub struct Fleet {
    /// `Some(label)` for a fleet (`deployments = [...]`): the alert label that routes alerts;
    /// `None` for a `rollwatch.toml` that is one deployment.
    pub route_alerts_by: Option<String>,
    /// One for a single deployment; a fleet's in file order, each named (`config.member`).
    pub deployments: Vec<Deployment>,
}

impl Fleet {
    /// The deployments' names (empty for a single, unnamed deployment).
    pub fn names(&self) -> Vec<&str> {
        self.deployments.iter().filter_map(|d| d.config.member.as_ref().map(|m| m.name.as_str())).collect()
    }
}

/// Loads a `rollwatch.toml`: a fleet when it lists `deployments`, else one deployment (as
/// [`load`]). Every error of every file at once, each deployment's naming it.
pub fn load_fleet(path: &Path) -> Result<Fleet, Diagnostics> {
    let (route_alerts_by, members) = load_members(path)?;
    let mut errors = Diagnostics::default();
    let mut deployments = Vec::new();
    for (_, loaded) in members {
        match loaded {
            Ok(d) => deployments.push(d),
            Err(e) => errors.0.extend(e.0),
        }
    }
    errors.into_result(Fleet { route_alerts_by, deployments })
}

/// A deployment's name and what loading it gave: itself, or its errors (naming it).
type Loaded = (String, Result<Deployment, Diagnostics>);

/// The route label (`None`: one deployment) and each deployment loaded on its own, so that
/// one deployment's errors do not keep another from loading (a reload, a command naming it).
/// Errors of the top file are the `Err`.
fn load_members(path: &Path) -> Result<(Option<String>, Vec<Loaded>), Diagnostics> {
    let file = SourceFile::read(path)?;
    if !crate::config::fleet::is_fleet(&file) {
        return Ok((None, vec![(String::new(), from_source(file))]));
    }
    let mut errors = Diagnostics::default();
    let Some(spec) = crate::config::fleet::read(&file, &mut errors) else { return Err(errors) };
    if !errors.is_empty() {
        // The top file's own errors (and deployment files that did not parse) concern all;
        // each deployment's errors come with it.
        for m in spec.members {
            let name = m.config.member.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            if let Err(e) = assemble(&m.file, m.config, m.profiles, m.errors) {
                errors.0.extend(crate::config::fleet::tag(e, &name).0);
            }
        }
        return Err(errors);
    }
    let members = spec
        .members
        .into_iter()
        .map(|m| {
            let name = m.config.member.as_ref().map(|m| m.name.clone()).unwrap_or_default();
            let loaded =
                assemble(&m.file, m.config, m.profiles, m.errors).map_err(|e| crate::config::fleet::tag(e, &name));
            (name, loaded)
        })
        .collect();
    Ok((Some(spec.route_alerts_by), members))
}

/// Why [`load_selected`] loaded no deployment.
#[derive(Debug, thiserror::Error)]
pub enum NotLoaded {
    /// The config's errors (or the selected deployment's).
    #[error("{0}")]
    Invalid(Diagnostics),
    /// `--deployment` left out where the config has several, or naming none of them: the
    /// command line's error, not the config's.
    #[error("{0}")]
    Unselected(Diagnostics),
}

impl From<Diagnostics> for NotLoaded {
    fn from(errors: Diagnostics) -> NotLoaded {
        NotLoaded::Invalid(errors)
    }
}

impl From<NotLoaded> for Diagnostics {
    fn from(e: NotLoaded) -> Diagnostics {
        match e {
            NotLoaded::Invalid(d) | NotLoaded::Unselected(d) => d,
        }
    }
}

/// The one deployment a command concerns: `name` among a fleet's (required when there are
/// several), or the config's only one. Another deployment's errors do not stop it.
pub fn load_selected(path: &Path, name: Option<&str>) -> Result<Deployment, NotLoaded> {
    let (route, mut members) = load_members(path)?;
    let names: Vec<String> = members.iter().map(|m| m.0.clone()).collect();
    let at = |message: String| Err(NotLoaded::Unselected(crate::diag::Diagnostic::file(path, message).into()));
    match name {
        None if members.len() == 1 => Ok(members.remove(0).1?),
        None => at(format!(
            "this config watches {} deployments ({}): say which with --deployment NAME",
            names.len(),
            names.join(", ")
        )),
        Some(n) if route.is_none() => at(format!(
            "--deployment {n:?}: this config is one deployment without a name (no `deployments`); leave --deployment out"
        )),
        Some(n) => match names.iter().position(|x| x == n) {
            Some(i) => Ok(members.remove(i).1?),
            None => {
                let hint = crate::diag::did_you_mean(n, names.iter().map(String::as_str));
                at(format!("no deployment named {n:?}{hint} (deployments: {})", names.join(", ")))
            }
        },
    }
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
    // The config's own actions and, in a fleet, those its top file shares.
    let defined: Vec<&str> = acting.actions.keys().map(String::as_str).collect();
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
