//! Progress of `apply`. Workers only send events to a [`Reporter`]; one implementation
//! draws indicatif bars (one per target plus an overall line), the other stays silent.
//! Bars are drawn only on a terminal and never in quiet mode.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives job events from the executor's workers.
pub trait Reporter: Sync {
    /// Jobs to come, per target.
    fn begin(&self, per_target: &[(String, u64)]);
    /// One job on `target` finished.
    fn job_done(&self, target: &str, ok: bool);
    /// All jobs finished.
    fn end(&self);
}

/// Draws nothing (not a terminal, `--quiet`, JSON output).
pub struct Silent;

impl Reporter for Silent {
    fn begin(&self, _: &[(String, u64)]) {}
    fn job_done(&self, _: &str, _: bool) {}
    fn end(&self) {}
}

/// indicatif bars on stderr.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    per_target: std::sync::Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Bars on stderr.
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>14} {pos}/{len} jobs, {rate}, eta {eta} {msg}")
                .map(with_rate)
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        overall.set_prefix("overall");
        Bars {
            multi,
            overall,
            per_target: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Reporter for Bars {
    fn begin(&self, per_target: &[(String, u64)]) {
        let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {rate} eta {eta}")
            .map(with_rate)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let mut map = self.per_target.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0;
        for (t, n) in per_target {
            let bar = self.multi.insert_before(&self.overall, ProgressBar::new(*n));
            bar.set_style(style.clone());
            bar.set_prefix(t.clone());
            map.insert(t.clone(), bar);
            total += n;
        }
        self.overall.set_length(total);
    }

    fn job_done(&self, target: &str, ok: bool) {
        if let Some(b) = self.per_target.lock().unwrap_or_else(|p| p.into_inner()).get(target) {
            b.inc(1);
        }
        self.overall.inc(1);
        if !ok {
            self.overall.set_message("(failures: see the report)");
        }
    }

    fn end(&self) {
        for b in self.per_target.lock().unwrap_or_else(|p| p.into_inner()).values() {
            b.finish();
        }
        self.overall.finish();
    }
}

/// Keys per second as a whole number: indicatif's `{per_sec}` prints four decimals.
fn with_rate(style: ProgressStyle) -> ProgressStyle {
    style.with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        // A failed write to the bar's buffer only loses this frame's rate.
        let _ = write!(w, "{:.0}/s", s.per_sec());
    })
}

/// Bars when stderr is a terminal and output is not quiet, else silence.
pub fn for_terminal(quiet: bool) -> Box<dyn Reporter> {
    if !quiet && std::io::stderr().is_terminal() {
        Box::new(Bars::new())
    } else {
        Box::new(Silent)
    }
}
