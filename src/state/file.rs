//! The `file` state backend: one directory (one per fleet; on shared storage for several
//! machines), OS file locks, atomic writes. Layout, keyed by token identity
//! ([`super::token_id`]):
//!
//! ```text
//! DIR/records/<source>.json      every key's latest record (rewritten whole, atomically)
//! DIR/records/<source>.lock      held while records or claims of that source change
//! DIR/claims/<source>.json       notify claims, by key identity
//! DIR/journals/<target>.json     a target's in-flight journal
//! DIR/fingerprints/<scope>.json  fingerprints cached by CKA_UNIQUE_ID
//! DIR/locks/<target>.lock        the run locks (flock; the kernel drops them with the holder)
//! ```
//!
//! Every file is written to a temporary file in its directory, synced and renamed over
//! the old one: a reader sees the old file or the new one, never half of one. Claims
//! are exclusive under the source's lock, so `notify` needs no settle time here.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::flock;
use super::{id_of, latest, Check, Claim, Claimed, Held, KeyState, StateError, StateStore, TokenIds};
use crate::domain::event::KeyInfo;

/// The records file of one source (version 1).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Records {
    version: u32,
    records: Vec<KeyState>,
}

/// The claims file of one source: claims by key identity.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Claims {
    claims: BTreeMap<String, Claim>,
}

/// The file backend on one directory.
pub(crate) struct FileState {
    dir: PathBuf,
    ids: TokenIds,
}

impl FileState {
    /// The backend on `dir` (made on first write); `ids` names each cluster's token.
    pub(crate) fn new(dir: PathBuf, ids: TokenIds) -> Self {
        FileState { dir, ids }
    }

    fn path(&self, kind: &str, cluster: &str, ext: &str) -> PathBuf {
        self.dir.join(kind).join(format!("{}.{ext}", id_of(&self.ids, cluster)))
    }

    /// Holds `source`'s mutation lock while `f` runs.
    fn locked<T>(&self, source: &str, f: impl FnOnce() -> Result<T, StateError>) -> Result<T, StateError> {
        let path = self.path("records", source, "lock");
        make_dir(path.parent().unwrap_or(&self.dir))?;
        let io = |what, source| StateError::Io {
            what,
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("opening", e))?;
        file.lock().map_err(|e| io("locking", e))?;
        let out = f();
        let _ = file.unlock();
        out
    }

    fn records(&self, source: &str) -> Result<Vec<KeyState>, StateError> {
        Ok(read_json::<Records>(&self.path("records", source, "json"))?
            .map(|r| r.records)
            .unwrap_or_default())
    }
}

fn make_dir(dir: &Path) -> Result<(), StateError> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    // Each directory made here is this user's only, the state directory included.
    if let Some(parent) = dir.parent() {
        make_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(StateError::Io {
                what: "making",
                path: dir.to_path_buf(),
                source: e,
            })
        }
        _ => {}
    }
    // State names keys and resources: readable by this user only.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// A JSON file's value; `None` when it does not exist.
fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                backend: "file",
                what: path.display().to_string(),
                why: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `value` to `path` atomically: a synced temporary file renamed over it.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    make_dir(dir)?;
    let io = |what, source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io("writing", e))?;
    // Plain strings and enums: serializing cannot fail.
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    tmp.write_all(&bytes).map_err(|e| io("writing", e))?;
    tmp.as_file().sync_all().map_err(|e| io("syncing", e))?;
    tmp.persist(path).map_err(|e| io("replacing", e.error))?;
    // The rename itself, durable.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Io {
            what: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl StateStore for FileState {
    fn name(&self) -> &'static str {
        "file"
    }

    fn read(&self, source: &str) -> Result<Vec<KeyState>, StateError> {
        self.records(source)
    }

    fn append(&self, source: &str, records: &[KeyState]) -> Result<Vec<String>, StateError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.locked(source, || {
            let merged = latest(self.records(source)?.into_iter().chain(records.iter().cloned()));
            write_json(
                &self.path("records", source, "json"),
                &Records {
                    version: 1,
                    records: merged,
                },
            )?;
            Ok(Vec::new())
        })
    }

    fn claim(
        &self,
        source: &str,
        keys: &[KeyInfo],
        mine: &Claim,
        _settle: Duration,
        check: Check<'_>,
    ) -> Result<Claimed, StateError> {
        self.locked(source, || {
            let path = self.path("claims", source, "json");
            let mut claims = read_json::<Claims>(&path)?.unwrap_or_default();
            let states: HashMap<String, KeyState> = self
                .records(source)?
                .into_iter()
                .map(|st| (st.identity(), st))
                .collect();
            let now = SystemTime::now();
            let mut out = Claimed::default();
            for k in keys {
                let id = k.identity();
                match claims.claims.get(&id) {
                    Some(other) if other.nonce != mine.nonce && other.is_fresh(now) => {
                        out.refused.push(other.refusal(k))
                    }
                    _ => {
                        if let Some(why) = check(k, states.get(&id)) {
                            out.refused.push(why);
                        }
                    }
                }
            }
            if out.refused.is_empty() {
                // Crashed runs' claims go; ours go in, all at once.
                claims.claims.retain(|_, c| c.is_fresh(now));
                for k in keys {
                    claims.claims.insert(k.identity(), mine.clone());
                }
                write_json(&path, &claims)?;
                out.states = states;
            }
            Ok(out)
        })
    }

    fn release(&self, source: &str, keys: &[KeyInfo], mine: &Claim) -> Result<(), StateError> {
        self.locked(source, || {
            let path = self.path("claims", source, "json");
            let Some(mut claims) = read_json::<Claims>(&path)? else {
                return Ok(());
            };
            let before = claims.claims.len();
            for k in keys {
                let id = k.identity();
                if claims.claims.get(&id).is_some_and(|c| c.nonce == mine.nonce) {
                    claims.claims.remove(&id);
                }
            }
            if claims.claims.len() != before {
                write_json(&path, &claims)?;
            }
            Ok(())
        })
    }

    fn lock(&self, targets: &[&str], command: &str, wait: Duration) -> Result<Held, StateError> {
        let dir = self.dir.join("locks");
        make_dir(&dir)?;
        let list = flock::targets(&self.ids, targets);
        Ok(Box::new(flock::acquire(&dir, &list, command, wait)?))
    }

    fn journal_write(&self, target: &str, entries: &[String]) -> Result<(), StateError> {
        write_json(&self.path("journals", target, "json"), &entries)
    }

    fn journal_read(&self, target: &str) -> Result<Vec<String>, StateError> {
        Ok(read_json::<Vec<String>>(&self.path("journals", target, "json"))?.unwrap_or_default())
    }

    fn journal_clear(&self, target: &str) -> Result<(), StateError> {
        remove(&self.path("journals", target, "json"))
    }

    fn cached_fingerprints(&self, _cluster: &str, scope: &str) -> Result<HashMap<String, String>, StateError> {
        let path = self.dir.join("fingerprints").join(format!("{scope}.json"));
        Ok(read_json::<HashMap<String, String>>(&path)?.unwrap_or_default())
    }

    fn cache_fingerprints(&self, cluster: &str, scope: &str, entries: &[(String, String)]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("fingerprints").join(format!("{scope}.json"));
        self.locked(cluster, || {
            let mut all = read_json::<HashMap<String, String>>(&path)?.unwrap_or_default();
            all.extend(entries.iter().cloned());
            write_json(&path, &all)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Event;

    fn record(id: &str, event: Event) -> KeyState {
        KeyState::sample(id, event, "2027-01-15T08:00:00.000Z")
    }

    fn ids() -> TokenIds {
        TokenIds::from([
            ("src".to_string(), "0a0b".to_string()),
            ("dst".to_string(), "0c0d".to_string()),
        ])
    }

    #[test]
    fn records_journals_and_fingerprints_round_trip_in_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileState::new(dir.path().join("state"), ids());
        assert!(st.read("src").unwrap().is_empty(), "no directory yet: no records");
        st.append("src", &[record("a1", Event::Synced), record("b2", Event::Synced)])
            .unwrap();
        st.append("src", &[record("a1", Event::Deleted)]).unwrap();
        let read = st.read("src").unwrap();
        assert_eq!(
            read.iter().map(|r| (r.key.id.as_str(), r.event)).collect::<Vec<_>>(),
            [("a1", Event::Deleted), ("b2", Event::Synced)]
        );
        assert!(
            dir.path().join("state/records/0a0b.json").is_file(),
            "keyed by the token's identity"
        );
        st.journal_write("dst", &["x".into()]).unwrap();
        assert_eq!(st.journal_read("dst").unwrap(), ["x"]);
        st.journal_clear("dst").unwrap();
        assert!(st.journal_read("dst").unwrap().is_empty());
        st.cache_fingerprints("dst", "s1", &[("uid-1".into(), "fp".into())])
            .unwrap();
        assert_eq!(
            st.cached_fingerprints("dst", "s1")
                .unwrap()
                .get("uid-1")
                .map(String::as_str),
            Some("fp")
        );
        assert!(st.cached_fingerprints("dst", "s2").unwrap().is_empty(), "another scope");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the directory is this user's only: {mode:o}");
    }

    #[test]
    fn a_records_file_that_does_not_parse_is_an_error_that_names_it_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let st = FileState::new(dir.path().to_path_buf(), ids());
        std::fs::create_dir_all(dir.path().join("records")).unwrap();
        std::fs::write(dir.path().join("records/0a0b.json"), "{not json").unwrap();
        let e = st
            .append("src", &[record("a1", Event::Synced)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("records/0a0b.json") && e.contains("does not parse"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("records/0a0b.json")).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn claims_are_exclusive_across_two_processes_views_of_one_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            FileState::new(dir.path().into(), ids()),
            FileState::new(dir.path().into(), ids()),
        );
        a.append("src", &[record("a1", Event::Synced)]).unwrap();
        let keys = [KeyInfo::sample("a1")];
        let none: Check<'_> = &|_, _| None;
        let (ma, mb) = (Claim::new(), Claim::new());
        assert!(a
            .claim("src", &keys, &ma, Duration::ZERO, none)
            .unwrap()
            .refused
            .is_empty());
        let lost = b.claim("src", &keys, &mb, Duration::ZERO, none).unwrap();
        assert!(
            lost.refused[0].starts_with("another hsm-sync run"),
            "{:?}",
            lost.refused
        );
        b.release("src", &keys, &mb).unwrap();
        assert!(
            !b.claim("src", &keys, &mb, Duration::ZERO, none)
                .unwrap()
                .refused
                .is_empty(),
            "b's release is not a's"
        );
        a.release("src", &keys, &ma).unwrap();
        assert!(b
            .claim("src", &keys, &mb, Duration::ZERO, none)
            .unwrap()
            .refused
            .is_empty());
    }

    #[test]
    fn a_run_lock_in_the_directory_names_its_holder_to_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            FileState::new(dir.path().into(), ids()),
            FileState::new(dir.path().into(), ids()),
        );
        let held = a.lock(&["dst"], "apply", Duration::ZERO).unwrap();
        let e = b
            .lock(&["dst"], "apply", Duration::ZERO)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("cluster `dst` is being changed by another hsm-sync run (apply, pid"),
            "{e}"
        );
        drop(held);
        assert!(b.lock(&["dst"], "apply", Duration::ZERO).is_ok());
    }
}
