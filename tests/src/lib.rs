//! Helpers shared by the cross-crate tests (the tests themselves are the `[[test]]`
//! targets of this package). The README's example is compiled and run here.

pub mod cli;
pub mod model;
pub mod vm;

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
