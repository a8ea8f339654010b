//! The architecture test: the module graph follows `rollwatch::LAYERS` one way. Every module
//! under `src/` is read; a `crate::X` reference (including `crate::{X, Y}`) outside comments and
//! unit-test modules to a module of the same or a later layer fails the test, naming the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module's rank in `LAYERS`.
fn ranks() -> BTreeMap<&'static str, usize> {
    rollwatch::LAYERS.iter().enumerate().flat_map(|(i, tier)| tier.iter().map(move |m| (*m, i))).collect()
}

/// The top-level modules `text` (a file of module `module`) references, unit tests and comments
/// left out.
fn references(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
                out.push(name);
            }
        } else {
            out.push(rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect());
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

/// Violations in one file of module `module`: "file: module → referenced".
fn violations(file: &str, module: &str, text: &str, ranks: &BTreeMap<&str, usize>) -> Vec<String> {
    let Some(&own) = ranks.get(module) else {
        return vec![format!("{file}: module {module} is not in rollwatch::LAYERS")];
    };
    let mut out: Vec<String> = references(text)
        .into_iter()
        .filter(|r| r != module)
        .filter_map(|r| ranks.get(r.as_str()).filter(|&&rank| rank >= own).map(|_| r))
        .map(|r| format!("{file}: {module} → {r} (not below it in rollwatch::LAYERS)"))
        .collect();
    out.dedup();
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_are_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let ranks = ranks();
    let mut found = Vec::new();
    let mut checked = 0;
    for path in files {
        let rel = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let module = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if module == "lib" || module == "main" {
            continue;
        }
        checked += 1;
        found.extend(violations(&rel, module, &std::fs::read_to_string(&path).unwrap(), &ranks));
    }
    assert!(checked > 50, "read only {checked} files under {}", src.display());
    assert!(found.is_empty(), "the module graph goes against its layers:\n{}", found.join("\n"));
}

#[test]
fn the_layer_check_sees_what_it_must() {
    let ranks = ranks();
    let back = "use crate::time::Span;\nuse crate::{engine::Parts, selector};\n// crate::cli in a comment\n";
    assert_eq!(
        violations("journal.rs", "journal", back, &ranks),
        vec!["journal.rs: journal → engine (not below it in rollwatch::LAYERS)"]
    );
    let same_tier = "fn f() { crate::notify::Notifier::start(); }";
    assert_eq!(violations("rules/x.rs", "rules", same_tier, &ranks).len(), 1);
    let in_tests = "use crate::time::Span;\n#[cfg(test)]\nmod tests { use crate::cli::run; }";
    assert!(violations("window.rs", "window", in_tests, &ranks).is_empty());
    assert_eq!(
        violations("newmod.rs", "newmod", "", &ranks),
        vec!["newmod.rs: module newmod is not in rollwatch::LAYERS"]
    );
}

/// The sibling files `text` (file `file` of folder `module`) references: `super::x`,
/// `super::{x, y::Z}` and `crate::module::x`, unit tests and comments left out. `mod.rs` is the
/// folder's index (declarations and re-exports): it is neither a source nor a target.
fn sibling_references(module: &str, text: &str, siblings: &[String]) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = code.lines().map(|l| l.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n");
    let mut out = Vec::new();
    let ident =
        |s: &str| -> String { s.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    for prefix in ["super::".to_string(), format!("crate::{module}::")] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(&prefix) {
            // `crate::act::` must not match inside `crate::act::…` of another prefix word.
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                out.extend(group[..end].split(',').map(ident));
            } else {
                out.push(ident(rest));
            }
        }
    }
    out.retain(|n| siblings.contains(n));
    out.sort();
    out.dedup();
    out
}

/// The circles among `edges` (file → files it references): each group of files that reach
/// one another, sorted.
fn circles(edges: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(n) = todo.pop() {
            for next in edges.get(&n).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, _> = edges.keys().map(|n| (n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in edges.keys() {
        if !reaches[n].contains(n) || out.iter().any(|c| c.contains(n)) {
            continue;
        }
        out.push(edges.keys().filter(|m| reaches[n].contains(*m) && reaches[*m].contains(n)).cloned().collect());
    }
    out
}

#[test]
fn no_file_cycle_inside_a_module_folder() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    let mut folders = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        folders += 1;
        let module = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut files = Vec::new();
        sources(&dir, &mut files);
        let name = |p: &PathBuf| p.file_stem().unwrap().to_string_lossy().to_string();
        let siblings: Vec<String> = files.iter().map(name).filter(|n| n != "mod").collect();
        let edges: BTreeMap<String, Vec<String>> = files
            .iter()
            .filter(|p| name(p) != "mod")
            .map(|p| {
                let refs = sibling_references(&module, &std::fs::read_to_string(p).unwrap(), &siblings);
                (name(p), refs.into_iter().filter(|r| *r != name(p)).collect())
            })
            .collect();
        for circle in circles(&edges) {
            found.push(format!("src/{module}/: {}", circle.join(" ↔ ")));
        }
    }
    assert!(folders > 5, "read only {folders} module folders under {}", src.display());
    assert!(found.is_empty(), "files of one module folder reference each other in a circle:\n{}", found.join("\n"));
}

#[test]
fn the_cycle_check_sees_what_it_must() {
    let siblings: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let text = "use super::{a, b::Thing};\nuse crate::act::c::X;\n// super::zzz\nfn f() { super::c::go() }";
    assert_eq!(sibling_references("act", text, &siblings), vec!["a", "b", "c"]);
    let edges = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    };
    assert!(circles(&edges(&[("a", &["b"]), ("b", &["c"]), ("c", &[])])).is_empty());
    assert_eq!(
        circles(&edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])])),
        vec![["a", "b", "c"].map(String::from).to_vec()]
    );
}

/// The structs in `text` with more than `most` fields: `(name, fields)`. Serialized records
/// (a derive of `Serialize` or `Deserialize` on the struct: a report's rows, a journal line, a
/// config as read) are data, not owners of runtime state, and are left out; so are unit tests.
fn crowded_structs(text: &str, most: usize) -> Vec<(String, usize)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t
            .strip_prefix("pub struct ")
            .or_else(|| t.strip_prefix("struct "))
            .or_else(|| t.strip_prefix("pub(crate) struct ").or_else(|| t.strip_prefix("pub(super) struct ")))
        else {
            continue;
        };
        if !rest.trim_end().ends_with('{') {
            continue; // a tuple or unit struct
        }
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        // The attributes right above it.
        let serialized = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("#[") || l.starts_with("///") || l.starts_with("//") || l.starts_with(')')
            })
            .any(|l| l.contains("Serialize") || l.contains("Deserialize"));
        if serialized {
            continue;
        }
        // Fields: lines of the body at its first level of nesting that read `name: Type`.
        let indent = line.len() - t.len();
        let mut fields = 0;
        for body in &lines[i + 1..] {
            let b = body.trim_start();
            if b.starts_with('}') && body.len() - b.len() == indent {
                break;
            }
            let field =
                b.trim_start_matches("pub(crate) ").trim_start_matches("pub(super) ").trim_start_matches("pub ");
            let ident: String = field.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if body.len() - b.len() == indent + 4 && !ident.is_empty() && field[ident.len()..].starts_with(':') {
                fields += 1;
            }
        }
        if fields > most {
            out.push((name, fields));
        }
    }
    out
}

/// No struct that owns runtime state holds more than 20 fields: one owner, one job.
#[test]
fn no_struct_owning_runtime_state_has_more_than_20_fields() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for path in &files {
        let rel = path.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        for (name, n) in crowded_structs(&std::fs::read_to_string(path).unwrap(), 20) {
            found.push(format!("{rel}: {name} has {n} fields"));
        }
    }
    assert!(found.is_empty(), "structs owning too much:\n{}", found.join("\n"));
}

#[test]
fn the_field_count_sees_what_it_must() {
    let fields: String = (0..21).map(|i| format!("    pub f{i}: u8,\n")).collect();
    let owner = format!("/// An owner.\npub struct Big {{\n{fields}}}\n");
    assert_eq!(crowded_structs(&owner, 20), vec![("Big".to_string(), 21)]);
    let record = format!("#[derive(Debug, Serialize)]\npub struct Row {{\n{fields}}}\n");
    assert!(crowded_structs(&record, 20).is_empty(), "a serialized record is data");
    let nested = "struct S {\n    a: u8,\n    b: Vec<Inner>,\n}\nfn g() { let x = T { c: 1 }; }\n";
    assert!(crowded_structs(nested, 1).len() == 1 && crowded_structs(nested, 2).is_empty());
}
