//! Helpers shared by the integration suites: temp files and running the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes `text` to `dir/name`, returning the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write temp file");
    path
}

/// Runs the built `rollwatch` binary; returns (exit code, stdout, stderr).
pub fn rollwatch(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run rollwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small profile used by several suites: errors above 5% roll back, a health target down for
/// 30 s rolls back.
pub const PROFILE: &str = r#"
[signals]
error_rate = 'ratio("http_requests_total{code=~\"5..\"}", "http_requests_total", "1m", 10)'

[[rule]]
name = "errors"
when = 'error_rate > 0.05'

[[rule]]
name = "down"
when = 'up("api") == 0'
for = "30s"

[[decide]]
ask = "Is system down?"
if = 'firing("down")'
then = "rollback"

[[decide]]
ask = "Is error rate > 5%?"
if = 'firing("errors")'
then = "rollback"
"#;
