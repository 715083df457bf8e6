//! The edge error (just's `Error::code()`): every way a command fails, and the exit status
//! each one means. Stages return their own error types; commands turn them into this with
//! `?`, and only [`crate::run`] renders it. A failure after tokens were changed is never
//! "nothing changed" (CONTRACT.md §2).

use miette::Diagnostic;

use crate::exit::ExitStatus;

/// How a command failed.
#[derive(Debug)]
pub(crate) enum Error {
    /// Refused or failed before anything was changed: a bad plan, a login, lineage, a
    /// stale saved plan, a missing module, an unknown handle (exit 1).
    NothingChanged(miette::Report),
    /// Tokens were changed, then the run's record could not be written (a report or JUnit
    /// file): the summary was printed, and the exit is 3, not 1.
    AfterChanges(miette::Report),
}

impl Error {
    /// The exit status this failure means.
    pub(crate) fn exit_status(&self) -> ExitStatus {
        match self {
            Error::NothingChanged(_) => ExitStatus::Error,
            Error::AfterChanges(_) => ExitStatus::Incomplete,
        }
    }

    /// The diagnostic to show.
    pub(crate) fn diagnostic(&self) -> &dyn Diagnostic {
        match self {
            Error::NothingChanged(r) | Error::AfterChanges(r) => r.as_ref(),
        }
    }
}

impl<E> From<E> for Error
where
    E: Into<miette::Report>,
{
    fn from(e: E) -> Self {
        Error::NothingChanged(e.into())
    }
}

/// The result of a command: how it ended, or how it failed.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;
