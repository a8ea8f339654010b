//! Load errors with positions: a [`SourceFile`] turns byte offsets into `line:col`, a
//! [`Diagnostic`] prints as `path:line:col: rule "name": message`, and [`Diagnostics`] collects
//! every error of a load rather than stopping at the first (as Prometheus' `rulefmt` does).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::time::{Span, parse_duration};

/// A file's text, kept to place errors.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// The largest profile, config or fixture rollwatch reads.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

impl SourceFile {
    /// Reads a file as UTF-8. Invalid UTF-8 is an error at the first bad byte's position.
    /// Reads a regular file of at most [`MAX_FILE_BYTES`] (`/dev/zero` or a FIFO would never end).
    pub fn read(path: &Path) -> Result<SourceFile, Diagnostic> {
        use std::io::Read;
        let meta = std::fs::metadata(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
        if !meta.is_file() {
            return Err(Diagnostic::file(path, "not a regular file"));
        }
        let file = std::fs::File::open(path).map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Diagnostic::file(path, format!("cannot read: {e}")))?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(Diagnostic::file(path, format!("larger than {} MiB", MAX_FILE_BYTES >> 20)));
        }
        SourceFile::from_bytes(path, bytes)
    }

    /// Wraps bytes already read (tests, stdin).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<SourceFile, Diagnostic> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(SourceFile { path: path.to_path_buf(), text }),
            Err(e) => {
                let valid = e.utf8_error().valid_up_to();
                let prefix = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
                let probe = SourceFile { path: path.to_path_buf(), text: prefix };
                Err(probe.error_at(valid, None, "invalid UTF-8 (rollwatch files must be UTF-8 text)"))
            }
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    /// An error at a byte offset, optionally inside a named item (`rule "x"`).
    pub fn error_at(&self, offset: usize, item: Option<&str>, message: impl Into<String>) -> Diagnostic {
        let (line, col) = self.position(offset);
        Diagnostic {
            path: self.path.clone(),
            line: Some((line, col)),
            item: item.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error at a span (its start).
    pub fn error(&self, span: &Range<usize>, item: Option<&str>, message: impl Into<String>) -> Diagnostic {
        self.error_at(span.start, item, message)
    }

    /// Parses the text as TOML into `T`, reporting every unknown field rather than the first:
    /// after an unknown-field error the offending line is blanked (offsets kept) and parsing
    /// retried, so one typo does not hide the next. Any other syntax or schema error (wrong type,
    /// missing field) is reported and ends the attempt. Returns the value when the file is
    /// usable apart from its unknown fields, which are already in `errors`.
    pub fn parse_toml<T: serde::de::DeserializeOwned>(&self, errors: &mut Diagnostics) -> Option<T> {
        let mut text = self.text.clone();
        // Each round removes one line, so this bounds the work on a hostile file.
        for _ in 0..=64 {
            let e = match toml::from_str::<T>(&text) {
                Ok(value) => return Some(value),
                Err(e) => e,
            };
            let message = e.message().trim().to_string();
            let Some(span) = e.span() else {
                errors.push(Diagnostic::file(&self.path, message));
                return None;
            };
            errors.push(self.error_at(span.start, None, message.clone()));
            if !message.starts_with("unknown field") {
                return None;
            }
            let start = text[..span.start].rfind('\n').map_or(0, |i| i + 1);
            let end = text[span.end..].find('\n').map_or(text.len(), |i| span.end + i);
            text.replace_range(start..end, &" ".repeat(end - start));
            // A multi-line value would leave debris: if blanking broke the syntax, stop quietly
            // (the unknown field is already reported).
            if text.parse::<toml::Table>().is_err() {
                return None;
            }
        }
        None
    }

    /// The path relative to which this file's own paths (`profiles = [...]`) are resolved.
    pub fn resolve(&self, relative: &str) -> PathBuf {
        let rel = Path::new(relative);
        if rel.is_absolute() {
            return rel.to_path_buf();
        }
        self.path.parent().unwrap_or(Path::new(".")).join(rel)
    }
}

/// One load error.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// Line and column, when the error has a place in the file.
    pub line: Option<(usize, usize)>,
    /// What it concerns: `rule "error-rate"`, `signal "x"`, `[[decide]] 2`.
    pub item: Option<String>,
    pub message: String,
}

impl Diagnostic {
    /// An error about a whole file (cannot read it, and the like).
    pub fn file(path: &Path, message: impl Into<String>) -> Diagnostic {
        Diagnostic { path: path.to_path_buf(), line: None, item: None, message: message.into() }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, col)) = self.line {
            write!(f, ":{line}:{col}")?;
        }
        f.write_str(": ")?;
        if let Some(item) = &self.item {
            write!(f, "{item}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every error found while loading; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Errors about a file as a whole (no line), one per message.
    pub fn of_file(path: &Path, messages: impl IntoIterator<Item = String>) -> Diagnostics {
        Diagnostics(messages.into_iter().map(|m| Diagnostic::file(path, m)).collect())
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok(value)` when nothing was collected, else these errors.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() { Ok(value) } else { Err(self) }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects the errors of one file while its fields are checked; shared by every loader.
pub struct Checker<'a> {
    pub file: &'a SourceFile,
    pub errors: &'a mut Diagnostics,
}

impl Checker<'_> {
    /// Records an error at `span`.
    pub fn err(&mut self, span: &Range<usize>, item: Option<&str>, message: impl Into<String>) {
        self.errors.push(self.file.error(span, item, message));
    }

    /// A duration field: `default` when absent; an error (and `default`) when malformed.
    pub fn duration(
        &mut self,
        value: &Option<toml::Spanned<String>>,
        default: Span,
        item: Option<&str>,
        field: &str,
    ) -> Span {
        let Some(v) = value else { return default };
        parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.err(&v.span(), item, format!("{field}: {e}"));
            default
        })
    }

    /// A duration field that must be longer than zero; `None` (with an error) otherwise.
    pub fn positive_duration(
        &mut self,
        value: &toml::Spanned<String>,
        item: Option<&str>,
        field: &str,
    ) -> Option<Span> {
        match parse_duration(value.get_ref()) {
            Ok(s) if s.is_zero() => {
                self.err(&value.span(), item, format!("{field} must be longer than 0s"));
                None
            }
            Ok(s) => Some(s),
            Err(e) => {
                self.err(&value.span(), item, format!("{field}: {e}"));
                None
            }
        }
    }

    /// A field restricted to a closed set of words.
    pub fn one_of(&mut self, value: &toml::Spanned<String>, allowed: &[&str], item: Option<&str>, field: &str) -> bool {
        let ok = allowed.contains(&value.get_ref().as_str());
        if !ok {
            self.err(
                &value.span(),
                item,
                format!("{field} must be one of {}, not {:?}", allowed.join(", "), value.get_ref()),
            );
        }
        ok
    }
}

/// Suggests the closest known name for a misspelling (`avg_ovr` → `avg_over`).
pub fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    known
        .into_iter()
        // Case aside: `API` for `api` is one letter case away, not three edits.
        .map(|k| (strsim::levenshtein(&name.to_lowercase(), &k.to_lowercase()), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let f = SourceFile { path: "x.toml".into(), text: "a = 1\nbé = 2\n".into() };
        assert_eq!(f.position(0), (1, 1));
        assert_eq!(f.position(6), (2, 1));
        assert_eq!(f.position(9), (2, 3), "é is one column");
        let d = f.error_at(6, Some("rule \"r\""), "boom");
        assert_eq!(d.to_string(), "x.toml:2:1: rule \"r\": boom");
    }

    #[test]
    fn a_name_in_another_case_is_suggested() {
        assert_eq!(did_you_mean("API", ["api", "web"]), " (did you mean api?)");
        assert_eq!(did_you_mean("wbe", ["api", "web"]), " (did you mean web?)");
        assert_eq!(did_you_mean("payments", ["api", "web"]), "");
    }

    #[test]
    fn invalid_utf8_is_placed() {
        let e = SourceFile::from_bytes(Path::new("bad.toml"), b"a = 1\nb = \"\xff\"".to_vec()).unwrap_err();
        assert_eq!(e.line, Some((2, 6)));
        assert!(e.message.contains("UTF-8"));
    }

    #[test]
    fn suggestions_are_close_names_only() {
        assert_eq!(did_you_mean("avg_ovr", ["avg_over", "rate"]), " (did you mean avg_over?)");
        assert_eq!(did_you_mean("zzz", ["avg_over", "rate"]), "");
    }
}
