//! SIGINT and SIGTERM during `apply` (CONTRACT.md §2). CI cancels a job with SIGTERM and
//! an operator presses Ctrl-C far more often than anyone sends `kill -9`, so the first
//! signal is a request: no new job starts, the jobs in flight finish their PKCS#11 calls
//! and are verified, the journal is cleared, the report is written with the rest
//! `skipped` and `"interrupted": true`, the summary printed, and the exit is 130 or 143.
//! A second signal ends the process at once.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Whether a stop was requested, and by which signal.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    requested: Arc<AtomicBool>,
    signal: Arc<AtomicUsize>,
}

impl Stop {
    /// The signal that asked the run to stop, if one did.
    pub(crate) fn signal(&self) -> Option<i32> {
        if !self.requested.load(Ordering::SeqCst) {
            return None;
        }
        i32::try_from(self.signal.load(Ordering::SeqCst)).ok()
    }

    /// Asks for a stop, as a signal would (unit tests).
    #[cfg(test)]
    pub(crate) fn request(&self, signal: i32) {
        self.signal.store(signal as usize, Ordering::SeqCst);
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether the run should start no new job.
    pub(crate) fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// The process's stop flags, with the handlers installed on first use. Installed once
/// per process: the handlers are global, and a process may run several commands (the
/// benchmark, the demo).
pub(crate) fn install() -> io::Result<&'static Stop> {
    static STOP: OnceLock<Stop> = OnceLock::new();
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let stop = STOP.get_or_init(Stop::default);
    let installed = INSTALLED.get_or_init(|| {
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the shutdown check runs before the flag is set, so only a
            // second signal (the flag already true) exits at once, with 128 + signal.
            signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&stop.requested))
                .and_then(|_| signal_hook::flag::register_usize(sig, Arc::clone(&stop.signal), sig as usize))
                .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&stop.requested)))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    match installed {
        Ok(()) => Ok(stop),
        Err(e) => Err(io::Error::other(e.clone())),
    }
}

/// A stop that no signal can set: for callers that run jobs without handlers (tests).
pub(crate) fn never() -> &'static Stop {
    static NEVER: OnceLock<Stop> = OnceLock::new();
    NEVER.get_or_init(Stop::default)
}
