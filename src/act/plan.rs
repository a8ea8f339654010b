//! What acting runs with: each profile's [`Plan`] (its procedures, rules, labels and what each
//! rule reads) and [`Acting`], the acting half of a config with secrets resolved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use super::action::Action;
use crate::config::policy::Policy;
use crate::config::procedures::Procedures;
use crate::rules::Evaluator;
use crate::time::Span;

/// What a profile's procedures need at run time.
#[derive(Debug, Clone)]
pub struct Plan {
    pub procedures: Procedures,
    pub consider_auto_after: Option<Span>,
    pub rules: Vec<String>,
    /// Each rule's `labels`, offered to templates as `{{labels.NAME}}`.
    pub labels: BTreeMap<String, BTreeMap<String, String>>,
    /// Each rule and the signals and selectors it reads (rules that share one verify together).
    pub reads: Vec<(String, Vec<String>)>,
    /// The rules with `scope = "environment"`: what they report is not the version's fault.
    pub environment: Vec<String>,
}

impl Plan {
    /// Every profile's plan, from a compiled evaluator and the profiles' procedures.
    pub fn build(ev: &Evaluator, procedures: &BTreeMap<String, Procedures>) -> BTreeMap<String, Plan> {
        ev.profiles
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mine = || ev.rules.iter().filter(move |r| r.profile == i);
                let plan = Plan {
                    procedures: procedures.get(&p.name).cloned().unwrap_or_default(),
                    consider_auto_after: p.consider_auto_after,
                    rules: mine().map(|r| r.name.clone()).collect(),
                    labels: mine().map(|r| (r.name.clone(), r.labels.clone())).collect(),
                    reads: mine().map(|r| (r.name.clone(), r.reads.clone())).collect(),
                    environment: mine()
                        .filter(|r| r.scope == crate::expr::Scope::Environment)
                        .map(|r| r.name.clone())
                        .collect(),
                };
                (p.name.clone(), plan)
            })
            .collect()
    }

    /// Whether every rule in `firing` (a decision's cause) judges the environment.
    pub fn judges_the_environment(&self, firing: &[String]) -> bool {
        !firing.is_empty() && firing.iter().all(|r| self.environment.contains(r))
    }
}

/// The acting half of a config, secrets resolved.
#[derive(Debug, Clone)]
pub struct Acting {
    pub policy: Policy,
    pub actions: Arc<BTreeMap<String, Action>>,
    pub plans: BTreeMap<String, Plan>,
    /// Masks secret values in what actions print before it is journalled.
    pub redactor: crate::secret::Redactor,
    /// The config file, for the commands messages tell people to run.
    pub config_path: PathBuf,
    /// In a fleet: the deployment's name (commands name it; messages say it).
    pub deployment: Option<String>,
}
