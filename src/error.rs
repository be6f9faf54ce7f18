//! The user-facing error: a message, hints that say what to do, and the exit code it maps to.
//!
//! Library code returns `anyhow::Error` chains at the edges; wherever the cause is something the
//! operator must fix, the chain holds a [`Failure`] so the CLI can print `hint:` lines and choose
//! the exit code without string matching.

use std::fmt;

use crate::exit_code;

/// An error the operator can act on. Rendered by the CLI as `error: {message}` followed by the
/// `caused by:` chain and one `hint: ...` line per hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
    pub hints: Vec<String>,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            hints: Vec::new(),
        }
    }

    /// A configuration or command-line error ([`exit_code::USAGE`]).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(exit_code::USAGE, message)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The first [`Failure`] in an error chain, if any.
pub fn find_failure(err: &anyhow::Error) -> Option<&Failure> {
    err.chain().find_map(|e| e.downcast_ref::<Failure>())
}
