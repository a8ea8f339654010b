//! Loading files: [`raw`] holds the serde structs as written, [`diag`] the positioned errors,
//! [`profile`] and [`deploy`] the checks that turn raw files into what the engine runs.

pub mod diag;
pub mod raw;

pub use diag::{Diagnostic, Diagnostics, SourceFile, did_you_mean};
