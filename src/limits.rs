//! Concurrency as one object (colmena's `deployment/limits.rs`): how wide each stage of a
//! run goes, decided once per command from `--jobs`, `options.parallelism` and the machine,
//! and bounded. The inventory, the lineage proofs, the executor, the lifecycle records and
//! the notification deliveries all take their widths from here, passed in; no stage keeps
//! a width of its own.

/// The most workers a run may ask for. Each worker holds a session on every token in
/// scope; tokens run out of sessions long before this (a plan asking for 10^8 once made
/// `apply` allocate 6.8 GB of session slots), and 2 cores gain nothing past a few dozen.
pub(crate) const MAX_JOBS: usize = 256;

/// Notification deliveries in flight at once: each waits on a resource's HTTP reply, not
/// on a core or a token session, so the width follows neither `--jobs` nor the CPUs.
const NOTIFY_IN_FLIGHT: usize = 8;

/// Lineage proofs side by side. Each is a dozen round trips on one token session and
/// waits on the network, not a core (issue 6), so every cluster and pair gets its own
/// thread; the bound only keeps a plan with hundreds of clusters from starting hundreds
/// of threads at once.
const LINEAGE_SIDE_BY_SIDE: usize = MAX_JOBS;

/// How wide a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `--jobs`, else the plan's, else the machine's.
    jobs: usize,
    /// The plan's, else the machine's: `--jobs` is an apply option and the inventory
    /// comes before it (so `plan` and `apply` read a token alike).
    sessions: usize,
}

impl Limits {
    /// From `--jobs` (`None` for commands without it) and the plan's
    /// `options.parallelism`, else the available CPUs; each width between 1 and
    /// [`MAX_JOBS`] (both inputs are validated against it beforehand, so the clamp only
    /// guards the machine's own count).
    pub(crate) fn new(jobs: Option<usize>, parallelism: Option<usize>) -> Limits {
        let machine = || std::thread::available_parallelism().map_or(1, |n| n.get());
        let sessions = parallelism.unwrap_or_else(machine).clamp(1, MAX_JOBS);
        Limits {
            jobs: jobs.map_or(sessions, |j| j.clamp(1, MAX_JOBS)),
            sessions,
        }
    }

    /// Worker threads of the executor, and sessions per source writing the lifecycle
    /// records after it.
    pub(crate) fn jobs(self) -> usize {
        self.jobs
    }

    /// Sessions per token reading an inventory.
    pub(crate) fn inventory(self) -> usize {
        self.sessions
    }

    /// Lineage proofs (and lineage fingerprints) run side by side.
    pub(crate) fn lineage(self) -> usize {
        LINEAGE_SIDE_BY_SIDE
    }

    /// Notification deliveries in flight at once.
    pub(crate) fn notify_in_flight(self) -> usize {
        NOTIFY_IN_FLIGHT
    }
}

/// `--jobs` as clap parses it: a number from 1 to [`MAX_JOBS`].
pub(crate) fn parse_jobs(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number of jobs from 1 to {MAX_JOBS}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_bounded() {
        assert_eq!(parse_jobs("8"), Ok(8));
        assert_eq!(parse_jobs("256"), Ok(256));
        for bad in ["0", "257", "100000000", "-1", "x"] {
            assert!(parse_jobs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn jobs_widen_the_executor_not_the_inventory() {
        let l = Limits::new(Some(16), Some(4));
        assert_eq!((l.jobs(), l.inventory()), (16, 4));
        let l = Limits::new(None, Some(4));
        assert_eq!((l.jobs(), l.inventory()), (4, 4));
        let l = Limits::new(Some(0), Some(0));
        assert_eq!((l.jobs(), l.inventory()), (1, 1), "never zero workers");
        assert!(l.lineage() >= 1 && l.notify_in_flight() >= 1);
    }
}
