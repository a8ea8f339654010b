//! The rule language: evalexpr expressions plus rollwatch's window functions, compiled once at
//! load ([`compile`]) and evaluated three-valued each tick ([`eval`]); [`functions`] holds the
//! function table and argument checking, [`judge`] the baseline judge's statistics and
//! [`compare`] what it reads, [`slo`] the arithmetic of SLOs (budgets, the burn-rate table, how
//! their counters are kept).

pub mod compare;
pub mod compile;
pub mod eval;
pub mod functions;
pub mod judge;
pub mod slo;

pub use compare::Baseline;
pub use compile::{Cmp, Compiled, Compiler, Expected, Names};
pub use eval::{Cond, Num, Slots, Truth, Value};
pub use functions::{Call, CallSpec, Offset, Scope};
pub use judge::Verdict;
