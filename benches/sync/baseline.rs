//! The baseline: a minimal raw cryptoki loop doing only wrap → unwrap → verify, and a raw
//! inventory (find, then one `C_GetAttributeValue` per object). Both read the attributes
//! with the lengths of hsm-sync's own table (`hsm_sync::hsm::attributes`), so the
//! comparison is of the same work.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki_sys as sys;
use hsm_sync::hsm::attributes::{read_len, KEY_ATTRIBUTES};
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::{pin, DOMAIN};

/// The bench's own cryptoki context on a module, with the raw function list beside it
/// for the calls cryptoki makes twice.
pub(crate) struct Ctx {
    pub(crate) ctx: Pkcs11,
    f: sys::CK_FUNCTION_LIST,
    _lib: sys::Pkcs11,
    /// The module's RFC 5649 mechanism: SoftHSM's 0x210A, Kryoptic's 0x210B
    /// (PKCS11-NOTES.md), the one hsm-sync's probe picks on each.
    kwp: sys::CK_MECHANISM_TYPE,
}

impl Ctx {
    /// Loads and initialises `module` (or joins the context already initialised), to
    /// wrap with RFC 5649 under the id `kwp`.
    pub(crate) fn new(module: &Path, kwp: sys::CK_MECHANISM_TYPE) -> Ctx {
        let ctx = Pkcs11::new(module).expect("the PKCS#11 module loads");
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => panic!("C_Initialize: {e}"),
        }
        // SAFETY: the same library cryptoki loaded (dlopen shares it); its function list
        // stays valid while `_lib` holds the library.
        let (lib, f) = unsafe {
            let lib = sys::Pkcs11::new(module).expect("the module loads");
            let mut p: *mut sys::CK_FUNCTION_LIST = std::ptr::null_mut();
            assert_eq!(lib.C_GetFunctionList(&mut p), sys::CKR_OK, "C_GetFunctionList");
            (lib, *p)
        };
        Ctx { ctx, f, _lib: lib, kwp }
    }

    /// The slot of the token labelled `label`.
    pub(crate) fn slot(&self, label: &str) -> Slot {
        for s in self.ctx.get_slots_with_token().expect("slots") {
            if self.ctx.get_token_info(s).expect("token info").label() == label {
                return s;
            }
        }
        panic!("no token labelled {label}");
    }

    /// A session, logged in (the login holds while any session of the process is open).
    pub(crate) fn login(&self, label: &str) -> Session {
        let s = self.ctx.open_rw_session(self.slot(label)).expect("a session");
        match s.login(UserType::User, Some(&SecretString::from(pin(label)))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => s,
            Err(e) => panic!("login on {label}: {e}"),
        }
    }

    /// The domain key of the session's token, by the search hsm-sync makes (the cheap
    /// attributes before the label, which SoftHSM decrypts per private key).
    pub(crate) fn domain_key(&self, s: &Session) -> ObjectHandle {
        let found = s
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Label(DOMAIN.as_bytes().to_vec()),
            ])
            .expect("find the domain key");
        found[0]
    }

    /// One `C_WrapKey` (RFC 5649) into a buffer sized in advance.
    pub(crate) fn wrap(&self, s: &Session, dk: ObjectHandle, h: ObjectHandle, buf: &mut [u8]) -> usize {
        let mut mech = self.mechanism();
        let mut len = buf.len() as sys::CK_ULONG;
        let wrap = self.f.C_WrapKey.expect("C_WrapKey");
        // SAFETY: valid session and handles, buffer and length describe `buf`.
        let rv = unsafe {
            wrap(
                s.handle(),
                &mut mech,
                dk.handle(),
                h.handle(),
                buf.as_mut_ptr(),
                &mut len,
            )
        };
        assert_eq!(rv, sys::CKR_OK, "C_WrapKey");
        len as usize
    }

    /// The RFC 5649 mechanism, without parameters.
    fn mechanism(&self) -> sys::CK_MECHANISM {
        sys::CK_MECHANISM {
            mechanism: self.kwp,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        }
    }

    /// One `C_UnwrapKey` (RFC 5649) of `blob` under `dk` as a token object of `template`
    /// (raw: cryptoki 0.12 cannot name 0x210B).
    pub(crate) fn unwrap(&self, s: &Session, dk: ObjectHandle, blob: &[u8], template: &[Attribute]) -> ObjectHandle {
        let mut mech = self.mechanism();
        let mut tmpl: Vec<sys::CK_ATTRIBUTE> = template.iter().map(sys::CK_ATTRIBUTE::from).collect();
        let mut out: sys::CK_OBJECT_HANDLE = 0;
        let unwrap = self.f.C_UnwrapKey.expect("C_UnwrapKey");
        // SAFETY: valid session and handle; the blob is only read; every template entry
        // points into `template`, which outlives the call.
        let rv = unsafe {
            unwrap(
                s.handle(),
                &mut mech,
                dk.handle(),
                blob.as_ptr().cast_mut(),
                blob.len() as sys::CK_ULONG,
                tmpl.as_mut_ptr(),
                tmpl.len() as sys::CK_ULONG,
                &mut out,
            )
        };
        assert_eq!(rv, sys::CKR_OK, "C_UnwrapKey");
        // SAFETY: the handle the module just returned for the new object.
        unsafe { ObjectHandle::new_from_raw(out) }
    }

    /// One `C_GetAttributeValue` for `types`, each with a buffer of `size` bytes; returns
    /// the values (empty where unavailable).
    pub(crate) fn read(&self, s: &Session, h: ObjectHandle, types: &[(AttributeType, usize)]) -> Vec<Vec<u8>> {
        let mut bufs: Vec<Vec<u8>> = types.iter().map(|(_, n)| vec![0u8; *n]).collect();
        let mut tmpl: Vec<sys::CK_ATTRIBUTE> = types
            .iter()
            .zip(bufs.iter_mut())
            .map(|((t, _), b)| sys::CK_ATTRIBUTE {
                type_: (*t).into(),
                pValue: b.as_mut_ptr().cast(),
                ulValueLen: b.len() as sys::CK_ULONG,
            })
            .collect();
        let get = self.f.C_GetAttributeValue.expect("C_GetAttributeValue");
        // SAFETY: every template entry points at its own live buffer of the stated length.
        let rv = unsafe { get(s.handle(), h.handle(), tmpl.as_mut_ptr(), tmpl.len() as sys::CK_ULONG) };
        assert!(
            matches!(
                rv,
                sys::CKR_OK | sys::CKR_ATTRIBUTE_TYPE_INVALID | sys::CKR_ATTRIBUTE_SENSITIVE
            ),
            "C_GetAttributeValue: {rv:#x}"
        );
        bufs.into_iter()
            .zip(&tmpl)
            .map(|(mut b, a)| {
                if a.ulValueLen == sys::CK_UNAVAILABLE_INFORMATION {
                    b.clear();
                } else {
                    b.truncate(a.ulValueLen as usize);
                }
                b
            })
            .collect()
    }
}

/// One source key as the raw loop knows it (from its own provisioning).
pub(crate) struct Obj {
    h: ObjectHandle,
    class: ObjectClass,
    key_type: KeyType,
    id: Vec<u8>,
    label: Vec<u8>,
}

/// The template hsm-sync's copies carry (same attributes, so SoftHSM does the same work).
fn template(o: &Obj) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(o.class),
        Attribute::KeyType(o.key_type),
        Attribute::Token(true),
        Attribute::Id(o.id.clone()),
        Attribute::Label(o.label.clone()),
        Attribute::Private(o.class != ObjectClass::PUBLIC_KEY),
        Attribute::Modifiable(true),
    ];
    let secret = o.class == ObjectClass::SECRET_KEY;
    match o.class {
        ObjectClass::PUBLIC_KEY => t.extend([
            Attribute::Encrypt(o.key_type == KeyType::RSA),
            Attribute::Verify(true),
            Attribute::VerifyRecover(false),
            Attribute::Wrap(false),
            Attribute::Derive(false),
        ]),
        _ => {
            t.extend([Attribute::Sensitive(true), Attribute::Extractable(true)]);
            if secret {
                t.extend([
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::Sign(false),
                    Attribute::Verify(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
            } else {
                t.extend([
                    Attribute::Decrypt(o.key_type == KeyType::RSA),
                    Attribute::Sign(true),
                    Attribute::SignRecover(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
            }
        }
    }
    t
}

/// The lengths hsm-sync reads `types` with.
fn sized<const N: usize>(types: [AttributeType; N]) -> [(AttributeType, usize); N] {
    types.map(|t| (t, read_len(t).expect("hsm-sync reads this attribute per key")))
}

/// What a public key is made of, with the lengths hsm-sync reads them with.
fn public_parts(key_type: KeyType) -> [(AttributeType, usize); 2] {
    if key_type == KeyType::RSA {
        sized([AttributeType::Modulus, AttributeType::PublicExponent])
    } else {
        sized([AttributeType::EcParams, AttributeType::EcPoint])
    }
}

/// The raw loop: every key wrapped once, unwrapped on every target, each copy verified.
pub(crate) fn raw_copy(c: &Ctx, objs: &[Obj], targets: &[String], threads: usize) -> Duration {
    let anchors: Vec<Session> = std::iter::once("src".to_string())
        .chain(targets.iter().cloned())
        .map(|t| c.login(&t))
        .collect();
    let src_slot = c.slot("src");
    let slots: Vec<Slot> = targets.iter().map(|t| c.slot(t)).collect();
    let dk_src = c.domain_key(&anchors[0]);
    let dks: Vec<ObjectHandle> = anchors[1..].iter().map(|s| c.domain_key(s)).collect();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let src = c.ctx.open_rw_session(src_slot).expect("a source session");
                let dst: Vec<Session> = slots
                    .iter()
                    .map(|s| c.ctx.open_rw_session(*s).expect("a target session"))
                    .collect();
                let mut blob = Zeroizing::new(vec![0u8; 4096]);
                let mut check = Zeroizing::new(vec![0u8; 4096]);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(o) = objs.get(i) else { break };
                    let tmpl = template(o);
                    if o.class == ObjectClass::PUBLIC_KEY {
                        let parts = public_parts(o.key_type);
                        let values = c.read(&src, o.h, &parts);
                        let mut t = tmpl.clone();
                        if o.key_type == KeyType::RSA {
                            t.push(Attribute::Modulus(values[0].clone()));
                            t.push(Attribute::PublicExponent(values[1].clone()));
                        } else {
                            t.push(Attribute::EcParams(values[0].clone()));
                            t.push(Attribute::EcPoint(values[1].clone()));
                        }
                        for s in &dst {
                            let h = s.create_object(&t).expect("C_CreateObject");
                            assert_eq!(c.read(s, h, &parts), values, "the public copy differs");
                        }
                    } else {
                        let n = c.wrap(&src, dk_src, o.h, &mut blob);
                        for (s, dk) in dst.iter().zip(&dks) {
                            let h = c.unwrap(s, *dk, &blob[..n], &tmpl);
                            let m = c.wrap(s, *dk, h, &mut check);
                            assert_eq!(blob[..n], check[..m], "the copy differs");
                        }
                    }
                }
            });
        }
    });
    let took = start.elapsed();
    drop(anchors);
    took
}

/// The raw inventory: per token, find every object, one `C_GetAttributeValue` each.
pub(crate) fn raw_inventory(c: &Ctx, tokens: &[String]) -> (Duration, usize) {
    walk(c, tokens, false)
}

/// [`raw_inventory`] plus one `C_WrapKey` per secret or private key under the token's
/// domain key: the least work that proves a key `unchanged` on a token without
/// `CKA_UNIQUE_ID` (issue 15's plan baseline). Sequential, as `raw_inventory` is.
pub(crate) fn raw_inventory_and_wraps(c: &Ctx, tokens: &[String]) -> (Duration, usize) {
    walk(c, tokens, true)
}

/// Per token: one search for every object, one attribute read each, and with `wrap` one
/// `C_WrapKey` per secret or private key but the domain key.
fn walk(c: &Ctx, tokens: &[String], wrap: bool) -> (Duration, usize) {
    let start = Instant::now();
    let mut n = 0;
    let mut blob = vec![0u8; 4096];
    for t in tokens {
        let s = c.login(t);
        let dk = wrap.then(|| c.domain_key(&s));
        let all: Vec<ObjectHandle> = s
            .iter_objects_with_cache_size(&[Attribute::Token(true)], NonZeroUsize::new(4096).expect("nonzero"))
            .expect("C_FindObjectsInit")
            .collect::<Result<_, _>>()
            .expect("C_FindObjects");
        for h in all {
            let v = c.read(&s, h, &KEY_ATTRIBUTES);
            assert!(!v[0].is_empty(), "every object has a class");
            if let Some(dk) = dk.filter(|dk| *dk != h) {
                let class = u64::from_ne_bytes(v[0][..8].try_into().expect("CK_OBJECT_CLASS is 8 bytes"));
                let secret = [ObjectClass::SECRET_KEY, ObjectClass::PRIVATE_KEY]
                    .into_iter()
                    .any(|k| sys::CK_OBJECT_CLASS::from(k) == class);
                if secret {
                    c.wrap(&s, dk, h, &mut blob);
                }
            }
            n += 1;
        }
    }
    (start.elapsed(), n)
}

/// The source token's keys as the raw loop knows them, the domain key left out.
pub(crate) fn source_objects(c: &Ctx) -> Vec<Obj> {
    let s = c.login("src");
    let mut out = Vec::new();
    for class in [
        ObjectClass::SECRET_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::PUBLIC_KEY,
    ] {
        for h in s
            .find_objects(&[Attribute::Token(true), Attribute::Class(class)])
            .expect("find")
        {
            let v = c.read(
                &s,
                h,
                &sized([AttributeType::KeyType, AttributeType::Id, AttributeType::Label]),
            );
            if v[2] == DOMAIN.as_bytes() {
                continue;
            }
            let kt = u64::from_ne_bytes(v[0][..8].try_into().expect("CK_KEY_TYPE is 8 bytes"));
            out.push(Obj {
                h,
                class,
                key_type: KeyType::try_from(kt).expect("a known key type"),
                id: v[1].clone(),
                label: v[2].clone(),
            });
        }
    }
    out
}
