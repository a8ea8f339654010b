//! `rollwatch check PATH...`: load every profile, fixture and config named (directories are
//! searched for `*.toml`), print every error found, exit 1 if there was one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::toml_files;
use crate::config::LoadedProfile;
use crate::diag::{Diagnostics, SourceFile};
use crate::fixture::Fixture;

/// What a file is, told by its top-level keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Profile,
    Fixture,
    Config,
    /// `rollwatch.toml` of several deployments (`deployments = [...]`).
    Fleet,
    /// One deployment file of a fleet (`name` and `profiles`).
    Member,
}

/// Classifies a TOML file: fixtures have `series`/`expect`; configs have targets, policy,
/// channels, actions or a state dir; a fleet's has `deployments`, a deployment file of a fleet
/// `name` and `profiles`; everything else is a profile.
pub fn kind_of(file: &SourceFile) -> Kind {
    let Ok(table) = file.text.parse::<toml::Table>() else {
        return Kind::Profile;
    };
    let has = |k: &str| table.contains_key(k);
    if has("series") || has("expect") || has("interval") {
        Kind::Fixture
    } else if has("deployments") {
        Kind::Fleet
    } else if has("name") && has("profiles") {
        Kind::Member
    } else if ["target", "policy", "channels", "actions", "state_dir", "listen"].iter().any(|k| has(k)) {
        Kind::Config
    } else {
        Kind::Profile
    }
}

/// Loads one file of whatever kind and returns every error in it, or its kind and a note for
/// the user.
pub fn check_file(path: &Path) -> Result<(Kind, Option<&'static str>), Diagnostics> {
    let file = SourceFile::read(path)?;
    let kind = kind_of(&file);
    let mut note = None;
    match kind {
        Kind::Profile => {
            let profile = LoadedProfile::from_source(file)?;
            crate::rules::deployment::compile(std::slice::from_ref(&profile))?;
        }
        Kind::Fixture => {
            Fixture::from_source(file)?;
        }
        Kind::Config => {
            let loaded = crate::rules::deployment::from_source(file)?;
            note = loaded.config.ha.is_some().then_some(HA_NOTE);
        }
        Kind::Fleet => {
            let fleet = crate::rules::deployment::load_fleet(path)?;
            note = fleet.deployments.first().and_then(|d| d.config.ha.as_ref()).map(|_| FLEET_HA_NOTE);
        }
        Kind::Member => note = Some(MEMBER_NOTE),
    }
    Ok((kind, note))
}

/// What `check` says of a fleet with `[ha]`.
const FLEET_HA_NOTE: &str =
    "[ha]: the replicas share the deployments out on etcd at run time, each held by one (check does not contact etcd)";

/// What `check` says of a fleet's deployment file named alone: it is checked with its fleet.
const MEMBER_NOTE: &str =
    "a deployment of a fleet: checked when `check` reads the fleet's rollwatch.toml (with what the fleet shares)";

/// What `check` says of an `[ha]` section: it is checked, etcd is not contacted.
const HA_NOTE: &str = "[ha]: replicas elect a leader on etcd at run time (check does not contact etcd)";

pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let files = match toml_files(paths) {
        Ok(files) => files,
        Err(errors) => {
            writeln!(out, "{errors}")?;
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut error_count = 0;
    let mut bad_files = 0;
    for path in &files {
        match check_file(path) {
            Ok((_, Some(note))) => writeln!(out, "{}: {note}", path.display())?,
            Ok((_, None)) => {}
            Err(errors) => {
                bad_files += 1;
                error_count += errors.len();
                writeln!(out, "{errors}")?;
            }
        }
    }
    if error_count == 0 {
        writeln!(out, "{} file{} OK", files.len(), if files.len() == 1 { "" } else { "s" })?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "{error_count} error{} in {bad_files} of {} files",
            if error_count == 1 { "" } else { "s" },
            files.len()
        )?;
        Ok(ExitCode::FAILURE)
    }
}
