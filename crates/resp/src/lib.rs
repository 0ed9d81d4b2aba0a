//! placeholder
#![forbid(unsafe_code)]
pub mod double;
pub mod number;
