//! The template variables of a rollback, an approval or an escalation: what `{{reason}}`,
//! `{{version_from}}`, `{{target_version}}`, `{{labels.NAME}}`, `{{approve_command}}` … say.

use std::path::Path;

use super::event::RollbackStarted;
use super::gate::Start;
use super::plan::Acting;
use crate::rules::Outcome;
use crate::template::Vars;
use crate::template::messages::blank_vars;

/// The values every message about `start` carries.
pub fn base(acting: &Acting, s: &Start) -> Vars {
    let mut v = blank_vars();
    v.insert("profile".into(), s.profile.clone());
    v.insert("outcome".into(), "rollback".into());
    v.insert("level".into(), s.level.clone().unwrap_or_else(|| "standard".into()));
    v.insert("reason".into(), s.reason.clone());
    v.insert("explanation".into(), s.explanation.clone());
    v.insert("firing".into(), s.firing.join(", "));
    v.insert("version_from".into(), s.version.clone().unwrap_or_else(|| "unknown".into()));
    v.insert("mode".into(), acting.policy.mode.to_string());
    v.insert("stable_for".into(), acting.policy.verify_stable.to_string());
    // The firing rules' labels; the first rule to name a label wins.
    if let Some(plan) = acting.plans.get(&s.profile) {
        for rule in &s.firing {
            for (k, val) in plan.labels.get(rule).into_iter().flatten() {
                v.entry(format!("labels.{k}")).or_insert_with(|| val.clone());
            }
        }
    }
    v
}

/// The values of a started rollback.
pub fn rollback(acting: &Acting, r: &RollbackStarted) -> Vars {
    let start = Start {
        profile: r.profile.clone(),
        version: r.version_from.clone(),
        level: r.level.clone(),
        reason: r.reason.clone(),
        explanation: r.explanation.clone(),
        firing: r.firing.clone(),
    };
    let mut v = base(acting, &start);
    v.insert("rollback_id".into(), r.rollback_id.clone());
    v.insert("target_version".into(), r.target_version.clone().unwrap_or_else(|| "unknown".into()));
    if let Some(a) = &r.approval_id {
        v.insert("approval_id".into(), a.clone());
    }
    v
}

/// The values of an approval request: its id, the decision's outcome (`consider`, or
/// `rollback` in approve mode), the version it would roll back to, and the exact commands that
/// answer it.
pub fn approval(acting: &Acting, s: &Start, outcome: Option<Outcome>, id: &str, target: Option<&str>) -> Vars {
    let mut v = base(acting, s);
    if let Some(o) = outcome {
        v.insert("outcome".into(), o.to_string());
    }
    v.insert("approval_id".into(), id.to_string());
    v.insert("expires_in".into(), crate::time::human(acting.policy.approval_timeout));
    v.insert("target_version".into(), target.unwrap_or("none known").to_string());
    let (approve, reject) = answer_commands(acting, id);
    v.insert("approve_command".into(), approve);
    v.insert("reject_command".into(), reject);
    v
}

/// The exact commands that grant and reject approval `id` (for messages and `/status`).
pub fn answer_commands(acting: &Acting, id: &str) -> (String, String) {
    let mut config = shell_word(&acting.config_path);
    if let Some(name) = &acting.deployment {
        // Names are letters, digits, `-`, `_` and `.`: one shell word as they are.
        config = format!("{config} --deployment {name}");
    }
    (format!("rollwatch approve -c {config} {id}"), format!("rollwatch reject -c {config} {id} --reason \"...\""))
}

/// A path as one shell word, quoted when it needs to be (for commands people paste).
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pasted_path_stays_one_word() {
        assert_eq!(shell_word(Path::new("/etc/rollwatch/rollwatch.toml")), "/etc/rollwatch/rollwatch.toml");
        assert_eq!(shell_word(Path::new("/tmp/my dir/it's.toml")), r"'/tmp/my dir/it'\''s.toml'");
    }
}
