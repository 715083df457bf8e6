//! Stage 5: the diff, pure data. `diff(plan, inventories)` decides one action per
//! (key, target) pair (CONTRACT.md §3); `plan` renders it, `apply` executes it. No
//! token is touched here, so it is unit-tested with in-memory inventories.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::fingerprint::Fingerprint;
use crate::domain::inventory::{Inventories, Inventory};
use crate::domain::key::{Identity, IdentityRef, KeyClass, KeyObject, KeyRef, KeyType};
use crate::domain::kind;
use crate::domain::reason::Reason;
use crate::domain::shard::Shard;
use crate::domain::wire::WireFormat;
use crate::plan::{DesiredState, KeyMatcher, Plan, Role, Selector, SyncEntry};

/// What happens to one key on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Copy the key to the target.
    Create,
    /// Same key material, drifted label or usage flags: set them.
    Update,
    /// `state: absent`: remove it from the target.
    Delete,
    /// Already there, same key material and attributes.
    Unchanged,
    /// Same identity, different key material, or duplicates: never overwritten.
    Conflict,
    /// Cannot be synced (see the reason).
    Blocked,
}

impl Action {
    /// Whether `apply` changes a token for this action.
    pub fn is_change(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }

    /// The one-character marker of the text diff.
    pub fn marker(self) -> &'static str {
        match self {
            Action::Create => "+",
            Action::Update => "~",
            Action::Delete => "-",
            Action::Unchanged => "=",
            Action::Conflict => "!",
            Action::Blocked => "×",
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
            Action::Unchanged => "unchanged",
            Action::Conflict => "conflict",
            Action::Blocked => "blocked",
        }
    }

    /// Every action, in report order.
    pub const ALL: [Action; 6] = [
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Unchanged,
        Action::Conflict,
        Action::Blocked,
    ];
}

/// One (key, target) decision.
#[derive(Debug, Clone)]
pub struct DiffItem {
    // The names are shared by every item of an entry and target (one allocation each,
    // not three per item; issue 6, memory).
    /// Sync entry name.
    pub sync: Arc<str>,
    /// Source cluster.
    pub source: Arc<str>,
    /// Target cluster.
    pub target: Arc<str>,
    /// The key as reported.
    pub key: KeyRef,
    /// The decision.
    pub action: Action,
    /// Why (blocked, conflict, update, repair): the first reason that applies.
    pub reason: Option<Reason>,
    /// Every reason that applies, the first being `reason` (CONTRACT.md §3).
    pub reasons: Vec<Reason>,
    /// The explanation of this item's reasons, for people.
    pub detail: Option<String>,
    /// The source key, for create and update.
    ///
    /// Shared with the inventory it came from, never copied: at 100,000 keys a copy
    /// per item was a third of `plan`'s own peak RSS (issue 6).
    pub source_key: Option<Arc<KeyObject>>,
    /// The target's object, for update and delete.
    pub target_key: Option<Arc<KeyObject>>,
    /// The wire format a create moves the key in (the pair's, CONTRACT §4 `mechanism`).
    pub mechanism: Option<WireFormat>,
}

impl DiffItem {
    /// The source key's fingerprint, where known.
    pub fn fingerprint(&self) -> Option<&str> {
        self.source_key.as_ref().and_then(|k| k.fingerprint.known())
    }
}

/// Something the operator must hear about that is not a decision on one key: a present
/// selector that matched nothing (CONTRACT.md §1, §4: the report's `warnings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Warning {
    /// A stable code, e.g. `empty-selector`.
    pub code: String,
    /// What happened, for people.
    pub message: String,
    /// The key the warning is about, as a shard assigns it: a sharded run reports each
    /// warning in exactly one shard, as it does the key's jobs (not in the report).
    #[serde(skip)]
    #[schemars(skip)]
    pub shard_key: Option<KeyRef>,
}

/// The code of a present selector that matched no key on its source.
pub const EMPTY_SELECTOR: &str = "empty-selector";

/// The whole dry-run diff.
#[derive(Debug, Clone, Default)]
pub struct Diff {
    /// Decisions, grouped by sync entry and target.
    pub items: Vec<DiffItem>,
    /// Warnings that are not decisions (a present selector that matched nothing); each
    /// makes `apply` and `plan --detailed-exitcode` exit 3.
    pub notes: Vec<Warning>,
}

/// Why no diff could be made: the plan asks two contradictory things of one key.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum DiffError {
    /// One key is selected both present and absent for one target (CONTRACT.md §1).
    #[error(
        "sync `{sync}`: key {key} is selected present by `{present}` and absent by `{absent}` for `{target}`; nothing was changed"
    )]
    #[diagnostic(
        code(diff::conflicting_state),
        help(
            "a key is either present or absent on a target: narrow the glob, or give the absent selector other targets"
        )
    )]
    BothStates {
        /// The sync entry.
        sync: String,
        /// The key, as `id=… label="…"`.
        key: String,
        /// The target both selectors name.
        target: String,
        /// The present selector, as `label:GLOB`.
        present: String,
        /// The absent selector.
        absent: String,
    },
}

impl Diff {
    /// How many items have this action.
    pub fn count(&self, a: Action) -> usize {
        self.items.iter().filter(|i| i.action == a).count()
    }

    /// Whether a conflict, a blocked key or a warning (an empty selector) remains: the
    /// exit 3 of CONTRACT.md §2.
    pub fn has_leftovers(&self) -> bool {
        !self.notes.is_empty()
            || self
                .items
                .iter()
                .any(|i| matches!(i.action, Action::Conflict | Action::Blocked))
    }

    /// Whether `apply` would change anything.
    pub fn has_changes(&self) -> bool {
        self.items.iter().any(|i| i.action.is_change())
    }

    /// Only the items of one shard: every job of a key (all its targets, both halves of a
    /// pair) falls in the same shard, so a key is still wrapped once.
    pub fn shard(mut self, shard: Shard) -> Diff {
        self.items.retain(|i| shard.holds(&i.key));
        self.notes
            .retain(|w| w.shard_key.as_ref().is_none_or(|k| shard.holds(k)));
        self
    }
}

/// Whether a crypto-user owns a key: its private objects, and the public halves of its
/// key pairs (a public key whose private half, same id, is private on the source).
fn owned_by_user(k: &KeyObject, source: &Inventory) -> bool {
    match k.class {
        KeyClass::PublicKey => {
            !k.id.is_empty()
                && source
                    .by_identity(&Identity::Id(KeyClass::PrivateKey, k.id.to_vec()))
                    .iter()
                    .any(|p| p.flags.private)
        }
        _ => k.flags.private,
    }
}

/// Attributes `update` may set, and how they differ: the label, and the usage flags
/// the key's class carries (the kind table's).
fn drift(src: &KeyObject, dst: &KeyObject) -> Vec<&'static str> {
    let mut out = Vec::new();
    if src.label != dst.label {
        out.push("label");
    }
    for u in kind::usages(src.class) {
        if u.of(&src.flags) != u.of(&dst.flags) {
            out.push(u.name());
        }
    }
    out
}

/// Protection attributes that `update` must not touch (they only move one way).
fn protection_mismatch(src: &KeyObject, dst: &KeyObject) -> Vec<&'static str> {
    let (a, b) = (&src.flags, &dst.flags);
    if src.class == KeyClass::PublicKey {
        return if a.private != b.private {
            vec!["private"]
        } else {
            Vec::new()
        };
    }
    [
        ("private", a.private, b.private),
        ("sensitive", a.sensitive, b.sensitive),
        ("extractable", a.extractable, b.extractable),
    ]
    .into_iter()
    .filter(|(_, x, y)| x != y)
    .map(|(n, ..)| n)
    .collect()
}

fn matches(m: &KeyMatcher, k: &KeyObject) -> bool {
    match m {
        KeyMatcher::Id(id) => k.id.as_slice() == id.as_slice(),
        KeyMatcher::Label(l) => k.label == l,
        KeyMatcher::LabelGlob(_, g) => g.is_match(&k.label),
        KeyMatcher::Handle(h) => k.handle == *h,
    }
}

/// The key a selector names when nothing on the source matches it.
fn missing_ref(m: &KeyMatcher) -> KeyRef {
    let (id, label) = match m {
        KeyMatcher::Id(id) => (hex::encode(id), String::new()),
        KeyMatcher::Label(l) | KeyMatcher::LabelGlob(l, _) => (String::new(), l.clone()),
        KeyMatcher::Handle(_) => (String::new(), String::new()),
    };
    KeyRef {
        id,
        label,
        class: None,
        key_type: None,
        handle: if let KeyMatcher::Handle(h) = m { Some(*h) } else { None },
    }
}

/// The names an entry's items carry, one shared copy each.
struct Names {
    sync: Arc<str>,
    source: Arc<str>,
    targets: Vec<Arc<str>>,
}

impl Names {
    fn target(&self, t: &str) -> Arc<str> {
        self.targets
            .iter()
            .find(|x| ***x == *t)
            .cloned()
            .unwrap_or_else(|| t.into())
    }
}

/// A key as an error message names it.
fn key_words(k: &KeyObject) -> String {
    match (k.id.is_empty(), k.label.is_empty()) {
        (false, false) => format!("id={} label={:?}", hex::encode(&k.id), k.label),
        (false, true) => format!("id={}", hex::encode(&k.id)),
        _ => format!("label={:?}", k.label),
    }
}

/// Refuses an entry that selects one key both present and absent for one target, on the
/// source or on the target (issue 16 item 3): which selector won used to depend on their
/// order, silently. Only entries with an absent selector pay for the look.
fn both_states(entry: &SyncEntry, src_inv: &Inventory, inv: &Inventories) -> Result<(), DiffError> {
    if !entry.selectors.iter().any(|s| s.state == DesiredState::Absent) {
        return Ok(());
    }
    let mut present: HashMap<(&str, IdentityRef<'_>), &Selector> = HashMap::new();
    for sel in entry.selectors.iter().filter(|s| s.state == DesiredState::Present) {
        for k in src_inv.keys.iter().filter(|k| matches(&sel.matcher, k)) {
            for t in &sel.targets {
                present.entry((t.as_str(), k.identity_ref())).or_insert(sel);
            }
        }
    }
    for sel in entry.selectors.iter().filter(|s| s.state == DesiredState::Absent) {
        for t in &sel.targets {
            let on_target = match &sel.matcher {
                // A handle names a source object only.
                KeyMatcher::Handle(_) => None,
                _ => inv.get(t),
            };
            let hits = src_inv
                .keys
                .iter()
                .chain(on_target.into_iter().flat_map(|i| i.keys.iter()))
                .filter(|k| matches(&sel.matcher, k));
            for k in hits {
                if let Some(p) = present.get(&(t.as_str(), k.identity_ref())) {
                    return Err(DiffError::BothStates {
                        sync: entry.name.clone(),
                        key: key_words(k),
                        target: t.clone(),
                        present: p.matcher.describe(),
                        absent: sel.matcher.describe(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The two halves of a key pair travel together (CONTRACT.md §3): where one half is
/// blocked on a target, the other half (same id, the other class) is blocked with
/// `pair-incomplete`, its detail naming the first half's reasons.
fn keep_pairs_together(items: &mut [DiffItem]) {
    let half = |c: Option<KeyClass>| matches!(c, Some(KeyClass::PrivateKey | KeyClass::PublicKey));
    let mut blocked: HashMap<(Arc<str>, Option<KeyClass>, String), Vec<Reason>> = HashMap::new();
    for it in items.iter() {
        if it.action == Action::Blocked && half(it.key.class) && !it.key.id.is_empty() {
            blocked.insert((it.target.clone(), it.key.class, it.key.id.clone()), it.reasons.clone());
        }
    }
    if blocked.is_empty() {
        return;
    }
    for it in items.iter_mut() {
        if !half(it.key.class) || it.key.id.is_empty() || matches!(it.action, Action::Blocked | Action::Delete) {
            continue;
        }
        let other = match it.key.class {
            Some(KeyClass::PrivateKey) => KeyClass::PublicKey,
            _ => KeyClass::PrivateKey,
        };
        let Some(reasons) = blocked.get(&(it.target.clone(), Some(other), it.key.id.clone())) else {
            continue;
        };
        let codes: Vec<&str> = reasons.iter().map(|r| r.code()).collect();
        let what = if other == KeyClass::PrivateKey {
            "private"
        } else {
            "public"
        };
        it.action = Action::Blocked;
        it.reason = Some(Reason::PairIncomplete);
        it.reasons = vec![Reason::PairIncomplete];
        it.detail = Some(format!(
            "the {what} key of this pair (same id) is blocked: {}",
            codes.join(", ")
        ));
    }
}

/// Computes the diff of a plan against the inventories of its clusters; refuses a plan
/// that selects one key both present and absent.
pub fn diff(plan: &Plan, inv: &Inventories) -> Result<Diff, DiffError> {
    let mut out = Diff::default();
    for entry in &plan.syncs {
        let Some(src_inv) = inv.get(&entry.source) else {
            continue;
        };
        both_states(entry, src_inv, inv)?;
        let role = plan
            .cluster(&entry.source)
            .map_or(Role::CryptoUser, |c| c.credentials.role);
        let order = entry.all_targets();
        let names = Names {
            sync: entry.name.as_str().into(),
            source: entry.source.as_str().into(),
            targets: order.iter().map(|t| Arc::from(*t)).collect(),
        };
        // Borrowed identities: at 100,000 keys, owned ones were ~15 MB of peak RSS.
        let mut seen: HashSet<(&str, IdentityRef<'_>)> = HashSet::new();
        let mut items = Vec::new();
        for sel in &entry.selectors {
            let picked: Vec<&Arc<KeyObject>> = src_inv.keys.iter().filter(|k| matches(&sel.matcher, k)).collect();
            // About one item per picked key and target: sized once, not doubled as it grows.
            items.reserve(picked.len() * sel.targets.len());
            match sel.state {
                DesiredState::Present => {
                    // One rule for every present selector (CONTRACT.md §1): matching nothing
                    // is a warning and exit 3, unless the selector allows it. An id or a
                    // handle also keeps its `not-found-on-source` item, as reports had it.
                    if picked.is_empty() && !sel.allow_empty {
                        out.notes.push(Warning {
                            code: EMPTY_SELECTOR.into(),
                            message: format!(
                                "sync `{}`: selector {} matched no key on `{}` (add `allow_empty: true` to it if that is expected)",
                                entry.name,
                                sel.matcher.describe(),
                                entry.source
                            ),
                            shard_key: Some(missing_ref(&sel.matcher)),
                        });
                        if !matches!(sel.matcher, KeyMatcher::LabelGlob(..)) {
                            for t in &sel.targets {
                                items.push(item(
                                    &names,
                                    t,
                                    missing_ref(&sel.matcher),
                                    Action::Blocked,
                                    Why::one(Reason::NotFoundOnSource, None),
                                    None,
                                    None,
                                ));
                            }
                        }
                    }
                    for k in &picked {
                        for t in &sel.targets {
                            if seen.insert((t.as_str(), k.identity_ref())) {
                                items.push(decide(&names, t, k, src_inv, role, inv));
                            }
                        }
                    }
                }
                DesiredState::Absent => items.extend(deletions(&names, sel, &picked, inv, &mut seen)),
            }
        }
        // Group by target (in the entry's order), then key identity; in place, with no
        // copied sort keys (they were ~15 MB at 100,000 keys).
        let pos = |i: &DiffItem| order.iter().position(|t| **t == *i.target);
        items.sort_unstable_by(|a, b| {
            pos(a)
                .cmp(&pos(b))
                .then(a.key.class.cmp(&b.key.class))
                .then_with(|| a.key.id.cmp(&b.key.id))
                .then_with(|| a.key.label.cmp(&b.key.label))
                .then(a.key.handle.cmp(&b.key.handle))
        });
        drop(seen);
        keep_pairs_together(&mut items);
        // Move, not copy: at 100,000 keys a second vector of items is tens of megabytes.
        if out.items.is_empty() {
            out.items = items;
        } else {
            out.items.append(&mut items);
        }
    }
    Ok(out)
}

/// The reasons of one item and the explanation each came with.
#[derive(Default)]
struct Why {
    reasons: Vec<Reason>,
    details: Vec<(Reason, String)>,
}

impl Why {
    fn none() -> Why {
        Why::default()
    }

    fn one(r: Reason, detail: Option<String>) -> Why {
        let mut w = Why::none();
        w.add(r, detail);
        w
    }

    fn add(&mut self, r: Reason, detail: Option<String>) {
        self.reasons.push(r);
        if let Some(d) = detail {
            self.details.push((r, d));
        }
    }

    /// One reason's detail as it is; several, each after its code.
    fn detail(&self) -> Option<String> {
        match self.details.as_slice() {
            [] => None,
            [(_, d)] if self.reasons.len() == 1 => Some(d.clone()),
            many => Some(
                many.iter()
                    .map(|(r, d)| format!("{r}: {d}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        }
    }
}

fn item(
    names: &Names,
    target: &str,
    key: KeyRef,
    action: Action,
    why: Why,
    src: Option<&Arc<KeyObject>>,
    dst: Option<&Arc<KeyObject>>,
) -> DiffItem {
    DiffItem {
        sync: names.sync.clone(),
        source: names.source.clone(),
        target: names.target(target),
        key,
        action,
        reason: why.reasons.first().copied(),
        detail: why.detail(),
        reasons: why.reasons,
        source_key: src.cloned(),
        target_key: dst.cloned(),
        mechanism: None,
    }
}

fn decide(
    names: &Names,
    target: &str,
    k: &Arc<KeyObject>,
    src_inv: &Inventory,
    role: Role,
    inv: &Inventories,
) -> DiffItem {
    let mut it = decide_action(names, target, k, src_inv, role, inv);
    if it.action == Action::Create {
        it.mechanism = src_inv.pair_format(target);
    }
    it
}

fn decide_action(
    names: &Names,
    target: &str,
    k: &Arc<KeyObject>,
    src_inv: &Inventory,
    role: Role,
    inv: &Inventories,
) -> DiffItem {
    // Built and looked up once: this runs per key and target (100,000s of times).
    let id = k.identity();
    let twins_on_source = src_inv.by_identity(&id).len();
    let tinv = inv.get(target);
    let on_target = tinv.map(|t| t.by_identity(&id)).unwrap_or_default();
    // Both sides' fingerprints in the pair's own format (CONTRACT §1).
    let wire = src_inv.pair_format(target);
    let k_fp = src_inv.fingerprint_in(k, wire);
    let mk =
        |action, why: Why, dst: Option<&Arc<KeyObject>>| item(names, target, k.key_ref(), action, why, Some(k), dst);
    let because = |r: Reason, detail: Option<String>| Why::one(r, detail);
    if twins_on_source > 1 {
        return mk(
            Action::Conflict,
            because(
                Reason::DuplicateOnSource,
                Some(format!(
                    "{twins_on_source} objects on `{}` share this identity",
                    names.source
                )),
            ),
            None,
        );
    }
    // Every blocker is listed, not the first: fix them all in one pass (CONTRACT.md §3).
    let mut blockers = Why::none();
    let table = kind::blockers(k);
    // What the key's kind rules out comes first: it is the reason whatever else holds.
    let kindless = kind::kind(k.class, k.key_type).is_none();
    let first = |r: &Reason| kindless || *r == Reason::UnsupportedKeyType;
    for (r, d) in table.iter().filter(|(r, _)| first(r)) {
        blockers.add(*r, d.clone());
    }
    if role == Role::CryptoUser && !owned_by_user(k, src_inv) {
        blockers.add(
            Reason::NotOwned,
            Some("a crypto-user syncs only its private objects (CKA_PRIVATE true) and their public halves".into()),
        );
    }
    // A deferred fingerprint (apply's first sync, a key no other cluster holds) is not a
    // blocker: the copy job's own wrap is the test of wrappability then.
    if k.class != KeyClass::PublicKey && (!k.flags.extractable || *k_fp == Fingerprint::NotWrappable) {
        blockers.add(Reason::NotExtractable, None);
    }
    for (r, d) in table.into_iter().filter(|(r, _)| !first(r)) {
        blockers.add(r, d);
    }
    if let Some(d) = wire.and_then(|w| kind::not_carried(k, w)) {
        blockers.add(Reason::NoCommonMechanism, Some(d));
    }
    // An EdDSA key leaves only a source whose wrap mechanism the probe saw carry one.
    if k.key_type == KeyType::EcEdwards && src_inv.missing_types.contains(&k.key_type) {
        blockers.add(Reason::NoCommonMechanism, Some(no_eddsa(&src_inv.cluster)));
    }
    if let Some(t) = tinv.filter(|t| t.missing_types.contains(&k.key_type)) {
        let detail = if k.key_type == KeyType::EcEdwards {
            no_eddsa(&t.cluster)
        } else {
            format!(
                "`{}` offers no {} mechanism: it cannot hold a copy of this key",
                t.cluster,
                match k.key_type {
                    KeyType::Des3 => "DES3",
                    KeyType::Rsa => "RSA",
                    KeyType::Ec => "EC",
                    KeyType::Sha1Hmac | KeyType::Sha256Hmac => "HMAC-SHA-1 or HMAC-SHA-256",
                    KeyType::Sha224Hmac => "HMAC-SHA-224",
                    KeyType::Sha384Hmac => "HMAC-SHA-384",
                    KeyType::Sha512Hmac => "HMAC-SHA-512",
                    _ => "such",
                }
            )
        };
        blockers.add(Reason::NoCommonMechanism, Some(detail));
    }
    // An odd-length secret wrapped by a mechanism that does not pad it cannot be compared
    // with its copy on a token whose mechanism zero-pads (its re-wrap is of the padded
    // value): its fingerprints would differ on every plan. The other way it arrives
    // zero-padded, which the odd-length rule covers.
    if let (Some(t), Some(len)) = (tinv, k.value_len) {
        if k.class == KeyClass::SecretKey && len % 8 != 0 && t.zero_pads_in(wire) && !src_inv.zero_pads_in(wire) {
            blockers.add(
                Reason::OddLengthSecret,
                Some(format!(
                    "`{}` zero-pads a {len}-byte value before wrapping and `{}` does not: the copy's fingerprint could never be compared with the source's",
                    names.target(target),
                    names.source
                )),
            );
        }
    }
    if !blockers.reasons.is_empty() {
        return mk(Action::Blocked, blockers, None);
    }
    let Some(tinv) = tinv else {
        return mk(Action::Create, Why::none(), None);
    };
    match on_target.as_slice() {
        [] => mk(Action::Create, Why::none(), None),
        [t] => {
            let t_fp = tinv.fingerprint_in(t, wire);
            if t_fp.known().is_none() && tinv.in_flight.contains(&id.journal_key()) {
                // A copy an interrupted run was making and never verified: it is ours,
                // and unreadable, so it is replaced.
                return mk(
                    Action::Create,
                    because(
                        Reason::Repair,
                        Some("replaces an unverified copy left by an interrupted run".into()),
                    ),
                    Some(t),
                );
            }
            if t_fp.known().is_none() {
                return mk(
                    Action::Conflict,
                    because(
                        Reason::CannotCompare,
                        Some("the target's copy cannot be fingerprinted (not extractable)".into()),
                    ),
                    Some(t),
                );
            }
            if t_fp.known() != k_fp.known() {
                return mk(Action::Conflict, because(Reason::DifferentKeyMaterial, None), Some(t));
            }
            // Fingerprints digest the wrapped value only: one value under two key types
            // (AES and generic secret) fingerprints alike, and is still not a copy.
            if t.key_type != k.key_type {
                return mk(
                    Action::Conflict,
                    because(
                        Reason::DifferentKeyType,
                        Some(format!(
                            "same value, but `{}` holds it as {} and `{target}` as {}",
                            names.source,
                            k.key_type.name(),
                            t.key_type.name()
                        )),
                    ),
                    Some(t),
                );
            }
            let prot = protection_mismatch(k, t);
            if !prot.is_empty() {
                return mk(
                    Action::Conflict,
                    because(Reason::ProtectionDiffers, Some(prot.join(", "))),
                    Some(t),
                );
            }
            let d = drift(k, t);
            if d.is_empty() {
                mk(Action::Unchanged, Why::none(), Some(t))
            } else if !t.flags.modifiable {
                mk(
                    Action::Conflict,
                    because(
                        Reason::NotModifiable,
                        Some(format!("drifted {} on a copy with CKA_MODIFIABLE false", d.join(", "))),
                    ),
                    Some(t),
                )
            } else {
                mk(Action::Update, because(Reason::Drifted, Some(d.join(", "))), Some(t))
            }
        }
        many => mk(
            Action::Conflict,
            because(
                Reason::DuplicateOnTarget,
                Some(format!("{} objects on `{target}` share this identity", many.len())),
            ),
            None,
        ),
    }
}

/// Why an EdDSA key cannot leave or reach `cluster`.
fn no_eddsa(cluster: &str) -> String {
    format!(
        "`{cluster}` cannot wrap and unwrap EdDSA keys with this run's wrap mechanism (the probe's Ed25519 key did not come through; SoftHSM 2.6 cannot): `hsm-sync probe` shows it"
    )
}

fn deletions<'a>(
    names: &Names,
    sel: &'a Selector,
    picked: &[&Arc<KeyObject>],
    inv: &'a Inventories,
    seen: &mut HashSet<(&'a str, IdentityRef<'a>)>,
) -> Vec<DiffItem> {
    let mut out = Vec::new();
    for t in &sel.targets {
        let Some(tinv) = inv.get(t) else { continue };
        for k in &tinv.keys {
            let hit = match &sel.matcher {
                // A handle names a source object: delete its copies.
                KeyMatcher::Handle(_) => picked.iter().any(|p| p.identity_ref() == k.identity_ref()),
                m => matches(m, k),
            };
            if hit && seen.insert((t.as_str(), k.identity_ref())) {
                let mut key = k.key_ref();
                key.handle = None;
                out.push(item(names, t, key, Action::Delete, Why::none(), None, Some(k)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::handle::Handle;
    use crate::domain::inventory::Inventory;
    use crate::domain::key::{KeyFlags, KeyType};

    fn key(handle: u64, id: &str, label: &str, fp: &str) -> KeyObject {
        KeyObject {
            handle: Handle::fixture(handle),
            class: KeyClass::SecretKey,
            key_type: KeyType::Aes,
            id: hex::decode(id).unwrap().into(),
            label: label.into(),
            flags: KeyFlags {
                private: true,
                extractable: true,
                encrypt: true,
                decrypt: true,
                modifiable: true,
                ..Default::default()
            },
            value_len: Some(32),
            public_parts: None,
            fingerprint: crate::domain::fingerprint::Fingerprint::Known(fp.into()),
        }
    }

    fn plan(keys: &str) -> Plan {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "version: 1\nclusters:\n  a: {{module: /x.so, token: {{label: a}}, credentials: {{role: crypto-user, user: u, pin: {{env: P}}}}}}\n  b: {{module: /x.so, token: {{label: b}}, cloned_from: a, credentials: {{role: crypto-user, user: u, pin: {{env: P}}}}}}\nsync:\n  - name: s\n    source: a\n    targets: [b]\n    keys:\n{keys}"
        );
        crate::plan::validate::validate(&dir.path().join("p.yaml"), "p.yaml", text)
            .unwrap()
            .plan
    }

    /// Inventories are sorted by identity, as `read_all` leaves them.
    fn sorted(mut keys: Vec<KeyObject>) -> Vec<KeyObject> {
        crate::domain::key::sort_keys(&mut keys);
        keys
    }

    fn inv(a: Vec<KeyObject>, b: Vec<KeyObject>) -> Inventories {
        Inventories::from([
            (
                "a".to_string(),
                Inventory {
                    cluster: "a".into(),
                    keys: sorted(a).into_iter().map(Arc::new).collect(),
                    in_flight: Default::default(),
                    wire: None,
                    zero_pads: false,
                    missing_types: Vec::new(),
                    learned: Vec::new(),
                    peer_wire: Default::default(),
                    alt: Default::default(),
                },
            ),
            (
                "b".to_string(),
                Inventory {
                    cluster: "b".into(),
                    keys: sorted(b).into_iter().map(Arc::new).collect(),
                    in_flight: Default::default(),
                    wire: None,
                    zero_pads: false,
                    missing_types: Vec::new(),
                    learned: Vec::new(),
                    peer_wire: Default::default(),
                    alt: Default::default(),
                },
            ),
        ])
    }

    fn dif(p: &Plan, i: &Inventories) -> Diff {
        diff(p, i).unwrap()
    }

    fn actions(d: &Diff) -> Vec<(Action, Option<String>)> {
        d.items
            .iter()
            .map(|i| (i.action, i.reason.map(|r| r.code().to_string())))
            .collect()
    }

    #[test]
    fn create_unchanged_conflict_by_fingerprint() {
        let p = plan("      - label: \"k*\"\n");
        let d = dif(
            &p,
            &inv(
                vec![
                    key(1, "01", "k1", "aa"),
                    key(2, "02", "k2", "bb"),
                    key(3, "03", "k3", "cc"),
                ],
                vec![key(9, "02", "k2", "bb"), key(8, "03", "k3", "zz")],
            ),
        );
        assert_eq!(
            actions(&d),
            vec![
                (Action::Create, None),
                (Action::Unchanged, None),
                (Action::Conflict, Some("different-key-material".into()))
            ]
        );
    }

    #[test]
    fn blocked_reasons() {
        let p = plan("      - id: \"01\"\n      - id: \"02\"\n      - id: \"0f\"\n");
        let mut unext = key(1, "01", "x", "aa");
        unext.flags.extractable = false;
        unext.fingerprint = crate::domain::fingerprint::Fingerprint::NotWrappable;
        let mut public = key(2, "02", "y", "bb");
        public.flags.private = false;
        let d = dif(&p, &inv(vec![unext, public], vec![]));
        assert_eq!(
            actions(&d),
            vec![
                (Action::Blocked, Some("not-found-on-source".into())),
                (Action::Blocked, Some("not-extractable".into())),
                (Action::Blocked, Some("not-owned".into()))
            ]
        );
    }

    #[test]
    fn a_deferred_fingerprint_is_a_create_and_a_failed_one_stays_blocked() {
        let p = plan("      - id: \"01\"\n      - id: \"02\"\n");
        let mut new = key(1, "01", "x", "aa");
        new.fingerprint = Fingerprint::NotWrappable;
        let mut unwrappable = key(2, "02", "y", "bb");
        unwrappable.fingerprint = Fingerprint::NotWrappable;
        let invs = inv(vec![new.clone(), unwrappable.clone()], vec![key(7, "02", "y", "bb")]);
        // Tried and refused: the key cannot be wrapped.
        assert_eq!(
            actions(&dif(&p, &invs)),
            vec![
                (Action::Blocked, Some("not-extractable".into())),
                (Action::Blocked, Some("not-extractable".into()))
            ]
        );
        // Deferred (apply's first sync): the new key's job will wrap it; the key the
        // target holds was tried and failed.
        new.fingerprint = Fingerprint::Deferred;
        let invs = inv(vec![new, unwrappable], vec![key(7, "02", "y", "bb")]);
        assert_eq!(
            actions(&dif(&p, &invs)),
            vec![
                (Action::Create, None),
                (Action::Blocked, Some("not-extractable".into()))
            ]
        );
    }

    #[test]
    fn drift_is_an_update_and_duplicates_are_conflicts() {
        let p = plan("      - id: \"01\"\n      - id: \"02\"\n");
        let renamed = key(9, "01", "old-name", "aa");
        let d = dif(
            &p,
            &inv(
                vec![key(1, "01", "new-name", "aa"), key(2, "02", "y", "bb")],
                vec![renamed, key(7, "02", "y", "bb"), key(8, "02", "y", "bb")],
            ),
        );
        assert_eq!(
            actions(&d),
            vec![
                (Action::Update, Some("drifted".into())),
                (Action::Conflict, Some("duplicate-on-target".into()))
            ]
        );
    }

    #[test]
    fn odd_length_generic_secrets_sync_only_for_hmac() {
        let p = plan("      - id: \"01\"\n      - id: \"02\"\n");
        let mut hmac = key(1, "01", "h", "aa");
        hmac.key_type = KeyType::GenericSecret;
        hmac.value_len = Some(20);
        hmac.flags = KeyFlags {
            private: true,
            extractable: true,
            sign: true,
            verify: true,
            ..Default::default()
        };
        let mut derive = hmac.clone();
        derive.handle = Handle::fixture(2);
        derive.id = smallvec::smallvec![2];
        derive.flags.derive = true;
        let d = dif(&p, &inv(vec![hmac, derive], vec![]));
        assert_eq!(
            actions(&d),
            vec![
                (Action::Create, None),
                (Action::Blocked, Some("odd-length-secret".into()))
            ]
        );
    }

    #[test]
    fn absent_selectors_delete_from_targets() {
        let p = plan("      - label: old\n        state: absent\n");
        let d = dif(
            &p,
            &inv(vec![], vec![key(5, "05", "old", "aa"), key(6, "06", "keep", "bb")]),
        );
        assert_eq!(actions(&d), vec![(Action::Delete, None)]);
        assert_eq!(d.items[0].target_key.as_ref().unwrap().handle, Handle::fixture(5));
    }

    #[test]
    fn shards_partition_keys_and_keep_a_key_whole() {
        let key = |id: &str, label: &str, class| KeyRef {
            id: id.into(),
            label: label.into(),
            class: Some(class),
            key_type: None,
            handle: None,
        };
        let keys: Vec<KeyRef> = (0..300)
            .map(|i| key(&format!("{i:04x}"), "", KeyClass::SecretKey))
            .collect();
        for n in 1..=4u32 {
            let shards: Vec<Shard> = (1..=n).map(|i| format!("{i}/{n}").parse().unwrap()).collect();
            for k in &keys {
                assert_eq!(
                    shards.iter().filter(|s| s.holds(k)).count(),
                    1,
                    "{k:?} in exactly one of {n}"
                );
            }
            let sizes: Vec<usize> = shards
                .iter()
                .map(|s| keys.iter().filter(|k| s.holds(k)).count())
                .collect();
            assert!(
                sizes.iter().all(|&c| c * (n as usize) > 300 / 2),
                "roughly even: {sizes:?}"
            );
        }
        let s: Shard = "2/3".parse().unwrap();
        let private = key("ab", "x", KeyClass::PrivateKey);
        let public = key("ab", "y", KeyClass::PublicKey);
        assert_eq!(s.holds(&private), s.holds(&public), "a pair stays in one shard");
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unreadable_copy_is_repaired_only_when_the_journal_says_it_is_ours() {
        let p = plan("      - id: \"01\"\n");
        let src = key(1, "01", "k", "aaaa");
        let mut broken = key(9, "01", "k", "");
        broken.fingerprint = crate::domain::fingerprint::Fingerprint::NotWrappable;
        let mut i = inv(vec![src.clone()], vec![broken.clone()]);
        let d = dif(&p, &i);
        assert_eq!(
            d.items[0].action,
            Action::Conflict,
            "someone else's unreadable key is never touched"
        );
        i.get_mut("b").unwrap().in_flight.insert(src.identity().journal_key());
        let d = dif(&p, &i);
        assert_eq!(d.items[0].action, Action::Create);
        assert_eq!(d.items[0].reason, Some(Reason::Repair));
        assert_eq!(
            d.items[0].target_key.as_ref().map(|k| k.handle),
            Some(Handle::fixture(9)),
            "the executor removes it first"
        );
    }

    #[test]
    fn a_key_selected_both_ways_is_an_error_naming_both_selectors() {
        let p = plan("      - label: \"app-*\"\n      - label: app-2\n        state: absent\n");
        let i = inv(vec![key(1, "01", "app-1", "aa"), key(2, "02", "app-2", "bb")], vec![]);
        let e = diff(&p, &i).unwrap_err().to_string();
        assert!(e.contains("label:app-*") && e.contains("label:app-2"), "{e}");
        // Absent for a key the present glob does not match: fine.
        let p = plan("      - label: \"app-*\"\n      - label: old\n        state: absent\n");
        assert!(diff(&p, &i).is_ok());
    }

    #[test]
    fn every_present_selector_that_matches_nothing_warns_unless_allowed() {
        let p = plan("      - label: \"x-*\"\n      - id: \"0f\"\n      - handle: 99\n      - label: \"y-*\"\n        allow_empty: true\n");
        let d = dif(&p, &inv(vec![key(1, "01", "k", "aa")], vec![]));
        let codes: Vec<&str> = d.notes.iter().map(|w| w.code.as_str()).collect();
        assert_eq!(codes, vec![EMPTY_SELECTOR; 3]);
        assert!(d.has_leftovers());
    }

    #[test]
    fn a_blocked_half_blocks_the_other_half() {
        let p = plan("      - id: \"07\"\n");
        let mut private = key(1, "07", "p", "aa");
        private.class = KeyClass::PrivateKey;
        private.key_type = KeyType::Ec;
        private.flags.extractable = false;
        let mut public = key(2, "07", "p", "bb");
        public.class = KeyClass::PublicKey;
        public.key_type = KeyType::Ec;
        public.public_parts = Some(Box::new(crate::domain::key::PublicParts {
            ec_params: vec![6, 8],
            ec_point: vec![4, 1],
            ..Default::default()
        }));
        let d = dif(&p, &inv(vec![private, public], vec![]));
        assert_eq!(
            actions(&d),
            vec![
                (Action::Blocked, Some("not-extractable".into())),
                (Action::Blocked, Some("pair-incomplete".into()))
            ]
        );
        assert!(d.items[1]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("not-extractable"));
    }
}
