//! Hostile files: each gives a clear, placed error and never a panic.

use std::path::Path;

use crate::common::{PROFILE, write};
use rollwatch::cli::check::check_file;
use rollwatch::diag::Diagnostics;
use rollwatch::fixture::Fixture;

/// Loads a fixture (next to the shared test profile) and returns its errors as text.
fn fixture_errors(text: impl AsRef<[u8]>) -> String {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let path = write(dir.path(), "f.toml", text);
    match Fixture::load(&path) {
        Ok(_) => String::new(),
        Err(e) => e.to_string().replace(&dir.path().display().to_string(), "DIR"),
    }
}

fn fixture_with_series(series: &str) -> String {
    format!(
        "profiles = [\"p.toml\"]\ninterval = \"15s\"\n[series]\n{series}\n[[expect]]\nat = \"0s\"\ndecision = \"monitor\"\n"
    )
}

#[test]
fn malformed_toml_is_placed() {
    let e = fixture_errors("profiles = [\"p.toml\"\ninterval = \"15s\"\n");
    assert!(e.starts_with("DIR/f.toml:2:1: "), "{e}");
    let e = fixture_errors("profiles = [\"p.toml\"]\ninterval = \"15s\"\n[series]\n'up' = \"1x3\n");
    assert!(e.starts_with("DIR/f.toml:4:"), "{e}");
}

#[test]
fn invalid_utf8_is_placed() {
    let mut bytes = b"profiles = [\"p.toml\"]\ninterval = \"15s\"\n[series]\n'up' = \"1".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"x3\"\n");
    let e = fixture_errors(bytes);
    assert_eq!(e, "DIR/f.toml:4:10: invalid UTF-8 (rollwatch files must be UTF-8 text)");
}

#[test]
fn unknown_fields_are_rejected() {
    let e = fixture_errors("profiles = [\"p.toml\"]\ninterval = \"15s\"\nintervall = \"1m\"\n");
    assert!(e.starts_with("DIR/f.toml:3:1: unknown field `intervall`"), "{e}");
}

#[test]
fn huge_numbers_and_counts_are_errors() {
    let e = fixture_errors(fixture_with_series("'up{target=\"api\"}' = \"1e999\""));
    assert!(
        e.contains("DIR/f.toml:4:22: series \"up{target=\\\"api\\\"}\": segment 1 \"1e999\": 1e999 is out of range"),
        "{e}"
    );
    let e = fixture_errors(fixture_with_series("'up' = \"1x99999999999999999999999\""));
    assert!(e.contains("repetition count"), "{e}");
    let e = fixture_errors(fixture_with_series("'up' = \"0+1e308x10\""));
    assert!(e.contains("overflows"), "{e}");
}

#[test]
fn empty_and_malformed_series_are_errors() {
    let e = fixture_errors(fixture_with_series("'up' = \"\""));
    assert!(e.contains("DIR/f.toml:4:8: series \"up\": empty series"), "{e}");
    let e = fixture_errors(fixture_with_series("'up' = \"1 2 three\""));
    assert!(e.contains("segment 3 \"three\": \"three\" is not a number"), "{e}");
    let e = fixture_errors(fixture_with_series("'up{target=api}' = \"1\""));
    assert!(e.contains("DIR/f.toml:4:1: series \"up{target=api}\": bad selector"), "{e}");
    let e = fixture_errors("profiles = [\"p.toml\"]\ninterval = \"15s\"\n");
    assert!(e.contains("needs a [series] table"), "{e}");
    let e = fixture_errors(fixture_with_series("'up' = 17"));
    assert!(e.contains("DIR/f.toml:4:8: invalid type: integer `17`, expected a string"), "{e}");
}

#[test]
fn nan_and_inf_values_load_as_data() {
    // NaN and Inf are values in the notation (no data and infinity when evaluated), not errors.
    assert_eq!(fixture_errors(fixture_with_series("'up{target=\"api\"}' = \"NaN Inf -Inf 1\"")), "");
}

#[test]
fn expectations_off_the_grid_or_past_the_end_are_errors() {
    let base = "profiles = [\"p.toml\"]\ninterval = \"15s\"\neval_interval = \"30s\"\n[series]\n'up{target=\"api\"}' = \"1x8\"\n";
    let e = fixture_errors(format!("{base}[[expect]]\nat = \"45s\"\ndecision = \"monitor\"\n"));
    assert!(
        e.contains("DIR/f.toml:7:6: [[expect]]: at = \"45s\" is not on the evaluation grid (every 30s): try 30s or 1m"),
        "{e}"
    );
    let e = fixture_errors(format!("{base}[[expect]]\nat = \"3m\"\ndecision = \"monitor\"\n"));
    assert!(e.contains("at = \"3m\" is past the end of the data (the last sample is at 2m)"), "{e}");
    let e = fixture_errors(format!("{base}[[expect]]\nat = \"1m\"\nfiring = [\"erors\"]\n"));
    assert!(e.contains("no rule named \"erors\" is loaded (did you mean errors?)"), "{e}");
    let e = fixture_errors(format!("{base}[[expect]]\nat = \"1m\"\ndecision = \"panic\"\n"));
    assert!(e.contains("decision must be rollback, consider or monitor"), "{e}");
    let e = fixture_errors(format!("{base}[[expect]]\nat = \"1m\"\n"));
    assert!(e.contains("an expectation checks something"), "{e}");
    let e = fixture_errors(base.replace("\"15s\"", "\"0s\""));
    assert!(e.contains("interval must be longer than 0s"), "{e}");
}

#[test]
fn a_missing_profile_is_placed_at_its_name() {
    let e = fixture_errors("profiles = [\"nope.toml\"]\ninterval = \"15s\"\n[series]\n'up' = \"1\"\n");
    assert!(e.contains("DIR/f.toml:1:13: profile DIR/nope.toml: cannot read"), "{e}");
}

/// A deterministic generator, so a failure reproduces.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Mutates the shipped files byte by byte and loads each result as profile, fixture and
/// config: every outcome must be Ok or a placed error — never a panic.
#[test]
fn mutated_files_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seeds = [
        std::fs::read(root.join("rules/solvereign.toml")).unwrap(),
        std::fs::read(root.join("rules/mdm.toml")).unwrap(),
        std::fs::read(root.join("fixtures/mdm-performance-degraded-60pct.toml")).unwrap(),
        std::fs::read(root.join("examples/rollwatch.toml")).unwrap(),
    ];
    // Fixtures and configs name profiles relative to themselves.
    std::fs::create_dir_all(dir.path().join("rules")).unwrap();
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    for p in ["mdm.toml", "solvereign.toml"] {
        std::fs::copy(root.join("rules").join(p), dir.path().join("rules").join(p)).unwrap();
    }
    let alphabet: &[u8] = b"\"'{}[]=~!<>()&|,.0123456789xe+-_ \n\\\xff#abcdefgNaInf";
    let mut rng = Lcg(42);
    let mut errors_seen = 0;
    for round in 0..400 {
        let mut bytes = seeds[round % seeds.len()].clone();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() as usize) % bytes.len();
            match rng.next() % 3 {
                0 => bytes[at] = alphabet[(rng.next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[(rng.next() as usize) % alphabet.len()]),
            }
        }
        let path = write(&dir.path().join("sub"), "mutant.toml", &bytes);
        if let Err(Diagnostics(list)) = check_file(&path) {
            assert!(!list.is_empty());
            errors_seen += 1;
            for d in list {
                assert!(!d.message.is_empty(), "an error must say something: {d:?}");
            }
        }
    }
    assert!(errors_seen > 100, "the mutations should mostly break the files ({errors_seen})");
}

#[test]
fn a_missing_secret_names_the_target_and_variable_never_a_value() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "p.toml", PROFILE);
    let cfg = write(
        dir.path(),
        "rollwatch.toml",
        "profiles = [\"p.toml\"]\nstate_dir = \"/tmp/rw\"\n[[target]]\nname = \"api\"\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:1/metrics\"\nbearer_token_env = \"RW_API_TOKEN\"\n[[target]]\nname = \"db\"\nkind = \"health\"\nurl = \"http://127.0.0.1:1/h\"\nbasic_auth_user = \"ops\"\nbasic_auth_password_env = \"RW_DB_PASSWORD\"\n",
    );
    let config = rollwatch::rules::deployment::load(&cfg).map(|d| d.config).unwrap_or_else(|e| panic!("{e}"));
    let e = config.targets(|_| None).unwrap_err().to_string();
    assert!(e.contains("target \"api\": environment variable RW_API_TOKEN is not set"), "{e}");
    assert!(e.contains("target \"db\": environment variable RW_DB_PASSWORD is not set"), "{e}");
    let targets = config.targets(|var| Some(format!("secret-of-{var}"))).unwrap();
    let shown = format!("{targets:?}");
    assert!(!shown.contains("secret-of-"), "secrets never print: {shown}");
    assert_eq!(targets.len(), 2);
}
