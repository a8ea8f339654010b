//! Secrets: values read from the environment that are never printed ([`Secret`]), the
//! [`Redactor`] that masks them in whatever rollwatch journals, logs or sends, and the
//! environment they come from ([`Env`]) — with what an exec action inherits of it.

use std::fmt;
use std::sync::Arc;

/// A secret read from the environment; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Replaces every configured secret value in a text by `***`: applied to what rollwatch
/// journals from outside (an action's output and detail), where a script may echo a token.
#[derive(Debug, Clone, Default)]
pub struct Redactor(Arc<Vec<String>>);

impl Redactor {
    /// Values shorter than 4 characters are not redacted (they would mangle ordinary text).
    pub fn new(values: impl IntoIterator<Item = String>) -> Redactor {
        let mut v: Vec<String> = values.into_iter().filter(|s| s.len() >= 4).collect();
        // Longest first, so a secret containing another is replaced whole.
        v.sort_by_key(|s| std::cmp::Reverse(s.len()));
        v.dedup();
        Redactor(Arc::new(v))
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in self.0.iter() {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// Where secrets come from: the process environment in production, a map in tests.
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment.
pub fn process_env() -> Env {
    Arc::new(|var| std::env::var(var).ok())
}

/// What an exec action inherits from rollwatch's environment; everything else (API tokens, SMTP
/// passwords, …) stays out unless the action's `env_from` names it.
pub const INHERITED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "TMPDIR"];
