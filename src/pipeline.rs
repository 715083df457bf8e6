//! The pipeline, once: connect → lock → inventory → diff → execute → record. Commands
//! map their arguments to these calls and the results to output; nothing here prints.

use std::path::Path;
use std::time::SystemTime;

use crate::connect::{log_in, open, prove_all, refuse_session_handles, Tokens};
use crate::diff::{diff, Action, Diff};
use crate::domain::shard::Shard;
use crate::executor;
use crate::hsm::KeyStore;
use crate::inventory::{read_all, Fingerprints, Inventories};
use crate::limits::Limits;
use crate::notify::AfterApply;
use crate::plan::Plan;
use crate::progress::Reporter;
use crate::report::{ms_since, Report};
use crate::saved;
use crate::stage;

/// What the online stages found: the logged-in tokens, their inventories and the diff.
pub(crate) struct Online {
    /// Logged-in tokens of every cluster in scope.
    pub tokens: Tokens,
    /// Their inventories.
    pub inventories: Inventories,
    /// The diff of the plan against them.
    pub diff: Diff,
    /// The target tokens' locks, for commands that write (held until this drops).
    pub _lock: Option<crate::state::Held>,
    /// How long connecting, reading and diffing took.
    pub timings: crate::report::Timings,
}

impl Online {
    /// The state of every token in scope, for saved plans and their staleness check.
    pub(crate) fn token_states(&self, plan: &Plan, shard: Option<Shard>) -> Vec<saved::TokenState> {
        saved::token_states(plan, &self.inventories, shard, |c| {
            let f = &self.tokens.get(c).facts;
            (f.label.clone(), f.serial.clone())
        })
    }
}

/// A command that writes: its name (for the lock's holder note) and how long it waits
/// for a busy target's lock.
#[derive(Clone, Copy)]
pub(crate) struct Writer<'a> {
    /// `apply` or `sync-key`.
    pub command: &'a str,
    /// `--lock-timeout` (zero: a busy target is an error at once).
    pub wait: std::time::Duration,
}

/// The online part shared by `plan` and `apply`: log in, prove lineage, read the
/// inventories in scope, diff.
/// With a shard, only that shard's jobs. A command that writes names itself in `writer`
/// and gets every target token locked before its inventory is read. `fingerprints` says
/// whether keys no target holds are fingerprinted now ([`Fingerprints::All`]: the diff
/// shows them) or by their copy jobs. `limits` sizes the lineage proofs and the
/// inventory's sessions.
pub(crate) fn online_diff(
    plan: &Plan,
    shard: Option<Shard>,
    writer: Option<Writer<'_>>,
    fingerprints: Fingerprints,
    limits: Limits,
    refresh: bool,
) -> miette::Result<Online> {
    let mut timings = crate::report::Timings::default();
    let t = std::time::Instant::now();
    // A writer locks its targets before logging in: login's search of the keys is then
    // the inventory's own (no other run changes them in between), and a busy cluster
    // costs no login.
    let clusters = plan.clusters_in_scope();
    let tokens = open(&clusters)?;
    refuse_session_handles(plan, &tokens)?;
    // The state backend is opened (a database connected) before any login: one that is
    // down or refuses us stops the run before anything is read or written.
    let lock = match writer {
        Some(w) => Some(stage::timed("lock", || lock_targets(plan, &tokens, w))?),
        None => None,
    };
    log_in(&tokens, &clusters)?;
    let proofs = prove_all(plan, &tokens, limits)?;
    timings.connect_ms = ms_since(t);
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    let t = std::time::Instant::now();
    let written: Vec<&str> = plan.syncs.iter().flat_map(|s| s.all_targets()).collect();
    let source_only: Vec<&str> = names.iter().copied().filter(|n| !written.contains(n)).collect();
    let on_tokens = matches!(plan.state, crate::plan::StateConfig::Token);
    // The fingerprint cache (issue 15), for tokens with CKA_UNIQUE_ID: what it holds for
    // each such cluster's scope, unless `--refresh`. Plan writes no token: on the token
    // backend only writers add to it.
    let ids = tokens.state_ids();
    let mut scopes: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for p in &proofs {
        for c in [p.source.as_str(), p.target.as_str()] {
            if tokens.has_unique_ids(c) {
                // The cache holds the run's fingerprints: its token's own format, which
                // is not every pair's where pairs differ.
                let id = crate::state::id_of(&ids, c);
                let format = tokens.get(c).wrap_mechanism().map_or(p.format, |m| m.format);
                scopes.insert(c, crate::state::cache_scope(id, &format.to_string(), &p.fingerprint));
            }
        }
    }
    let store = match scopes.is_empty() && on_tokens {
        true => None,
        false => Some(crate::state::open(&plan.state, ids.clone(), &tokens)?),
    };
    let mut cache = crate::inventory::FingerprintCache::new();
    if let (Some(store), false) = (&store, refresh) {
        for (c, scope) in &scopes {
            cache.insert(c.to_string(), store.cached_fingerprints(c, scope)?);
        }
    } else {
        // `--refresh`: every key wrapped again, and what that gives cached afresh.
        for c in scopes.keys() {
            cache.insert(c.to_string(), Default::default());
        }
    }
    let mut inventories = stage::timed("inventory", || {
        read_all(
            &tokens,
            &names,
            &source_only,
            fingerprints,
            limits.inventory(),
            on_tokens,
            &cache,
        )
    })?;
    // A cluster whose pairs differ in format (a target that reads only RFC 3394 beside
    // one that reads RFC 5649): its keys fingerprinted in each (CONTRACT §1).
    for name in &names {
        let peers: Vec<(&str, crate::domain::wire::WireFormat)> = proofs
            .iter()
            .filter_map(|p| match (p.source.as_str(), p.target.as_str()) {
                (s, t) if s == *name => Some((t, p.format)),
                (s, t) if t == *name => Some((s, p.format)),
                _ => None,
            })
            .collect();
        if let Some(inv) = inventories.get_mut(*name) {
            crate::inventory::add_pair_formats(&tokens, inv, &peers, limits.inventory())?;
        }
    }
    if let Some(store) = &store {
        if writer.is_some() || !on_tokens {
            for (c, scope) in &scopes {
                if let Some(inv) = inventories.get_mut(*c) {
                    let learned = std::mem::take(&mut inv.learned);
                    store.cache_fingerprints(c, scope, &learned)?;
                }
            }
        }
    }
    if let (Some(store), false) = (&store, on_tokens) {
        // The journals live in the state backend: read each written target's there.
        for t in &written {
            if let Some(inv) = inventories.get_mut(*t) {
                inv.in_flight = store.journal_read(t)?.into_iter().collect();
            }
        }
    }
    drop(store);
    timings.inventory_ms = ms_since(t);
    let t = std::time::Instant::now();
    let mut diff = stage::timed("diff", || diff(plan, &inventories))?;
    if let Some(s) = shard {
        diff = diff.shard(s);
    }
    timings.diff_ms = ms_since(t);
    Ok(Online {
        tokens,
        inventories,
        diff,
        _lock: lock,
        timings,
    })
}

/// Locks every target token of the plan in its state backend (sorted, so two runs meet
/// in the same order). A token is locked by its identity, however it is reached (a
/// pass-through module is the same token).
fn lock_targets(plan: &Plan, tokens: &Tokens, w: Writer<'_>) -> Result<crate::state::Held, crate::state::StateError> {
    let mut names: Vec<&str> = plan.syncs.iter().flat_map(|s| s.all_targets()).collect();
    names.sort_unstable();
    names.dedup();
    let store = crate::state::open(&plan.state, tokens.state_ids(), tokens)?;
    store.lock(&names, w.command, w.wait)
}

/// How the jobs of a diff run.
pub(crate) struct Execution<'a> {
    /// The command, for the report.
    pub command: &'a str,
    /// The plan as the operator named it, for the report.
    pub plan_name: &'a Path,
    /// How wide the jobs, the lifecycle records and the deliveries go.
    pub limits: Limits,
    /// Deletions allowed.
    pub allow_destroy: bool,
    /// Where progress events go.
    pub reporter: &'a dyn Reporter,
    /// When the command started.
    pub started: SystemTime,
    /// Set by the first SIGINT/SIGTERM: no new job starts.
    pub stop: &'a crate::interrupt::Stop,
}

/// What a run of the jobs did.
pub(crate) struct Executed {
    /// The report (not yet written anywhere).
    pub report: Report,
    /// The lifecycle records and notifications.
    pub notified: AfterApply,
    /// Harmless problems to tell the operator about.
    pub warnings: Vec<String>,
}

/// Runs the diff's changes: journals on the targets first, then the jobs, then the
/// lifecycle records and notifications on the sources (CONTRACT.md §5: a failed
/// notification never undoes the sync).
pub(crate) fn execute(plan: &Plan, online: &Online, e: &Execution<'_>) -> miette::Result<Executed> {
    let t = std::time::Instant::now();
    let store = crate::state::open(&plan.state, online.tokens.state_ids(), &online.tokens)?;
    // A stop asked for before any job: no job will start, so no journal either.
    let journals = if e.stop.requested() {
        Vec::new()
    } else {
        write_journals(online, store.as_ref())?
    };
    let outcomes = executor::execute(
        &online.diff,
        &online.tokens,
        e.limits.jobs(),
        e.allow_destroy,
        e.reporter,
        e.stop,
    );
    let mut warnings = Vec::new();
    for target in journals {
        if let Err(err) = store.journal_clear(&target) {
            // Harmless: the next run reads it, finds every copy verified, and replaces it.
            warnings.push(format!("the in-flight journal on `{target}` was not removed: {err}"));
        }
    }
    let execute_ms = ms_since(t);
    stage::done("execute", t);
    let mut report = Report::new(e.command, e.plan_name, e.started, &online.diff, Some(&outcomes));
    let t = std::time::Instant::now();
    let notified = stage::timed("record/notify", || {
        crate::notify::after_apply(plan, store.as_ref(), &online.diff, &outcomes, e.limits)
    });
    report.notifications = notified.records.clone();
    report.timings = Some(crate::report::Timings {
        execute_ms: Some(execute_ms),
        notify_ms: Some(ms_since(t)),
        ..online.timings.clone()
    });
    report.finished_at = crate::report::timestamp(SystemTime::now());
    report.interrupted = e.stop.requested();
    Ok(Executed {
        report,
        notified,
        warnings,
    })
}

/// Writes each target's in-flight journal (the identities about to be created there)
/// before any copy is made; returns the targets that have one.
fn write_journals(online: &Online, store: &dyn crate::state::StateStore) -> miette::Result<Vec<String>> {
    let mut per_target: Vec<(String, Vec<String>)> = Vec::new();
    for it in online.diff.items.iter().filter(|i| i.action == Action::Create) {
        let Some(k) = &it.source_key else { continue };
        let entry = k.identity().journal_key();
        match per_target.iter_mut().find(|(t, _)| **t == *it.target) {
            Some((_, v)) => v.push(entry),
            None => per_target.push((it.target.to_string(), vec![entry])),
        }
    }
    for (target, entries) in &per_target {
        store.journal_write(target, entries)?;
    }
    Ok(per_target.into_iter().map(|(t, _)| t).collect())
}
