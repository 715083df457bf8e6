//! The key-store port: what the executor needs from a token, in domain types. The real
//! token ([`TokenSession`], one PKCS#11 session) and the in-memory store of the unit tests
//! both implement it, so retry, adopt, repair and verify are tested without a token.

use crate::domain::handle::Handle;
use crate::domain::key::{KeyClass, KeyObject, KeyType};
use crate::domain::wire::WireFormat;

use super::{DataObject, HsmError, TokenSession, Wrapped};

/// Where sessions come from: one per worker and cluster (a PKCS#11 session is `Send`,
/// not `Sync`).
pub(crate) trait KeyStore: Sync {
    /// A session on one cluster's token.
    type Session: KeySession + RecordSession + Send;

    /// Opens a session on `cluster`'s token (logged in already).
    fn open_session(&self, cluster: &str) -> Result<Self::Session, HsmError>;

    /// A session on `cluster`'s token that wraps in `format` (one of its pairs' formats);
    /// `None`: the run's own. A store without formats opens its one kind of session.
    fn open_session_in(&self, cluster: &str, format: Option<WireFormat>) -> Result<Self::Session, HsmError> {
        let _ = format;
        self.open_session(cluster)
    }

    /// How many keys login's search met on `cluster` (the domain key included), while
    /// the inventory has not taken them; `None` when unknown.
    fn listed_len(&self, cluster: &str) -> Option<usize>;

    /// The key handles login's search met on `cluster`, once (the first inventory takes
    /// them; later ones search again).
    fn take_listed_keys(&self, cluster: &str) -> Option<Vec<Handle>>;

    /// Whether `cluster`'s token gives every object a `CKA_UNIQUE_ID` (PKCS#11 3.0).
    fn has_unique_ids(&self, _cluster: &str) -> bool {
        false
    }

    /// The key types `cluster`'s token offers no mechanism for (it cannot hold a copy of
    /// them: Kryoptic has no DES3); empty where unknown.
    fn missing_key_types(&self, _cluster: &str) -> Vec<crate::domain::key::KeyType> {
        Vec::new()
    }
}

/// One session's key operations. Handles are the token's own, valid for this run.
pub(crate) trait KeySession {
    /// Wraps a secret or private key under the domain key.
    fn wrap(&self, handle: Handle, class: KeyClass) -> Result<Wrapped, HsmError>;
    /// Unwraps `blob` as a token object with `like`'s attributes; returns its handle.
    fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<Handle, HsmError>;
    /// Creates the public half of a pair from `like`'s public attributes.
    fn create_public(&self, like: &KeyObject) -> Result<Handle, HsmError>;
    /// Reads one key (not fingerprinted); `None` when the handle is no key.
    fn read_key_at(&self, handle: Handle) -> Result<Option<KeyObject>, HsmError>;
    /// The fingerprint of a key read earlier (`None`: it cannot be wrapped).
    fn fingerprint(&self, key: &KeyObject) -> Result<Option<String>, HsmError>;
    /// The fingerprint of the secret or private key at `handle`.
    fn fingerprint_at(&self, handle: Handle, class: KeyClass) -> Result<Option<String>, HsmError>;
    /// The keys with `like`'s identity, fingerprinted.
    fn find_like(&self, like: &KeyObject) -> Result<Vec<KeyObject>, HsmError>;
    /// Sets label and usage flags to `like`'s.
    fn set_usage(&self, handle: Handle, like: &KeyObject) -> Result<(), HsmError>;
    /// Destroys an object.
    fn destroy(&self, handle: Handle) -> Result<(), HsmError>;
    /// An HMAC of `data` under the key at `handle`, of `key_type` (which picks the
    /// mechanism; `None`: the key fits no HMAC mechanism of the token).
    fn hmac(&self, handle: Handle, key_type: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError>;
    /// Random bytes.
    fn random(&self, n: usize) -> Result<Vec<u8>, HsmError>;
    /// A signature of `data` by the private key at `handle` (`None`: its type does not sign).
    fn sign(
        &self,
        handle: Handle,
        key_type: crate::domain::key::KeyType,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, HsmError>;
    /// Whether `signature` of `data` verifies under `private`'s public half here (`None`:
    /// no such public key on this token).
    fn verify_public(&self, private: &KeyObject, data: &[u8], signature: &[u8]) -> Result<Option<bool>, HsmError>;
    /// Every key handle on the token but the domain key (`listed` from login, if given).
    fn key_handles_or(&self, listed: Option<Vec<Handle>>) -> Result<Vec<Handle>, HsmError>;
    /// Reads a key, fingerprinted if `wrap` (public keys always); `None` if it is no key.
    fn read_fingerprinted(&self, handle: Handle, wrap: bool) -> Result<Option<KeyObject>, HsmError>;
    /// The identities an interrupted run was copying here (the in-flight journal).
    fn journal_read(&self) -> Result<Vec<String>, HsmError>;

    /// Reads a key (not fingerprinted) and, in the same call, its `CKA_UNIQUE_ID` where
    /// the token gives one (a store without unique ids gives none).
    fn read_with_unique_id(&self, handle: Handle) -> Result<Option<(KeyObject, Option<String>)>, HsmError> {
        Ok(self.read_fingerprinted(handle, false)?.map(|k| (k, None)))
    }

    /// The wire format this session wraps in (what its fingerprints digest); `None` for
    /// a store with no formats (the in-memory one).
    fn wire_format(&self) -> Option<crate::domain::wire::WireFormat> {
        None
    }

    /// What copies here do not keep because the token refused an attribute this run.
    fn template_note(&self) -> Option<String> {
        None
    }

    /// Whether this session's wrap mechanism zero-pads a value to a multiple of 8 before
    /// wrapping (SoftHSM's do), so an odd-length secret's fingerprint is of the padded value.
    fn zero_pads(&self) -> bool {
        false
    }

    /// Every key on the token but the domain key, fingerprinted, in inventory order.
    fn list_keys(&self) -> Result<Vec<KeyObject>, HsmError> {
        let mut out = Vec::new();
        for h in self.key_handles_or(None)? {
            out.extend(self.read_fingerprinted(h, true)?);
        }
        crate::domain::key::sort_keys(&mut out);
        Ok(out)
    }
}

/// hsm-sync's own data objects on a token (the token state backend's pages and claims,
/// the in-flight journal): what [`crate::state::token`] needs, so it runs on the
/// in-memory store in unit tests too. Objects are made and destroyed, never changed.
pub(crate) trait RecordSession {
    /// Handles of every hsm-sync data object on the token.
    fn data_handles(&self) -> Result<Vec<Handle>, HsmError>;
    /// Creates a data object named `name` holding `record`.
    fn create_record(&self, name: &str, record: &[u8]) -> Result<DataObject, HsmError>;
    /// The hsm-sync data objects labelled exactly `label` (one search, then a read each).
    fn find_named(&self, label: &str) -> Result<Vec<DataObject>, HsmError>;
    /// Destroys a data object (one already gone counts as destroyed).
    fn destroy_record(&self, d: &DataObject) -> Result<(), HsmError>;
    /// Reads one data object again (another process's changes included); `None` if gone.
    fn reread_data(&self, handle: Handle) -> Result<Option<DataObject>, HsmError>;
    /// Replaces this token's in-flight journal with `entries`.
    fn journal_write(&self, entries: &[String]) -> Result<(), HsmError>;
    /// Removes this token's in-flight journal.
    fn journal_clear(&self) -> Result<(), HsmError>;
}

impl RecordSession for TokenSession {
    fn data_handles(&self) -> Result<Vec<Handle>, HsmError> {
        TokenSession::data_handles(self)
    }
    fn create_record(&self, name: &str, record: &[u8]) -> Result<DataObject, HsmError> {
        TokenSession::create_record(self, name, record)
    }
    fn destroy_record(&self, d: &DataObject) -> Result<(), HsmError> {
        TokenSession::destroy_record(self, d)
    }
    fn find_named(&self, label: &str) -> Result<Vec<DataObject>, HsmError> {
        TokenSession::find_named(self, label)
    }
    fn reread_data(&self, handle: Handle) -> Result<Option<DataObject>, HsmError> {
        TokenSession::reread_data(self, handle)
    }
    fn journal_write(&self, entries: &[String]) -> Result<(), HsmError> {
        TokenSession::journal_write(self, entries)
    }
    fn journal_clear(&self) -> Result<(), HsmError> {
        TokenSession::journal_clear(self)
    }
}

impl KeySession for TokenSession {
    fn wrap(&self, handle: Handle, class: KeyClass) -> Result<Wrapped, HsmError> {
        TokenSession::wrap(self, handle, class)
    }
    fn unwrap_as(&self, blob: &Wrapped, like: &KeyObject) -> Result<Handle, HsmError> {
        TokenSession::unwrap_as(self, blob, like)
    }
    fn create_public(&self, like: &KeyObject) -> Result<Handle, HsmError> {
        TokenSession::create_public(self, like)
    }
    fn read_key_at(&self, handle: Handle) -> Result<Option<KeyObject>, HsmError> {
        TokenSession::read_key_at(self, handle)
    }
    fn fingerprint(&self, key: &KeyObject) -> Result<Option<String>, HsmError> {
        TokenSession::fingerprint(self, key)
    }
    fn fingerprint_at(&self, handle: Handle, class: KeyClass) -> Result<Option<String>, HsmError> {
        TokenSession::fingerprint_at(self, handle, class)
    }
    fn find_like(&self, like: &KeyObject) -> Result<Vec<KeyObject>, HsmError> {
        TokenSession::find_like(self, like)
    }
    fn set_usage(&self, handle: Handle, like: &KeyObject) -> Result<(), HsmError> {
        TokenSession::set_usage(self, handle, like)
    }
    fn destroy(&self, handle: Handle) -> Result<(), HsmError> {
        TokenSession::destroy(self, handle)
    }
    fn hmac(&self, handle: Handle, key_type: KeyType, data: &[u8]) -> Result<Option<Vec<u8>>, HsmError> {
        TokenSession::hmac(self, handle, key_type, data)
    }
    fn random(&self, n: usize) -> Result<Vec<u8>, HsmError> {
        TokenSession::random(self, n)
    }
    fn wire_format(&self) -> Option<crate::domain::wire::WireFormat> {
        Some(self.wrap.format)
    }
    fn read_with_unique_id(&self, handle: Handle) -> Result<Option<(KeyObject, Option<String>)>, HsmError> {
        TokenSession::read_with_unique_id(self, handle)
    }
    fn zero_pads(&self) -> bool {
        self.wrap.zero_pads
    }
    fn template_note(&self) -> Option<String> {
        TokenSession::template_note(self)
    }
    fn sign(
        &self,
        handle: Handle,
        key_type: crate::domain::key::KeyType,
        data: &[u8],
    ) -> Result<Option<Vec<u8>>, HsmError> {
        TokenSession::sign(self, handle, key_type, data)
    }
    fn verify_public(&self, private: &KeyObject, data: &[u8], signature: &[u8]) -> Result<Option<bool>, HsmError> {
        TokenSession::verify_public(self, private, data, signature)
    }
    fn key_handles_or(&self, listed: Option<Vec<Handle>>) -> Result<Vec<Handle>, HsmError> {
        TokenSession::key_handles_or(self, listed)
    }
    fn read_fingerprinted(&self, handle: Handle, wrap: bool) -> Result<Option<KeyObject>, HsmError> {
        TokenSession::read_fingerprinted(self, handle, wrap)
    }
    fn journal_read(&self) -> Result<Vec<String>, HsmError> {
        TokenSession::journal_read(self)
    }
}
