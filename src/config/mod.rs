//! Loading files: [`raw`] holds the serde structs as written, [`diag`] the positioned errors,
//! [`profile`] reads profiles and [`deploy`] reads and checks `rollwatch.toml`.

pub mod deploy;
pub mod diag;
pub mod profile;
pub mod raw;

pub use diag::{Checker, Diagnostic, Diagnostics, SourceFile, did_you_mean};
pub use profile::LoadedProfile;
