//! Stage 3, online checks: open every token in scope, log in once per token, and prove
//! lineage for every (source, target) pair before anything is read or written.

use std::collections::HashMap;

use crate::domain::handle::Handle;
use crate::domain::wire::WireFormat;
use crate::hsm::{HsmError, Modules, Token, WrapMechanism};
use crate::limits::Limits;
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

    /// Each connected cluster's token identity, as the state backends key it.
    pub(crate) fn state_ids(&self) -> crate::state::TokenIds {
        self.tokens
            .iter()
            .map(|(name, t)| {
                let f = &t.facts;
                (
                    name.clone(),
                    crate::state::token_id(&f.manufacturer, &f.model, &f.serial, &f.label),
                )
            })
            .collect()
    }
}

/// The logged-in tokens are the executor's key store: a session per worker and cluster.
impl crate::hsm::KeyStore for Tokens {
    type Session = crate::hsm::TokenSession;

    fn open_session(&self, cluster: &str) -> Result<Self::Session, HsmError> {
        self.get(cluster).session()
    }

    fn open_session_in(&self, cluster: &str, format: Option<WireFormat>) -> Result<Self::Session, HsmError> {
        self.get(cluster).session_in(format)
    }

    fn listed_len(&self, cluster: &str) -> Option<usize> {
        self.get(cluster).listed_len()
    }

    fn take_listed_keys(&self, cluster: &str) -> Option<Vec<Handle>> {
        self.get(cluster).take_listed_keys()
    }

    fn has_unique_ids(&self, cluster: &str) -> bool {
        self.get(cluster).capabilities().is_ok_and(|c| c.unique_id)
    }

    fn missing_key_types(&self, cluster: &str) -> Vec<crate::domain::key::KeyType> {
        // The probe already ran for the pair's format; a failure here only means "unknown".
        let token = self.get(cluster);
        let wrap = token.wrap_mechanism().ok().map(|m| m.id);
        token
            .capabilities()
            .map(|c| c.missing_key_types(wrap))
            .unwrap_or_default()
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
    /// The pair's wire format.
    pub format: WireFormat,
    /// The source's mechanism for it.
    pub source_mechanism: &'static str,
    /// The target's mechanism for it.
    pub target_mechanism: &'static str,
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
    // SoftHSM reads its token directory once, in C_Initialize, and leaves out a token
    // whose file another process is rewriting at that moment (measured: two racing
    // `notify` runs, one told "no token with label primary"). Nothing is logged in yet,
    // so finalizing the modules and initialising them again is safe; a label that is
    // really missing costs the retries' 0.35 s before it is reported.
    let mut attempt: u32 = 0;
    loop {
        match open_once(clusters) {
            Err(HsmError::TokenNotFound { .. }) if attempt < 2 => {
                std::thread::sleep(std::time::Duration::from_millis(100 << attempt));
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// One pass of [`open`]: the modules initialised, every cluster's token looked up.
fn open_once(clusters: &[&Cluster]) -> Result<Tokens, HsmError> {
    let modules = Modules::default();
    let mut tokens = HashMap::new();
    for c in clusters {
        let spec = crate::hsm::TokenSpec {
            name: &c.name,
            module: &c.module,
            token: &c.token,
            domain_key: &c.domain_key,
            module_args: c.module_args.as_deref(),
            profile: c.profile.as_deref(),
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
    // One token after another, never side by side: SoftHSM numbers the objects of all its
    // tokens from one counter as searches meet them, so logins (and their key searches)
    // in parallel would give keys other handles in every run.
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

/// Refuses a `handle:` selector on a source whose profile says handles last one session
/// (CloudHSM SDK5): it would pick whatever key holds that number in this session. Needs
/// only the tokens' info, so it runs before any login.
pub(crate) fn refuse_session_handles(plan: &Plan, tokens: &Tokens) -> Result<(), HsmError> {
    for entry in &plan.syncs {
        for sel in &entry.selectors {
            refuse_session_handle(tokens, &entry.source, &sel.matcher, &format!("entry `{}`", entry.name))?;
        }
    }
    Ok(())
}

/// [`refuse_session_handles`] for one selector on `cluster`, from `what` ("entry `NAME`",
/// or the command-line flag that gave it).
pub(crate) fn refuse_session_handle(
    tokens: &Tokens,
    cluster: &str,
    matcher: &crate::plan::KeyMatcher,
    what: &str,
) -> Result<(), HsmError> {
    let Some(token) = tokens.tokens.get(cluster) else {
        return Ok(());
    };
    let profile = token.profile();
    if profile.handles_per_session && matches!(matcher, crate::plan::KeyMatcher::Handle(_)) {
        return Err(HsmError::SessionHandles {
            cluster: cluster.to_string(),
            profile: profile.name,
            selector: matcher.describe(),
            entry: what.to_string(),
        });
    }
    Ok(())
}

/// Logs in to every cluster in scope and proves lineage for every (source, target) pair.
/// Nothing is written to any token (the proof uses session objects only).
pub fn connect(plan: &Plan) -> Result<(Tokens, Vec<LineageProof>), HsmError> {
    let tokens = login(&plan.clusters_in_scope())?;
    let proofs = prove_all(plan, &tokens, Limits::new(None, plan.options.parallelism))?;
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
pub(crate) fn prove_all(plan: &Plan, tokens: &Tokens, limits: Limits) -> Result<Vec<LineageProof>, HsmError> {
    let _stage = crate::stage::start("lineage");
    // Clusters and pairs side by side: on a network HSM each proof is a dozen round
    // trips, so one after the other they add up per target (issue 6); `limits.lineage()`
    // of them at once. The first error in plan order is the one reported, as before.
    let width = limits.lineage();
    let clusters = plan.clusters_in_scope();
    let chosen = negotiate(plan, tokens)?;
    let mut fps: HashMap<&str, String> = HashMap::new();
    for (c, fp) in clusters
        .iter()
        .zip(side_by_side(&clusters, width, |c| lineage_fingerprint(c, tokens)))
    {
        fps.insert(&c.name, fp?);
    }
    let pairs = pairs(plan);
    let mut proofs = Vec::new();
    for (&(source, target), proved) in pairs.iter().zip(side_by_side(&pairs, width, |(s, t)| {
        prove(tokens, s, t, chosen.get(&(*s, *t)).map(|m| m.source.format))
    })) {
        proved?;
        let pm = chosen[&(source, target)];
        proofs.push(LineageProof {
            source: source.into(),
            target: target.into(),
            fingerprint: fps[source].clone(),
            format: pm.source.format,
            source_mechanism: pm.source.name,
            target_mechanism: pm.target.name,
        });
    }
    Ok(proofs)
}

/// The (source, target) pairs of the plan, each once, in plan order.
fn pairs(plan: &Plan) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for entry in &plan.syncs {
        for t in entry.all_targets() {
            if !pairs.contains(&(entry.source.as_str(), t)) {
                pairs.push((&entry.source, t));
            }
        }
    }
    pairs
}

/// The mechanisms of one (source, target) pair's wire format, each side's.
#[derive(Debug, Clone, Copy)]
pub struct PairMechanisms {
    /// The source's mechanism.
    pub source: WrapMechanism,
    /// The target's mechanism.
    pub target: WrapMechanism,
}

/// Chooses the wire format of every (source, target) pair (CONTRACT §1): RFC 5649 where
/// both sides make and read it, whatever each calls it, else RFC 3394; a cluster's
/// `lineage.wrap` pins the format of its pairs. Each pair gets its own: a source whose
/// targets differ sends each what that target reads, and fingerprints in each format a
/// pair needs. A token's run mechanism (its inventory's fingerprints) is its first pair's,
/// in plan order. No common format for a pair: an error naming both clusters, before
/// anything is read or written.
pub fn negotiate<'p>(plan: &'p Plan, tokens: &Tokens) -> Result<HashMap<(&'p str, &'p str), PairMechanisms>, HsmError> {
    let pairs = pairs(plan);
    let clusters = plan.clusters_in_scope();
    let mut formats: HashMap<&str, Vec<WireFormat>> = HashMap::new();
    let mut pins: HashMap<&str, Option<WireFormat>> = HashMap::new();
    for c in &clusters {
        formats.insert(&c.name, tokens.get(&c.name).capabilities()?.formats());
        pins.insert(&c.name, c.wrap);
    }
    let describe = |n: &str| match formats[n].as_slice() {
        [] => format!("`{n}` has none"),
        fs => format!(
            "`{n}` has {}",
            fs.iter().map(|f| f.code()).collect::<Vec<_>>().join(" and ")
        ),
    };
    let mechanism = |cluster: &str, format: WireFormat| {
        tokens
            .get(cluster)
            .capabilities()?
            .mechanism_for(format)
            .ok_or_else(|| HsmError::NoWrapMechanism {
                cluster: cluster.to_string(),
                found: format.code().into(),
            })
    };
    let mut chosen = HashMap::new();
    let mut primary: HashMap<&str, WrapMechanism> = HashMap::new();
    for &(s, t) in &pairs {
        let candidates: Vec<WireFormat> = match (pins[s], pins[t]) {
            (Some(a), Some(b)) if a != b => {
                return Err(HsmError::NoCommonFormat {
                    source_cluster: s.into(),
                    target: t.into(),
                    detail: format!("`{s}` pins `lineage.wrap: {a}` and `{t}` pins `{b}`"),
                })
            }
            (Some(f), _) | (None, Some(f)) => vec![f],
            (None, None) => WireFormat::ALL.to_vec(),
        };
        let Some(format) = candidates
            .iter()
            .copied()
            .find(|f| formats[s].contains(f) && formats[t].contains(f))
        else {
            let pin = match candidates.as_slice() {
                [f] if pins[s].or(pins[t]).is_some() => format!(" (`lineage.wrap: {f}` pins it)"),
                _ => String::new(),
            };
            return Err(HsmError::NoCommonFormat {
                source_cluster: s.into(),
                target: t.into(),
                detail: format!("{}, {}{pin}", describe(s), describe(t)),
            });
        };
        let pm = PairMechanisms {
            source: mechanism(s, format)?,
            target: mechanism(t, format)?,
        };
        primary.entry(s).or_insert(pm.source);
        primary.entry(t).or_insert(pm.target);
        chosen.insert((s, t), pm);
    }
    // A cluster in no pair (a lone one in scope) uses its own best format, or its pin.
    for c in &clusters {
        if primary.contains_key(c.name.as_str()) {
            continue;
        }
        let best = match c.wrap {
            Some(f) => Some(f),
            None => formats[c.name.as_str()].first().copied(),
        };
        if let Some(f) = best {
            primary.insert(&c.name, mechanism(&c.name, f)?);
        }
    }
    for (c, m) in primary {
        tokens.get(c).use_wrap(m);
    }
    Ok(chosen)
}

/// `f` of every item, each on its own thread, at most `width` at once, in the items'
/// order.
fn side_by_side<T: Sync, R: Send>(items: &[T], width: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(width.max(1)) {
        std::thread::scope(|scope| {
            let running: Vec<_> = chunk.iter().map(|i| scope.spawn(|| f(i))).collect();
            out.extend(
                running
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
            );
        });
    }
    out
}

/// The proof of CONTRACT.md §1, in the pair's `format`: a fresh session key wrapped on
/// the source under the domain key, unwrapped on the target, and both sides' encryptions of a random
/// 16-byte challenge compared in full.
pub fn prove(tokens: &Tokens, source: &str, target: &str, format: Option<WireFormat>) -> Result<(), HsmError> {
    let src = tokens.get(source).session_in(format)?;
    let dst = tokens.get(target).session_in(format)?;
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
