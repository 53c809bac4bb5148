//! The contract every probe step keeps (blackbox_exporter's "one probe
//! step, one signature"): a step returns a [`Step`], its verdict as a
//! [`Check`] and the figures it measured, both built in the step's own file
//! (`transport::step`, `register::step`, `echo::step`,
//! `user_call::step`). The engine
//! (`probe::run`) only sequences the steps and fills the report.

use serde::Serialize;

/// The reason of a check skipped because an earlier one failed.
pub const NOT_ATTEMPTED: &str = "NotAttempted";

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// Passed.
    pub ok: bool,
    /// Machine reason (the condition reason).
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl Check {
    /// A check skipped because an earlier step failed (`why` says which).
    pub fn not_attempted(why: &str) -> Self {
        Self {
            ok: false,
            reason: NOT_ATTEMPTED.into(),
            message: format!("not attempted: {why}"),
        }
    }
}

/// What one step found: the verdict and the step's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<F> {
    /// The verdict.
    pub check: Check,
    /// What the step measured.
    pub figures: F,
}
