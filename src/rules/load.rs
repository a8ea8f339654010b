//! Compiling loaded profiles into an [`Evaluator`]: signals, rules and decision questions parsed
//! and type-checked once, selectors registered with the window store, rule names checked unique
//! across every profile, signals and rules put in dependency order (a cycle is an error), and
//! every problem reported with its file, line, column and item.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;

use super::slo::{self, Expanded};
use super::state::{OnNoData, Timing};
use super::tree::{Outcome, Question, Tree};
use super::{Evaluator, Profile, Rule, Signal, Threshold};
use crate::config::LoadedProfile;
use crate::config::raw::RawRule;
use crate::diag::{Checker, Diagnostic, Diagnostics, SourceFile};
use crate::expr::{Compiled, Compiler, Expected, Names, Scope};
use crate::template::Unit;
use crate::time::Span;
use crate::window::Store;

/// Severities a rule may carry.
pub const SEVERITIES: &[&str] = &["critical", "warning", "info"];

/// Extra retention beyond the longest reach, so a tick that comes late still finds its data.
const RETENTION_MARGIN: Span = Span(60_000);

/// Compiles one expression field, recording its errors at the field's position.
fn compiled(
    ctx: &mut Checker,
    compiler: &mut Compiler,
    text: &Spanned<String>,
    names: &Names,
    expected: Expected,
    item: &str,
) -> Option<Compiled> {
    match compiler.compile(text.get_ref(), names, expected) {
        Ok(c) => Some(c),
        Err(messages) => {
            for m in messages {
                ctx.err(&text.span(), Some(item), m);
            }
            None
        }
    }
}

/// Each rule's `scope` (default `deployment`), bad values reported.
fn rule_scopes(ctx: &mut Checker, rules: &[&Spanned<RawRule>]) -> HashMap<String, Scope> {
    let mut scopes = HashMap::new();
    for r in rules {
        let raw = r.get_ref();
        let scope = match &raw.scope {
            None => Scope::Deployment,
            Some(v) => Scope::parse(v.get_ref()).unwrap_or_else(|| {
                ctx.err(
                    &v.span(),
                    Some(&format!("rule {:?}", raw.name.get_ref())),
                    format!("scope must be \"deployment\" or \"environment\", not {:?}", v.get_ref()),
                );
                Scope::Deployment
            }),
        };
        scopes.insert(raw.name.get_ref().clone(), scope);
    }
    scopes
}

/// The names an expression reads (signals among them), found without compiling it.
fn names_in(text: &str) -> Vec<String> {
    if crate::expr::compile::precheck(text).is_err() {
        return vec![]; // compiling it reports why
    }
    evalexpr::build_operator_tree::<evalexpr::DefaultNumericTypes>(text)
        .map(|node| node.iter_read_variable_identifiers().map(str::to_string).collect())
        .unwrap_or_default()
}

/// A signal takes the scope of the rules that read it (directly or through other signals): its
/// windows cannot both start at the deploy and not. A signal read by rules of both scopes is an
/// error; one no rule reads is the deployment's.
fn signal_scopes(
    ctx: &mut Checker,
    signals: &BTreeMap<String, Spanned<String>>,
    rules: &[&Spanned<RawRule>],
    rule_scopes: &HashMap<String, Scope>,
) -> HashMap<String, Scope> {
    let mut readers: HashMap<String, Vec<(Scope, String)>> = HashMap::new();
    for r in rules {
        let raw = r.get_ref();
        let scope = rule_scopes.get(raw.name.get_ref()).copied().unwrap_or_default();
        let mut todo: Vec<String> = names_in(raw.when.get_ref());
        if let Some(v) = &raw.value {
            todo.extend(names_in(v.get_ref()));
        }
        let mut seen: Vec<String> = Vec::new();
        while let Some(name) = todo.pop() {
            let Some(text) = signals.get(&name) else { continue };
            if seen.contains(&name) {
                continue;
            }
            seen.push(name.clone());
            readers.entry(name).or_default().push((scope, raw.name.get_ref().clone()));
            todo.extend(names_in(text.get_ref()));
        }
    }
    let mut scopes = HashMap::new();
    for (name, text) in signals {
        let of = readers.get(name).map(Vec::as_slice).unwrap_or_default();
        let env = of.iter().find(|(s, _)| *s == Scope::Environment);
        let dep = of.iter().find(|(s, _)| *s == Scope::Deployment);
        let scope = match (env, dep) {
            (Some((_, e)), Some((_, d))) => {
                ctx.err(
                    &text.span(),
                    Some(&format!("signal {name:?}")),
                    format!(
                        "read by rule {e:?} (scope = \"environment\") and rule {d:?} (the deployment's): \
                         give the environment rule a signal of its own"
                    ),
                );
                Scope::Deployment
            }
            (Some(_), None) => Scope::Environment,
            _ => Scope::Deployment,
        };
        scopes.insert(name.clone(), scope);
    }
    scopes
}

/// Orders nodes so each comes after what it depends on; `Err` holds a cycle.
fn dependency_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
    }
    fn visit(
        n: usize,
        deps: &[Vec<usize>],
        marks: &mut [Mark],
        order: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match marks[n] {
            Mark::Done => return Ok(()),
            Mark::Visiting => {
                let start = stack.iter().position(|&s| s == n).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(n);
                return Err(cycle);
            }
            Mark::New => {}
        }
        marks[n] = Mark::Visiting;
        stack.push(n);
        for &d in &deps[n] {
            visit(d, deps, marks, order, stack)?;
        }
        stack.pop();
        marks[n] = Mark::Done;
        order.push(n);
        Ok(())
    }
    let mut marks = vec![Mark::New; deps.len()];
    let mut order = Vec::with_capacity(deps.len());
    for n in 0..deps.len() {
        visit(n, deps, &mut marks, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

/// Builds the evaluator for a set of profiles, or every error found in them. In phases, each
/// adding to the diagnostics and returning what it built: names, slots, then per profile its
/// signals, rules and decision tree, then the rules' dependency order. Procedures are compiled
/// where acting lives (`act::steps`).
pub fn build(profiles: &[LoadedProfile]) -> Result<Evaluator, Diagnostics> {
    let mut errors = Diagnostics::default();
    check_names(profiles, &mut errors);
    let expanded = slo::expand(profiles, &mut errors);
    let mut compiler = Compiler::new();
    compiler.slos = expanded.table();
    compiler.broken_rules = expanded.broken_rules.clone();
    let slots = Slots::allocate(profiles, &expanded, &mut compiler, &mut errors);
    let mut signals: Vec<Signal> = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut out_profiles: Vec<Profile> = Vec::new();
    for (pi, p) in profiles.iter().enumerate() {
        let mut ctx = Checker { file: &p.file, errors: &mut errors };
        let raw_rules = rules_of(p, pi, &expanded);
        let rule_scopes = rule_scopes(&mut ctx, &raw_rules);
        signals.extend(compile_signals(&mut ctx, &mut compiler, &slots, pi, p, &raw_rules, &rule_scopes));
        let of_profile: Vec<Signal> = signals.iter().filter(|s| s.profile == pi).cloned().collect();
        let compiled =
            compile_rules(&mut ctx, &mut compiler, &slots, pi, &raw_rules, &rule_scopes, &rules, &of_profile);
        rules.extend(compiled);
        out_profiles.push(compile_tree(&mut ctx, &mut compiler, &slots, p));
    }
    let order = rule_order(&rules, profiles, &mut errors);
    if !errors.is_empty() {
        errors.0.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
        return Err(errors);
    }
    let mut slots_rules: Vec<Option<Rule>> = rules.into_iter().map(Some).collect();
    let rules: Vec<Rule> = order.into_iter().filter_map(|i| slots_rules[i].take()).collect();

    let mut store = Store::new(Span(compiler.reach().0 + RETENTION_MARGIN.0));
    tracing::debug!(
        profiles = out_profiles.len(),
        signals = signals.len(),
        rules = rules.len(),
        retention = %store.retention(),
        "compiled profiles"
    );
    let watches = slo::watches(&expanded.slos, &mut compiler);
    let (slots, calls) = compiler.finish(&mut store);
    let mut ev = Evaluator::new(out_profiles, signals, rules, calls, slots, store);
    ev.slos = watches;
    Ok(ev)
}

/// A profile's rules: those written, then those its SLOs generate.
fn rules_of<'a>(p: &'a LoadedProfile, pi: usize, expanded: &'a Expanded) -> Vec<&'a Spanned<RawRule>> {
    p.raw.rule.iter().chain(expanded.rules.get(pi).into_iter().flatten()).collect()
}

/// Names: each profile's unknown fields, and profile names used twice (decisions and
/// expectations name them).
fn check_names(profiles: &[LoadedProfile], errors: &mut Diagnostics) {
    for p in profiles {
        errors.0.extend(p.unknown_fields.0.iter().cloned());
    }
    let mut seen_profiles: HashMap<&str, &SourceFile> = HashMap::new();
    for p in profiles {
        if let Some(first) = seen_profiles.insert(&p.name, &p.file) {
            errors.push(Diagnostic::file(
                &p.file.path,
                format!("profile name {:?} is also used by {}", p.name, first.path.display()),
            ));
        }
    }
}

/// The evaluation slots of every signal (per profile) and every rule (global, firing and
/// pending), taken before anything is compiled so that expressions may refer to items defined
/// later in the file. A rule name used twice is an error here.
struct Slots {
    signals: Vec<HashMap<String, usize>>,
    rules: HashMap<String, (usize, usize)>,
}

impl Slots {
    fn allocate(
        profiles: &[LoadedProfile],
        expanded: &Expanded,
        compiler: &mut Compiler,
        errors: &mut Diagnostics,
    ) -> Slots {
        let mut signal_slots: Vec<HashMap<String, usize>> = Vec::new();
        for p in profiles {
            let map = p.raw.signals.keys().map(|name| (name.clone(), compiler.number_slot())).collect();
            signal_slots.push(map);
        }
        let mut rule_slots: HashMap<String, (usize, usize)> = HashMap::new();
        let mut rule_origin: HashMap<String, String> = HashMap::new();
        for (pi, p) in profiles.iter().enumerate() {
            for r in rules_of(p, pi, expanded) {
                let name = r.get_ref().name.get_ref();
                let span = r.get_ref().name.span();
                let here = {
                    let (line, col) = p.file.position(span.start);
                    format!("{}:{line}:{col}", p.file.path.display())
                };
                if name.is_empty() {
                    errors.push(p.file.error(&span, None, "a rule needs a non-empty name"));
                } else if let Some(first) = rule_origin.get(name) {
                    errors.push(p.file.error(
                        &span,
                        Some(&format!("rule {name:?}")),
                        format!("duplicate rule name (first defined at {first})"),
                    ));
                } else {
                    rule_origin.insert(name.clone(), here);
                    rule_slots.insert(name.clone(), (compiler.boolean_slot(), compiler.boolean_slot()));
                }
            }
        }
        Slots { signals: signal_slots, rules: rule_slots }
    }
}

/// A profile's signals, in dependency order (a cycle is an error).
fn compile_signals(
    ctx: &mut Checker,
    compiler: &mut Compiler,
    slots: &Slots,
    pi: usize,
    p: &LoadedProfile,
    raw_rules: &[&Spanned<RawRule>],
    rule_scopes: &HashMap<String, Scope>,
) -> Vec<Signal> {
    let signal_slots = &slots.signals;
    let no_rules = HashMap::new();
    let mut signals = Vec::new();
    let sig_names = Names { signals: &signal_slots[pi], rules: &no_rules, data: true, states: false, what: "a signal" };
    let signal_scopes = signal_scopes(ctx, &p.raw.signals, raw_rules, rule_scopes);
    let mut compiled_signals = Vec::new();
    for (name, text) in &p.raw.signals {
        let item = format!("signal {name:?}");
        compiler.scope = signal_scopes.get(name).copied().unwrap_or_default();
        if let Some(c) = compiled(ctx, compiler, text, &sig_names, Expected::Number, &item) {
            compiled_signals.push((name.clone(), text.span(), c));
        }
    }
    let index: HashMap<&str, usize> =
        compiled_signals.iter().enumerate().map(|(i, (n, _, _))| (n.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> = compiled_signals
        .iter()
        .map(|(_, _, c)| c.signals_read.iter().filter_map(|s| index.get(s.as_str()).copied()).collect())
        .collect();
    match dependency_order(&deps) {
        Ok(order) => {
            for i in order {
                let (name, _, c) = &compiled_signals[i];
                // In dependency order: the signals it reads already know their calls and units.
                let calls = calls_through(&c.calls_read, &c.signals_read, &signals);
                let unit = c.unit(compiler).unwrap_or_else(|| Unit::of(name));
                compiler.set_unit(signal_slots[pi][name], unit);
                signals.push(Signal {
                    unit,
                    name: name.clone(),
                    slot: signal_slots[pi][name],
                    num: c.to_num(),
                    reads: c.selectors_read.clone(),
                    shortest_window: c.shortest_window,
                    calls,
                    span: compiled_signals[i].1.clone(),
                    profile: pi,
                });
            }
        }
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| compiled_signals[i].0.as_str()).collect();
            let (first, span, _) = &compiled_signals[cycle[0]];
            ctx.err(span, Some(&format!("signal {first:?}")), format!("signals form a cycle: {}", names.join(" → ")));
        }
    }

    signals
}

/// The calls an expression makes directly (`direct`) and through the signals it reads (of
/// `signals`, one profile's, compiled before it), each once.
fn calls_through(direct: &[usize], read: &[String], signals: &[Signal]) -> Vec<usize> {
    let mut calls = direct.to_vec();
    for s in signals.iter().filter(|s| read.contains(&s.name)) {
        calls.extend(&s.calls);
    }
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// A profile's rules (`done` holds the rules of earlier profiles: a name compiles once;
/// `signals` its compiled signals).
#[allow(clippy::too_many_arguments)]
fn compile_rules(
    ctx: &mut Checker,
    compiler: &mut Compiler,
    slots: &Slots,
    pi: usize,
    raw_rules: &[&Spanned<RawRule>],
    rule_scopes: &HashMap<String, Scope>,
    done: &[Rule],
    signals: &[Signal],
) -> Vec<Rule> {
    let (signal_slots, rule_slots) = (&slots.signals, &slots.rules);
    let mut rules: Vec<Rule> = Vec::new();
    let rule_names =
        Names { signals: &signal_slots[pi], rules: rule_slots, data: true, states: true, what: "a rule condition" };
    for r in raw_rules {
        let raw = r.get_ref();
        let name = raw.name.get_ref().clone();
        let item = format!("rule {name:?}");
        let Some(&(firing_slot, pending_slot)) = rule_slots.get(&name) else {
            continue;
        };
        if done.iter().chain(&rules).any(|x| x.name == name) {
            continue;
        }
        let scope = rule_scopes.get(&name).copied().unwrap_or_default();
        compiler.scope = scope;
        let when = compiled(ctx, compiler, &raw.when, &rule_names, Expected::Boolean, &item);
        let value_names = Names { what: "a rule value", ..rule_names };
        let (value, unit) = match &raw.value {
            Some(v) => match compiled(ctx, compiler, v, &value_names, Expected::Number, &item) {
                Some(c) => (Some(Some(c.to_num())), c.unit(compiler)),
                None => (None, None),
            },
            // No comparison but a baseline comparison: the value is the candidate's figure.
            None => (
                Some(when.as_ref().and_then(Compiled::comparison_left)),
                when.as_ref().and_then(|w| {
                    w.comparison_left_unit(compiler)
                        .or_else(|| w.calls_read.iter().find_map(|&c| compiler.judge_unit(c)))
                }),
            ),
        };
        let for_ = match &raw.for_ {
            Some(f) => ctx.positive_duration(f, Some(&item), "for").unwrap_or(Span::ZERO),
            None => Span::ZERO,
        };
        let keep_firing_for = ctx.duration(&raw.keep_firing_for, Span::ZERO, Some(&item), "keep_firing_for");
        let on_no_data = match &raw.on_no_data {
            None => OnNoData::Keep,
            Some(v) => OnNoData::parse(v.get_ref()).unwrap_or_else(|| {
                ctx.err(
                    &v.span(),
                    Some(&item),
                    format!("on_no_data must be \"keep\", \"ok\" or \"fire\", not {:?}", v.get_ref()),
                );
                OnNoData::Keep
            }),
        };
        let severity = match &raw.severity {
            None => "warning".to_string(),
            Some(s) if SEVERITIES.contains(&s.get_ref().as_str()) => s.get_ref().clone(),
            Some(s) => {
                ctx.err(
                    &s.span(),
                    Some(&item),
                    format!("severity must be one of {}, not {:?}", SEVERITIES.join(", "), s.get_ref()),
                );
                "warning".to_string()
            }
        };
        // What its messages say of it: `{{value}}`, `{{rule}}` and `{{labels.NAME}}` filled in.
        let summary = raw.summary.as_ref().map(|text| {
            let known = |n: &str| {
                matches!(n, "value" | "rule") || n.strip_prefix("labels.").is_some_and(|l| raw.labels.contains_key(l))
            };
            let wrong: Vec<String> = match crate::template::placeholders(text.get_ref()) {
                Ok(names) => names.iter().filter(|n| !known(n)).map(|n| format!("unknown placeholder {{{{{n}}}}}")).collect(),
                Err(e) => vec![e.to_string()],
            };
            for e in wrong {
                ctx.err(
                    &text.span(),
                    Some(&item),
                    format!("summary: {e} (a summary may name {{{{value}}}}, {{{{rule}}}} and {{{{labels.NAME}}}} of the rule's labels)"),
                );
            }
            text.get_ref().clone()
        });
        let min_coverage = raw.min_coverage.as_ref().and_then(|v| {
            crate::rules::coverage::parse_min_coverage(v.get_ref()).map_err(|e| ctx.err(&v.span(), Some(&item), e)).ok()
        });
        let (Some(when), Some(value)) = (when, value) else {
            continue;
        };
        let windows: Vec<usize> = calls_through(&when.calls_read, &when.signals_read, signals)
            .into_iter()
            .filter(|&c| compiler.windowed(c))
            .collect();
        if let (Some(v), true) = (&raw.min_coverage, windows.is_empty()) {
            ctx.err(
                &v.span(),
                Some(&item),
                "min_coverage: the condition reads no window (last, up and down_for have none)",
            );
        }
        let mut reads: Vec<String> = when.signals_read.iter().map(|s| format!("signal:{s}")).collect();
        reads.extend(when.selectors_read.iter().cloned());
        reads.sort();
        reads.dedup();
        let by_slot: HashMap<usize, &String> = signal_slots[pi].iter().map(|(n, s)| (*s, n)).collect();
        let thresholds = when
            .thresholds()
            .into_iter()
            .filter_map(|(slot, cmp, value)| Some(Threshold { signal: by_slot.get(&slot)?.to_string(), cmp, value }))
            .collect();
        rules.push(Rule {
            unit: unit.unwrap_or_else(|| Unit::of(&name)),
            thresholds,
            name,
            profile: pi,
            cond: when.to_cond(),
            depends_on: when.rules_read.clone(),
            scope,
            reads,
            shortest_window: when.shortest_window,
            min_coverage,
            windows,
            span: raw.when.span(),
            value,
            timing: Timing { for_, keep_firing_for, on_no_data },
            severity,
            summary,
            labels: raw.labels.clone(),
            firing_slot,
            pending_slot,
        });
    }

    rules
}

/// A profile's decision tree and default outcome.
fn compile_tree(ctx: &mut Checker, compiler: &mut Compiler, slots: &Slots, p: &LoadedProfile) -> Profile {
    let no_signals = HashMap::new();
    let rule_slots = &slots.rules;
    let tree_names =
        Names { signals: &no_signals, rules: rule_slots, data: false, states: true, what: "a decision question" };
    let mut questions = Vec::new();
    for (qi, q) in p.raw.decide.iter().enumerate() {
        let raw = q.get_ref();
        let item = format!("[[decide]] {} {:?}", qi + 1, raw.ask.get_ref());
        let then = Outcome::parse(raw.then.get_ref());
        if then.is_none() {
            ctx.err(
                &raw.then.span(),
                Some(&item),
                format!("then must be rollback, consider or monitor, not {:?}", raw.then.get_ref()),
            );
        }
        let cond = compiled(ctx, compiler, &raw.if_, &tree_names, Expected::Boolean, &item);
        if let (Some(then), Some(cond)) = (then, cond) {
            questions.push(Question {
                ask: raw.ask.get_ref().clone(),
                cond: cond.to_cond(),
                then,
                level: raw.level.as_ref().map(|l| l.get_ref().clone()),
                reads: {
                    let mut reads = cond.rules_read.clone();
                    reads.sort();
                    reads.dedup();
                    reads
                },
            });
        }
    }
    let default = match &p.raw.default {
        None => Outcome::Monitor,
        Some(d) => Outcome::parse(d.get_ref()).unwrap_or_else(|| {
            ctx.err(&d.span(), None, format!("default must be rollback, consider or monitor, not {:?}", d.get_ref()));
            Outcome::Monitor
        }),
    };
    let consider_auto_after = p
        .raw
        .consider_auto_after
        .as_ref()
        .map(|_| ctx.duration(&p.raw.consider_auto_after, Span::ZERO, None, "consider_auto_after"));
    Profile {
        name: p.name.clone(),
        path: p.file.path.clone(),
        description: p.raw.description.clone(),
        tree: Tree { questions, default },
        consider_auto_after,
    }
}

/// The rules in dependency order (`firing("x")` reads x's state of this tick); a cycle is an
/// error (and the file order is kept).
fn rule_order(rules: &[Rule], profiles: &[LoadedProfile], errors: &mut Diagnostics) -> Vec<usize> {
    let index: HashMap<&str, usize> = rules.iter().enumerate().map(|(i, r)| (r.name.as_str(), i)).collect();
    let deps: Vec<Vec<usize>> =
        rules.iter().map(|r| r.depends_on.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()).collect();
    match dependency_order(&deps) {
        Ok(order) => order,
        Err(cycle) => {
            let names: Vec<&str> = cycle.iter().map(|&i| rules[i].name.as_str()).collect();
            let first = &rules[cycle[0]];
            let file = &profiles[first.profile].file;
            errors.push(file.error(
                &first.span,
                Some(&format!("rule {:?}", first.name)),
                format!("rules form a cycle: {}", names.join(" → ")),
            ));
            (0..rules.len()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(text: &str) -> Result<Evaluator, Diagnostics> {
        let file = SourceFile { path: Path::new("p.toml").to_path_buf(), text: text.to_string() };
        build(&[LoadedProfile::from_source(file)?])
    }

    #[test]
    fn rules_know_the_thresholds_they_compare_signals_with() {
        let ev = load(
            r#"
[signals]
error_rate = 'last("errors")'
memory = 'last("mem")'

[[rule]]
name = "errors-high"
when = 'error_rate > 0.05 && last("x") > 3'

[[rule]]
name = "memory-high"
when = '0.9 <= memory'
"#,
        )
        .unwrap();
        let of = |name: &str| {
            let r = ev.rules.iter().find(|r| r.name == name).unwrap();
            r.thresholds.iter().map(|t| format!("{} {} {}", t.signal, t.cmp, t.value)).collect::<Vec<_>>()
        };
        assert_eq!(of("errors-high"), vec!["error_rate > 0.05"], "a window call is no signal");
        assert_eq!(of("memory-high"), vec!["memory >= 0.9"], "sides swapped");
    }

    #[test]
    fn orders_signals_and_rules_by_dependency() {
        let ev = load(
            r#"
[signals]
b = 'a * 2'
a = 'last("m")'
[[rule]]
name = "second"
when = 'firing("first")'
[[rule]]
name = "first"
when = 'b > 1'
"#,
        )
        .unwrap();
        let names: Vec<&str> = ev.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        let sigs: Vec<&str> = ev.signals.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sigs, ["a", "b"]);
    }

    #[test]
    fn a_decision_says_which_firing_rules_its_question_read() {
        let mut ev = load(
            r#"
[[rule]]
name = "high"
when = 'last("m") > 1'
[[rule]]
name = "also"
when = 'last("m") > 0'
[[rule]]
name = "idle"
when = 'last("m") > 100'
[[decide]]
ask = "High?"
if = 'firing("high") || firing("idle") || pending("high")'
then = "rollback"
"#,
        )
        .unwrap();
        let key = crate::selector::SeriesKey::new("m", Vec::<(String, String)>::new());
        ev.sample(&key, crate::time::Timestamp(0), 5.0);
        let d = ev.tick(crate::time::Timestamp(0)).decisions.remove(0);
        assert_eq!(d.outcome, crate::rules::Outcome::Rollback);
        let firing: Vec<&str> = d.firing.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(firing, ["high", "also"]);
        assert_eq!(d.because, ["high"], "read by the question and firing; `also` is not read, `idle` not firing");
    }

    #[test]
    fn reports_every_error_with_its_place() {
        let e = load(
            r#"[signals]
x = 'y + 1'
y = 'x + 1'
[[rule]]
name = "r"
when = 'avg_ovr("m", "5m") > 1'
for = "soon"
[[rule]]
name = "r"
when = 'x > 1'
[[rule]]
name = "s"
when = 'firing("t")'
[[rule]]
name = "t"
when = 'firing("s")'
on_no_data = "maybe"
[[decide]]
ask = "Bad?"
if = 'rate("m", "1m") > 1'
then = "panic"
"#,
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            "p.toml:2:5: signal \"x\": signals form a cycle: x → y → x",
            "p.toml:6:8: rule \"r\": unknown function \"avg_ovr\" (did you mean avg_over?)",
            "p.toml:7:7: rule \"r\": for: bad duration",
            "p.toml:9:8: rule \"r\": duplicate rule name (first defined at p.toml:5:8)",
            "on_no_data must be \"keep\", \"ok\" or \"fire\"",
            "then must be rollback, consider or monitor, not \"panic\"",
            "rule states only",
            "p.toml:13:8: rule \"s\": rules form a cycle: s → t → s",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Errors come in file order.
        let lines: Vec<usize> = e.0.iter().filter_map(|d| d.line).map(|(l, _)| l).collect();
        assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    }

    #[test]
    fn a_summary_names_only_what_a_rule_has_and_is_checked_with_its_place() {
        let e = load(
            "[[rule]]\nname = \"a\"\nwhen = 'up(\"api\") == 0'\nsummary = \"api {{target}} down\"\n\
             [[rule]]\nname = \"b\"\nwhen = 'up(\"api\") == 0'\nsummary = \"api down {{value\"\n\
             [[rule]]\nname = \"c\"\nwhen = 'up(\"api\") == 0'\nsummary = \"{{rule}}: {{ value }} ({{labels.team}})\"\nlabels = {team = \"a\"}\n\
             [[rule]]\nname = \"d\"\nwhen = 'up(\"api\") == 0'\nsummary = \"{{valeu}} {{labels.team}}\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        let said = |line: u32, rule: &str, what: &str| format!("p.toml:{line}:11: rule \"{rule}\": summary: {what}");
        let want = said(
            4,
            "a",
            "unknown placeholder {{target}} (a summary may name {{value}}, {{rule}} and {{labels.NAME}} of the rule's labels)",
        );
        assert!(text.contains(&want), "{text}");
        assert!(text.contains(&said(8, "b", "unclosed placeholder")), "{text}");
        assert!(text.contains(&said(17, "d", "unknown placeholder {{valeu}}")), "each bad one: {text}");
        assert!(text.contains(&said(17, "d", "unknown placeholder {{labels.team}}")), "a label the rule lacks: {text}");
        assert_eq!(e.0.len(), 4, "{text}");
    }

    #[test]
    fn min_coverage_is_checked_with_its_place() {
        let e = load(
            "[[rule]]\nname = \"a\"\nwhen = 'rate(\"m\", \"1h\") > 1'\nmin_coverage = \"ninety\"\n\
             [[rule]]\nname = \"b\"\nwhen = 'up(\"api\") == 0'\nmin_coverage = 0.9\n\
             [[rule]]\nname = \"c\"\nwhen = 'rate(\"m\", \"1h\") > 1'\nmin_coverage = \"150%\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        for want in [
            "p.toml:4:16: rule \"a\": min_coverage must be a share such as \"90%\" or 0.9, not \"ninety\"",
            "p.toml:8:16: rule \"b\": min_coverage: the condition reads no window",
            "p.toml:12:16: rule \"c\": min_coverage must be above 0% and at most 100%, not \"150%\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert_eq!(e.len(), 3, "{text}");
        let ev = load(
            "[signals]\nr = 'rate(\"m\", \"1h\")'\n[[rule]]\nname = \"a\"\nwhen = 'r > 1'\nmin_coverage = \"90%\"\n",
        )
        .unwrap();
        assert_eq!(ev.rules[0].min_coverage, Some(0.9));
        assert_eq!(ev.rules[0].windows.len(), 1, "the window read through the signal");
    }

    /// A burn-rate rule on a 10-minute window, 10% errors from the start, every 15 s: the tick at
    /// each time and the decision then.
    fn burn(min_coverage: &str) -> Vec<(i64, crate::rules::Decision, bool)> {
        let mut ev = load(&format!(
            "[signals]\nerror_rate = 'ratio(\"req{{code=\\\"500\\\"}}\", \"req\", \"10m\")'\n\
             [[rule]]\nname = \"burn\"\nwhen = 'error_rate > 0.05'\n{min_coverage}\n\
             [[decide]]\nask = \"Burning?\"\nif = 'firing(\"burn\")'\nthen = \"rollback\"\n"
        ))
        .unwrap();
        let (ok, bad) = (
            crate::selector::SeriesKey::parse("req{code=\"200\"}").unwrap(),
            crate::selector::SeriesKey::parse("req{code=\"500\"}").unwrap(),
        );
        let mut out = Vec::new();
        for i in 0..=44i64 {
            let t = crate::time::Timestamp(i * 15_000);
            ev.sample(&ok, t, 90.0 * i as f64);
            ev.sample(&bad, t, 10.0 * i as f64);
            let d = ev.tick(t).decisions.remove(0);
            out.push((i * 15, d, ev.state("burn").unwrap().is_firing()));
        }
        out
    }

    /// Right after a deploy the version's windows are empty: a rule read as `ok` without data
    /// is not thereby seen quiet, so an incident that was firing before the deploy and goes on
    /// after it still predates it — whether or not a tick fell in that empty moment.
    #[test]
    fn an_empty_window_after_a_deploy_does_not_end_what_predates_it() {
        let mut ev = load(
            "[signals]\nerror_rate = 'ratio(\"req{code=\\\"500\\\"}\", \"req\", \"1m\")'\n\
             [[rule]]\nname = \"burn\"\nwhen = 'error_rate > 0.05'\non_no_data = \"ok\"\n\
             [[decide]]\nask = \"Burning?\"\nif = 'firing(\"burn\")'\nthen = \"rollback\"\n",
        )
        .unwrap();
        let (ok, bad) = (
            crate::selector::SeriesKey::parse("req{code=\"200\"}").unwrap(),
            crate::selector::SeriesKey::parse("req{code=\"500\"}").unwrap(),
        );
        let feed = |ev: &mut Evaluator, i: i64| {
            let t = crate::time::Timestamp(i * 15_000);
            ev.sample(&ok, t, 90.0 * i as f64);
            ev.sample(&bad, t, 10.0 * i as f64);
            t
        };
        for i in 0..=8 {
            let t = feed(&mut ev, i);
            ev.tick(t);
        }
        assert!(ev.state("burn").unwrap().is_firing());
        // Deployed at 2m 1s; a tick at 2m 2s has no sample since: the window is empty.
        ev.restart_evidence(crate::time::Timestamp(121_000), true);
        let d = ev.tick(crate::time::Timestamp(122_000)).decisions.remove(0);
        assert!(!ev.state("burn").unwrap().is_firing(), "no data, read as ok: {}", d.explained());
        // The errors go on on the new version: still the incident from before the deploy.
        for i in 9..=12 {
            let t = feed(&mut ev, i);
            let d = ev.tick(t).decisions.remove(0);
            if ev.state("burn").unwrap().is_firing() {
                assert_eq!(d.predates, vec!["burn".to_string()], "at {}: {}", t.0, d.explained());
            }
        }
        assert!(ev.state("burn").unwrap().is_firing());
    }

    /// A deploy read late is dated back, to just after the old version's last reading: a rule
    /// that turned pending since then goes on pending from when it did (its `for` is not
    /// started again at the reading), and fires when it would have; one pending from before is
    /// started again (and the incident is the old version's).
    #[test]
    fn a_rule_pending_since_a_deploy_dated_back_goes_on_from_when_it_turned() {
        let mut ev = load(
            "[signals]\nerrors = 'last(\"errors\")'\n\
             [[rule]]\nname = \"errors\"\nwhen = 'errors > 1'\nfor = \"5s\"\n\
             [[decide]]\nask = \"Errors?\"\nif = 'firing(\"errors\")'\nthen = \"rollback\"\n",
        )
        .unwrap();
        let key = crate::selector::SeriesKey::parse("errors").unwrap();
        let feed = |ev: &mut Evaluator, s: i64, v: f64| {
            let t = crate::time::Timestamp(s * 1_000);
            ev.sample(&key, t, v);
            ev.tick(t)
        };
        for s in 0..10 {
            feed(&mut ev, s, 0.0);
        }
        // The new version runs from 10 s (read only at 13 s); errors from 11 s.
        for s in 11..=13 {
            feed(&mut ev, s, 5.0);
        }
        assert_eq!(ev.state("errors").unwrap().phase(), crate::rules::state::Phase::Pending);
        ev.restart_evidence(crate::time::Timestamp(10_001), true);
        assert_eq!(
            ev.state("errors").unwrap().phase(),
            crate::rules::state::Phase::Pending,
            "pending since 11 s goes on"
        );
        for s in 14..16 {
            feed(&mut ev, s, 5.0);
        }
        let d = feed(&mut ev, 16, 5.0).decisions.remove(0);
        assert_eq!(d.outcome, Outcome::Rollback, "fires at 16 s, 5 s after 11 s: {}", d.explained());
        assert!(d.predates.is_empty(), "the new version's: {}", d.explained());

        // Pending since before the deploy point: started again.
        let t = crate::time::Timestamp(15_500);
        ev.restart_evidence(t, true);
        assert_eq!(ev.state("errors").unwrap().phase(), crate::rules::state::Phase::Inactive);
    }

    /// A rule firing since a deploy dated back is pending again from when it turned: it fires
    /// at once on the new version's evidence if its condition holds there, and not at all if
    /// that evidence says otherwise (its window held the old version's samples too).
    #[test]
    fn a_rule_firing_since_a_deploy_dated_back_fires_again_only_on_the_new_evidence() {
        use crate::rules::state::Phase;
        let key = crate::selector::SeriesKey::parse("errors").unwrap();
        for (after, phase) in [(5.0, Phase::Firing), (0.0, Phase::Inactive)] {
            let mut ev = load(
                "[signals]\nerrors = 'last(\"errors\")'\n\
                 [[rule]]\nname = \"errors\"\nwhen = 'errors > 1'\nfor = \"2s\"\n\
                 [[decide]]\nask = \"Errors?\"\nif = 'firing(\"errors\")'\nthen = \"rollback\"\n",
            )
            .unwrap();
            let feed = |ev: &mut Evaluator, s: i64, v: f64| {
                let t = crate::time::Timestamp(s * 1_000);
                ev.sample(&key, t, v);
                ev.tick(t)
            };
            for s in 0..=10 {
                feed(&mut ev, s, 0.0);
            }
            for s in 11..=14 {
                feed(&mut ev, s, 5.0);
            }
            assert_eq!(ev.state("errors").unwrap().phase(), Phase::Firing);
            ev.restart_evidence(crate::time::Timestamp(10_500), true);
            assert_eq!(ev.state("errors").unwrap().phase(), Phase::Pending, "pending from 11 s");
            let d = feed(&mut ev, 15, after).decisions.remove(0);
            assert_eq!(ev.state("errors").unwrap().phase(), phase, "{}", d.explained());
        }
    }

    #[test]
    fn a_window_holding_minutes_fires_only_with_its_coverage_told() {
        // Without min_coverage: firing on 15 seconds of a 10-minute window, and saying so.
        let runs = burn("");
        let (_, d, firing) = &runs[1];
        assert!(firing);
        assert_eq!(d.explained(), "Burning? YES → rollback; burn: 10m window: 15 s of data");
        let (_, d, _) = &runs[40];
        assert!(d.coverage.is_empty(), "covered whole at 10 min: {:?}", d.coverage);
        assert_eq!(d.explained(), "Burning? YES → rollback");
    }

    #[test]
    fn min_coverage_keeps_a_rule_unknown_until_its_window_holds_enough() {
        let runs = burn("min_coverage = \"90%\"");
        for (secs, d, firing) in &runs {
            // 90% of 10 minutes: 9 minutes.
            assert_eq!(*firing, *secs >= 540, "at {secs} s: {}", d.explained());
            assert_eq!(d.unknown.contains(&"burn".to_string()), *secs < 540, "at {secs} s");
        }
        let (_, d, _) = &runs[20];
        assert_eq!(d.outcome, crate::rules::Outcome::Monitor);
        assert_eq!(
            d.explained(),
            "Burning? no → monitor (default); burn: 10m window: 5 min of data, under min_coverage 90%: unknown"
        );
        let json = serde_json::to_value(d).unwrap();
        assert_eq!(
            json["coverage"],
            serde_json::json!([{"rule": "burn", "window": "10m", "covered": "5m", "share": 0.5, "required": 0.9}])
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_position() {
        let e = load("[[rule]]\nname = \"r\"\nwhen = 'true'\nfour = \"5m\"\n").unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("p.toml:4:1: unknown field `four`"), "{text}");
    }

    #[test]
    fn every_unknown_field_and_the_errors_after_them_are_reported() {
        let e = load(
            "[[rule]]\nname = \"r\"\nwhen = 'true'\nfour = \"5m\"\n[[rule]]\nname = \"s\"\nwhen = 'nope > 1'\nsevrity = \"critical\"\n",
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("p.toml:4:1: unknown field `four`"), "{text}");
        assert!(text.contains("p.toml:8:1: unknown field `sevrity`"), "{text}");
        assert!(text.contains("p.toml:7:8: rule \"s\": unknown signal or variable \"nope\""), "{text}");
        assert_eq!(e.len(), 3, "{text}");
    }

    /// A `"deploy"` baseline is what the version's selectors read just before its deploy, kept
    /// while the store forgets those samples; no deploy known is unknown, and the verdict is
    /// three-valued through `!` and `&&` like any condition.
    #[test]
    fn a_deploy_baseline_is_kept_at_the_deploy() {
        let mut ev = load(
            "[[rule]]\nname = \"slower\"\nwhen = 'higher(\"latency_seconds\", \"deploy\", \"1m\")'\n\
             [[rule]]\nname = \"not-slower\"\nwhen = '!higher(\"latency_seconds\", \"deploy\", \"1m\") && 1 > 0'\n\
             [[decide]]\nask = \"Slower?\"\nif = 'firing(\"slower\")'\nthen = \"consider\"\n",
        )
        .unwrap();
        let lat = crate::selector::SeriesKey::parse("latency_seconds").unwrap();
        let jitter = |i: i64| [0.9, 0.95, 1.0, 1.05, 1.1][(i % 5) as usize];
        let mut last = None;
        // 10 minutes at 1 s: 100 ms before the deploy at 5 min, 200 ms after it.
        for i in 0..600i64 {
            let t = crate::time::Timestamp(i * 1000);
            if i == 300 {
                ev.restart_evidence(t, true);
            }
            let v = if i < 300 { 0.1 } else { 0.2 } * jitter(i);
            ev.sample(&lat, t, v);
            let d = ev.tick(t).decisions.remove(0);
            if i < 300 {
                assert!(d.unknown.contains(&"slower".to_string()), "no deploy known at {i} s: {d:?}");
                assert!(d.judged[0].contains("no data for the baseline"), "{:?}", d.judged);
            }
            last = Some(d);
        }
        // Five minutes after the deploy the store no longer holds the minute before it.
        let d = last.unwrap();
        assert!(ev.state("slower").unwrap().is_firing(), "{d:?}");
        assert!(!ev.state("not-slower").unwrap().is_firing());
        assert!(
            d.judged[0]
                .starts_with("slower: candidate mean 200ms vs before the deploy 100ms (+100%), Mann-Whitney p = "),
            "{:?}",
            d.judged
        );
        let value = ev.value("slower").unwrap();
        assert!((value - 0.2).abs() < 1e-9, "the candidate's mean: {value}");
        // A config reload (the same rule in another place) keeps it too.
        let mut reloaded = load(
            "[[rule]]\nname = \"other\"\nwhen = 'up(\"api\") == 0'\n\
             [[rule]]\nname = \"slower\"\nwhen = 'higher(\"latency_seconds\", \"deploy\", \"1m\")'\n",
        )
        .unwrap();
        reloaded.adopt(ev);
        let d = reloaded.tick(crate::time::Timestamp(600_000)).decisions.remove(0);
        assert!(
            d.judged.iter().any(|n| n.starts_with("slower: candidate mean 200ms vs before the deploy 100ms")),
            "{:?}",
            d.judged
        );
    }
}
