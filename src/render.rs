//! Three renderings of one diff: text for terminals, Markdown for pull requests (JSON is
//! the report of [`crate::report`]); and the console lines of a notification stage.

use std::fmt::Write;

use crate::diff::{Action, Diff, DiffItem};
use crate::domain::reason::describe;
use crate::output::Printer;
use crate::report::{DeliveryStatus, NotificationRecord};

fn key_text(it: &DiffItem) -> String {
    let k = &it.key;
    let mut s = String::new();
    if let Some(c) = k.class {
        let _ = write!(s, "{} ", serde_plain(&c));
    }
    if let Some(t) = k.key_type {
        let _ = write!(s, "{} ", serde_plain(&t));
    }
    if !k.id.is_empty() {
        let _ = write!(s, "id={} ", k.id);
    }
    if !k.label.is_empty() {
        let _ = write!(s, "label={:?} ", k.label);
    }
    if let Some(h) = k.handle {
        let _ = write!(s, "handle={h} ");
    }
    s.trim_end().to_string()
}

/// `code: help` for every reason of a blocked or conflicting item that has advice, so a
/// blocked key shows every fix at once (issue 16 item 7).
pub(crate) fn helps(it: &DiffItem) -> Vec<String> {
    reason_helps(it.action, &it.reasons)
}

/// [`helps`] of an action and its reasons (a report's job has both).
pub(crate) fn reason_helps(action: Action, reasons: &[crate::domain::reason::Reason]) -> Vec<String> {
    if !matches!(action, Action::Blocked | Action::Conflict) {
        return Vec::new();
    }
    reasons
        .iter()
        .filter_map(|r| r.help().map(|h| format!("{r}: {h}")))
        .collect()
}

/// The kebab-case name serde gives a unit enum variant.
pub(crate) fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|j| j.as_str().map(String::from))
        .unwrap_or_default()
}

/// The one-line totals.
pub(crate) fn totals(diff: &Diff) -> String {
    format!(
        "{} to create, {} to update, {} to delete; {} unchanged, {} conflict, {} blocked",
        diff.count(Action::Create),
        diff.count(Action::Update),
        diff.count(Action::Delete),
        diff.count(Action::Unchanged),
        diff.count(Action::Conflict),
        diff.count(Action::Blocked)
    )
}

/// The text diff: one section per (sync, target), one line per key.
pub(crate) fn text(diff: &Diff, color: bool) -> String {
    let mut out = String::new();
    let mut current = None;
    for it in &diff.items {
        let head = (&*it.sync, &*it.target);
        if current != Some(head) {
            let _ = writeln!(out, "\nsync `{}`: {} → {}", it.sync, it.source, it.target);
            current = Some(head);
        }
        let (pre, post) = if color {
            let c = match it.action {
                Action::Create => "\x1b[32m",
                Action::Update => "\x1b[33m",
                Action::Delete => "\x1b[31m",
                Action::Unchanged => "\x1b[2m",
                Action::Conflict | Action::Blocked => "\x1b[1;35m",
            };
            (c, "\x1b[0m")
        } else {
            ("", "")
        };
        let reason = match describe(it.reason, it.detail.as_deref()) {
            r if r.is_empty() => r,
            r => format!("  ({r})"),
        };
        let _ = writeln!(
            out,
            "  {pre}{} {:<9}{post} {}{reason}",
            it.action.marker(),
            it.action.name(),
            key_text(it)
        );
        for h in helps(it) {
            let _ = writeln!(out, "      help: {h}");
        }
    }
    for w in &diff.notes {
        let _ = writeln!(out, "\nwarning: {}", w.message);
    }
    let _ = writeln!(out, "\nPlan: {}.", totals(diff));
    out
}

/// Markdown: a summary table, then one section per (sync, target).
pub(crate) fn markdown(diff: &Diff, plan: &str) -> String {
    let mut out = format!("## hsm-sync plan: `{plan}`\n\n| action | count |\n|---|---:|\n");
    for a in Action::ALL {
        let _ = writeln!(out, "| {} {} | {} |", a.marker(), a.name(), diff.count(a));
    }
    let mut current = None;
    for it in &diff.items {
        let head = (&*it.sync, &*it.target);
        if current != Some(head) {
            let _ = write!(
                out,
                "\n### `{}`: {} → {}\n\n| | action | key | reason |\n|---|---|---|---|\n",
                it.sync, it.source, it.target
            );
            current = Some(head);
        }
        let mut reason = describe(it.reason, it.detail.as_deref());
        for h in helps(it) {
            let _ = write!(reason, "<br>help: {h}");
        }
        let reason = reason.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            it.action.marker(),
            it.action.name(),
            key_text(it).replace('|', "\\|"),
            reason
        );
    }
    for w in &diff.notes {
        let _ = writeln!(out, "\n> warning: {} (`{}`)", w.message, w.code);
    }
    out
}

/// Prints a notification stage's warnings and failed deliveries on stderr and a one-line
/// count on stdout (after the run: workers never draw).
pub(crate) fn print_notifications(p: &Printer, records: &[NotificationRecord], warnings: &[String]) {
    for w in warnings {
        p.warn(w);
    }
    for r in records.iter().filter(|r| r.status == DeliveryStatus::Failed) {
        p.error_line(&format!(
            "notification failed: sync `{}` resource `{}` key {} {}: {}",
            r.sync,
            r.resource,
            r.key_id,
            r.event.name(),
            r.error.as_deref().unwrap_or("unknown error")
        ));
    }
    if !records.is_empty() {
        let sent = records.iter().filter(|r| r.status == DeliveryStatus::Sent).count();
        p.outln(&format!("Notifications: {sent} sent, {} failed", records.len() - sent));
    }
}
