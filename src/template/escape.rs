//! Text from outside — a version a service reports or a pipeline posts, a label value a target
//! exposes, a reason or a name an operator typed — reaches people and programs only through one
//! escape per kind of output, here: a terminal line ([`terminal`]: control characters shown as
//! visible escapes), Markdown ([`markdown`]), HTML ([`html`]), an HTTP header value
//! ([`header`]: percent-encoded), a TOML string ([`toml_string`]), plus Slack mrkdwn, a JSON
//! string and a URL component for templates ([`Escape`]). Values are kept as they came
//! everywhere else (the journal, the JSON outputs): escaping happens once, where they leave.

use std::borrow::Cow;
use std::fmt::Write as _;

/// How a template value is escaped where it is inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// As is: one argv element or environment value of an exec action.
    None,
    /// Text people read (the console channel, an email, a webhook's `text`): control
    /// characters as visible escapes ([`terminal`]), so a value can neither colour a terminal
    /// nor start a line of its own.
    Text,
    /// Slack mrkdwn control characters `&`, `<`, `>`, and control characters as for
    /// [`Escape::Text`].
    Slack,
    /// Inside a JSON string literal (the quotes are the template's).
    Json,
    /// A URL component (percent-encoded).
    Url,
    /// HTML text or an attribute value (`&`, `<`, `>`, `"`): the status page, the plots.
    Html,
    /// An HTTP header value ([`header`]).
    Header,
}

/// Appends `value` escaped for `escape`.
pub fn escape_into(out: &mut String, value: &str, escape: Escape) {
    match escape {
        Escape::None => out.push_str(value),
        Escape::Text => out.push_str(&terminal(value)),
        Escape::Slack | Escape::Html => {
            let value = if escape == Escape::Slack { terminal(value) } else { Cow::Borrowed(value) };
            for c in value.chars() {
                match c {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' if escape == Escape::Html => out.push_str("&quot;"),
                    c => out.push(c),
                }
            }
        }
        Escape::Json => {
            let quoted = serde_json::Value::String(value.to_string()).to_string();
            out.push_str(&quoted[1..quoted.len() - 1]);
        }
        Escape::Url => {
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
        }
        Escape::Header => out.push_str(&header(value)),
    }
}

/// `text` escaped for HTML (and SVG): text or a quoted attribute value.
pub fn html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, Escape::Html);
    out
}

/// Whether a terminal (or a reader of text) could take `c` for something other than a
/// character: C0 and C1 controls (ESC starts a colour or a cursor move, CR and LF a line), DEL,
/// and the Unicode line separators and bidirectional overrides that reorder what is shown.
fn unseen(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` for a terminal line: every control character shown as a visible escape, as Rust
/// writes them — `\n`, `\r`, `\t`, else `\u{1b}` — so a value cannot colour the terminal, move
/// its cursor or start a line of its own. Other text, backslashes included, is kept.
pub fn terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unseen) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unseen(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` as Markdown text that shows it literally, wherever it is placed in a line: control
/// characters as for [`terminal`] (so no value breaks a line, a table row or a list item),
/// then HTML's `&`, `<`, `>` as entities (no tag, no comment) and Markdown's `\` `` ` `` `*`
/// `[` `]` `|` `#` `~` backslash-escaped; `_` unless inside a word, and what would open a block
/// at the start (`-`, `+`, `=`, `1.`, `1)`) too.
pub fn markdown(text: &str) -> String {
    let text = terminal(text);
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + 8);
    let word = |i: Option<usize>| i.and_then(|i| chars.get(i)).is_some_and(|c| c.is_alphanumeric());
    // What precedes the character, in one pass: only whitespace (a block marker would start
    // here), or whitespace then digits (an ordered list's `1.` would).
    let (mut blank, mut digits) = (true, Some(0usize));
    for (i, &c) in chars.iter().enumerate() {
        let at_start = blank;
        let after_number = digits.is_some_and(|n| n > 0) && chars.get(i + 1).is_none_or(|c| c.is_whitespace());
        blank &= c.is_whitespace();
        digits = match digits {
            Some(n) if c.is_ascii_digit() => Some(n + 1),
            Some(0) if c.is_whitespace() => Some(0),
            _ => None,
        };
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '*' | '[' | ']' | '|' | '#' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '_' if !(word(i.checked_sub(1)) && word(Some(i + 1))) => out.push_str("\\_"),
            '-' | '+' | '=' if at_start => {
                out.push('\\');
                out.push(c);
            }
            '.' | ')' if after_number => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` as an HTTP header value: the bytes a header cannot carry — control characters (CR
/// and LF would end the header), DEL, anything beyond ASCII — and `%` itself percent-encoded
/// (`%0D%0A`), so the value always makes a valid header and the receiver decodes it back with
/// any URL decoder. A value with none of them is sent as it is.
pub fn header(text: &str) -> Cow<'_, str> {
    let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'%';
    if text.bytes().all(plain) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// `text` as a TOML basic string, quotes included — valid as a value and as a key: `"` and `\`
/// backslash-escaped, control characters as TOML's escapes (`\n`, `\t`, `\u001B`), everything
/// else as it is (TOML files are UTF-8). TOML reads it back as exactly `text`.
pub fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_sees_control_characters_as_escapes() {
        assert_eq!(terminal("v1.2.3"), "v1.2.3");
        assert!(matches!(terminal("v1.2.3 ✓ — ü"), Cow::Borrowed(_)), "plain text is not copied");
        assert_eq!(terminal("v2\x1b[31mred\x1b[0m"), r"v2\u{1b}[31mred\u{1b}[0m");
        assert_eq!(terminal("a\r\nb\tc\0d\u{7f}e\u{9b}f"), r"a\r\nb\tc\u{0}d\u{7f}e\u{9b}f");
        assert_eq!(terminal("abc\u{202e}txt.exe\u{2028}"), r"abc\u{202e}txt.exe\u{2028}");
    }

    #[test]
    fn markdown_shows_a_value_literally() {
        assert_eq!(markdown("v1.2.3"), "v1.2.3");
        assert_eq!(markdown("<script>alert(1)</script>"), "&lt;script&gt;alert(1)&lt;/script&gt;");
        assert_eq!(markdown("v2\n## injected\n| a | b |"), r"v2\\n\#\# injected\\n\| a \| b \|");
        assert_eq!(markdown("# heading"), r"\# heading");
        assert_eq!(markdown("- item"), r"\- item");
        assert_eq!(markdown("  + item"), r"  \+ item");
        assert_eq!(markdown("1. first"), r"1\. first");
        assert_eq!(markdown("2) second"), r"2\) second");
        assert_eq!(markdown("2.4.1 and v-1 + 2 = 3"), "2.4.1 and v-1 + 2 = 3", "only where a block would start");
        assert_eq!(markdown("*bold* `code` [l](u) ~~s~~ a&b"), r"\*bold\* \`code\` \[l\](u) \~\~s\~\~ a&amp;b");
        assert_eq!(markdown("error_rate _x_ y_"), r"error_rate \_x\_ y\_");
        assert_eq!(markdown("\x1b[31m"), r"\\u{1b}\[31m");
        // One pass: a megabyte of blanks and digits (every character "at the start") is quick.
        let long = format!("{}{}. x", " ".repeat(1 << 20), "7".repeat(1 << 20));
        assert!(markdown(&long).ends_with("7\\. x"));
    }

    #[test]
    fn a_header_value_is_always_valid_and_decodes_back() {
        assert_eq!(header("v1.2.3 (build 7)"), "v1.2.3 (build 7)");
        assert_eq!(header("v2\r\nX-Injected: 1"), "v2%0D%0AX-Injected: 1");
        assert_eq!(header("50% ü\x1b"), "50%25 %C3%BC%1B");
        for hostile in ["v2\r\n\0\u{7f}", "ünïcode ✓", "%41", "\t x "] {
            let encoded = header(hostile);
            assert!(reqwest::header::HeaderValue::from_str(&encoded).is_ok(), "{encoded}");
            let decoded: Vec<u8> = {
                let b = encoded.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < b.len() {
                    if b[i] == b'%' {
                        out.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(b[i]);
                        i += 1;
                    }
                }
                out
            };
            assert_eq!(String::from_utf8(decoded).unwrap(), hostile);
        }
    }

    #[test]
    fn a_toml_string_reads_back_as_the_same_text() {
        for text in
            ["plain", "a\"b\x01c\x1b[0m\td\\e", "line\nbreak\r", "'single' and \"double\"", "\u{7f}\u{9b}ü✓", ""]
        {
            let quoted = toml_string(text);
            let doc = format!("{quoted} = {quoted}\n");
            let table: toml::Table = toml::from_str(&doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert_eq!(table.get(text).and_then(|v| v.as_str()), Some(text), "{doc}");
        }
    }

    #[test]
    fn template_values_are_escaped_for_people() {
        let mut out = String::new();
        escape_into(&mut out, "<v2>\n\x1b", Escape::Slack);
        assert_eq!(out, r"&lt;v2&gt;\n\u{1b}");
        out.clear();
        escape_into(&mut out, "v2\r\nX: 1", Escape::Text);
        assert_eq!(out, r"v2\r\nX: 1");
    }
}
