//! An in-memory key store for unit tests of pure logic (the executor's retry, adopt,
//! repair and verify): objects are domain keys with their material beside them, and
//! faults are queued per cluster and operation. Never used outside `cfg(test)`;
//! integration tests run against real tokens.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use sha2::{Digest, Sha256};

use crate::domain::fingerprint::Fingerprint;
use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyObject, KeyType};

use super::fingerprint::fingerprint_of;
use super::port::{KeySession, KeyStore, RecordSession};
use super::DataObject;
use super::HsmError;
use super::{public_fingerprint, Wrapped};

/// What the next call of an operation does instead of succeeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Fails with a device error, retryable.
    Transient,
    /// Unwrap only: makes the object, then fails with a device error (a lost reply).
    TransientAfterCreate,
    /// Fails with an error that is not retried.
    Fatal,
    /// Unwrap only: the copy holds other key material (verification must catch it).
    Corrupt,
}

/// One object and its key material.
#[derive(Clone)]
struct Obj {
    key: KeyObject,
    material: Vec<u8>,
}

#[derive(Default)]
struct Cluster {
    objects: Vec<Obj>,
    next: u64,
    faults: HashMap<&'static str, VecDeque<Fault>>,
    records: Vec<DataObject>,
    journal: Vec<String>,
    calls: HashMap<&'static str, usize>,
}

/// Clusters of in-memory tokens, shared by every session.
#[derive(Clone, Default)]
pub(crate) struct MemoryStore {
    clusters: Arc<Mutex<HashMap<String, Cluster>>>,
}

impl Cluster {
    /// The next handle on this token: the in-memory store's mint (the real one is in
    /// `raw.rs`; clippy.toml allows these two only).
    #[allow(clippy::disallowed_methods)]
    fn mint(&mut self) -> Handle {
        self.next += 1;
        Handle::minted(self.next)
    }
}

impl MemoryStore {
    fn with<T>(&self, cluster: &str, f: impl FnOnce(&mut Cluster) -> T) -> T {
        let mut all = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        f(all.entry(cluster.to_string()).or_default())
    }

    /// Puts a key with `material` on `cluster`; returns the key as the token holds it.
    pub(crate) fn add(&self, cluster: &str, mut key: KeyObject, material: &[u8]) -> KeyObject {
        self.with(cluster, |c| {
            key.handle = c.mint();
            key.fingerprint = Fingerprint::Known(fingerprint_of(key.class, material).into());
            c.objects.push(Obj {
                key: key.clone(),
                material: material.to_vec(),
            });
            key
        })
    }

    /// Queues `fault` for the next call of `op` (`wrap`, `unwrap`, `destroy`, …) on `cluster`.
    pub(crate) fn fail_next(&self, cluster: &str, op: &'static str, fault: Fault) {
        self.with(cluster, |c| c.faults.entry(op).or_default().push_back(fault));
    }

    /// The keys on `cluster` and their material.
    pub(crate) fn objects(&self, cluster: &str) -> Vec<(KeyObject, Vec<u8>)> {
        self.with(cluster, |c| {
            c.objects.iter().map(|o| (o.key.clone(), o.material.clone())).collect()
        })
    }

    /// How many times `op` was called on `cluster`.
    pub(crate) fn calls(&self, cluster: &str, op: &'static str) -> usize {
        self.with(cluster, |c| c.calls.get(op).copied().unwrap_or(0))
    }
}

/// A session on one in-memory cluster.
pub(crate) struct MemorySession {
    store: MemoryStore,
    cluster: String,
}

fn error(cluster: &str, op: &'static str, rv: RvError) -> HsmError {
    HsmError::Pkcs11 {
        cluster: cluster.to_string(),
        op,
        error: CkError::Pkcs11(rv, Function::UnwrapKey),
    }
}

impl MemorySession {
    /// Counts the call and takes its queued fault, if any.
    fn fault(&self, op: &'static str) -> Option<Fault> {
        self.store.with(&self.cluster, |c| {
            *c.calls.entry(op).or_default() += 1;
            c.faults.get_mut(op).and_then(VecDeque::pop_front)
        })
    }

    fn fail(&self, op: &'static str) -> Result<Option<Fault>, HsmError> {
        match self.fault(op) {
            Some(Fault::Transient) => Err(error(&self.cluster, op, RvError::DeviceError)),
            Some(Fault::Fatal) => Err(error(&self.cluster, op, RvError::FunctionFailed)),
            other => Ok(other),
        }
    }

    fn material(&self, handle: Handle) -> Option<(KeyObject, Vec<u8>)> {
        self.store.with(&self.cluster, |c| {
            c.objects
                .iter()
                .find(|o| o.key.handle == handle)
                .map(|o| (o.key.clone(), o.material.clone()))
        })
    }

    fn create(&self, like: &KeyObject, material: Vec<u8>) -> Handle {
        let mut key = like.clone();
        key.fingerprint = Fingerprint::Deferred;
        self.store.add(&self.cluster, key, &material).handle
    }
}

impl KeyStore for MemoryStore {
    type Session = MemorySession;

    fn open_session(&self, cluster: &str) -> Result<MemorySession, HsmError> {
        Ok(MemorySession {
            store: self.clone(),
            cluster: cluster.to_string(),
        })
    }

    fn listed_len(&self, cluster: &str) -> Option<usize> {
        Some(self.with(cluster, |c| c.objects.len()))
    }

    fn take_listed_keys(&self, _cluster: &str) -> Option<Vec<Handle>> {
        // No login search to reuse: the inventory lists the keys itself.
        None
    }
}

impl RecordSession for MemorySession {
    fn data_handles(&self) -> Result<Vec<Handle>, HsmError> {
        self.fail("records")?;
        Ok(self
            .store
            .with(&self.cluster, |c| c.records.iter().map(|d| d.handle).collect()))
    }

    fn create_record(&self, name: &str, record: &[u8]) -> Result<DataObject, HsmError> {
        self.fail("write_record")?;
        Ok(self.store.with(&self.cluster, |c| {
            let d = DataObject {
                handle: c.mint(),
                label: name.to_string(),
                value: record.to_vec(),
            };
            c.records.push(d.clone());
            d
        }))
    }

    fn find_named(&self, label: &str) -> Result<Vec<DataObject>, HsmError> {
        self.fail("records")?;
        Ok(self.store.with(&self.cluster, |c| {
            c.records.iter().filter(|d| d.label == label).cloned().collect()
        }))
    }

    fn destroy_record(&self, d: &DataObject) -> Result<(), HsmError> {
        self.fail("write_record")?;
        self.store
            .with(&self.cluster, |c| c.records.retain(|r| r.handle != d.handle));
        Ok(())
    }

    fn journal_write(&self, entries: &[String]) -> Result<(), HsmError> {
        self.fail("journal")?;
        self.store.with(&self.cluster, |c| c.journal = entries.to_vec());
        Ok(())
    }

    fn journal_clear(&self) -> Result<(), HsmError> {
        self.fail("journal")?;
        self.store.with(&self.cluster, |c| c.journal.clear());
        Ok(())
    }

    fn reread_data(&self, handle: Handle) -> Result<Option<DataObject>, HsmError> {
        Ok(self.store.with(&self.cluster, |c| {
            c.records.iter().find(|d| d.handle == handle).cloned()
        }))
    }
}

impl KeySession for MemorySession {
    fn wrap(&self, handle: Handle, _class: KeyClass) -> Result<Wrapped, HsmError> {
        self.fail("wrap")?;
        match self.material(handle) {
            Some((k, m)) if k.flags.extractable => Ok(Wrapped::from_bytes(m)),
            Some(_) => Err(error(&self.cluster, "wrap", RvError::KeyUnextractable)),
            None => Err(error(&self.cluster, "wrap", RvError::ObjectHandleInvalid)),
        }
    }

    fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<Handle, HsmError> {
        match self.fail("unwrap")? {
            Some(Fault::TransientAfterCreate) => {
                self.create(like, blob.bytes().to_vec());
                Err(error(&self.cluster, "unwrap", RvError::DeviceError))
            }
            Some(Fault::Corrupt) => {
                let mut other = blob.bytes().to_vec();
                if let Some(b) = other.first_mut() {
                    *b ^= 1;
                }
                Ok(self.create(like, other))
            }
            _ => Ok(self.create(like, blob.bytes().to_vec())),
        }
    }

    fn create_public(&self, like: &KeyObject) -> Result<Handle, HsmError> {
        self.fail("create_public")?;
        Ok(self.create(like, Vec::new()))
    }

    fn read_key_at(&self, handle: Handle) -> Result<Option<KeyObject>, HsmError> {
        self.fail("read")?;
        Ok(self.material(handle).map(|(k, _)| k))
    }

    fn fingerprint(&self, key: &KeyObject) -> Result<Option<String>, HsmError> {
        if key.class == KeyClass::PublicKey {
            return Ok(Some(public_fingerprint(key.key_type, key.public())));
        }
        // As the token layer: a key that cannot be extracted is not even tried.
        if !key.flags.extractable {
            return Ok(None);
        }
        self.fingerprint_at(key.handle, key.class)
    }

    fn fingerprint_at(&self, handle: Handle, class: KeyClass) -> Result<Option<String>, HsmError> {
        self.fail("fingerprint")?;
        Ok(self
            .material(handle)
            .filter(|(k, _)| k.flags.extractable)
            .map(|(_, m)| fingerprint_of(class, &m)))
    }

    fn find_like(&self, like: &KeyObject) -> Result<Vec<KeyObject>, HsmError> {
        self.fail("find")?;
        let found: Vec<(KeyObject, Vec<u8>)> = self.store.with(&self.cluster, |c| {
            c.objects
                .iter()
                .filter(|o| o.key.identity() == like.identity())
                .map(|o| (o.key.clone(), o.material.clone()))
                .collect()
        });
        Ok(found
            .into_iter()
            .map(|(mut k, m)| {
                k.fingerprint = Fingerprint::Known(fingerprint_of(k.class, &m).into());
                k
            })
            .collect())
    }

    fn set_usage(&self, handle: Handle, like: &KeyObject) -> Result<(), HsmError> {
        self.fail("set_usage")?;
        self.store.with(&self.cluster, |c| {
            if let Some(o) = c.objects.iter_mut().find(|o| o.key.handle == handle) {
                o.key.label = like.label.clone();
                o.key.flags = like.flags;
            }
        });
        Ok(())
    }

    fn destroy(&self, handle: Handle) -> Result<(), HsmError> {
        self.fail("destroy")?;
        self.store
            .with(&self.cluster, |c| c.objects.retain(|o| o.key.handle != handle));
        Ok(())
    }

    fn hmac(&self, handle: Handle, key_type: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        self.fail("hmac")?;
        // A keyed digest of the value as stored, trailing zero bytes dropped: zero-padded
        // copies of an odd-length secret give equal MACs, as HMAC does. Asked as another
        // type than the key's, it refuses as strict tokens do (the mechanism is the type's).
        Ok(self
            .material(handle)
            .filter(|(k, _)| k.key_type == key_type)
            .map(|(_, m)| {
                let end = m.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
                let mut h = Sha256::new();
                h.update(&m[..end]);
                h.update(data);
                h.finalize().to_vec()
            }))
    }

    fn sign(&self, handle: Handle, _: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        self.fail("sign")?;
        // A keyed digest of the private key's material stands in for a signature.
        Ok(self.material(handle).map(|(_, m)| {
            let mut h = Sha256::new();
            h.update(&m);
            h.update(data);
            h.finalize().to_vec()
        }))
    }

    fn verify_public(&self, private: &KeyObject, data: &[u8], signature: &[u8]) -> Result<Option<bool>, HsmError> {
        self.fail("verify")?;
        // The in-memory "public half" is the source's private material of this identity.
        let m = self.store.with(&self.cluster, |c| {
            c.objects
                .iter()
                .find(|o| o.key.identity() == private.identity())
                .map(|o| o.material.clone())
        });
        Ok(m.map(|m| {
            let mut h = Sha256::new();
            h.update(&m);
            h.update(data);
            h.finalize().as_slice() == signature
        }))
    }

    fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        self.fail("random")?;
        Ok((0..n).map(|i| i as u8).collect())
    }

    fn key_handles_or(&self, listed: Option<Vec<Handle>>) -> Result<Vec<Handle>, HsmError> {
        if let Some(l) = listed {
            return Ok(l);
        }
        self.fail("list")?;
        Ok(self
            .store
            .with(&self.cluster, |c| c.objects.iter().map(|o| o.key.handle).collect()))
    }

    fn read_fingerprinted(&self, handle: Handle, wrap: bool) -> Result<Option<KeyObject>, HsmError> {
        let Some(mut k) = self.read_key_at(handle)? else {
            return Ok(None);
        };
        if wrap || k.class == KeyClass::PublicKey {
            k.fingerprint = Fingerprint::tried(self.fingerprint(&k)?);
        } else {
            k.fingerprint = Fingerprint::Deferred;
        }
        Ok(Some(k))
    }

    fn journal_read(&self) -> Result<Vec<String>, HsmError> {
        self.fail("journal")?;
        Ok(self.store.with(&self.cluster, |c| c.journal.clone()))
    }
}
