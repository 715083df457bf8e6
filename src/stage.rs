//! Stage timings for `-v` (issue 16): one event per stage of the pipeline (connect,
//! lock, login, lineage, inventory, diff, execute, record/notify, report) with how long
//! it took, on the [`TARGET`] target. `output::log` shows them on stderr; without `-v`
//! no subscriber wants them and nothing is printed.

use std::time::Instant;

/// The tracing target of stage events.
pub(crate) const TARGET: &str = "stage";

/// Runs the stage `name` and logs its duration, failed or not (the time a failed login
/// took is worth seeing too).
pub(crate) fn timed<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    let _stage = start(name);
    f()
}

/// A stage under way: its duration is logged when this drops, however the stage ends
/// (an early `?` return included).
pub(crate) struct Stage {
    name: &'static str,
    since: Instant,
}

/// Starts timing the stage `name` (`let _stage = stage::start("login");`).
pub(crate) fn start(name: &'static str) -> Stage {
    Stage {
        name,
        since: Instant::now(),
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        done(self.name, self.since);
    }
}

/// Logs that the stage `name`, started at `since`, is done.
pub(crate) fn done(name: &'static str, since: Instant) {
    let ms = since.elapsed().as_secs_f64() * 1e3;
    tracing::debug!(target: TARGET, elapsed = %format_args!("{ms:.3}ms"), "{name}");
}
