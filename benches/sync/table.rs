//! The printed table: the legend, one row per scenario, and the comparisons between rows
//! (two targets against one, 1,000 keys against 10,000).

use testkit::provision;

use crate::child::Row;
use crate::scenarios::{Backend, Mode, Scenario};

/// Prints the run's first line, the legend and the column headers.
pub(crate) fn header(scenarios: usize) {
    println!(
        "hsm-sync sync benchmark: {} scenario(s), {} core(s), SoftHSM {}",
        scenarios,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        provision::softhsm_module().map_or("(missing)".into(), |p| p.display().to_string())
    );
    println!("keys/s = source key objects copied to every target per second (a pair is 2 objects)");
    println!("apply = the `apply` command run in-process (load, connect, inventory, diff, jobs, report); raw = wrap → unwrap → verify only; each the best of two rounds on fresh targets");
    println!("exec = apply's jobs alone (the report's timings.execute_ms: apply minus connect, inventory and diff)");
    println!("rec% = share of apply spent writing the lifecycle records (timings.notify_ms), the larger of the two rounds (the second writes over the first's records and compacts them); -rec/raw = the best apply without them, against raw");
    println!(
        "plan = the `plan --format json` command in-process (all unchanged); inv = find + 1 C_GetAttributeValue/object"
    );
    println!("p/inv+w = plan against inv plus one C_WrapKey per secret key: the least work that proves `unchanged` without CKA_UNIQUE_ID");
    println!("-file / -pg = the row with `state: file` / `state: postgres` (a throwaway local cluster); others keep state on the token");
    println!("RSS MB (+) = the process's peak during apply (plan for plan-rss), SoftHSM included, and (+) its growth");
    println!("  over the RSS just before (SoftHSM keeps every object in memory: new copies grow it too)");
    println!();
    let header = format!(
        "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>7} {:>11} {:>7}",
        "scenario",
        "keys",
        "raw k/s",
        "apply k/s",
        "a/raw",
        "exec k/s",
        "e/raw",
        "rec%",
        "-rec/raw",
        "plan s",
        "inv s",
        "p/inv",
        "p/inv+w",
        "RSS MB (+)",
        "gen s"
    );
    println!("{header}");
    println!("{}", "─".repeat(header.chars().count()));
}

/// Prints the row of scenario `s`.
pub(crate) fn print_row(s: &Scenario, r: &Row) {
    let f = |k: &str, digits: usize| r.get(k).map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: &str, b: &str| match (r.get(a), r.get(b)) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    match s.mode {
        Mode::PlanRss => println!(
            "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>7} {:>11} {:>7}   (RSS after connect, i.e. SoftHSM's own objects: {} MB)",
            s.name(),
            s.objects(),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            f("plan_s", 2),
            "-",
            "-",
            "-",
            match (r.get("plan_rss_mb"), r.get("connect_rss_mb")) {
                (Some(p), Some(c)) => format!("{p:.0} (+{:.0})", p - c),
                _ => "-".into(),
            },
            f("gen_s", 0),
            f("connect_rss_mb", 0),
        ),
        _ => println!(
            "{:<30} {:>6} {:>9} {:>9} {:>6} {:>9} {:>6} {:>5} {:>8} {:>8} {:>8} {:>6} {:>7} {:>11} {:>7}",
            s.name(),
            s.objects(),
            f("raw_kps", 0),
            f("apply_kps", 0),
            ratio("apply_kps", "raw_kps"),
            f("exec_kps", 0),
            ratio("exec_kps", "raw_kps"),
            f("rec_pct", 0),
            ratio("norec_kps", "raw_kps"),
            f("plan_s", 3),
            f("inv_s", 3),
            ratio("plan_s", "inv_s"),
            ratio("plan_s", "invw_s"),
            match (r.get("apply_rss_mb"), r.get("before_rss_mb")) {
                (Some(p), Some(b)) => format!("{p:.0} (+{:.0})", p - b),
                _ => "-".into(),
            },
            f("gen_s", 0),
        ),
    }
}

/// The targets that compare rows: two targets against one, and 1k against 10k keys.
pub(crate) fn summary(results: &[(Scenario, Row)]) {
    println!();
    println!("Two targets against one (wall time per source key, t2/t1; 1.00 = free second target):");
    for (s2, r2) in results.iter().filter(|(s, _)| s.targets == 2 && s.mode == Mode::Sync) {
        let one = results
            .iter()
            .find(|(s, _)| s.targets == 1 && s.mode == Mode::Sync && same_but(s, s2, |x| x.targets = 2));
        if let Some((_, r1)) = one {
            let t = |r: &Row, k: &str| r.get(k).map(|v| 1.0 / v);
            if let (Some(a1), Some(a2), Some(w1), Some(w2)) = (
                t(r1, "apply_kps"),
                t(r2, "apply_kps"),
                t(r1, "raw_kps"),
                t(r2, "raw_kps"),
            ) {
                println!("  {:<30} apply {:.2}   raw {:.2}", s2.name(), a2 / a1, w2 / w1);
            }
        }
    }
    // Each row's own raw loop normalises the machine's drift between rows (single rows
    // vary by ±25% here): the ratio of the rows' apply/raw, not of their apply times.
    println!("Backends against the token backend (apply time per raw time, -file or -pg / token; target ≤ 1.05):");
    for (sb, rb) in results
        .iter()
        .filter(|(s, _)| s.state != Backend::Token && s.mode == Mode::Sync)
    {
        let token = results.iter().find(|(s, _)| {
            s.state == Backend::Token && s.mode == Mode::Sync && same_but(s, sb, |x| x.state = sb.state)
        });
        if let Some((_, rt)) = token {
            let per_raw = |r: &Row| Some(r.get("apply_kps")? / r.get("raw_kps")?);
            if let (Some(t), Some(b)) = (per_raw(rt), per_raw(rb)) {
                println!("  {:<30} apply {:.2}", sb.name(), t / b);
            }
        }
    }
    println!("Linearity (time per key at 10,000 keys / at 1,000 keys; target within 0.85–1.15):");
    for (s10, r10) in results.iter().filter(|(s, _)| s.keys == 10_000 && s.mode == Mode::Sync) {
        let one = results
            .iter()
            .find(|(s, _)| s.mode == Mode::Sync && same_but(s, s10, |x| x.keys = 10_000));
        if let Some((_, r1)) = one {
            let per = |r: &Row, k: &str, n: f64| r.get(k).map(|v| v / n);
            if let (Some(a1), Some(a10)) = (r1.get("apply_kps"), r10.get("apply_kps")) {
                // The raw loop's own ratio in the same rows: how far the token itself is
                // from linear (SoftHSM's searches and object store grow with its objects).
                let raw = match (r1.get("raw_kps"), r10.get("raw_kps")) {
                    (Some(w1), Some(w10)) => format!("   raw {:.2}", w1 / w10),
                    _ => String::new(),
                };
                println!("  {:<30} apply {:.2}{raw}", s10.name(), a1 / a10);
            }
            if let (Some(p1), Some(p10)) = (per(r1, "plan_s", 1000.0), per(r10, "plan_s", 10_000.0)) {
                println!("  {:<30} plan  {:.2}", s10.name(), p10 / p1);
            }
        }
    }
}

/// Whether `a`, changed by `f`, is `b`.
fn same_but(a: &Scenario, b: &Scenario, f: impl Fn(&mut Scenario)) -> bool {
    let mut a = a.clone();
    f(&mut a);
    a.name() == b.name()
}
