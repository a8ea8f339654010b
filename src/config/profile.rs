//! Reading profile files (`rules/*.toml`): the TOML parsed into [`RawProfile`] with its source
//! kept, so that the rule compiler ([`crate::rules::load`]) can place every error it finds.

use std::path::Path;

use super::diag::{Diagnostic, SourceFile};
use super::raw::RawProfile;

/// A profile as read from disk.
#[derive(Debug)]
pub struct LoadedProfile {
    pub file: SourceFile,
    pub raw: RawProfile,
    /// `name = "..."`, else the file stem.
    pub name: String,
}

impl LoadedProfile {
    /// Reads and parses one profile; schema errors (unknown fields, wrong types) come back here.
    pub fn read(path: &Path) -> Result<LoadedProfile, Diagnostic> {
        LoadedProfile::from_source(SourceFile::read(path)?)
    }

    pub fn from_source(file: SourceFile) -> Result<LoadedProfile, Diagnostic> {
        let raw: RawProfile = file.parse_toml()?;
        let name = match &raw.name {
            Some(n) => n.get_ref().clone(),
            None => file
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        Ok(LoadedProfile { file, raw, name })
    }
}
