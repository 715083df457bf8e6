//! The one printer (uv's `Printer`): every byte a command writes goes through it. Which
//! stream, quiet or not, colour or not, human or JSON diagnostics: decided once, here.
//! A closed stdout (`hsm-sync inventory … | head -1`) is not an error: the printer stops
//! writing and the command finishes its work and exits with its own status, never a panic.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, JSONReportHandler, SourceCode, SourceSpan};
use serde::Serialize;
use serde_json::Value;

use crate::cli::DiagnosticsFormat;

mod log;

/// Where stdout goes: the process's own, or a buffer the caller reads (the benchmark
/// runs commands in its own process).
enum Sink {
    Stdout,
    Writer(Mutex<Box<dyn Write + Send>>),
}

/// The printer of one command run.
pub(crate) struct Printer {
    diagnostics: DiagnosticsFormat,
    quiet: bool,
    /// `-v`/`-vv` lines go to stderr (see [`Printer::with_log`]).
    log: bool,
    stdout_color: bool,
    stderr_color: bool,
    out: Sink,
    closed: AtomicBool,
}

/// Colour on a stream: only on a terminal, and never with a non-empty `NO_COLOR`
/// (the convention: an empty `NO_COLOR=` does not turn colour off).
fn colour_on(terminal: bool) -> bool {
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

impl Printer {
    /// A printer on the process's stdout and stderr.
    pub(crate) fn new(diagnostics: DiagnosticsFormat, quiet: bool) -> Printer {
        Printer {
            diagnostics,
            quiet,
            log: false,
            stdout_color: colour_on(io::stdout().is_terminal()),
            stderr_color: colour_on(io::stderr().is_terminal()),
            out: Sink::Stdout,
            closed: AtomicBool::new(false),
        }
    }

    /// A printer whose stdout is `out` (stderr stays the process's).
    pub(crate) fn with_stdout(diagnostics: DiagnosticsFormat, quiet: bool, out: Box<dyn Write + Send>) -> Printer {
        Printer {
            stdout_color: false,
            out: Sink::Writer(Mutex::new(out)),
            ..Printer::new(diagnostics, quiet)
        }
    }

    /// This printer with the `-v`/`-vv` log on stderr for `verbosity` (0: none).
    pub(crate) fn with_log(self, verbosity: u8) -> Printer {
        Printer {
            log: log::install(verbosity),
            ..self
        }
    }

    /// Whether `-v` lines go to stderr: progress is then printed as lines, never bars
    /// (a log line in the middle of a bar's redraw garbles both).
    pub(crate) fn log(&self) -> bool {
        self.log
    }

    /// Whether `--quiet` is on: progress and per-job lines are left out (errors,
    /// conflicts and failures are printed all the same).
    pub(crate) fn quiet(&self) -> bool {
        self.quiet
    }

    /// Whether stdout takes colour.
    pub(crate) fn stdout_color(&self) -> bool {
        self.stdout_color
    }

    /// Whether stdout was closed by its reader.
    pub(crate) fn stdout_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Writes to stdout through `fill`. A closed pipe ends output quietly; any other
    /// error is returned.
    pub(crate) fn write_out(&self, fill: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        if self.stdout_closed() {
            return Ok(());
        }
        let result = match &self.out {
            Sink::Stdout => {
                let mut w = io::BufWriter::new(io::stdout().lock());
                fill(&mut w).and_then(|()| w.flush())
            }
            Sink::Writer(m) => {
                // Buffered as stdout is: a report rendered straight into a file costs
                // a write per token (100 ms for 2,000 plan items).
                let mut guard = m.lock().unwrap_or_else(|p| p.into_inner());
                let mut w = io::BufWriter::new(&mut *guard);
                fill(&mut w).and_then(|()| w.flush())
            }
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed.store(true, Ordering::Relaxed);
                Ok(())
            }
            r => r,
        }
    }

    /// Prints `text` on stdout as it is (the caller ends its lines).
    pub(crate) fn out(&self, text: &str) {
        // Only a closed pipe is expected here; a full disk behind a redirect is not
        // worth a panic either, and the command's exit status still says what happened.
        let _ = self.write_out(|w| w.write_all(text.as_bytes()));
    }

    /// Prints one line on stdout.
    pub(crate) fn outln(&self, line: &str) {
        let _ = self.write_out(|w| {
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")
        });
    }

    /// Prints `value` as pretty JSON on stdout, streamed.
    pub(crate) fn json<T: Serialize + ?Sized>(&self, value: &T) -> io::Result<()> {
        self.write_out(|w| {
            serde_json::to_writer_pretty(&mut *w, value)?;
            w.write_all(b"\n")
        })
    }

    /// A line on stderr that is always printed: an error, a failed job, a refusal.
    pub(crate) fn error_line(&self, line: &str) {
        let _ = writeln!(io::stderr().lock(), "{line}");
    }

    /// A status line on stderr (what was saved, where the report went), left out when quiet.
    pub(crate) fn status(&self, line: &str) {
        if !self.quiet {
            let _ = writeln!(io::stderr().lock(), "{line}");
        }
    }

    /// A warning: `warning: …` for people, or a JSON object with `"severity": "warning"`
    /// under `--diagnostics json`, like every other diagnostic.
    pub(crate) fn warn(&self, message: &str) {
        let line = match self.diagnostics {
            DiagnosticsFormat::Json => serde_json::json!({
                "message": message,
                "severity": "warning",
                "causes": [],
                "labels": [],
                "related": [],
            })
            .to_string(),
            DiagnosticsFormat::Human => format!("warning: {message}"),
        };
        let _ = writeln!(io::stderr().lock(), "{line}");
    }

    /// A miette diagnostic (error or warning) on stderr, in the chosen format.
    pub(crate) fn diagnostic(&self, d: &dyn Diagnostic) {
        let _ = writeln!(io::stderr().lock(), "{}", self.render(d));
    }

    /// Renders a diagnostic: miette's graphical report (colour only on a terminal without
    /// `NO_COLOR`), or miette's JSON for CI annotations, each label's span with its line
    /// and column added (see [`with_line_column`]).
    pub(crate) fn render(&self, d: &dyn Diagnostic) -> String {
        let mut out = String::new();
        let result = match self.diagnostics {
            DiagnosticsFormat::Json => JSONReportHandler::new()
                .render_report(&mut out, d)
                .map(|()| out = with_line_column(&out, d)),
            DiagnosticsFormat::Human => {
                let theme = if self.stderr_color {
                    GraphicalTheme::unicode()
                } else {
                    GraphicalTheme::unicode_nocolor()
                };
                GraphicalReportHandler::new_themed(theme).render_report(&mut out, d)
            }
        };
        if result.is_err() {
            out = format!("error: {d}");
        }
        out
    }
}

/// miette's JSON with a 1-based `line` and `column` (in characters, as editors count
/// them) beside `offset` and `length` in every label's `span` (issue 16: CI annotations
/// want lines, not byte offsets). Additive: every field miette writes stays. The labels
/// and related diagnostics are walked in the order miette wrote them, each span read
/// from the source miette used (its own, else its parent's). JSON that does not parse
/// is returned as it was.
fn with_line_column(json: &str, d: &dyn Diagnostic) -> String {
    let Ok(mut value) = serde_json::from_str::<Value>(json) else {
        return json.to_string();
    };
    add_line_column(&mut value, d, None);
    serde_json::to_string(&value).unwrap_or_else(|_| json.to_string())
}

fn add_line_column(value: &mut Value, d: &dyn Diagnostic, parent: Option<&dyn SourceCode>) {
    let src = d.source_code().or(parent);
    if let (Some(src), Some(labels), Some(out)) =
        (src, d.labels(), value.get_mut("labels").and_then(Value::as_array_mut))
    {
        for (label, out) in labels.zip(out.iter_mut()) {
            let Some(span) = out.get_mut("span").and_then(Value::as_object_mut) else {
                continue;
            };
            if let Some((line, column)) = line_column(src, label.offset()) {
                span.insert("line".into(), line.into());
                span.insert("column".into(), column.into());
            }
        }
    }
    if let (Some(related), Some(out)) = (d.related(), value.get_mut("related").and_then(Value::as_array_mut)) {
        for (r, out) in related.zip(out.iter_mut()) {
            add_line_column(out, r, src);
        }
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `src`, as
/// `plan::source::PlanSource::line_col` counts them. Read through `SourceCode` (the
/// printer sees only the diagnostic): one line of context before the offset gives the
/// text from a line start, or, where a source shows a window of a very long line, the
/// window's own line and column.
fn line_column(src: &dyn SourceCode, offset: usize) -> Option<(usize, usize)> {
    let contents = src.read_span(&SourceSpan::from((offset, 0)), 1, 0).ok()?;
    let start = contents.span().offset();
    let mut before = contents.data().get(..offset.checked_sub(start)?)?;
    // An offset inside a character counts from the character's start, as `line_col` does.
    if let Err(e) = std::str::from_utf8(before) {
        if e.error_len().is_none() {
            before = &before[..e.valid_up_to()];
        }
    }
    let before = String::from_utf8_lossy(before);
    let line = contents.line() + before.matches('\n').count() + 1;
    let column = match before.rfind('\n') {
        Some(i) => before[i + 1..].chars().count(),
        None => contents.column() + before.chars().count(),
    } + 1;
    Some((line, column))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away: every write is a broken pipe.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_stops_output_without_an_error() {
        let p = Printer::with_stdout(DiagnosticsFormat::Human, false, Box::new(Closed));
        p.outln("first");
        assert!(p.stdout_closed());
        assert!(p.json(&[1, 2, 3]).is_ok());
    }

    #[test]
    fn line_and_column_are_the_plan_locators() {
        let long = format!("  - label: \"{}\"  # ünïcode\n", "x".repeat(5000));
        let text = format!("version: 1\r\nclusters:\n  prïmary: {{ módule: /x.so }}\n\n{long}sync: []");
        let located = crate::plan::source::PlanSource::parse("plan.yaml", text.clone());
        let shown = crate::plan::PlanText::new("plan.yaml", text.clone());
        for offset in (0..=text.len()).filter(|o| text.is_char_boundary(*o)) {
            assert_eq!(
                line_column(&shown, offset),
                Some(located.line_col(offset)),
                "offset {offset}"
            );
        }
        // Inside a character: where the character starts.
        let inside = text.find('ï').map(|i| i + 1);
        assert_eq!(
            inside.and_then(|i| line_column(&shown, i)),
            inside.map(|i| located.line_col(i))
        );
    }
}
