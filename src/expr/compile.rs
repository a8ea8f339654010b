//! Load-time compilation of evalexpr expressions: parse once, rewrite every rule-language call
//! (`rate(...)`, `firing("x")`) and every signal name into a read of a numbered slot, turn integer
//! literals into floats, reject what rules may not do (assignments, unknown names, non-literal
//! arguments), and type-check by a trial evaluation with every input bound — evalexpr builds
//! `error_rate >` without complaint. Evaluation afterwards does no parsing at all.

use std::collections::HashMap;

use evalexpr::{DefaultNumericTypes, Node, Operator};

use super::eval::{Cond, Num, Slots, Value};
use super::functions::{Arg, BUILTIN_NAMES, Call, CallSpec, FUNCTION_NAMES, SLO_FUNCTION_NAMES, Scope};
use super::slo::SloSpec;
use crate::diag::did_you_mean;
use crate::template::Unit;
use crate::time::Span;
use crate::window::Store;

/// What an expression must evaluate to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Boolean,
    Number,
}

/// What the names in one expression may refer to.
pub struct Names<'a> {
    /// Signals visible to this expression, by name → slot. Empty for decision questions.
    pub signals: &'a HashMap<String, usize>,
    /// Rules by name → (firing slot, pending slot). Empty for signals.
    pub rules: &'a HashMap<String, (usize, usize)>,
    /// Whether window functions and numbers may be used (not in decision questions).
    pub data: bool,
    /// Whether `firing()`/`pending()` may be used (not in signals, which read data only).
    pub states: bool,
    /// What the expression is, for messages: "a signal", "a decision question".
    pub what: &'a str,
}

/// A compiled expression and what it reads.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub node: Node,
    pub signals_read: Vec<String>,
    pub rules_read: Vec<String>,
    /// The selectors of the window calls it makes directly (not through signals), as written.
    pub selectors_read: Vec<String>,
    /// The shortest window of the calls it makes directly.
    pub shortest_window: Option<Span>,
    /// The window calls it makes directly, as indices of the calls [`Compiler::finish`]
    /// returns (each once).
    pub calls_read: Vec<usize>,
}

/// A comparison a rule makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    /// The same comparison with its sides swapped (`0.05 < x` is `x > 0.05`).
    pub fn flipped(self) -> Cmp {
        match self {
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            other => other,
        }
    }
}

impl std::fmt::Display for Cmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
        })
    }
}

/// Owns the slots and the de-duplicated window calls of everything compiled with it.
#[derive(Debug, Default)]
pub struct Compiler {
    pub slots: Slots,
    /// Values used for the trial evaluation that type-checks each expression.
    trial: Slots,
    calls: Vec<(CallSpec, usize, Scope)>,
    /// Each distinct call's slot and index in `calls`.
    call_slots: HashMap<(Scope, String), (usize, usize)>,
    /// The scope of the calls compiled next (set per signal and rule by the loader).
    pub scope: Scope,
    /// What the value in a slot measures, where known: calls' units, and signals' as the loader
    /// sets them ([`Compiler::set_unit`]).
    units: HashMap<usize, Unit>,
    /// The SLOs loaded, by name: what `burn_rate("name", …)` and the budget functions read.
    pub slos: HashMap<String, SloSpec>,
    /// The rules an `[[slo]]` with errors would have generated: a tree reading one is not told
    /// again (the SLO's own error says what is wrong).
    pub broken_rules: std::collections::HashSet<String>,
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// A new numeric slot (a signal's value, a call's result).
    pub fn number_slot(&mut self) -> usize {
        self.trial.add(Value::Float(1.0));
        self.slots.add(Value::Empty)
    }

    /// A new boolean slot (a rule's firing/pending state).
    pub fn boolean_slot(&mut self) -> usize {
        self.trial.add(Value::Boolean(false));
        self.slots.add(Value::Boolean(false))
    }

    /// Records what the value in `slot` (a signal's) measures, for expressions that read it.
    pub fn set_unit(&mut self, slot: usize, unit: Unit) {
        self.units.insert(slot, unit);
    }

    /// The longest reach of any call compiled so far: the store's retention.
    pub fn reach(&self) -> Span {
        self.calls.iter().map(|(c, _, _)| c.reach()).max().unwrap_or(Span::ZERO)
    }

    /// The slot of call `index` (of [`Compiled::calls_read`]).
    pub fn call_slot(&self, index: usize) -> Option<usize> {
        self.calls.get(index).map(|(_, slot, _)| *slot)
    }

    /// Whether call `index` (of [`Compiled::calls_read`]) reads a window (not `last`, `up`,
    /// `down_for`).
    pub fn windowed(&self, index: usize) -> bool {
        self.calls.get(index).is_some_and(|(c, _, _)| c.window().is_some())
    }

    /// What the candidate's figure of call `index` measures, when it is a baseline judge's
    /// (`higher`'s samples; `ratio_higher`'s share): a judge rule's value.
    pub fn judge_unit(&self, index: usize) -> Option<Unit> {
        match self.calls.get(index)?.0 {
            super::functions::CallOf::Judge { unit, .. } => Some(unit),
            super::functions::CallOf::RatioJudge { .. } => Some(Unit::Share),
            _ => None,
        }
    }

    /// Registers every call's selectors with `store`; returns the calls with their slots.
    pub fn finish(self, store: &mut Store) -> (Slots, Vec<(Call, usize, Scope)>) {
        let calls = self.calls.into_iter().map(|(spec, slot, scope)| (spec.register(store), slot, scope)).collect();
        (self.slots, calls)
    }

    /// Compiles `text`; every problem found is returned, not just the first.
    pub fn compile(&mut self, text: &str, names: &Names, expected: Expected) -> Result<Compiled, Vec<String>> {
        precheck(text).map_err(|e| vec![e])?;
        let mut node = evalexpr::build_operator_tree::<DefaultNumericTypes>(text)
            .map_err(|e| vec![format!("syntax error: {e}")])?;
        let mut out = Compiled {
            node: Node::default_placeholder(),
            signals_read: vec![],
            rules_read: vec![],
            selectors_read: vec![],
            shortest_window: None,
            calls_read: vec![],
        };
        let mut errors = Vec::new();
        self.rewrite(&mut node, names, &mut out, &mut errors);
        if errors.is_empty() {
            check_complete(&node, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        match (node.eval_with_context(&self.trial), expected) {
            (Ok(Value::Boolean(_)), Expected::Boolean) | (Ok(Value::Float(_)), Expected::Number) => {}
            (Ok(Value::Float(_)), Expected::Boolean) => {
                return Err(vec![format!(
                    "{} must be true or false, but this is a number: compare it (e.g. `... > 0.05`)",
                    names.what
                )]);
            }
            (Ok(Value::Boolean(_)), Expected::Number) => {
                return Err(vec![format!("{} must be a number, but this is a condition", names.what)]);
            }
            (Ok(other), _) => {
                return Err(vec![format!("{} must be {}, but this gives {other:?}", names.what, expected.noun())]);
            }
            (Err(e), _) => {
                let judge =
                    out.calls_read.iter().any(|&c| self.calls.get(c).is_some_and(|(spec, _, _)| spec.is_judge()));
                // The reason a person can act on first; evalexpr's words after it.
                return Err(vec![match judge {
                    true => format!(
                        "higher, lower and ratio_higher are true or false, not numbers: use them without comparing (type error: {e})"
                    ),
                    false => format!("type error: {e}"),
                }]);
            }
        }
        out.node = node;
        Ok(out)
    }

    fn rewrite(&mut self, node: &mut Node, names: &Names, out: &mut Compiled, errors: &mut Vec<String>) {
        match node.operator().clone() {
            Operator::Const { value: Value::Int(i) } => {
                *node.operator_mut() = Operator::Const { value: Value::Float(i as f64) };
            }
            Operator::VariableIdentifierRead { identifier } => match names.signals.get(&identifier) {
                Some(&slot) => {
                    read_slot(node, slot);
                    out.signals_read.push(identifier);
                }
                None if names.signals.is_empty() && !names.data => errors.push(format!(
                    "unknown name {identifier:?}: {} combines rule states only (firing(\"x\"), pending(\"x\"), &&, ||, !)",
                    names.what
                )),
                None => errors.push(format!(
                    "unknown signal or variable {identifier:?}{}",
                    did_you_mean(&identifier, names.signals.keys().map(String::as_str))
                )),
            },
            Operator::VariableIdentifierWrite { .. }
            | Operator::Assign
            | Operator::AddAssign
            | Operator::SubAssign
            | Operator::MulAssign
            | Operator::DivAssign
            | Operator::ModAssign
            | Operator::ExpAssign
            | Operator::AndAssign
            | Operator::OrAssign
            | Operator::Chain => errors.push("assignments and `;` are not allowed in rules".into()),
            Operator::FunctionIdentifier { identifier } => {
                self.rewrite_call(node, &identifier, names, out, errors);
            }
            Operator::Const { .. } if !names.data => {
                errors.push(format!(
                    "{} combines rule states only (firing(\"x\"), pending(\"x\"), &&, ||, !), not values",
                    names.what
                ));
            }
            op => {
                let comparison_or_arith = !matches!(
                    op,
                    Operator::RootNode | Operator::And | Operator::Or | Operator::Not | Operator::Const { .. }
                );
                if !names.data && comparison_or_arith {
                    errors.push(format!(
                        "{} combines rule states only (firing(\"x\"), pending(\"x\"), &&, ||, !), not `{op}`",
                        names.what
                    ));
                    return;
                }
                for child in node.children_mut() {
                    self.rewrite(child, names, out, errors);
                }
            }
        }
    }

    fn rewrite_call(
        &mut self,
        node: &mut Node,
        name: &str,
        names: &Names,
        out: &mut Compiled,
        errors: &mut Vec<String>,
    ) {
        if BUILTIN_NAMES.contains(&name) {
            if !names.data {
                errors.push(format!("{} combines rule states only, not {name}()", names.what));
                return;
            }
            for child in node.children_mut() {
                self.rewrite(child, names, out, errors);
            }
            return;
        }
        if !FUNCTION_NAMES.contains(&name) {
            let known = FUNCTION_NAMES.iter().chain(BUILTIN_NAMES).copied();
            errors.push(format!("unknown function {name:?}{}", did_you_mean(name, known)));
            return;
        }
        let args = match literal_args(node, name) {
            Ok(args) => args,
            Err(e) => {
                errors.push(e);
                return;
            }
        };
        if name == "firing" || name == "pending" {
            let rule = match args.as_slice() {
                [Arg::Str(rule)] => rule.clone(),
                _ => {
                    errors.push(format!("{name}(\"rule-name\") takes one rule name (a string)"));
                    return;
                }
            };
            if !names.states {
                errors.push(format!(
                    "{name}() cannot be used in {}: signals read data, rules read rule states",
                    names.what
                ));
                return;
            }
            match names.rules.get(&rule) {
                Some(&(firing, pending)) => {
                    read_slot(node, if name == "firing" { firing } else { pending });
                    out.rules_read.push(rule);
                }
                None if self.broken_rules.contains(&rule) => {}
                None => errors.push(format!(
                    "{name}({rule:?}): no rule named {rule:?} is loaded{}",
                    did_you_mean(&rule, names.rules.keys().map(String::as_str))
                )),
            }
            return;
        }
        if !names.data {
            errors.push(format!(
                "{} combines rule states only: {name}() reads data, so put it in a rule and ask firing(\"that-rule\")",
                names.what
            ));
            return;
        }
        let parsed = match SLO_FUNCTION_NAMES.contains(&name) {
            true => CallSpec::parse_slo(name, &args, &self.slos),
            false => CallSpec::parse(name, &args),
        };
        match parsed {
            Ok(spec) => {
                out.selectors_read.extend(spec.selector_texts());
                if let Some(w) = spec.window() {
                    out.shortest_window = Some(out.shortest_window.map_or(w, |s| s.min(w)));
                }
                let key = (self.scope, spec.key());
                let (slot, index) = match self.call_slots.get(&key) {
                    Some(&found) => found,
                    None => {
                        // A judge's slot holds true/false (or no data), so `higher(...) > 1`
                        // fails the trial evaluation as a type error.
                        let slot = match spec.is_judge() {
                            true => {
                                self.trial.add(Value::Boolean(false));
                                self.slots.add(Value::Empty)
                            }
                            false => self.number_slot(),
                        };
                        self.call_slots.insert(key, (slot, self.calls.len()));
                        if let Some(unit) = spec.unit() {
                            self.units.insert(slot, unit);
                        }
                        self.calls.push((spec, slot, self.scope));
                        (slot, self.calls.len() - 1)
                    }
                };
                if !out.calls_read.contains(&index) {
                    out.calls_read.push(index);
                }
                read_slot(node, slot);
            }
            Err(e) => errors.push(e),
        }
    }
}

/// The longest expression rollwatch compiles, and how deep it may nest.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
pub const MAX_NESTING: usize = 32;

/// Refuses, in one linear pass, what would make evalexpr's recursive parser slow or overflow the
/// stack: an over-long text, parentheses nested too deep, long runs of unary operators.
pub fn precheck(text: &str) -> Result<(), String> {
    if text.len() > MAX_EXPRESSION_BYTES {
        return Err(format!("expression longer than {MAX_EXPRESSION_BYTES} bytes ({} bytes)", text.len()));
    }
    let (mut depth, mut deepest, mut unary, mut longest_unary) = (0usize, 0usize, 0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if c == '!' || c == '-' {
            unary += 1;
            longest_unary = longest_unary.max(unary);
        } else if !c.is_whitespace() {
            unary = 0;
        }
    }
    if deepest > MAX_NESTING {
        return Err(format!("parentheses nested {deepest} deep (at most {MAX_NESTING})"));
    }
    if longest_unary > MAX_NESTING {
        return Err(format!("{longest_unary} unary operators in a row (at most {MAX_NESTING})"));
    }
    Ok(())
}

impl Expected {
    fn noun(self) -> &'static str {
        match self {
            Expected::Boolean => "true or false",
            Expected::Number => "a number",
        }
    }
}

/// Node has no public constructor; a tree of a constant stands in until the real one is set.
trait Placeholder {
    fn default_placeholder() -> Self;
}

impl Placeholder for Node {
    fn default_placeholder() -> Self {
        evalexpr::build_operator_tree::<DefaultNumericTypes>("0.0").unwrap_or_else(|_| unreachable!())
    }
}

fn read_slot(node: &mut Node, slot: usize) {
    *node.operator_mut() = Operator::VariableIdentifierRead { identifier: Slots::identifier(slot) };
    node.children_mut().clear();
}

/// The literal arguments of a call: strings and numbers, no names or nested calls.
fn literal_args(call: &Node, name: &str) -> Result<Vec<Arg>, String> {
    let Some(mut inner) = call.children().first() else {
        return Ok(vec![]);
    };
    while matches!(inner.operator(), Operator::RootNode) && inner.children().len() == 1 {
        inner = &inner.children()[0];
    }
    let parts: Vec<&Node> = match inner.operator() {
        Operator::Tuple => inner.children().iter().collect(),
        Operator::RootNode if inner.children().is_empty() => vec![],
        _ => vec![inner],
    };
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            if part.iter_identifiers().next().is_some() {
                return Err(format!(
                    "argument {} of {name}() must be a literal string or number, not an expression with names",
                    i + 1
                ));
            }
            match part.eval() {
                Ok(Value::String(s)) => Ok(Arg::Str(s)),
                Ok(Value::Float(f)) => Ok(Arg::Num(f)),
                Ok(Value::Int(n)) => Ok(Arg::Num(n as f64)),
                Ok(other) => Err(format!("argument {} of {name}() must be a string or number, got {other:?}", i + 1)),
                Err(e) => Err(format!("argument {} of {name}(): {e}", i + 1)),
            }
        })
        .collect()
}

/// Finds operators missing an operand (`error_rate >`), which evalexpr parses without error.
fn check_complete(node: &Node, errors: &mut Vec<String>) {
    let op = node.operator();
    let wanted = match op {
        Operator::Neg | Operator::Not => Some(1),
        Operator::Add
        | Operator::Sub
        | Operator::Mul
        | Operator::Div
        | Operator::Mod
        | Operator::Exp
        | Operator::Eq
        | Operator::Neq
        | Operator::Gt
        | Operator::Lt
        | Operator::Geq
        | Operator::Leq
        | Operator::And
        | Operator::Or => Some(2),
        Operator::RootNode if node.children().is_empty() => {
            errors.push("empty expression".into());
            return;
        }
        _ => None,
    };
    if let Some(n) = wanted
        && node.children().len() != n
    {
        errors.push(format!("incomplete expression: `{op}` needs {n} operand{}", if n == 1 { "" } else { "s" }));
        return;
    }
    for child in node.children() {
        check_complete(child, errors);
    }
}

/// Slots read anywhere in a rewritten tree.
fn inputs_of(node: &Node) -> Vec<usize> {
    let mut slots: Vec<usize> =
        node.iter_read_variable_identifiers().filter_map(|id| id.strip_prefix("__slot")?.parse().ok()).collect();
    slots.sort_unstable();
    slots.dedup();
    slots
}

impl Compiled {
    /// As a numeric expression.
    pub fn to_num(&self) -> Num {
        Num { node: self.node.clone(), inputs: inputs_of(&self.node) }
    }

    /// As a three-valued condition.
    pub fn to_cond(&self) -> Cond {
        fn build(node: &Node) -> Cond {
            let kids = node.children();
            match node.operator() {
                Operator::RootNode if kids.len() == 1 => build(&kids[0]),
                Operator::And => Cond::And(Box::new(build(&kids[0])), Box::new(build(&kids[1]))),
                Operator::Or => Cond::Or(Box::new(build(&kids[0])), Box::new(build(&kids[1]))),
                Operator::Not => Cond::Not(Box::new(build(&kids[0]))),
                _ => Cond::Leaf(Num { node: node.clone(), inputs: inputs_of(node) }),
            }
        }
        build(&self.node)
    }

    /// Every comparison of a slot with a constant (`error_rate > 0.05`, `0.9 <= mem`), as
    /// `(slot, comparison, constant)` with the slot on the left: the thresholds a plot draws.
    pub fn thresholds(&self) -> Vec<(usize, Cmp, f64)> {
        fn slot(node: &Node) -> Option<usize> {
            match node.operator() {
                Operator::RootNode if node.children().len() == 1 => slot(&node.children()[0]),
                Operator::VariableIdentifierRead { identifier } => identifier.strip_prefix("__slot")?.parse().ok(),
                _ => None,
            }
        }
        fn constant(node: &Node) -> Option<f64> {
            match node.operator() {
                Operator::RootNode if node.children().len() == 1 => constant(&node.children()[0]),
                Operator::Const { value: Value::Float(f) } => Some(*f),
                Operator::Const { value: Value::Int(i) } => Some(*i as f64),
                _ => None,
            }
        }
        fn walk(node: &Node, out: &mut Vec<(usize, Cmp, f64)>) {
            let cmp = match node.operator() {
                Operator::Gt => Some(Cmp::Gt),
                Operator::Geq => Some(Cmp::Ge),
                Operator::Lt => Some(Cmp::Lt),
                Operator::Leq => Some(Cmp::Le),
                Operator::Eq => Some(Cmp::Eq),
                Operator::Neq => Some(Cmp::Ne),
                _ => None,
            };
            if let (Some(cmp), [left, right]) = (cmp, node.children()) {
                match (slot(left), constant(right), constant(left), slot(right)) {
                    (Some(s), Some(c), _, _) => out.push((s, cmp, c)),
                    (_, _, Some(c), Some(s)) => out.push((s, cmp.flipped(), c)),
                    _ => {}
                }
            }
            for child in node.children() {
                walk(child, out);
            }
        }
        let mut out = Vec::new();
        walk(&self.node, &mut out);
        out
    }

    /// The left side of the first comparison: a rule's default value for its messages.
    pub fn comparison_left(&self) -> Option<Num> {
        let left = comparison_left(&self.node)?;
        Some(Num { node: left.clone(), inputs: inputs_of(left) })
    }

    /// What this numeric expression measures, as far as its structure tells (`None`: it does
    /// not say): a call's or signal's unit, kept through `+`, `-`, `min`/`max` of one unit and
    /// scaling a time or a count by a constant (`1.5 * p99` is a time; `100 * ratio` is no
    /// longer a share).
    pub fn unit(&self, compiler: &Compiler) -> Option<Unit> {
        unit_of(&self.node, &compiler.units)
    }

    /// What the left side of the first comparison measures (a rule's default value).
    pub fn comparison_left_unit(&self, compiler: &Compiler) -> Option<Unit> {
        unit_of(comparison_left(&self.node)?, &compiler.units)
    }
}

fn comparison_left(node: &Node) -> Option<&Node> {
    match node.operator() {
        Operator::Gt | Operator::Lt | Operator::Geq | Operator::Leq | Operator::Eq | Operator::Neq => {
            node.children().first()
        }
        _ => node.children().iter().find_map(comparison_left),
    }
}

/// The unit of a rewritten numeric tree (see [`Compiled::unit`]).
fn unit_of(node: &Node, units: &HashMap<usize, Unit>) -> Option<Unit> {
    let kids = node.children();
    fn is_const(n: &Node) -> bool {
        match n.operator() {
            Operator::Const { .. } => true,
            Operator::VariableIdentifierRead { .. } | Operator::FunctionIdentifier { .. } => false,
            _ => n.children().iter().all(is_const),
        }
    }
    let same = |list: &[Node]| -> Option<Unit> {
        let mut found = None;
        for n in list.iter().filter(|n| !is_const(n)) {
            let u = unit_of(n, units)?;
            if found.is_some_and(|f| f != u) {
                return None;
            }
            found = Some(u);
        }
        found
    };
    match node.operator() {
        Operator::RootNode | Operator::Neg if kids.len() == 1 => unit_of(&kids[0], units),
        Operator::VariableIdentifierRead { identifier } => {
            units.get(&identifier.strip_prefix("__slot")?.parse().ok()?).copied()
        }
        Operator::Add | Operator::Sub if kids.len() == 2 => same(kids),
        Operator::Mul | Operator::Div if kids.len() == 2 => {
            let scaled = match (is_const(&kids[0]), is_const(&kids[1])) {
                (true, false) if matches!(node.operator(), Operator::Mul) => &kids[1],
                (false, true) => &kids[0],
                _ => return None,
            };
            unit_of(scaled, units).filter(|u| *u != Unit::Share)
        }
        Operator::FunctionIdentifier { identifier } if identifier == "min" || identifier == "max" => {
            let mut inner = kids.first()?;
            while matches!(inner.operator(), Operator::RootNode) && inner.children().len() == 1 {
                inner = &inner.children()[0];
            }
            match inner.operator() {
                Operator::Tuple => same(inner.children()),
                _ => unit_of(inner, units),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names<'a>(signals: &'a HashMap<String, usize>, rules: &'a HashMap<String, (usize, usize)>) -> Names<'a> {
        Names { signals, rules, data: true, states: true, what: "a condition" }
    }

    fn compile_err(text: &str) -> String {
        let mut c = Compiler::new();
        let sig = HashMap::from([("error_rate".to_string(), c.number_slot())]);
        let rules = HashMap::from([("known".to_string(), (c.boolean_slot(), c.boolean_slot()))]);
        c.compile(text, &names(&sig, &rules), Expected::Boolean).unwrap_err().join("; ")
    }

    #[test]
    fn reports_each_kind_of_mistake() {
        assert!(
            compile_err("avg_ovr(\"m\", \"5m\") > 1").contains("unknown function \"avg_ovr\" (did you mean avg_over?)")
        );
        assert!(
            compile_err("eror_rate > 1")
                .contains("unknown signal or variable \"eror_rate\" (did you mean error_rate?)")
        );
        assert!(compile_err("rate(\"m\") > 1").contains("takes 2 to 3 arguments, got 1"));
        assert!(compile_err("rate(\"m{a=~\\\"(\\\"}\", \"1m\") > 1").contains("bad regex"));
        assert!(compile_err("rate(\"m\", \"1 fortnight\") > 1").contains("bad duration"));
        assert!(compile_err("firing(\"nope\")").contains("no rule named \"nope\""));
        assert!(compile_err("error_rate >").contains("incomplete expression"));
        assert!(compile_err("error_rate + 1").contains("must be true or false"));
        assert!(compile_err("x = 1").contains("assignments"));
        assert!(compile_err("error_rate > \"high\"").contains("type error"));
        assert!(compile_err("rate(error_rate, \"1m\") > 1").contains("must be a literal"));
        assert!(compile_err("(((").contains("syntax error"));
        // Two mistakes, two messages.
        let both = compile_err("eror_rate > 1 && avg_ovr(\"m\",\"1m\") > 2");
        assert!(both.contains("eror_rate") && both.contains("avg_ovr"), "{both}");
    }

    #[test]
    fn integer_literals_become_floats_and_calls_become_slots() {
        let mut c = Compiler::new();
        let (sig, rules) = (HashMap::new(), HashMap::new());
        let n = names(&sig, &rules);
        let a = c.compile("up(\"api\") == 0", &n, Expected::Boolean).unwrap();
        let b = c.compile("up(\"api\") == 0 || 3/4 > 0.5", &n, Expected::Boolean).unwrap();
        assert_eq!(a.to_num().inputs, b.to_num().inputs, "identical calls share one slot");
        let mut slots = c.slots.clone();
        slots.set_number(a.to_num().inputs[0], Some(0.0));
        assert_eq!(a.to_cond().eval(&slots), super::super::eval::Truth::True);
        slots.set_number(a.to_num().inputs[0], Some(1.0));
        // 3/4 is 0.75 with floats (integer division would give 0).
        assert_eq!(b.to_cond().eval(&slots), super::super::eval::Truth::True);
    }

    #[test]
    fn units_follow_the_expression() {
        let mut c = Compiler::new();
        let p99 = c.number_slot();
        c.set_unit(p99, Unit::Seconds);
        let sig = HashMap::from([("p99".to_string(), p99)]);
        let rules = HashMap::new();
        let n = names(&sig, &rules);
        let mut unit = |text: &str| c.compile(text, &n, Expected::Number).unwrap().unit(&c);
        assert_eq!(unit(r#"quantile(0.99, "http_request_duration_seconds_bucket", "1m")"#), Some(Unit::Seconds));
        assert_eq!(unit(r#"ratio("e_total", "t_total", "1m")"#), Some(Unit::Share));
        assert_eq!(unit(r#"100 * ratio("e_total", "t_total", "1m")"#), None, "a percentage is no share");
        assert_eq!(unit(r#"rate("errors_total", "1m")"#), Some(Unit::Plain), "per second, not a share");
        assert_eq!(unit(r#"down_for("api")"#), Some(Unit::Seconds));
        assert_eq!(unit(r#"max_over("node_memory_ratio", "1m")"#), Some(Unit::Share));
        assert_eq!(unit("1.5 * p99"), Some(Unit::Seconds));
        assert_eq!(unit("p99 - 0.1"), Some(Unit::Seconds));
        assert_eq!(unit(r#"max(p99, down_for("api"))"#), Some(Unit::Seconds));
        assert_eq!(unit("p99 / p99"), None, "a quotient of times is no time");
        let cond = c.compile("p99 > 1.5 * p99", &n, Expected::Boolean).unwrap();
        assert_eq!(cond.comparison_left_unit(&c), Some(Unit::Seconds));
    }

    #[test]
    fn decision_questions_take_rule_states_only() {
        let mut c = Compiler::new();
        let rules = HashMap::from([("r".to_string(), (c.boolean_slot(), c.boolean_slot()))]);
        let sig = HashMap::new();
        let n = Names { signals: &sig, rules: &rules, data: false, states: true, what: "a decision question" };
        assert!(c.compile("firing(\"r\") && !pending(\"r\")", &n, Expected::Boolean).is_ok());
        let e = c.compile("rate(\"m\", \"1m\") > 1", &n, Expected::Boolean).unwrap_err().join("; ");
        assert!(e.contains("rule states only"), "{e}");
        let e = c.compile("error_rate", &n, Expected::Boolean).unwrap_err().join("; ");
        assert!(e.contains("rule states only"), "{e}");
    }
}
