//! Progress of `apply`. Workers only send events to a [`Reporter`]; one implementation
//! hands them to a single drawing thread that owns the indicatif bars (one per target
//! plus an overall line), the other stays silent.
//! Bars are drawn only on a terminal and never in quiet mode.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives job events from the executor's workers.
pub(crate) trait Reporter: Sync {
    /// Jobs to come, per target.
    fn begin(&self, per_target: &[(String, u64)]);
    /// One job on `target` finished.
    fn job_done(&self, target: &str, ok: bool);
    /// All jobs finished.
    fn end(&self);
}

/// Draws nothing (not a terminal, `--quiet`, JSON output).
pub(crate) struct Silent;

impl Reporter for Silent {
    fn begin(&self, _: &[(String, u64)]) {}
    fn job_done(&self, _: &str, _: bool) {}
    fn end(&self) {}
}

/// What a worker tells the drawing thread.
enum Event {
    Begin(Vec<(String, u64)>),
    Done { target: String, ok: bool },
    End,
}

/// A reporter whose events go over a channel to one thread that owns the output (uv's
/// reporters; STYLE.md habit 9): no bar or line is drawn from a rayon worker, and a
/// slow terminal never holds a job up.
pub(crate) struct Drawer {
    tx: Mutex<Option<Sender<Event>>>,
    drawer: Mutex<Option<JoinHandle<()>>>,
}

impl Drawer {
    fn spawn(name: &str, draw: impl FnOnce(Receiver<Event>) + Send + 'static) -> Drawer {
        let (tx, rx) = std::sync::mpsc::channel();
        let drawer = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || draw(rx))
            .ok();
        Drawer {
            tx: Mutex::new(drawer.as_ref().map(|_| tx)),
            drawer: Mutex::new(drawer),
        }
    }

    /// indicatif bars on stderr, one per target plus an overall line.
    pub(crate) fn bars() -> Drawer {
        Drawer::spawn("hsm-sync-progress", draw)
    }

    /// Off a terminal, a line on stderr every `every` (done/total, keys/s, eta): a CI job
    /// that prints nothing for minutes is killed for silence (issue 16).
    pub(crate) fn ticker(every: Duration) -> Drawer {
        Drawer::spawn("hsm-sync-ticker", move |rx| tick(rx, every))
    }

    fn send(&self, e: Event) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            // A drawer that is gone only loses the picture, never a job.
            let _ = tx.send(e);
        }
    }
}

impl Reporter for Drawer {
    fn begin(&self, per_target: &[(String, u64)]) {
        self.send(Event::Begin(per_target.to_vec()));
    }

    fn job_done(&self, target: &str, ok: bool) {
        self.send(Event::Done {
            target: target.to_string(),
            ok,
        });
    }

    fn end(&self) {
        self.send(Event::End);
        // Close the channel and wait for the last frame, so the summary prints below it.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.drawer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The drawing thread: the only code that touches the bars.
fn draw(rx: Receiver<Event>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let overall = multi.add(ProgressBar::new(0));
    overall.set_style(
        ProgressStyle::with_template("{prefix:>14} {pos}/{len} jobs, {rate}, eta {eta} {msg}")
            .map(with_rate)
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.set_prefix("overall");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    for event in rx {
        match event {
            Event::Begin(per_target) => {
                let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {rate} eta {eta}")
                    .map(with_rate)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> ");
                let mut total = 0;
                for (t, n) in per_target {
                    let bar = multi.insert_before(&overall, ProgressBar::new(n));
                    bar.set_style(style.clone());
                    bar.set_prefix(t.clone());
                    bars.insert(t, bar);
                    total += n;
                }
                overall.set_length(total);
            }
            Event::Done { target, ok } => {
                if let Some(b) = bars.get(&target) {
                    b.inc(1);
                }
                overall.inc(1);
                if !ok {
                    overall.set_message("(failures: see the report)");
                }
            }
            Event::End => break,
        }
    }
    for b in bars.values() {
        b.finish();
    }
    overall.finish();
}

/// Keys per second as a whole number: indicatif's `{per_sec}` prints four decimals.
fn with_rate(style: ProgressStyle) -> ProgressStyle {
    style.with_key("rate", |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        // A failed write to the bar's buffer only loses this frame's rate.
        let _ = write!(w, "{:.0}/s", s.per_sec());
    })
}

/// The ticking thread: counts events and prints a line each time `every` passes.
fn tick(rx: Receiver<Event>, every: Duration) {
    let start = Instant::now();
    let (mut total, mut done, mut failed) = (0u64, 0u64, 0u64);
    let mut next = start + every;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Event::Begin(per_target)) => total = per_target.iter().map(|(_, n)| n).sum(),
            Ok(Event::Done { ok, .. }) => {
                done += 1;
                failed += u64::from(!ok);
            }
            Ok(Event::End) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let secs = start.elapsed().as_secs_f64().max(0.001);
                let rate = done as f64 / secs;
                let eta = if rate > 0.0 {
                    format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                let failures = if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                };
                let _ = writeln!(
                    std::io::stderr().lock(),
                    "progress: {done}/{total} jobs, {rate:.0} keys/s, eta {eta}{failures}"
                );
                next += every;
            }
        }
    }
}

/// Bars when stderr is a terminal, a progress line every `every` off one or when `-v`
/// lines share stderr (`log`: a line in the middle of a bar's redraw garbles both), and
/// silence when quiet.
pub(crate) fn for_output(quiet: bool, log: bool, every: Duration) -> Box<dyn Reporter> {
    if quiet {
        Box::new(Silent)
    } else if std::io::stderr().is_terminal() && !log {
        Box::new(Drawer::bars())
    } else {
        Box::new(Drawer::ticker(every))
    }
}
