//! Human output shared by the subcommands: numbers, times, failures, timelines.

use std::io::{self, Write};

use crate::fixture::Failure;
use crate::rules::{Decision, Transition};
pub use crate::template::{maybe, number, show};

/// One line of output for a terminal: a control character in it (a version's ANSI escape or
/// line break, from outside) is shown as a visible escape, never sent raw
/// ([`crate::template::terminal`]).
pub fn line(out: &mut dyn Write, text: &str) -> io::Result<()> {
    writeln!(out, "{}", crate::template::terminal(text))
}

/// Text made of lines (a sidecar's answer), each shown as [`line`] does.
pub fn lines(out: &mut dyn Write, text: &str) -> io::Result<()> {
    text.lines().try_for_each(|l| line(out, l))
}

/// A failed expectation as an expected/got block.
pub fn failure(out: &mut dyn Write, f: &Failure) -> io::Result<()> {
    writeln!(out, "  {}: at {}: {}", f.place, f.at, f.what)?;
    writeln!(out, "    expected: {}", f.expected)?;
    writeln!(out, "    got:      {}", f.got)?;
    writeln!(out, "    decision: {}", f.explanation)
}

/// One rule state change on a timeline.
pub fn transition(out: &mut dyn Write, t: &Transition) -> io::Result<()> {
    writeln!(
        out,
        "{:>9}  rule {:<28} {} → {}  (value {})",
        t.at.to_string(),
        t.rule,
        t.from,
        t.to,
        show(&t.rule, t.value)
    )
}

/// One decision on a timeline, with its firing rules, values and unknown inputs.
pub fn decision(out: &mut dyn Write, d: &Decision, show_profile: bool) -> io::Result<()> {
    let who = if show_profile { format!("[{}] ", d.profile) } else { String::new() };
    write!(out, "{:>9}  {who}{:<8}  {}", d.at.to_string(), d.outcome.to_string().to_uppercase(), d.explanation())?;
    if !d.firing.is_empty() {
        let firing: Vec<String> = d.firing.iter().map(|r| format!("{}={}", r.rule, show(&r.rule, r.value))).collect();
        write!(out, "  | firing: {}", firing.join(", "))?;
    }
    if !d.unknown.is_empty() {
        write!(out, "  | no data: {}", d.unknown.join(", "))?;
    }
    if !d.coverage.is_empty() {
        let partial: Vec<String> = d.coverage.iter().map(|c| format!("{}: {c}", c.rule)).collect();
        write!(out, "  | coverage: {}", partial.join("; "))?;
    }
    if !d.slo.is_empty() {
        write!(out, "  | slo: {}", d.slo.join("; "))?;
    }
    if !d.judged.is_empty() {
        write!(out, "  | baseline: {}", d.judged.join("; "))?;
    }
    if d.predates_deploy() {
        write!(out, "  | predates the deploy: {} (escalate, not roll back)", d.predates.join(", "))?;
    }
    writeln!(out)
}

/// A deploy on a timeline: the version's evidence starts here.
pub fn deploy(out: &mut dyn Write, at: crate::time::Timestamp, version: &str) -> io::Result<()> {
    line(out, &format!("{:>9}  DEPLOY    {version} (its evidence starts here)", at.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(0.052), "0.052");
        assert_eq!(number(1200.0), "1200");
        assert_eq!(number(1.0 / 3.0), "0.333333");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(0.00000035), "3.500e-7");
        assert_eq!(maybe(None), "no data");
    }
}
