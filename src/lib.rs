pub mod config;
pub mod expr;
pub mod rules;
pub mod selector;
pub mod time;
pub mod window;
