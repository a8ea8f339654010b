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
    /// Each rule's `summary`, with what its value measures (to show it).
    pub summaries: BTreeMap<String, (String, crate::template::Unit)>,
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
                    summaries: mine().filter_map(|r| Some((r.name.clone(), (r.summary.clone()?, r.unit)))).collect(),
                };
                (p.name.clone(), plan)
            })
            .collect()
    }

    /// What a firing rule says for people: its `summary`, `{{value}}`, `{{rule}}` and
    /// `{{labels.NAME}}` filled in (checked when the profile loaded); `None` without one.
    pub fn summary(&self, r: &crate::rules::RuleValue) -> Option<String> {
        let (text, unit) = self.summaries.get(&r.rule)?;
        let mut vars = crate::template::Vars::new();
        vars.insert("value".into(), r.value.map_or_else(|| "no data".into(), |v| unit.show(v)));
        vars.insert("rule".into(), r.rule.clone());
        for (k, v) in self.labels.get(&r.rule).into_iter().flatten() {
            vars.insert(format!("labels.{k}"), v.clone());
        }
        crate::template::render(text, &vars, crate::template::Escape::None).ok()
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
    /// Whether a version source is configured (`version = {...}`): then nothing is acted on
    /// before its first reading (a rollback of an unknown version has no key to be held by).
    pub version_source: bool,
}
