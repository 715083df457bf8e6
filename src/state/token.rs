//! The `token` state backend (the default): what hsm-sync remembers lives on the tokens.
//!
//! - **Records** go in *pages* on the source token: private data objects labelled
//!   [`PAGE_PREFIX`]`<time>-<nonce>`, each holding the records of one write as
//!   zlib-compressed JSON (version 2; version 1, plain JSON, is still read). An `apply`
//!   adds one page per [`PAGE_MAX`] compressed bytes of records (about 900 keys), not an
//!   object per key. Once a source holds [`COMPACT_AT`] of hsm-sync's objects, a write
//!   destroys the pages whose every record a later page supersedes (nothing is lost, nothing
//!   is written), and when the live pages are more than twice what their records need (the
//!   pages of many small runs), or per-key records of earlier versions ([`STATE_PREFIX`])
//!   remain, it folds them into as few new pages as the state needs and only then destroys
//!   what it folded, so a crash in between loses nothing and the number of pages stays
//!   bounded. Each page is destroyed once, which is what keeps compaction cheap: a destroy
//!   rescans the token's directory on SoftHSM. Pages are read in label order; a later
//!   record of a key wins. A page is never changed in place (SoftHSM refuses to change a
//!   data object's value).
//! - **Claims** of `notify` are objects made at notify time, one per key it is about to send
//!   ([`CLAIM_PREFIX`]`<identity>`), checked after a settle time (see [`TokenState::claim`]).
//! - **Journals** are the targets' own in-flight journals ([`crate::hsm`]).
//! - **Locks** are this machine's file locks ([`super::flock`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::flock;
use super::{latest, Check, Claim, Claimed, Held, KeyState, StateError, StateStore, TokenIds};
use crate::domain::event::KeyInfo;
use crate::hsm::{DataObject, HsmError, KeyStore, RecordSession, STATE_PREFIX};

/// The start of every page's label (persisted).
pub(crate) const PAGE_PREFIX: &str = "hsm-sync/page/";
/// The start of every claim's label, followed by the key's identity (persisted).
pub(crate) const CLAIM_PREFIX: &str = "hsm-sync/claim/";
/// The start of a fingerprint cache's label, followed by its scope (persisted).
pub(crate) const FINGERPRINT_PREFIX: &str = "hsm-sync/fingerprints/";
/// The most bytes one page's (compressed) value holds before a write starts another.
/// Small on purpose: SoftHSM numbers objects in the order of their addresses in its memory, and
/// one large object loaded among the keys renumbered them (measured with 300 keys: pages
/// of 24 KiB and more moved keys' handles between runs, 8 and 16 KiB did not;
/// PKCS11-NOTES.md); real HSMs cap object sizes too. About 900 keys' records fit in one
/// (the records of a run share their event fields, and ids and labels compress).
pub(crate) const PAGE_MAX: usize = 16 * 1024;
/// How many of hsm-sync's objects a source may hold before a write looks at compacting
/// (below it, a write costs one search and its own pages): then superseded pages go, and
/// the live ones are folded once they are more than twice what they need plus half this.
pub(crate) const COMPACT_AT: usize = 16;

/// One page's value (JSON, version 1): records grouped by what they share (an apply's
/// keys share their event, time, entry and targets), each key as a compact array.
#[derive(Debug, Serialize, Deserialize)]
struct Page {
    version: u32,
    groups: Vec<Group>,
}

/// Records that differ only in their key.
#[derive(Debug, Serialize, Deserialize)]
struct Group {
    event: crate::domain::event::Event,
    at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    notified_at: Option<String>,
    sync: String,
    source: String,
    targets: Vec<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    failed: std::collections::BTreeSet<String>,
    /// `[id, label, class, key_type, fingerprint]` per key, in write order.
    keys: Vec<PageKey>,
}

/// A key as a page stores it.
type PageKey = (
    String,
    String,
    Option<crate::domain::key::KeyClass>,
    Option<crate::domain::key::KeyType>,
    Option<String>,
);

impl Group {
    fn of(r: &KeyState) -> Group {
        Group {
            event: r.event,
            at: r.at.clone(),
            notified_at: r.notified_at.clone(),
            sync: r.sync.clone(),
            source: r.source.clone(),
            targets: r.targets.clone(),
            failed: r.failed.clone(),
            keys: Vec::new(),
        }
    }

    /// Whether `r` shares every field of this group but its key.
    fn fits(&self, r: &KeyState) -> bool {
        self.event == r.event
            && self.at == r.at
            && self.notified_at == r.notified_at
            && self.sync == r.sync
            && self.source == r.source
            && self.targets == r.targets
            && self.failed == r.failed
    }

    fn records(self) -> impl Iterator<Item = KeyState> {
        let Group {
            event,
            at,
            notified_at,
            sync,
            source,
            targets,
            failed,
            keys,
        } = self;
        keys.into_iter()
            .map(move |(id, label, class, key_type, fingerprint)| KeyState {
                version: 1,
                event,
                at: at.clone(),
                notified_at: notified_at.clone(),
                sync: sync.clone(),
                source: source.clone(),
                targets: targets.clone(),
                key: KeyInfo {
                    id,
                    label,
                    class,
                    key_type,
                    fingerprint,
                },
                claim: None,
                failed: failed.clone(),
            })
    }
}

fn page_key(k: &KeyInfo) -> PageKey {
    (
        k.id.clone(),
        k.label.clone(),
        k.class,
        k.key_type,
        k.fingerprint.clone(),
    )
}

/// What hsm-sync keeps on one source token, as read.
#[derive(Default)]
struct Loaded {
    /// Pages in label order, with their records.
    pages: Vec<(DataObject, Vec<KeyState>)>,
    /// Per-key records of earlier versions.
    legacy: Vec<(DataObject, KeyState)>,
    /// Claims, with the identity they claim.
    claims: Vec<(DataObject, String, Claim)>,
}

impl Loaded {
    /// Every key's latest record: the earlier versions' first, then the pages in order.
    fn states(&self) -> Vec<KeyState> {
        latest(
            self.legacy
                .iter()
                .map(|(_, st)| st.clone())
                .chain(self.pages.iter().flat_map(|(_, rs)| rs.iter().cloned())),
        )
    }

    /// Per page (in [`Loaded::pages`] order), whether it holds some key's latest record:
    /// one that no later page supersedes, as [`Loaded::states`] reads them.
    fn live_pages(&self) -> Vec<bool> {
        let mut latest: HashMap<String, Option<usize>> = HashMap::new();
        for (_, st) in &self.legacy {
            latest.insert(st.identity(), None);
        }
        for (i, (_, records)) in self.pages.iter().enumerate() {
            for r in records {
                latest.insert(r.identity(), Some(i));
            }
        }
        let mut live = vec![false; self.pages.len()];
        for i in latest.into_values().flatten() {
            if let Some(l) = live.get_mut(i) {
                *l = true;
            }
        }
        live
    }
}

/// The token backend over a key store.
pub(crate) struct TokenState<'a, S: KeyStore> {
    tokens: &'a S,
    ids: TokenIds,
    /// The claim objects this run made, by source: what `release` destroys.
    made: Mutex<Vec<(String, String, DataObject)>>,
}

impl<'a, S: KeyStore> TokenState<'a, S> {
    /// The backend on `tokens`; `ids` names each cluster's token (for the lock files).
    pub(crate) fn new(tokens: &'a S, ids: TokenIds) -> Self {
        TokenState {
            tokens,
            ids,
            made: Mutex::new(Vec::new()),
        }
    }

    fn load(&self, s: &impl RecordSession) -> Result<Loaded, HsmError> {
        let mut out = Loaded::default();
        for h in s.data_handles()? {
            let Some(d) = s.reread_data(h)? else { continue };
            if d.label.starts_with(PAGE_PREFIX) {
                // A page that does not parse is no page (and is never folded away).
                if let Some(p) = decode(&d.value) {
                    out.pages
                        .push((d, p.groups.into_iter().flat_map(Group::records).collect()));
                }
            } else if let Some(id) = d.label.strip_prefix(CLAIM_PREFIX) {
                if let Ok(c) = serde_json::from_slice::<Claim>(&d.value) {
                    let id = id.to_string();
                    out.claims.push((d, id, c));
                }
            } else if d.name().starts_with(STATE_PREFIX) {
                if let Ok(st) = serde_json::from_slice::<KeyState>(d.record()) {
                    // As earlier versions named them: a record names its own key.
                    if d.name() == format!("{STATE_PREFIX}{}", st.identity()) {
                        out.legacy.push((d, st));
                    }
                }
            }
        }
        out.pages
            .sort_by(|a, b| a.0.label.cmp(&b.0.label).then(a.0.handle.cmp(&b.0.handle)));
        Ok(out)
    }
}

/// A new page's label: now, then a random part, so two runs never share one.
fn page_label() -> String {
    let millis = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut nonce = [0u8; 4];
    let _ = getrandom::fill(&mut nonce);
    format!("{PAGE_PREFIX}{millis:013}-{}", hex::encode(nonce))
}

/// The most bytes a page's JSON may inflate to when read: a page holds at most
/// [`PAGE_MAX`] compressed bytes, so anything near this is no page of ours.
const INFLATED_MAX: u64 = 64 * 1024 * 1024;

/// A page's value as stored: version 2 is the JSON of [`Page`] compressed with zlib
/// (its records' ids, labels and shared fields compress ~4×, so a run of 10,000 keys
/// writes ~11 pages, not ~40, and compaction destroys as many fewer: a destroy rescans the
/// token's directory on SoftHSM, tens of ms at 10,000 keys). Version 1 was the JSON itself
/// and is still read.
fn encode(page: &Page) -> Vec<u8> {
    use std::io::Write;
    // Plain strings and enums: serializing cannot fail; writing to a Vec neither.
    let json = serde_json::to_vec(page).unwrap_or_default();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = z.write_all(&json);
    z.finish().unwrap_or_default()
}

/// A page's records, from either version; `None` for a value that is no page.
fn decode(value: &[u8]) -> Option<Page> {
    use std::io::Read;
    if value.first() == Some(&b'{') {
        return serde_json::from_slice(value).ok();
    }
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(value)
        .take(INFLATED_MAX)
        .read_to_end(&mut json)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// `records` as one page: consecutive records that share their event fields in a group.
fn page_of(records: &[KeyState]) -> Page {
    let mut groups: Vec<Group> = Vec::new();
    for r in records {
        if groups.last().is_none_or(|g| !g.fits(r)) {
            groups.push(Group::of(r));
        }
        if let Some(g) = groups.last_mut() {
            g.keys.push(page_key(&r.key));
        }
    }
    Page { version: 2, groups }
}

/// The bytes a record's key adds to a page's JSON (its group's shared fields are not
/// counted): what decides how many records are tried in one page before it is compressed.
/// Serialized from borrows, as [`PageKey`] lays it out, without copying the strings.
fn json_len(r: &KeyState) -> usize {
    let k = &r.key;
    let key = (&k.id, &k.label, k.class, k.key_type, &k.fingerprint);
    serde_json::to_string(&key).map_or(0, |j| j.len()) + 1
}

/// How much smaller than its JSON a page is expected to compress (measured ~3.9× on
/// `bench-N` labels and 4-byte ids); a page that comes out larger is split in two.
const EXPECTED_RATIO: usize = 3;

/// `records` encoded as pages of at most [`PAGE_MAX`] bytes each (a single record larger
/// than that is a page of its own), in order.
fn encode_pages(records: &[KeyState]) -> Vec<Vec<u8>> {
    fn push(records: &[KeyState], out: &mut Vec<Vec<u8>>) {
        let value = encode(&page_of(records));
        if value.len() <= PAGE_MAX || records.len() <= 1 {
            out.push(value);
            return;
        }
        let (a, b) = records.split_at(records.len() / 2);
        push(a, out);
        push(b, out);
    }
    let mut out = Vec::new();
    let budget = PAGE_MAX.saturating_mul(EXPECTED_RATIO);
    let (mut from, mut bytes) = (0, 0usize);
    for (i, r) in records.iter().enumerate() {
        let n = json_len(r);
        if i > from && bytes.saturating_add(n) > budget {
            push(&records[from..i], &mut out);
            (from, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(n);
    }
    if from < records.len() {
        push(&records[from..], &mut out);
    }
    out
}

/// Writes `records` as pages labelled `label`, `label.001`, … (each up to [`PAGE_MAX`]
/// bytes; a run's records usually fill one).
fn write_pages(s: &impl RecordSession, label: &str, records: &[KeyState]) -> Result<(), HsmError> {
    write_encoded(s, label, &encode_pages(records))
}

/// Writes pages already encoded, labelled as [`write_pages`] labels them.
fn write_encoded(s: &impl RecordSession, label: &str, pages: &[Vec<u8>]) -> Result<(), HsmError> {
    for (n, value) in pages.iter().enumerate() {
        let name = match n {
            0 => label.to_string(),
            k => format!("{label}.{k:03}"),
        };
        s.create_record(&name, value)?;
    }
    Ok(())
}

impl<S: KeyStore> StateStore for TokenState<'_, S> {
    fn name(&self) -> &'static str {
        "token"
    }

    fn read(&self, source: &str) -> Result<Vec<KeyState>, StateError> {
        let s = self.tokens.open_session(source)?;
        Ok(self.load(&s)?.states())
    }

    fn append(&self, source: &str, records: &[KeyState]) -> Result<Vec<String>, StateError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.tokens.open_session(source)?;
        // One search, one object: the hot path of every apply.
        let objects = s.data_handles()?.len();
        write_pages(&s, &page_label(), records)?;
        if objects + 1 < COMPACT_AT {
            return Ok(Vec::new());
        }
        let loaded = self.load(&s)?;
        let Some(last) = loaded.pages.last().map(|(d, _)| d.label.clone()) else {
            return Ok(Vec::new());
        };
        let live = loaded.live_pages();
        let live_count = live.iter().filter(|l| **l).count();
        // A fold when the live pages are many more than their records need (the pages of
        // many small runs) or records of earlier versions remain: everything into new
        // pages written after the last one folded, then what was folded removed (new
        // objects first: a crash loses nothing). Otherwise only the pages whose every
        // record a later page supersedes go (a run that re-synced every key makes all the
        // earlier pages such): nothing to write, nothing lost. The state is encoded only
        // where a fold is possible at all (it needs at least one page).
        let legacy = !loaded.legacy.is_empty();
        let fold = (legacy || live_count > 2 + COMPACT_AT / 2)
            .then(|| encode_pages(&loaded.states()))
            .filter(|pages| legacy || live_count > pages.len().saturating_mul(2) + COMPACT_AT / 2);
        match fold {
            Some(pages) => {
                write_encoded(&s, &format!("{last}~"), &pages)?;
                for (d, _) in &loaded.pages {
                    s.destroy_record(d)?;
                }
                for (d, _) in &loaded.legacy {
                    s.destroy_record(d)?;
                }
            }
            None => {
                for ((d, _), _) in loaded.pages.iter().zip(&live).filter(|(_, live)| !**live) {
                    s.destroy_record(d)?;
                }
            }
        }
        // Claims of crashed runs (a live run's are younger than the TTL).
        let now = SystemTime::now();
        for (d, _, _) in loaded.claims.iter().filter(|(_, _, c)| !c.is_fresh(now)) {
            s.destroy_record(d)?;
        }
        let mut notes = Vec::new();
        if !loaded.legacy.is_empty() {
            notes.push(format!(
                "moved {} per-key lifecycle record(s) written by an earlier hsm-sync on `{source}` into one page; nothing was lost",
                loaded.legacy.len()
            ));
        }
        Ok(notes)
    }

    /// Claims made as objects, checked after `settle` (Fischer's exclusion, adapted to
    /// objects that are made rather than changed): per key, read its claims and make ours
    /// within half the settle time (a run that took longer backs off), wait, then read
    /// again. A run proceeds only if its own claim is there and no other fresh one is: two
    /// runs that see each other both back off (allowed), and a run that misses the other's
    /// claim (SoftHSM's index can miss an object made just before its own) is seen by it.
    fn claim(
        &self,
        source: &str,
        keys: &[KeyInfo],
        mine: &Claim,
        settle: Duration,
        check: Check<'_>,
    ) -> Result<Claimed, StateError> {
        let s = self.tokens.open_session(source)?;
        let loaded = self.load(&s)?;
        let states: HashMap<String, KeyState> = loaded.states().into_iter().map(|st| (st.identity(), st)).collect();
        let now = SystemTime::now();
        let mut out = Claimed::default();
        for k in keys {
            let id = k.identity();
            if let Some((_, _, other)) = loaded
                .claims
                .iter()
                .find(|(_, cid, c)| *cid == id && c.nonce != mine.nonce && c.is_fresh(now))
            {
                out.refused.push(other.refusal(k));
            } else if let Some(why) = check(k, states.get(&id)) {
                out.refused.push(why);
            }
        }
        if !out.refused.is_empty() {
            return Ok(out);
        }
        let value = serde_json::to_string(mine).unwrap_or_default();
        for k in keys {
            let started = Instant::now();
            let id = k.identity();
            let label = format!("{CLAIM_PREFIX}{id}");
            let now = SystemTime::now();
            for (_, other) in s.find_named(&label)?.into_iter().filter_map(|d| {
                let c = serde_json::from_slice::<Claim>(&d.value).ok()?;
                Some((d, c))
            }) {
                if other.nonce != mine.nonce && other.is_fresh(now) {
                    out.refused.push(other.refusal(k));
                }
            }
            if !out.refused.is_empty() {
                return Ok(out);
            }
            let d = s.create_record(&label, value.as_bytes())?;
            if let Ok(mut made) = self.made.lock() {
                made.push((source.to_string(), id.clone(), d));
            }
            if started.elapsed() * 2 >= settle {
                out.refused.push(format!(
                    "claiming key {} took {} ms, too long to be sure no other run is notifying it; nothing was sent (try again)",
                    k.name(),
                    started.elapsed().as_millis()
                ));
                return Ok(out);
            }
        }
        std::thread::sleep(settle);

        // Still ours, and no one else's? Then the records as they are now.
        let loaded = self.load(&s)?;
        let now = SystemTime::now();
        out.states = loaded.states().into_iter().map(|st| (st.identity(), st)).collect();
        for k in keys {
            let id = k.identity();
            let mut ours = false;
            for (_, _, c) in loaded.claims.iter().filter(|(_, cid, _)| *cid == id) {
                if c.nonce == mine.nonce {
                    ours = true;
                } else if c.is_fresh(now) {
                    out.refused.push(c.refusal(k));
                }
            }
            if !ours {
                out.refused.push(format!(
                    "the claim of key {} vanished while this run held it (another hsm-sync run?); nothing was sent",
                    k.name()
                ));
            } else if let Some(why) = check(k, out.states.get(&id)) {
                out.refused.push(why);
            }
        }
        Ok(out)
    }

    fn release(&self, source: &str, keys: &[KeyInfo], _mine: &Claim) -> Result<(), StateError> {
        let ids: Vec<String> = keys.iter().map(KeyInfo::identity).collect();
        let mine: Vec<DataObject> = match self.made.lock() {
            Ok(mut made) => {
                let (take, keep): (Vec<_>, Vec<_>) = made
                    .drain(..)
                    .partition(|(src, id, _)| src == source && ids.contains(id));
                *made = keep;
                take.into_iter().map(|(_, _, d)| d).collect()
            }
            Err(_) => Vec::new(),
        };
        if mine.is_empty() {
            return Ok(());
        }
        let s = self.tokens.open_session(source)?;
        for d in &mine {
            s.destroy_record(d)?;
        }
        Ok(())
    }

    fn lock(&self, targets: &[&str], command: &str, wait: Duration) -> Result<Held, StateError> {
        let list = flock::targets(&self.ids, targets);
        Ok(Box::new(flock::acquire(&flock::machine_dir(), &list, command, wait)?))
    }

    fn cached_fingerprints(&self, cluster: &str, scope: &str) -> Result<HashMap<String, String>, StateError> {
        let s = self.tokens.open_session(cluster)?;
        let mut out = HashMap::new();
        for d in s.find_named(&format!("{FINGERPRINT_PREFIX}{scope}"))? {
            if let Ok(m) = serde_json::from_slice::<HashMap<String, String>>(&d.value) {
                out.extend(m);
            }
        }
        Ok(out)
    }

    /// One object per (token, scope) on that token, replaced whole: the new one is made
    /// before the old ones go.
    fn cache_fingerprints(&self, cluster: &str, scope: &str, entries: &[(String, String)]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let s = self.tokens.open_session(cluster)?;
        let label = format!("{FINGERPRINT_PREFIX}{scope}");
        let old = s.find_named(&label)?;
        let mut all: HashMap<String, String> = HashMap::new();
        for d in &old {
            if let Ok(m) = serde_json::from_slice::<HashMap<String, String>>(&d.value) {
                all.extend(m);
            }
        }
        all.extend(entries.iter().cloned());
        s.create_record(&label, serde_json::to_string(&all).unwrap_or_default().as_bytes())?;
        for d in &old {
            s.destroy_record(d)?;
        }
        Ok(())
    }

    fn journal_write(&self, target: &str, entries: &[String]) -> Result<(), StateError> {
        Ok(self.tokens.open_session(target)?.journal_write(entries)?)
    }

    fn journal_read(&self, target: &str) -> Result<Vec<String>, StateError> {
        use crate::hsm::KeySession;
        Ok(self.tokens.open_session(target)?.journal_read()?)
    }

    fn journal_clear(&self, target: &str) -> Result<(), StateError> {
        Ok(self.tokens.open_session(target)?.journal_clear()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Event;
    use crate::hsm::memory::MemoryStore;

    fn record(id: &str, event: Event) -> KeyState {
        KeyState::sample(id, event, "2027-01-15T08:00:00.000Z")
    }

    fn objects(store: &MemoryStore) -> Vec<DataObject> {
        let s = store.open_session("src").unwrap();
        let hs = s.data_handles().unwrap();
        hs.into_iter().filter_map(|h| s.reread_data(h).unwrap()).collect()
    }

    /// A record as a real run writes it: a 4-byte id, a numbered label, a fingerprint.
    fn synced(i: u32) -> KeyState {
        use sha2::Digest;
        let mut r = record(&hex::encode(i.to_be_bytes()), Event::Synced);
        r.key.label = format!("bench-{i}");
        r.key.fingerprint = Some(hex::encode(&sha2::Sha256::digest(i.to_be_bytes())[..8]));
        r
    }

    #[test]
    fn an_append_adds_a_few_compressed_pages_not_an_object_per_key() {
        let store = MemoryStore::default();
        let state = TokenState::new(&store, TokenIds::new());
        let many: Vec<KeyState> = (0..10_000).map(synced).collect();
        state.append("src", &many).unwrap();
        let pages = objects(&store);
        assert!(
            pages.iter().all(|d| d.value.len() <= PAGE_MAX),
            "every page within PAGE_MAX"
        );
        // ~64 bytes of JSON a key, ~17 compressed: 10,000 keys in about a dozen pages
        // (as plain JSON they took 40).
        assert!(
            (5..=15).contains(&pages.len()),
            "10,000 records of one run: a few pages, not 10,000 objects: {}",
            pages.len()
        );
        let one = decode(&pages[0].value).expect("a page");
        assert_eq!(one.version, 2);
        assert_eq!(one.groups.len(), 1, "the run's keys share one group");
        state.append("src", &[record("00000001", Event::Deleted)]).unwrap();
        let read = state.read("src").unwrap();
        assert_eq!(read.len(), 10_000);
        let one = read.iter().find(|r| r.key.id == "00000001").unwrap();
        assert_eq!(one.event, Event::Deleted, "a later page wins");
        let other = read.iter().find(|r| r.key.id == "00000002").unwrap();
        assert_eq!(other, &synced(2), "read back as written");
    }

    #[test]
    fn pages_of_earlier_versions_are_still_read() {
        let store = MemoryStore::default();
        let s = store.open_session("src").unwrap();
        // Version 1: the page's JSON, uncompressed.
        let v1 = r#"{"version":1,"groups":[{"event":"synced","at":"2027-01-15T08:00:00.000Z","sync":"main","source":"src","targets":["dst"],"keys":[["a1","k","secret-key","aes","0011223344556677"]]}]}"#;
        s.create_record(&format!("{PAGE_PREFIX}0000000000001-00000000"), v1.as_bytes())
            .unwrap();
        let state = TokenState::new(&store, TokenIds::new());
        let read = state.read("src").unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].key.fingerprint.as_deref(), Some("0011223344556677"));
        assert_eq!(read[0].event, Event::Synced);
    }

    #[test]
    fn a_value_that_is_no_page_is_none_not_a_panic() {
        assert!(decode(b"").is_none());
        assert!(decode(b"{not json").is_none());
        assert!(decode(&[0x78, 0x9c, 1, 2, 3]).is_none(), "a broken zlib stream");
        assert!(decode(&encode(&page_of(&[synced(1)]))).is_some());
    }

    #[test]
    fn a_run_that_supersedes_every_record_destroys_the_old_pages_and_writes_no_fold() {
        let store = MemoryStore::default();
        let state = TokenState::new(&store, TokenIds::new());
        let first: Vec<KeyState> = (0..30_000).map(synced).collect();
        state.append("src", &first).unwrap();
        let before: Vec<String> = objects(&store).into_iter().map(|d| d.label).collect();
        assert!(
            before.len() >= COMPACT_AT,
            "enough pages to look at compacting: {}",
            before.len()
        );
        // Every key again, to another target (a new DR cluster): the earlier pages hold
        // no latest record any more.
        let again: Vec<KeyState> = first
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.targets = vec!["dr2".into()];
                r
            })
            .collect();
        state.append("src", &again).unwrap();
        let after: Vec<String> = objects(&store).into_iter().map(|d| d.label).collect();
        assert!(after.iter().all(|l| !before.contains(l)), "the superseded pages went");
        assert!(after.iter().all(|l| !l.contains('~')), "nothing was folded: {after:?}");
        assert_eq!(after.len(), before.len(), "the run's own pages only");
        let read = state.read("src").unwrap();
        assert_eq!(read.len(), 30_000, "nothing lost");
        assert!(read.iter().all(|r| r.targets == ["dr2"]), "the latest records");
    }

    #[test]
    fn pages_are_compacted_so_their_number_stays_bounded_and_nothing_is_lost() {
        let store = MemoryStore::default();
        let state = TokenState::new(&store, TokenIds::new());
        for run in 0..200 {
            state
                .append("src", &[record(&format!("{run:04x}"), Event::Synced)])
                .unwrap();
            assert!(
                objects(&store).len() <= COMPACT_AT,
                "run {run}: {}",
                objects(&store).len()
            );
        }
        let read = state.read("src").unwrap();
        assert_eq!(read.len(), 200, "every run's record is still there");
    }

    #[test]
    fn records_of_earlier_versions_are_read_and_moved_into_a_page_once() {
        let store = MemoryStore::default();
        let s = store.open_session("src").unwrap();
        for i in 0..COMPACT_AT {
            let st = record(&format!("{i:02x}"), Event::Synced);
            // As versions before pages wrote them: one object per key.
            s.create_record(&format!("{STATE_PREFIX}{}", st.identity()), st.to_json().as_bytes())
                .unwrap();
        }
        let state = TokenState::new(&store, TokenIds::new());
        assert_eq!(state.read("src").unwrap().len(), COMPACT_AT, "read as they are");
        let notes = state.append("src", &[record("ff", Event::Synced)]).unwrap();
        assert!(
            notes[0].contains(&format!("moved {COMPACT_AT} per-key lifecycle record(s)")),
            "{notes:?}"
        );
        let left = objects(&store);
        assert_eq!(
            left.len(),
            1,
            "one page: {:?}",
            left.iter().map(|d| &d.label).collect::<Vec<_>>()
        );
        assert_eq!(state.read("src").unwrap().len(), COMPACT_AT + 1, "nothing lost");
    }

    #[test]
    fn a_claim_excludes_another_run_until_it_is_released() {
        let store = MemoryStore::default();
        let a = TokenState::new(&store, TokenIds::new());
        let b = TokenState::new(&store, TokenIds::new());
        a.append("src", &[record("a1", Event::Synced)]).unwrap();
        let keys = [KeyInfo::sample("a1")];
        let none: Check<'_> = &|_, _| None;
        let (ma, mb) = (Claim::new(), Claim::new());
        let got = a.claim("src", &keys, &ma, Duration::from_millis(20), none).unwrap();
        assert!(got.refused.is_empty(), "{:?}", got.refused);
        assert_eq!(got.states.len(), 1);
        let lost = b.claim("src", &keys, &mb, Duration::from_millis(20), none).unwrap();
        assert!(
            lost.refused[0].starts_with("another hsm-sync run"),
            "{:?}",
            lost.refused
        );
        a.release("src", &keys, &ma).unwrap();
        let won = b.claim("src", &keys, &mb, Duration::from_millis(20), none).unwrap();
        assert!(won.refused.is_empty(), "{:?}", won.refused);
        b.release("src", &keys, &mb).unwrap();
        let refusing: Check<'_> = &|k, st| st.map(|_| format!("key {} is cooling down", k.name()));
        let cool = a.claim("src", &keys, &ma, Duration::from_millis(20), refusing).unwrap();
        assert_eq!(cool.refused, ["key a1 (k, secret-key) is cooling down"]);
        assert_eq!(objects(&store).len(), 1, "no claim left, the page stays");
    }
}
