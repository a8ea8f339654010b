//! A fleet: `rollwatch.toml` with `deployments = ["deploy/*.toml"]` holds the process-wide keys
//! (and actions, channels and templates every deployment may use); each deployment file holds
//! one deployment's `name` and its own keys. Every file is checked with every error placed; a
//! deployment's errors name it. A `rollwatch.toml` without `deployments` is one deployment
//! ([`super::deploy::Config::read`]), exactly as before fleets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::LoadedProfile;
use super::acting::Shared;
use super::deploy::{Config, Member, Process, ProcessKeys};
use super::raw::{RawConfig, RawFleet, RawMember};
use crate::diag::{Checker, Diagnostics, SourceFile};

/// The alert label that names a deployment, unless `route_alerts_by` says another.
pub const DEFAULT_ROUTE_LABEL: &str = "deployment";

/// A fleet's files, checked (each deployment's profiles read, not compiled yet).
#[derive(Debug)]
pub struct FleetSpec {
    pub path: PathBuf,
    /// The alert label that routes an alert to its deployment.
    pub route_alerts_by: String,
    /// In the order the globs list their files.
    pub members: Vec<MemberSpec>,
}

/// One deployment of a fleet: its file, its config and profiles, and its own errors (which
/// the caller tags with its name once the profiles are compiled too).
#[derive(Debug)]
pub struct MemberSpec {
    pub file: SourceFile,
    pub config: Config,
    pub profiles: Vec<LoadedProfile>,
    pub errors: Diagnostics,
}

/// Whether `file` is a fleet's top file: TOML with a `deployments` key.
pub fn is_fleet(file: &SourceFile) -> bool {
    file.text.parse::<toml::Table>().is_ok_and(|t| t.contains_key("deployments"))
}

/// Tags a deployment's errors with its name (`deployment "api", target "x": ...`).
pub fn tag(errors: Diagnostics, name: &str) -> Diagnostics {
    Diagnostics(
        errors
            .0
            .into_iter()
            .map(|mut d| {
                d.item = Some(match d.item.take() {
                    Some(item) => format!("deployment {name:?}, {item}"),
                    None => format!("deployment {name:?}"),
                });
                d
            })
            .collect(),
    )
}

/// A deployment's name: a directory under `state_dir` and an alert label's value.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reads a fleet's top file and every deployment file its globs match. Errors of the top file
/// go to `errors`; each deployment's to its own [`MemberSpec::errors`]. `None` when the top
/// file is not TOML of this shape.
pub fn read(file: &SourceFile, errors: &mut Diagnostics) -> Option<FleetSpec> {
    let mut raw = file.parse_toml::<RawFleet>(errors)?;
    let mut c = Checker { file, errors };
    let misplaced = [
        ("name", &raw.name),
        ("profiles", &raw.profiles),
        ("version", &raw.version),
        ("target", &raw.target),
        ("policy", &raw.policy),
    ];
    for (key, value) in misplaced {
        if let Some(v) = value {
            c.err(
                &v.span(),
                None,
                format!("{key} belongs to a deployment: beside `deployments`, each deployment file holds its own"),
            );
        }
    }
    let keys = ProcessKeys {
        state_dir: &raw.state_dir,
        listen: &raw.listen,
        api_token_env: &raw.api_token_env,
        eval_interval: &raw.eval_interval,
        max_connections: &raw.max_connections,
        alert_expiry: &raw.alert_expiry,
        ha: &raw.ha,
    };
    let process = Process::check(&mut c, keys);
    let route_alerts_by = match &raw.route_alerts_by {
        None => DEFAULT_ROUTE_LABEL.to_string(),
        Some(l) => {
            let label = l.get_ref();
            let mut chars = label.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                c.err(
                    &l.span(),
                    None,
                    format!("route_alerts_by must be a label name such as \"deployment\", not {label:?}"),
                );
            }
            label.clone()
        }
    };
    let shared = shared(&mut c, &mut raw);
    let paths = expand(&mut c, &raw.deployments);
    let mut members: Vec<MemberSpec> = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in paths {
        let member_file = match SourceFile::read(&path) {
            Ok(f) => f,
            Err(e) => {
                c.errors.push(e);
                continue;
            }
        };
        let mut own = Diagnostics::default();
        let Some(raw_member) = member_file.parse_toml::<RawMember>(&mut own) else {
            c.errors.0.extend(own.0);
            continue;
        };
        let mut mc = Checker { file: &member_file, errors: &mut own };
        let name = member_name(&mut mc, &raw_member, &mut names);
        misplaced_process_keys(&mut mc, &raw_member, &file.path);
        let mut process = process.clone();
        process.state_dir = process.state_dir.join(&name);
        let member = Member { name: name.clone(), fleet: file.path.clone(), shared: shared.clone() };
        let raw_config = RawConfig {
            profiles: raw_member.profiles,
            state_dir: None,
            listen: None,
            api_token_env: None,
            eval_interval: None,
            max_connections: None,
            alert_expiry: None,
            version: raw_member.version,
            target: raw_member.target,
            policy: raw_member.policy,
            channels: raw_member.channels,
            actions: raw_member.actions,
            templates: raw_member.templates,
            ha: None,
        };
        let (config, profiles) = Config::deployment(&mut mc, raw_config, process, Some(member));
        members.push(MemberSpec { file: member_file, config, profiles, errors: own });
    }
    if members.is_empty() && c.errors.is_empty() {
        c.err(&raw.deployments.span(), None, "no deployment file: the globs match nothing");
    }
    Some(FleetSpec { path: file.path.clone(), route_alerts_by, members })
}

/// The top file's actions, channels and templates, checked there.
fn shared(c: &mut Checker, raw: &mut RawFleet) -> Shared {
    // Checked as a config with only these sections (the same checks, placed in the top file).
    let as_config = RawConfig {
        profiles: Spanned::new(0..0, vec![]),
        state_dir: None,
        listen: None,
        api_token_env: None,
        eval_interval: None,
        max_connections: None,
        alert_expiry: None,
        version: None,
        target: vec![],
        policy: None,
        channels: std::mem::take(&mut raw.channels),
        actions: std::mem::take(&mut raw.actions),
        templates: raw.templates.clone(),
        ha: None,
    };
    let spec = super::acting::check(c, &as_config);
    Shared {
        actions: spec.actions,
        channels: spec.channels,
        templates: raw.templates.iter().map(|(k, v)| (k.clone(), v.get_ref().clone())).collect(),
        path: c.file.path.clone(),
    }
}

/// The deployment's `name`: required, valid, unique in the fleet.
fn member_name(c: &mut Checker, raw: &RawMember, names: &mut BTreeMap<String, PathBuf>) -> String {
    let Some(n) = &raw.name else {
        c.err(&(0..0), None, "name = \"NAME\" is required: it names the deployment in alerts, commands and /status");
        return stem(&c.file.path);
    };
    let name = n.get_ref().clone();
    if !valid_name(&name) {
        c.err(
            &n.span(),
            None,
            format!(
                "name must be 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit, not {name:?}"
            ),
        );
    }
    if let Some(other) = names.get(&name) {
        c.err(
            &n.span(),
            None,
            format!("the name {name:?} is taken by {}: deployment names must be unique", other.display()),
        );
    } else {
        names.insert(name.clone(), c.file.path.clone());
    }
    name
}

/// The file's stem, a stand-in name while the file has errors.
fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Process-wide keys in a deployment file are errors there.
fn misplaced_process_keys(c: &mut Checker, raw: &RawMember, top: &Path) {
    let keys = [
        ("deployments", &raw.deployments),
        ("route_alerts_by", &raw.route_alerts_by),
        ("state_dir", &raw.state_dir),
        ("listen", &raw.listen),
        ("api_token_env", &raw.api_token_env),
        ("eval_interval", &raw.eval_interval),
        ("max_connections", &raw.max_connections),
        ("alert_expiry", &raw.alert_expiry),
        ("ha", &raw.ha),
    ];
    for (key, value) in keys {
        if let Some(v) = value {
            c.err(&v.span(), None, format!("{key} is process-wide: set it once in {}", top.display()));
        }
    }
}

/// The deployment files the globs match, relative to the top file, each once, in glob order
/// (files of one glob sorted by name). A `*` or `?` may appear in a file name, not in a
/// directory; a glob that matches nothing is an error.
fn expand(c: &mut Checker, globs: &Spanned<Vec<Spanned<String>>>) -> Vec<PathBuf> {
    if globs.get_ref().is_empty() {
        c.err(&globs.span(), None, "deployments lists no file: give globs such as [\"deploy/*.toml\"]");
    }
    let mut out: Vec<PathBuf> = Vec::new();
    for g in globs.get_ref() {
        let pattern = c.file.resolve(g.get_ref());
        let (dir, name) = match (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) {
            (Some(dir), Some(name)) => (dir.to_path_buf(), name.to_string()),
            _ => {
                c.err(&g.span(), None, format!("{:?} names no file", g.get_ref()));
                continue;
            }
        };
        if dir.to_string_lossy().contains(['*', '?']) {
            c.err(&g.span(), None, "only the file name may hold * or ?, not a directory");
            continue;
        }
        let matched: Vec<PathBuf> = if name.contains(['*', '?']) {
            let mut found: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(entries) => entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(&name, n)))
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect(),
                Err(e) => {
                    c.err(&g.span(), None, format!("cannot read {}: {e}", dir.display()));
                    continue;
                }
            };
            found.sort();
            found
        } else {
            vec![pattern.clone()]
        };
        if matched.is_empty() {
            c.err(&g.span(), None, format!("{:?} matches no file", g.get_ref()));
        }
        for p in matched {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` one.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_a_shell_does_in_one_directory() {
        assert!(wildcard("*.toml", "api.toml"));
        assert!(wildcard("a?i.toml", "api.toml"));
        assert!(wildcard("*", "x"));
        assert!(!wildcard("*.toml", "api.toml.bak"));
        assert!(!wildcard("api.toml", "api.tom"));
        assert!(wildcard("*-*.toml", "a-b.toml"));
    }

    #[test]
    fn names_are_directory_and_label_safe() {
        assert!(valid_name("api"));
        assert!(valid_name("api-2.eu_west"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
        assert!(!valid_name("-x"));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
