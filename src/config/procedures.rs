//! Procedures: a profile's `[[procedure.OUTCOME]]` steps compiled — announce a template, or
//! run an action (and verify with another) — with the levels they apply at. Compiled from the
//! profiles as loaded; `rollwatch.toml` binds the names to actions.

use std::collections::BTreeMap;

use toml::Spanned;

use super::LoadedProfile;
use super::outcome::Outcome;
use super::raw::RawStep;
use crate::diag::{Checker, Diagnostics};

/// One step of a procedure, as the profile names it (bound to actions by `rollwatch.toml`).
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Announce { template: String, levels: Vec<String> },
    Run { action: String, verify: Option<String>, levels: Vec<String> },
}

/// A profile's procedures by outcome.
pub type Procedures = BTreeMap<String, Vec<Step>>;

/// Every profile's procedures, by profile name, or every error in them (placed).
pub fn compile_all(profiles: &[LoadedProfile]) -> Result<BTreeMap<String, Procedures>, Diagnostics> {
    let mut errors = Diagnostics::default();
    let mut out = BTreeMap::new();
    for p in profiles {
        let mut ctx = Checker { file: &p.file, errors: &mut errors };
        out.insert(p.name.clone(), compile(&mut ctx, &p.raw.procedure));
    }
    errors.into_result(out)
}

/// One profile's procedures, each error added to `ctx`.
pub fn compile(ctx: &mut Checker, raw: &BTreeMap<String, Vec<Spanned<RawStep>>>) -> Procedures {
    let mut out = BTreeMap::new();
    for (outcome, steps) in raw {
        if Outcome::parse(outcome).is_none() {
            let span = steps.first().map(|s| s.span()).unwrap_or(0..0);
            ctx.err(
                &span,
                Some(&format!("procedure {outcome:?}")),
                "procedures are named after an outcome: rollback, consider or monitor",
            );
            continue;
        }
        let mut typed = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let item = format!("procedure {outcome:?} step {}", i + 1);
            let raw = s.get_ref();
            let levels = raw.levels.iter().map(|l| l.get_ref().clone()).collect();
            let get = |v: &Option<Spanned<String>>| v.as_ref().map(|x| x.get_ref().clone());
            match (&raw.announce, &raw.run, &raw.verify) {
                (Some(_), None, None) => typed.push(Step::Announce { template: get(&raw.announce).unwrap_or_default(), levels }),
                (None, Some(_), verify) => typed.push(Step::Run {
                    action: get(&raw.run).unwrap_or_default(),
                    verify: verify.as_ref().map(|v| v.get_ref().clone()),
                    levels,
                }),
                _ => ctx.err(&s.span(), Some(&item), "a step either announces a template (announce = \"...\") or runs an action (run = \"...\", optional verify = \"...\")"),
            }
        }
        out.insert(outcome.clone(), typed);
    }
    out
}

/// A step as people read it: `announce rollback_in_progress`, `run undo (verify check)`.
pub fn describe(s: &Step) -> String {
    match s {
        Step::Announce { template, .. } => format!("announce {template}"),
        Step::Run { action, verify: Some(v), .. } => format!("run {action} (verify {v})"),
        Step::Run { action, .. } => format!("run {action}"),
    }
}
