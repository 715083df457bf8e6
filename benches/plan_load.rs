//! Plan loading at scale (issue 3): a 5 MB plan with 50,000 keys must load and validate in
//! under a second. Prints the time next to a baseline, plain `serde_yaml::from_str` into a
//! `serde_yaml::Value` of the same text, measured in the same run. Not a timed test: run it
//! with `cargo bench --bench plan_load` and read the figures.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A plan of `keys` selectors (ids, exact labels, globs, handles, some absent with their
/// own targets) over three clusters, padded with notify resources to about `bytes`.
fn big_plan(keys: usize, bytes: usize) -> String {
    let mut p = String::with_capacity(bytes + 4096);
    p.push_str(
        "# yaml-language-server: $schema=../schemas/plan.schema.json
version: 1
clusters:
  primary:
    module: /usr/lib/softhsm/libsofthsm2.so
    token: { label: primary-use1 }
    credentials: { role: crypto-user, user: app-cu, pin: { env: PRIMARY_PIN } }
  dr-euw1:
    module: /usr/lib/softhsm/libsofthsm2.so
    token: { label: dr-euw1 }
    cloned_from: primary
    credentials: { role: crypto-user, user: app-cu, pin: { env: DR_PIN } }
  dr-apse2:
    module: /usr/lib/softhsm/libsofthsm2.so
    token: { label: dr-apse2 }
    cloned_from: dr-euw1
    credentials: { role: crypto-user, user: app-cu, pin: { env: DR2_PIN } }
sync:
",
    );
    let entries = 50;
    let per = keys / entries;
    for e in 0..entries {
        let _ = write!(
            p,
            "  - name: entry-{e:03}\n    source: primary\n    targets: [dr-euw1, dr-apse2]\n    keys:\n"
        );
        for k in 0..per {
            let n = e * per + k;
            let _ = match n % 5 {
                0 => writeln!(p, "      - id: \"{:016x}{:016x}\"", n as u64 * 7919, n),
                1 => writeln!(
                    p,
                    "      - label: \"payments-{n:08}-primary-signing-key-rotation-2026\""
                ),
                2 => writeln!(p, "      - label: \"tenant-{n:06}-*\""),
                3 => writeln!(p, "      - handle: {}", 100_000 + n),
                _ => writeln!(
                    p,
                    "      - label: \"retired-{n:08}-legacy-key\"\n        state: absent\n        targets: [dr-euw1]"
                ),
            };
        }
        let _ = writeln!(p, "    notify:");
        let _ = writeln!(
            p,
            "      - name: object-storage\n        url: http://127.0.0.1:8080/key-events/{e}\n        events: [synced, deleted]"
        );
    }
    p.push_str("options:\n  parallelism: 8\n  notify_cooldown: 1h\n");
    println!(
        "plan content before padding: {:.2} MiB",
        p.len() as f64 / (1024.0 * 1024.0)
    );
    // Pad with comments (operators annotate plans) up to the target size.
    while p.len() < bytes {
        p.push_str("# an operator's note about why these keys are kept in step, kept in the plan for review\n");
    }
    p
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    let text = big_plan(50_000, 5 * 1024 * 1024);
    let runs = 3;
    let baseline = best_of(runs, || serde_yaml::from_str::<serde_yaml::Value>(&text).unwrap());
    let load = best_of(runs, || {
        let loaded = hsm_sync::plan::validate::validate(Path::new("bench/plan.yaml"), "plan.yaml", text.clone())
            .unwrap_or_else(|e| panic!("the generated plan is valid: {e:?}"));
        assert_eq!(
            loaded.plan.syncs.iter().map(|s| s.selectors.len()).sum::<usize>(),
            50_000
        );
        loaded
    });
    let mb = text.len() as f64 / (1024.0 * 1024.0);
    println!("plan: {mb:.2} MiB, 50000 keys, best of {runs}");
    println!(
        "baseline serde_yaml::from_str -> Value: {:>8.1} ms",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "hsm-sync load + validate:               {:>8.1} ms",
        load.as_secs_f64() * 1e3
    );
    println!(
        "ratio: {:.2}x the baseline",
        load.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "budget 1 s: {}",
        if load < Duration::from_secs(1) { "met" } else { "MISSED" }
    );
}
