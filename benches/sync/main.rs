//! The sync benchmark (issue 6): hsm-sync against the PKCS#11 limit, on fresh SoftHSM
//! tokens, in one run.
//!
//! ```sh
//! cargo bench --bench sync                 # every scenario (~10 minutes)
//! cargo bench --bench sync -- --quick      # a one-minute subset
//! cargo bench --bench sync -- --only aes-1000 --threads 2 --no-rss
//! BENCH_TIMINGS=1 cargo bench --bench sync -- --only lat1ms   # + each report's timings
//! ```
//!
//! Each scenario runs in a child process (this binary re-executed with `--child`): SoftHSM
//! reads `SOFTHSM2_CONF` once per process, and a fresh process gives a fresh
//! `C_Initialize` and a clean peak-RSS reading. In a child, on one token directory:
//!
//! 1. provisioning (not timed): a source token with the keys, empty targets `h1..` for
//!    hsm-sync and `r1..` for the raw loop, one domain key on all;
//! 2. **raw**: a minimal cryptoki loop on `threads` workers, doing only wrap (one
//!    `C_WrapKey` into a buffer sized in advance) → `C_UnwrapKey` on every target →
//!    verify (wrap the copy, compare); public halves of pairs: read, `C_CreateObject`,
//!    read back and compare. It knows its keys in advance (no inventory);
//! 3. **apply**: the `apply` command itself, run in this process through
//!    [`hsm_sync::run`] (load, connect with lineage proofs, inventory, diff, journals,
//!    jobs, lifecycle records, report) with the same thread count;
//! 4. **plan**: the `plan --format json` command, in-process the same way (every key now
//!    `unchanged`) against a **raw inventory**: per token, find all objects, then one
//!    `C_GetAttributeValue` per object for the same attributes, buffers sized in advance,
//!    tokens one after the other. Best of two runs each.
//!
//! keys/s counts source key objects (a pair is two) copied to every target per second.
//!
//! The files: `scenarios.rs` (what is measured), `child.rs` (the child-process protocol
//! and what a child runs), `baseline.rs` (the raw cryptoki loop and inventory, reading
//! hsm-sync's own attribute table), `table.rs` (the printed table).

mod baseline;
mod child;
mod scenarios;
mod table;

use scenarios::{scenarios, Mode, Opts, Scenario};

/// The label of the domain key on every bench token.
const DOMAIN: &str = "hsm-sync-domain";

/// The user PIN of bench token `t` (also in `DIR/<t>.pin`).
fn pin(t: &str) -> String {
    format!("{t}-user-pin-0000")
}

/// The orchestrator: every selected scenario in a child of its own, one row each, then
/// the comparisons.
fn orchestrate(o: Opts) {
    std::env::set_var("HSM_SYNC_BENCH_RUN", std::process::id().to_string());
    let list = scenarios(&o);
    let shim = list.iter().any(|s| s.latency_us > 0).then(child::shim);
    if list.iter().any(|s| s.make == scenarios::Make::Kryoptic) {
        // Built once, in release mode, for every child (they inherit the variable).
        std::env::set_var("HSM_SYNC_BENCH_KRYOPTIC", testkit::build::kryoptic_built(true));
    }
    table::header(list.len());
    let mut results: Vec<(Scenario, child::Row)> = Vec::new();
    for s in list {
        let row = match s.mode {
            Mode::PlanRss => {
                let mut gen = s.clone();
                gen.mode = Mode::Gen;
                let g = child::run_child(&gen, None, true);
                let r = g.and_then(|g| {
                    let mut r = child::run_child(&s, None, o.keep)?;
                    r.values.insert("gen_s".into(), g.get("gen_s").unwrap_or(0.0));
                    Some(r)
                });
                let _ = std::fs::remove_dir_all(s.dir());
                r
            }
            _ => child::run_child(&s, shim.as_deref(), o.keep),
        };
        let Some(row) = row else { continue };
        table::print_row(&s, &row);
        results.push((s, row));
    }
    table::summary(&results);
}

/// `--child …` runs one scenario; anything else is the orchestrator's options.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child::child(&args[pos + 1..]);
        return;
    }
    let mut o = Opts {
        quick: false,
        only: Vec::new(),
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        rss: true,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--only" => o.only.extend(it.next().cloned()),
            "--threads" => o.threads = it.next().and_then(|n| n.parse().ok()).expect("--threads N"),
            "--no-rss" => o.rss = false,
            "--keep" => o.keep = true,
            "--bench" => {} // cargo bench passes it to every bench binary
            "--help" | "-h" => {
                println!(
                    "cargo bench --bench sync -- [--quick] [--only PATTERN]... [--threads N] [--no-rss] [--keep]\n\n\
                     --quick      a one-minute subset (1,000 AES keys, a few pairs, one 1 ms latency row, 10k plan RSS)\n\
                     --only P     scenarios whose name contains P (repeatable), e.g. aes-10000, lat1ms, disk, plan-rss\n\
                     --threads N  worker threads for apply and the raw loop (default: the CPU count)\n\
                     --no-rss     skip the 100,000-key plan peak-RSS row (its key generation takes minutes)\n\
                     --keep       keep the token directories"
                );
                return;
            }
            other => eprintln!("ignoring unknown argument {other}"),
        }
    }
    orchestrate(o);
}
