//! Evaluation of compiled expressions, with *no data* made explicit.
//!
//! Every input an expression reads (a window function's result, a signal, a rule's state) lives
//! in a numbered slot of [`Slots`], which is the evalexpr [`Context`]. A window function with no
//! data leaves its slot `Empty`. evalexpr on its own would answer `Empty == 0` with `false` and
//! fail open, so conditions are evaluated three-valued: the boolean skeleton (`&&`, `||`, `!`)
//! in Kleene logic here, and each comparison leaf by evalexpr only when none of its inputs is
//! `Empty` — otherwise the leaf is [`Truth::Unknown`]. `true || unknown` is true; `x && unknown`
//! is unknown unless `x` is false.

use std::collections::HashMap;

use evalexpr::error::EvalexprResultValue;
use evalexpr::{Context, DefaultNumericTypes, EvalexprError, EvalexprResult, Node};

/// The value type expressions compute with.
pub type Value = evalexpr::Value<DefaultNumericTypes>;

/// The inputs of one tick, by slot.
#[derive(Debug, Clone, Default)]
pub struct Slots {
    values: Vec<Value>,
    index: HashMap<String, usize>,
}

impl Slots {
    /// The identifier a compiled tree uses to read slot `i`.
    pub fn identifier(i: usize) -> String {
        format!("__slot{i}")
    }

    /// Adds a slot holding `initial`, returning its number.
    pub fn add(&mut self, initial: Value) -> usize {
        let i = self.values.len();
        self.values.push(initial);
        self.index.insert(Slots::identifier(i), i);
        i
    }

    pub fn set(&mut self, slot: usize, value: Value) {
        self.values[slot] = value;
    }

    pub fn set_number(&mut self, slot: usize, value: Option<f64>) {
        self.values[slot] = match value {
            Some(v) if !v.is_nan() => Value::Float(v),
            _ => Value::Empty,
        };
    }

    pub fn get(&self, slot: usize) -> &Value {
        &self.values[slot]
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Context for Slots {
    type NumericTypes = DefaultNumericTypes;

    fn get_value(&self, identifier: &str) -> Option<&Value> {
        self.index.get(identifier).map(|&i| &self.values[i])
    }

    fn call_function(&self, identifier: &str, _argument: &Value) -> EvalexprResultValue {
        Err(EvalexprError::FunctionIdentifierNotFound(identifier.to_string()))
    }

    fn are_builtin_functions_disabled(&self) -> bool {
        false
    }

    fn set_builtin_functions_disabled(&mut self, _disabled: bool) -> EvalexprResult<()> {
        Err(EvalexprError::CustomMessage("builtin functions are always on".into()))
    }
}

/// A three-valued truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// A numeric expression tree with the slots it reads.
#[derive(Debug, Clone)]
pub struct Num {
    pub node: Node,
    /// Slots read anywhere in `node`; if one is `Empty` the result is no data.
    pub inputs: Vec<usize>,
}

impl Num {
    /// The value, or `None` for no data (an input missing, NaN, or an evaluation error).
    pub fn eval(&self, slots: &Slots) -> Option<f64> {
        if self.inputs.iter().any(|&i| slots.get(i).is_empty()) {
            return None;
        }
        match self.node.eval_with_context(slots) {
            Ok(Value::Float(v)) if !v.is_nan() => Some(v),
            Ok(Value::Int(v)) => Some(v as f64),
            _ => None,
        }
    }
}

/// A boolean expression: Kleene connectives over evalexpr leaves.
#[derive(Debug, Clone)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    /// A comparison or any other boolean-valued subtree, evaluated by evalexpr.
    Leaf(Num),
}

impl Cond {
    pub fn eval(&self, slots: &Slots) -> Truth {
        match self {
            Cond::And(a, b) => match (a.eval(slots), b.eval(slots)) {
                (Truth::False, _) | (_, Truth::False) => Truth::False,
                (Truth::True, Truth::True) => Truth::True,
                _ => Truth::Unknown,
            },
            Cond::Or(a, b) => match (a.eval(slots), b.eval(slots)) {
                (Truth::True, _) | (_, Truth::True) => Truth::True,
                (Truth::False, Truth::False) => Truth::False,
                _ => Truth::Unknown,
            },
            Cond::Not(a) => a.eval(slots).not(),
            Cond::Leaf(leaf) => {
                if leaf.inputs.iter().any(|&i| slots.get(i).is_empty()) {
                    return Truth::Unknown;
                }
                match leaf.node.eval_with_context(slots) {
                    Ok(Value::Boolean(true)) => Truth::True,
                    Ok(Value::Boolean(false)) => Truth::False,
                    _ => Truth::Unknown,
                }
            }
        }
    }

    /// Every slot the condition reads.
    pub fn inputs(&self) -> Vec<usize> {
        let mut out = Vec::new();
        self.collect_inputs(&mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    fn collect_inputs(&self, out: &mut Vec<usize>) {
        match self {
            Cond::And(a, b) | Cond::Or(a, b) => {
                a.collect_inputs(out);
                b.collect_inputs(out);
            }
            Cond::Not(a) => a.collect_inputs(out),
            Cond::Leaf(leaf) => out.extend(&leaf.inputs),
        }
    }
}
