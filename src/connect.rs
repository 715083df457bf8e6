//! Stage 3, online checks: open every token in scope, log in once per token, and prove
//! lineage for every (source, target) pair before anything is read or written.

use std::collections::HashMap;

use crate::hsm::{HsmError, Modules, Token};
use crate::plan::{Cluster, Plan};

/// The logged-in tokens of a run, by cluster name.
pub struct Tokens {
    // Field order matters: tokens (and their sessions) drop before the modules finalize.
    tokens: HashMap<String, Token>,
    _modules: Modules,
}

impl Tokens {
    /// The token of a cluster in scope.
    ///
    /// # Panics
    /// If `cluster` was not connected: callers only ask for clusters of the plan's scope.
    pub fn get(&self, cluster: &str) -> &Token {
        &self.tokens[cluster]
    }
}

/// The logged-in tokens are the executor's key store: a session per worker and cluster.
impl crate::hsm::KeyStore for Tokens {
    type Session = crate::hsm::TokenSession;

    fn open_session(&self, cluster: &str) -> Result<Self::Session, HsmError> {
        self.get(cluster).session()
    }

    fn listed_len(&self, cluster: &str) -> Option<usize> {
        self.get(cluster).listed_len()
    }

    fn take_listed_keys(&self, cluster: &str) -> Option<Vec<u64>> {
        self.get(cluster).take_listed_keys()
    }
}

/// One lineage proof, for the output of `validate --online`.
#[derive(Debug, Clone)]
pub struct LineageProof {
    /// Source cluster.
    pub source: String,
    /// Target cluster.
    pub target: String,
    /// The lineage fingerprint both share.
    pub fingerprint: String,
}

/// Opens and logs in to `clusters`, each PIN read and tried once.
pub fn login(clusters: &[&Cluster]) -> Result<Tokens, HsmError> {
    let tokens = open(clusters)?;
    log_in(&tokens, clusters)?;
    Ok(tokens)
}

/// Finds the token of each of `clusters`, without logging in (its facts are read).
pub fn open(clusters: &[&Cluster]) -> Result<Tokens, HsmError> {
    let _stage = crate::stage::start("connect");
    // Offline these were warnings; online they are one error that lists them all.
    let problems: Vec<String> = clusters.iter().flat_map(|c| c.unresolved.iter().cloned()).collect();
    if !problems.is_empty() {
        return Err(HsmError::NotReady { problems });
    }
    let modules = Modules::default();
    let mut tokens = HashMap::new();
    for c in clusters {
        let spec = crate::hsm::TokenSpec {
            name: &c.name,
            module: &c.module,
            token: &c.token,
            domain_key: &c.domain_key,
        };
        tokens.insert(c.name.clone(), Token::open(&modules, &spec)?);
    }
    Ok(Tokens {
        tokens,
        _modules: modules,
    })
}

/// Logs in to the opened tokens of `clusters`, each PIN read and tried once.
pub fn log_in(tokens: &Tokens, clusters: &[&Cluster]) -> Result<(), HsmError> {
    let _stage = crate::stage::start("login");
    // Every PIN is read before any login: a run missing two PIN variables says so once,
    // naming both, instead of logging in to one cluster and failing on the next.
    let mut pins = Vec::with_capacity(clusters.len());
    let mut problems = Vec::new();
    for c in clusters {
        match c.credentials.pin.read() {
            Ok(pin) => pins.push(pin),
            Err(e) => problems.push(format!("cluster `{}`: {e}", c.name)),
        }
    }
    if !problems.is_empty() {
        return Err(HsmError::NotReady { problems });
    }
    for (c, pin) in clusters.iter().zip(pins) {
        let (role, pin_source) = (c.credentials.role.to_string(), c.credentials.pin.to_string());
        let who = crate::hsm::LoginSpec {
            role: &role,
            user: &c.credentials.user,
            pin_source: &pin_source,
        };
        tokens.get(&c.name).login(&who, &pin)?;
    }
    Ok(())
}

/// Logs in to every cluster in scope and proves lineage for every (source, target) pair.
/// Nothing is written to any token (the proof uses session objects only).
pub fn connect(plan: &Plan) -> Result<(Tokens, Vec<LineageProof>), HsmError> {
    let tokens = login(&plan.clusters_in_scope())?;
    let proofs = prove_all(plan, &tokens)?;
    Ok((tokens, proofs))
}

/// The lineage fingerprint of a token, checked against the plan's pin if there is one.
pub fn lineage_fingerprint(cluster: &Cluster, tokens: &Tokens) -> Result<String, HsmError> {
    let fp = tokens.get(&cluster.name).session()?.lineage_fingerprint()?;
    if let Some(pinned) = &cluster.fingerprint {
        if !fp.starts_with(pinned.as_str()) || pinned.is_empty() {
            return Err(HsmError::LineagePin {
                cluster: cluster.name.clone(),
                actual: fp,
                pinned: pinned.clone(),
            });
        }
    }
    Ok(fp)
}

/// Proves lineage for every (source, target) pair of the plan (tokens logged in).
pub fn prove_all(plan: &Plan, tokens: &Tokens) -> Result<Vec<LineageProof>, HsmError> {
    let _stage = crate::stage::start("lineage");
    // Clusters and pairs side by side: on a network HSM each proof is a dozen round
    // trips, so one after the other they add up per target (issue 6). The first error
    // in plan order is the one reported, as before.
    let clusters = plan.clusters_in_scope();
    let mut fps: HashMap<&str, String> = HashMap::new();
    for (c, fp) in clusters
        .iter()
        .zip(side_by_side(&clusters, |c| lineage_fingerprint(c, tokens)))
    {
        fps.insert(&c.name, fp?);
    }
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for entry in &plan.syncs {
        for t in entry.all_targets() {
            if !pairs.contains(&(entry.source.as_str(), t)) {
                pairs.push((&entry.source, t));
            }
        }
    }
    let mut proofs = Vec::new();
    for (&(source, target), proved) in pairs.iter().zip(side_by_side(&pairs, |(s, t)| prove(tokens, s, t))) {
        proved?;
        proofs.push(LineageProof {
            source: source.into(),
            target: target.into(),
            fingerprint: fps[source].clone(),
        });
    }
    Ok(proofs)
}

/// `f` of every item, each on its own thread, in the items' order.
fn side_by_side<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    std::thread::scope(|scope| {
        let running: Vec<_> = items.iter().map(|i| scope.spawn(|| f(i))).collect();
        running
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// The proof of CONTRACT.md §1: a fresh session key wrapped on the source under the
/// domain key, unwrapped on the target, and both sides' encryptions of a random
/// 16-byte challenge compared in full.
pub fn prove(tokens: &Tokens, source: &str, target: &str) -> Result<(), HsmError> {
    let src = tokens.get(source).session()?;
    let dst = tokens.get(target).session()?;
    let mut challenge = [0u8; 16];
    challenge.copy_from_slice(&src.random(16)?);
    let (blob, expected) = src.lineage_offer(&challenge)?;
    let fail = |detail: String| HsmError::Lineage {
        source_cluster: source.into(),
        target: target.into(),
        detail,
    };
    match dst.lineage_accept(&blob, &challenge)? {
        Err(detail) => Err(fail(detail)),
        Ok(got) if got != expected => Err(fail(
            "the session key unwrapped, but the two sides disagree on its check value".into(),
        )),
        Ok(_) => Ok(()),
    }
}
