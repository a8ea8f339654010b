//! Reading profile files (`rules/*.toml`): the TOML parsed into [`RawProfile`] with its source
//! kept, so that the rule compiler ([`crate::rules::load`]) can place every error it finds.

use std::path::Path;

use toml::Spanned;

use super::raw::RawProfile;
use crate::diag::{Diagnostics, SourceFile};

/// A profile as read from disk.
#[derive(Debug)]
pub struct LoadedProfile {
    pub file: SourceFile,
    pub raw: RawProfile,
    /// `name = "..."`, else the file stem.
    pub name: String,
    /// Unknown fields found while reading (the rest of the file was still read and is checked).
    pub unknown_fields: Diagnostics,
}

impl LoadedProfile {
    /// Reads and parses one profile. Syntax and type errors come back here; unknown fields are
    /// kept in `unknown_fields` so that the compiler can report them with everything else.
    pub fn read(path: &Path) -> Result<LoadedProfile, Diagnostics> {
        LoadedProfile::from_source(SourceFile::read(path)?)
    }

    pub fn from_source(file: SourceFile) -> Result<LoadedProfile, Diagnostics> {
        let mut unknown_fields = Diagnostics::default();
        let Some(raw) = file.parse_toml::<RawProfile>(&mut unknown_fields) else { return Err(unknown_fields) };
        let name = match &raw.name {
            Some(n) => n.get_ref().clone(),
            None => file.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        Ok(LoadedProfile { file, raw, name, unknown_fields })
    }
}

/// Reads the profiles a fixture or config lists (`profiles = [...]`, relative to that file).
/// A profile that cannot be read is reported at its name in the list; errors inside a profile
/// keep their own position. An empty list is an error too.
pub fn read_listed(
    file: &SourceFile,
    list: &Spanned<Vec<Spanned<String>>>,
    errors: &mut Diagnostics,
) -> Vec<LoadedProfile> {
    if list.get_ref().is_empty() {
        errors.push(file.error(&list.span(), None, "profiles lists no profile"));
    }
    let mut profiles = Vec::new();
    for p in list.get_ref() {
        let resolved = file.resolve(p.get_ref());
        match LoadedProfile::read(&resolved) {
            Ok(lp) => profiles.push(lp),
            Err(found) => {
                for d in found.0 {
                    if d.line.is_none() {
                        errors.push(file.error(
                            &p.span(),
                            None,
                            format!("profile {}: {}", resolved.display(), d.message),
                        ));
                    } else {
                        errors.push(d);
                    }
                }
            }
        }
    }
    profiles
}
