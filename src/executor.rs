//! Stage 6: apply the diff's changes on a dedicated rayon pool. Each key is wrapped once
//! on its source and unwrapped on every target that lacks it; every copy is verified by
//! its fingerprint. Each worker holds its own sessions (a `Session` is not `Sync`).
//! Every job's outcome is collected: a failure never stops the others.

use std::collections::HashMap;
use std::time::Instant;

use rayon::prelude::*;

use crate::connect::Tokens;
use crate::diff::{Action, Diff, DiffItem};
use crate::hsm::{HsmError, TokenSession};
use crate::key::{KeyObject, KeyType};
use crate::progress::Reporter;
use crate::report::{Outcome, Status};

/// Work for one worker step.
enum Unit {
    /// Wrap one source key once, unwrap on each target (diff item indices).
    Copy { source: String, items: Vec<usize> },
    /// Set drifted attributes on one target.
    Update(usize),
    /// Delete from one target.
    Delete(usize),
}

/// A worker's sessions, opened on first use.
struct Sessions<'t> {
    tokens: &'t Tokens,
    open: HashMap<String, TokenSession>,
}

impl Sessions<'_> {
    fn get(&mut self, cluster: &str) -> Result<&TokenSession, HsmError> {
        if !self.open.contains_key(cluster) {
            let s = self.tokens.get(cluster).session()?;
            self.open.insert(cluster.to_string(), s);
        }
        Ok(&self.open[cluster])
    }
}

fn ok(start: Instant, fingerprint: Option<String>, note: Option<String>) -> Outcome {
    Outcome {
        status: Status::Ok,
        error: None,
        duration_ms: start.elapsed().as_millis() as u64,
        fingerprint,
        note,
    }
}

fn failed(start: Instant, error: String) -> Outcome {
    Outcome {
        status: Status::Failed,
        error: Some(error),
        duration_ms: start.elapsed().as_millis() as u64,
        fingerprint: None,
        note: None,
    }
}

/// Runs every change of `diff` with `threads` workers. `allow_destroy` gates deletions
/// (skipped otherwise). Returns one outcome per diff item, in order.
pub fn execute(
    diff: &Diff,
    tokens: &Tokens,
    threads: usize,
    allow_destroy: bool,
    reporter: &dyn Reporter,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; diff.items.len()];
    let mut units = Vec::new();
    let mut copies: HashMap<(String, u64), usize> = HashMap::new();
    let mut per_target: Vec<(String, u64)> = Vec::new();
    for (i, it) in diff.items.iter().enumerate() {
        match it.action {
            Action::Create => {
                let Some(k) = &it.source_key else { continue };
                let slot = *copies.entry((it.source.clone(), k.handle)).or_insert_with(|| {
                    units.push(Unit::Copy {
                        source: it.source.clone(),
                        items: Vec::new(),
                    });
                    units.len() - 1
                });
                if let Unit::Copy { items, .. } = &mut units[slot] {
                    items.push(i);
                }
            }
            Action::Update => units.push(Unit::Update(i)),
            Action::Delete if allow_destroy => units.push(Unit::Delete(i)),
            _ => {}
        }
        if it.action.is_change() && (it.action != Action::Delete || allow_destroy) {
            match per_target.iter_mut().find(|(t, _)| *t == it.target) {
                Some((_, n)) => *n += 1,
                None => per_target.push((it.target.clone(), 1)),
            }
        }
    }
    reporter.begin(&per_target);
    let run = || -> Vec<Vec<(usize, Outcome)>> {
        units
            .par_iter()
            .map_init(
                || Sessions {
                    tokens,
                    open: HashMap::new(),
                },
                |sessions, unit| {
                    let done = run_unit(sessions, diff, unit);
                    for (i, o) in &done {
                        reporter.job_done(&diff.items[*i].target, o.status == Status::Ok);
                    }
                    done
                },
            )
            .collect()
    };
    let results = match rayon::ThreadPoolBuilder::new().num_threads(threads.max(1)).build() {
        Ok(pool) => pool.install(run),
        // A pool that cannot start is no reason to fail: run on the global one.
        Err(_) => run(),
    };
    reporter.end();
    for (i, o) in results.into_iter().flatten() {
        outcomes[i] = Some(o);
    }
    outcomes
        .into_iter()
        .zip(&diff.items)
        .map(|(o, it)| {
            o.unwrap_or_else(|| match it.action {
                Action::Unchanged => Outcome {
                    status: Status::Ok,
                    error: None,
                    duration_ms: 0,
                    fingerprint: it.fingerprint.clone(),
                    note: None,
                },
                Action::Delete => Outcome {
                    status: Status::Skipped,
                    error: Some("deletion not allowed: pass --allow-destroy".into()),
                    duration_ms: 0,
                    fingerprint: None,
                    note: None,
                },
                _ => Outcome {
                    status: Status::Skipped,
                    error: None,
                    duration_ms: 0,
                    fingerprint: None,
                    note: None,
                },
            })
        })
        .collect()
}

fn run_unit(sessions: &mut Sessions<'_>, diff: &Diff, unit: &Unit) -> Vec<(usize, Outcome)> {
    match unit {
        Unit::Copy { source, items } => copy(sessions, diff, source, items),
        Unit::Update(i) => {
            let start = Instant::now();
            vec![(
                *i,
                update(sessions, &diff.items[*i])
                    .map_or_else(|e| failed(start, e.to_string()), |fp| ok(start, fp, None)),
            )]
        }
        Unit::Delete(i) => {
            let start = Instant::now();
            let it = &diff.items[*i];
            let r = it
                .target_key
                .as_ref()
                .map_or(Ok(()), |k| sessions.get(&it.target).and_then(|s| s.destroy(k.handle)));
            vec![(
                *i,
                r.map_or_else(|e| failed(start, e.to_string()), |_| ok(start, None, None)),
            )]
        }
    }
}

fn update(sessions: &mut Sessions<'_>, it: &DiffItem) -> Result<Option<String>, HsmError> {
    let (Some(src), Some(dst)) = (&it.source_key, &it.target_key) else {
        return Ok(None);
    };
    sessions.get(&it.target)?.set_usage(dst.handle, src)?;
    Ok(it.fingerprint.clone())
}

fn copy(sessions: &mut Sessions<'_>, diff: &Diff, source: &str, items: &[usize]) -> Vec<(usize, Outcome)> {
    let start = Instant::now();
    let Some(key) = diff.items[items[0]].source_key.clone() else {
        return Vec::new();
    };
    let blob = match sessions.get(source).and_then(|s| s.wrap(key.handle)) {
        Ok(b) => b,
        Err(e) => {
            return items
                .iter()
                .map(|i| (*i, failed(start, format!("wrap on `{source}`: {e}"))))
                .collect()
        }
    };
    let fingerprint = blob.fingerprint(key.class);
    // An odd-length HMAC key arrives zero-padded: prove the copy computes the same HMACs.
    let hmac_check = odd_length_hmac(&key).then(|| {
        let s = sessions.get(source)?;
        let challenge = s.random(32)?;
        let mac = s.hmac(key.handle, &challenge)?;
        Ok::<_, HsmError>((challenge, mac))
    });
    let mut out = Vec::with_capacity(items.len());
    for &i in items {
        let start = Instant::now();
        let target = &diff.items[i].target;
        let result = (|| -> Result<Option<String>, String> {
            let t = sessions.get(target).map_err(|e| e.to_string())?;
            let h = t.unwrap_as(&blob, &key).map_err(|e| e.to_string())?;
            let verify = || -> Result<Option<String>, String> {
                let copy_fp = t.wrap(h).map_err(|e| format!("verify: {e}"))?.fingerprint(key.class);
                if copy_fp != fingerprint {
                    return Err("verify: the copy's fingerprint differs from the source's".into());
                }
                match &hmac_check {
                    None => Ok(None),
                    Some(Err(e)) => Err(format!("verify (HMAC on source): {e}")),
                    Some(Ok((challenge, mac))) => {
                        let len = key.value_len.unwrap_or(0);
                        let padded = len.div_ceil(8) * 8;
                        let Some(mac) = mac else {
                            return Ok(Some(format!("{len}-byte generic secret stored zero-padded to {padded} bytes; too short for the token's HMAC mechanisms, so only the fingerprint was verified")));
                        };
                        let got = t.hmac(h, challenge).map_err(|e| format!("verify (HMAC): {e}"))?;
                        if got.as_ref() != Some(mac) {
                            return Err("verify: the copy computes a different HMAC".into());
                        }
                        Ok(Some(format!("{len}-byte generic secret stored zero-padded to {padded} bytes; HMAC results verified equal")))
                    }
                }
            };
            match verify() {
                Ok(note) => Ok(note),
                Err(e) => {
                    // Never leave an unverified copy behind.
                    let _ = t.destroy(h);
                    Err(e)
                }
            }
        })();
        out.push((
            i,
            match result {
                Ok(note) => ok(start, Some(fingerprint.clone()), note),
                Err(e) => failed(start, e),
            },
        ));
    }
    out
}

fn odd_length_hmac(k: &KeyObject) -> bool {
    k.key_type == KeyType::GenericSecret && k.value_len.is_some_and(|n| n % 8 != 0) && k.flags.sign
}
