//! Concurrency as one object (colmena's `deployment/limits.rs`): how many workers a run
//! uses, decided once from `--jobs`, `options.parallelism` and the machine, and bounded.
//! The inventory, the executor and the lifecycle records all take their sizes from here.

/// The most workers a run may ask for. Each worker holds a session on every token in
/// scope; tokens run out of sessions long before this (a plan asking for 10^8 once made
/// `apply` allocate 6.8 GB of session slots), and 2 cores gain nothing past a few dozen.
pub(crate) const MAX_JOBS: usize = 256;

/// How wide a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    jobs: usize,
}

impl Limits {
    /// `--jobs`, else the plan's `options.parallelism`, else the available CPUs; always
    /// between 1 and [`MAX_JOBS`] (both inputs are validated against it beforehand, so
    /// the clamp only guards the machine's own count).
    pub(crate) fn new(jobs: Option<usize>, parallelism: Option<usize>) -> Limits {
        let jobs = jobs
            .or(parallelism)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Limits {
            jobs: jobs.clamp(1, MAX_JOBS),
        }
    }

    /// Worker threads of the executor, and sessions per token for the inventory and the
    /// lifecycle records.
    pub(crate) fn jobs(self) -> usize {
        self.jobs
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
}
