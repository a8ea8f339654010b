//! Fuzz the deploy hook's body: any body is a deploy or a message, never a panic; a deploy's
//! version is 1 to 256 printable characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::server::parse_deploy;

fuzz_target!(|data: &[u8]| {
    if let Ok((version, _)) = parse_deploy(data) {
        assert!(!version.is_empty() && version.len() <= 256);
        assert!(!version.chars().any(char::is_control));
    }
});
