//! The notification templates, worded after runbook 004's messages: `rollback_in_progress`,
//! `rollback_complete`, `rollback_failed`, `rollback_approval_needed` and `escalation` (plus
//! `approval_granted`, `approval_rejected`, `rollback_suppressed` and `blind`), each
//! overridable in `[templates]` of `rollwatch.toml`.

use std::collections::BTreeMap;

use super::{self as template, Escape, TemplateError, Vars};

/// Every value a template (or an action's argv, URL or body) may name. Each is always set when
/// rendering; what is not known yet reads `unknown`. Besides these, `{{labels.NAME}}` names a
/// label of the firing rules (empty when none has it).
pub const VARS: &[&str] = &[
    "profile",
    "outcome",
    "level",
    "reason",
    "explanation",
    "firing",
    "unknown_rules",
    "version_from",
    "version_to",
    "target_version",
    "rollback_id",
    "approval_id",
    "expires_in",
    "duration",
    "started_at",
    "severity",
    "finding",
    "response",
    "step",
    "error",
    "mode",
    "approve_command",
    "reject_command",
    "stable_for",
    "by",
    "rejection",
];

/// The shipped wording.
pub const DEFAULTS: &[(&str, &str)] = &[
    (
        "rollback_in_progress",
        "🔄 ROLLBACK IN PROGRESS\n\nIssue: {{reason}}\nAction: Rolling back {{profile}} from {{version_from}} (target: {{target_version}})\nProcedure: {{level}}\nDecision: {{explanation}}\nRollback: {{rollback_id}}\n\nUpdates will follow.",
    ),
    (
        "rollback_complete",
        "✅ ROLLBACK COMPLETE\n\nDuration: {{duration}}\nPrevious version restored: {{version_to}}\nServices: All healthy (the rules behind it quiet for {{stable_for}})\nRollback: {{rollback_id}}\n\nRoot cause investigation in progress.\nPost-mortem will be scheduled.",
    ),
    (
        "rollback_failed",
        "❌ ROLLBACK FAILED\n\nStep: {{step}}\nError: {{error}}\nProfile: {{profile}} (from {{version_from}})\nRollback: {{rollback_id}}\n\nAll hands. Manual intervention.",
    ),
    (
        "rollback_approval_needed",
        "⚠️ ROLLBACK APPROVAL NEEDED\n\nIssue: {{reason}}\nProfile: {{profile}} at {{version_from}}\nRollback to: {{target_version}}\nDecision: {{explanation}}\n\nApprove within {{expires_in}}: {{approve_command}}\nReject: {{reject_command}}",
    ),
    (
        "approval_granted",
        "✅ ROLLBACK APPROVED by {{by}} ({{approval_id}})\n\nProfile: {{profile}} from {{version_from}} to {{target_version}}\nIssue: {{reason}}",
    ),
    (
        "approval_rejected",
        "✋ ROLLBACK REJECTED by {{by}} ({{approval_id}}): {{rejection}}\n\nProfile: {{profile}} stays at {{version_from}}\nIssue: {{reason}}\nNot asked again for {{version_from}} until the decision clears or the version changes.",
    ),
    (
        "escalation",
        "🚨 {{severity}}: {{finding}}\n\nProfile: {{profile}}\nRollback: {{rollback_id}}\nAction: {{response}}",
    ),
    ("rollback_suppressed", "⏸ Rollback of {{profile}} suppressed: {{reason}}\nDecision: {{explanation}}"),
    (
        "blind",
        "👁 {{profile}} is BLIND: every rule's inputs have been unknown for {{duration}} ({{unknown_rules}}).\nWatching nothing is not all-clear: check the targets.",
    ),
];

/// The templates in use: the defaults with the config's overrides.
#[derive(Debug, Clone)]
pub struct Templates(BTreeMap<String, String>);

impl Default for Templates {
    fn default() -> Templates {
        Templates(DEFAULTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }
}

impl Templates {
    /// The defaults overridden (or extended) by `overrides`.
    pub fn with(overrides: impl IntoIterator<Item = (String, String)>) -> Templates {
        let mut t = Templates::default();
        t.0.extend(overrides);
        t
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Renders template `name` for a channel.
    pub fn render(&self, name: &str, vars: &Vars, escape: Escape) -> Result<String, RenderError> {
        let text = self.get(name).ok_or_else(|| RenderError::NoTemplate(name.to_string()))?;
        template::render(text, vars, escape).map_err(|e| RenderError::Template(name.to_string(), e))
    }
}

/// Why a message could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error("no template named {0:?}")]
    NoTemplate(String),
    #[error("template {0:?}: {1}")]
    Template(String, TemplateError),
}

/// Every known variable set to `unknown`, to be overwritten with what is known.
pub fn blank_vars() -> Vars {
    VARS.iter().map(|v| (v.to_string(), "unknown".to_string())).collect()
}

/// Checks a template text: every placeholder must be a known variable.
pub fn check(text: &str) -> Result<(), String> {
    let names = template::placeholders(text).map_err(|e| e.to_string())?;
    for n in names {
        if !VARS.contains(&n) && n.strip_prefix("labels.").is_none_or(|l| l.is_empty()) {
            let hint = crate::diag::did_you_mean(n, VARS.iter().copied());
            return Err(format!("unknown placeholder {{{{{n}}}}}{hint}; known: {}", VARS.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_renders_with_the_known_variables() {
        let t = Templates::default();
        for (name, text) in DEFAULTS {
            assert_eq!(check(text), Ok(()), "{name}");
            let out = t.render(name, &blank_vars(), Escape::None).unwrap();
            assert!(!out.contains("{{"), "{name}: {out}");
        }
        let out = t.render("rollback_in_progress", &blank_vars(), Escape::None).unwrap();
        assert!(out.starts_with("🔄 ROLLBACK IN PROGRESS"));
    }

    #[test]
    fn overrides_replace_defaults_and_unknown_names_are_reported() {
        let t = Templates::with([("rollback_complete".to_string(), "done in {{duration}}".to_string())]);
        let mut vars = blank_vars();
        vars.insert("duration".into(), "3m".into());
        assert_eq!(t.render("rollback_complete", &vars, Escape::None).unwrap(), "done in 3m");
        assert!(matches!(t.render("nope", &vars, Escape::None), Err(RenderError::NoTemplate(_))));
        let e = check("{{duraton}}").unwrap_err();
        assert!(e.contains("did you mean duration?"), "{e}");
    }
}
