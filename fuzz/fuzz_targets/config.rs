//! Fuzz `rollwatch.toml` (profiles listed in it are read relative to `fuzz/`, so most inputs
//! exercise the config's own checks): any text loads or is refused with placed errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::diag::SourceFile;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SourceFile::from_bytes(std::path::Path::new("/nonexistent/rollwatch.toml"), data.to_vec()) else {
        return;
    };
    let _ = rollwatch::act::deployment::from_source(file);
});
