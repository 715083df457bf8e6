//! The one mapping from outcomes to process exit codes (CONTRACT.md §2).

use std::process::ExitCode;

/// How a command ended, as a pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success; for `plan --detailed-exitcode`, no changes pending.
    Success,
    /// 1: an error before anything changed (bad plan, login, lineage, stale saved plan, missing module).
    Error,
    /// 2: `plan --detailed-exitcode` found changes pending.
    ChangesPending,
    /// 3: `apply`/`sync-key` finished, but a job or notification failed, or conflicts or
    /// blocked keys remain.
    Incomplete,
    /// 4: `notify` refused because a selected key is within its cooldown (nothing sent).
    Cooldown,
    /// 128 + the signal (130 SIGINT, 143 SIGTERM): stopped by a signal, the jobs in
    /// flight finished and verified, the rest skipped.
    Interrupted(i32),
}

impl ExitStatus {
    /// The numeric code of the contract.
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Error => 1,
            ExitStatus::ChangesPending => 2,
            ExitStatus::Incomplete => 3,
            ExitStatus::Cooldown => 4,
            ExitStatus::Interrupted(sig) => u8::try_from(128 + sig.clamp(1, 127)).unwrap_or(u8::MAX),
        }
    }
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(status.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_contract() {
        let codes: Vec<u8> = [
            ExitStatus::Success,
            ExitStatus::Error,
            ExitStatus::ChangesPending,
            ExitStatus::Incomplete,
            ExitStatus::Cooldown,
        ]
        .iter()
        .map(|s| s.code())
        .collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4]);
        assert_eq!(ExitStatus::Interrupted(2).code(), 130);
        assert_eq!(ExitStatus::Interrupted(15).code(), 143);
    }
}
