//! Fuzz a profile: TOML, every expression through the compiler (pre-check, evalexpr, the
//! rewriting, the trial evaluation), the decision tree and procedures — then one evaluation on an
//! empty store. Any text loads or is refused with placed errors, never panics or overflows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::diag::SourceFile;
use rollwatch::config::profile::LoadedProfile;
use rollwatch::rules::load::build;
use rollwatch::time::Timestamp;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = SourceFile::from_bytes(std::path::Path::new("fuzz.toml"), data.to_vec()) else { return };
    let Ok(profile) = LoadedProfile::from_source(file) else { return };
    if let Ok(mut ev) = build(&[profile]) {
        let _ = ev.tick(Timestamp(0));
        let _ = ev.tick(Timestamp(15_000));
    }
});
