//! # pkcs11-shim: a PKCS#11 pass-through module for hsm-sync's tests and benchmarks
//!
//! A `cdylib` exporting `C_GetFunctionList` whose function list forwards every call to a
//! real module (SoftHSM by default), so tests get a real token underneath plus what a
//! software token cannot show: network-HSM latency, injected failures, and PIN states
//! SoftHSM never reports (locked, final try). Never ship it; it exists for tests.
//!
//! Configured by environment variables, read once when the module is first asked for its
//! function list (that is, when the application loads it):
//!
//! | variable | effect |
//! |---|---|
//! | `HSM_SYNC_SHIM_TARGET` | the real module (default: `$HSM_SYNC_SOFTHSM_MODULE`, else SoftHSM2's standard path) |
//! | `HSM_SYNC_SHIM_LATENCY_US` | sleep this many microseconds at the start of every call |
//! | `HSM_SYNC_SHIM_FAIL` | comma-separated faults: `C_UnwrapKey:3:CKR_DEVICE_ERROR` fails the 3rd call of `C_UnwrapKey`; `C_UnwrapKey:3+:CKR_KEY_SIZE_RANGE` fails the 3rd and every later one. A failed call returns that value without reaching the real module. The value is a `CKR_*` name or a number (`0x30`) |
//! | `HSM_SYNC_SHIM_TOKEN_FLAGS` | flags OR'ed into every successful `C_GetTokenInfo`: `user_pin_locked`, `user_pin_final_try`, `user_pin_count_low`, `user_pin_to_be_changed`, `so_pin_*`; several joined by `,` or `\|` |
//! | `HSM_SYNC_SHIM_LOG` | append one line per call to this file: `C_Login #1 CKR_OK pid=4242` (function, its call number in this process, return value, and ` injected` for a fault) |
//!
//! Calls are counted per function and per process, with atomics, so concurrent callers
//! each get a distinct number. `C_GetFunctionList` itself is neither counted, delayed
//! nor logged. A configuration mistake makes `C_GetFunctionList` fail with
//! `CKR_GENERAL_ERROR` and prints the reason on stderr, so a test never runs unshimmed
//! by accident. `C_GetInterface` (PKCS#11 3.0) is not exported: cryptoki then falls back
//! to the 2.40 `C_GetFunctionList`, which is all SoftHSM 2.6 offers anyway.
//!
//! Soundness: the only `unsafe` is at the FFI edge: loading the real module, calling
//! through its function list with the caller's arguments unchanged, and writing the
//! results PKCS#11 defines. No panic crosses the boundary: every entry point runs under
//! `catch_unwind` and answers `CKR_GENERAL_ERROR` instead.

#![deny(unsafe_op_in_unsafe_fn)]
// The exported and forwarded functions keep their PKCS#11 names.
#![allow(non_snake_case)]

mod ckr;
mod config;

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

use config::Config;

/// Generates, from each function's PKCS#11 signature: the `Func` index enum, the name
/// table, the call counters, a forwarder per function, and a function list of them.
macro_rules! forwarders {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {
        /// The forwarded functions, in `CK_FUNCTION_LIST` order (`C_GetFunctionList` aside).
        #[allow(non_camel_case_types, clippy::enum_variant_names)]
        #[derive(Clone, Copy)]
        enum Func { $($name),* }

        /// Function names, indexed by `Func`.
        const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// Calls so far in this process, per function, indexed by `Func`.
        static CALLS: [AtomicU64; NAMES.len()] = [const { AtomicU64::new(0) }; NAMES.len()];

        /// One forwarder per function, each a thin `call` around the real module's entry.
        mod forward {
            use super::*;
            $(
                /// Forwards to the real module's function of the same name.
                pub(super) unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
                    call(Func::$name, |real| match real.$name {
                        // SAFETY: the caller's arguments go unchanged to the same function of
                        // the real module, so the caller's PKCS#11 contract for them carries
                        // over; the pointer comes from the real module's own list, which stays
                        // valid because the library is never unloaded.
                        Some(f) => unsafe { f($($arg),*) },
                        None => CKR_FUNCTION_NOT_SUPPORTED,
                    })
                }
            )*
        }

        /// Every slot forwarding; `C_GetFunctionList` is filled in by [`LIST`].
        const FORWARDING: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: CK_VERSION { major: 2, minor: 40 },
            C_GetFunctionList: None,
            $($name: Some(forward::$name)),*
        };
    };
}

forwarders! {
    C_Initialize(a1: *mut c_void);
    C_Finalize(a1: *mut c_void);
    C_GetInfo(a1: *mut CK_INFO);
    C_GetSlotList(a1: CK_BBOOL, a2: *mut CK_SLOT_ID, a3: *mut CK_ULONG);
    C_GetSlotInfo(a1: CK_SLOT_ID, a2: *mut CK_SLOT_INFO);
    C_GetTokenInfo(a1: CK_SLOT_ID, a2: *mut CK_TOKEN_INFO);
    C_GetMechanismList(a1: CK_SLOT_ID, a2: *mut CK_MECHANISM_TYPE, a3: *mut CK_ULONG);
    C_GetMechanismInfo(a1: CK_SLOT_ID, a2: CK_MECHANISM_TYPE, a3: *mut CK_MECHANISM_INFO);
    C_InitToken(a1: CK_SLOT_ID, a2: *mut CK_UTF8CHAR, a3: CK_ULONG, a4: *mut CK_UTF8CHAR);
    C_InitPIN(a1: CK_SESSION_HANDLE, a2: *mut CK_UTF8CHAR, a3: CK_ULONG);
    C_SetPIN(a1: CK_SESSION_HANDLE, a2: *mut CK_UTF8CHAR, a3: CK_ULONG, a4: *mut CK_UTF8CHAR, a5: CK_ULONG);
    C_OpenSession(a1: CK_SLOT_ID, a2: CK_FLAGS, a3: *mut c_void, a4: CK_NOTIFY, a5: *mut CK_SESSION_HANDLE);
    C_CloseSession(a1: CK_SESSION_HANDLE);
    C_CloseAllSessions(a1: CK_SLOT_ID);
    C_GetSessionInfo(a1: CK_SESSION_HANDLE, a2: *mut CK_SESSION_INFO);
    C_GetOperationState(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: *mut CK_ULONG);
    C_SetOperationState(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: CK_OBJECT_HANDLE, a5: CK_OBJECT_HANDLE);
    C_Login(a1: CK_SESSION_HANDLE, a2: CK_USER_TYPE, a3: *mut CK_UTF8CHAR, a4: CK_ULONG);
    C_Logout(a1: CK_SESSION_HANDLE);
    C_CreateObject(a1: CK_SESSION_HANDLE, a2: *mut CK_ATTRIBUTE, a3: CK_ULONG, a4: *mut CK_OBJECT_HANDLE);
    C_CopyObject(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG, a5: *mut CK_OBJECT_HANDLE);
    C_DestroyObject(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE);
    C_GetObjectSize(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE, a3: *mut CK_ULONG);
    C_GetAttributeValue(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG);
    C_SetAttributeValue(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG);
    C_FindObjectsInit(a1: CK_SESSION_HANDLE, a2: *mut CK_ATTRIBUTE, a3: CK_ULONG);
    C_FindObjects(a1: CK_SESSION_HANDLE, a2: *mut CK_OBJECT_HANDLE, a3: CK_ULONG, a4: *mut CK_ULONG);
    C_FindObjectsFinal(a1: CK_SESSION_HANDLE);
    C_EncryptInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Encrypt(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_EncryptUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_EncryptFinal(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: *mut CK_ULONG);
    C_DecryptInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Decrypt(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DecryptUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DecryptFinal(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: *mut CK_ULONG);
    C_DigestInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM);
    C_Digest(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DigestUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_DigestKey(a1: CK_SESSION_HANDLE, a2: CK_OBJECT_HANDLE);
    C_DigestFinal(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: *mut CK_ULONG);
    C_SignInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Sign(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_SignUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_SignFinal(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: *mut CK_ULONG);
    C_SignRecoverInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_SignRecover(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_VerifyInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_Verify(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: CK_ULONG);
    C_VerifyUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_VerifyFinal(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_VerifyRecoverInit(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE);
    C_VerifyRecover(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DigestEncryptUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DecryptDigestUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_SignEncryptUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_DecryptVerifyUpdate(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG, a4: *mut CK_BYTE, a5: *mut CK_ULONG);
    C_GenerateKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG, a5: *mut CK_OBJECT_HANDLE);
    C_GenerateKeyPair(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: *mut CK_ATTRIBUTE, a4: CK_ULONG, a5: *mut CK_ATTRIBUTE, a6: CK_ULONG, a7: *mut CK_OBJECT_HANDLE, a8: *mut CK_OBJECT_HANDLE);
    C_WrapKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE, a4: CK_OBJECT_HANDLE, a5: *mut CK_BYTE, a6: *mut CK_ULONG);
    C_UnwrapKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE, a4: *mut CK_BYTE, a5: CK_ULONG, a6: *mut CK_ATTRIBUTE, a7: CK_ULONG, a8: *mut CK_OBJECT_HANDLE);
    C_DeriveKey(a1: CK_SESSION_HANDLE, a2: *mut CK_MECHANISM, a3: CK_OBJECT_HANDLE, a4: *mut CK_ATTRIBUTE, a5: CK_ULONG, a6: *mut CK_OBJECT_HANDLE);
    C_SeedRandom(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_GenerateRandom(a1: CK_SESSION_HANDLE, a2: *mut CK_BYTE, a3: CK_ULONG);
    C_GetFunctionStatus(a1: CK_SESSION_HANDLE);
    C_CancelFunction(a1: CK_SESSION_HANDLE);
    C_WaitForSlotEvent(a1: CK_FLAGS, a2: *mut CK_SLOT_ID, a3: *mut c_void);
}

/// The function list handed to applications: a plain static, so it needs no
/// initialisation and lives as long as the process.
static LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetTokenInfo: Some(token_info),
    ..FORWARDING
};

/// The loaded real module and the configuration, set up once per process.
struct Shim {
    /// The real module's function list, copied out when it was loaded.
    real: CK_FUNCTION_LIST,
    /// Keeps the real module mapped. It lives in a static and is never dropped, so the
    /// pointers in `real` stay valid.
    _library: libloading::Library,
    config: Config,
    log: Option<Mutex<File>>,
}

static SHIM: OnceLock<Result<Shim, String>> = OnceLock::new();

/// The shim, loaded on first use; `CKR_GENERAL_ERROR` if loading failed (said on stderr).
fn shim() -> Result<&'static Shim, CK_RV> {
    let loaded = SHIM.get_or_init(|| {
        let r = catch_unwind(load).unwrap_or_else(|_| Err("panicked while loading".into()));
        if let Err(e) = &r {
            eprintln!("pkcs11-shim: {e}");
        }
        r
    });
    loaded.as_ref().map_err(|_| CKR_GENERAL_ERROR)
}

fn load() -> Result<Shim, String> {
    let config = Config::from_lookup(|k| std::env::var(k).ok(), NAMES)?;
    let target = config.target.display().to_string();
    // SAFETY: loading a library runs its initialisers. The target is the PKCS#11 module
    // the test chose to put under the shim; running its code is the point.
    let library =
        unsafe { libloading::Library::new(&config.target) }.map_err(|e| format!("cannot load {target}: {e}"))?;
    // SAFETY: every PKCS#11 module exports `C_GetFunctionList` with this signature (v2.40 §5.2).
    let get =
        *unsafe { library.get::<unsafe extern "C" fn(CK_FUNCTION_LIST_PTR_PTR) -> CK_RV>(b"C_GetFunctionList\0") }
            .map_err(|e| format!("{target} is not a PKCS#11 module: {e}"))?;
    // A shim forwarding to itself would re-enter this initialisation forever.
    if get as *const () == C_GetFunctionList as *const () {
        return Err(format!("{} points at the shim itself", config::TARGET));
    }
    let mut list: CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
    // SAFETY: `list` is a valid place for the module to write its list pointer into.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!("{target}: C_GetFunctionList returned {}", ckr::name(rv)));
    }
    // SAFETY: the module returned a non-null pointer to its function list, valid while the
    // library is loaded; it is copied out here, and the library is kept loaded for good.
    let real = unsafe { *list };
    let log = match &config.log {
        None => None,
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("{}={}: {e}", config::LOG, path.display()))?,
        )),
    };
    Ok(Shim {
        real,
        _library: library,
        config,
        log,
    })
}

impl Shim {
    fn log(&self, f: Func, n: u64, rv: CK_RV, injected: bool) {
        let Some(file) = &self.log else { return };
        let line = format!(
            "{} #{n} {}{} pid={}\n",
            NAMES[f as usize],
            ckr::name(rv),
            if injected { " injected" } else { "" },
            std::process::id()
        );
        // One write per line on an O_APPEND file: lines of concurrent callers and of
        // several processes sharing the log do not interleave. A lost line is no reason to
        // fail the call.
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(line.as_bytes());
    }
}

/// Counts, delays, maybe fails, forwards and logs one call. Never unwinds.
fn call(f: Func, forward: impl FnOnce(&CK_FUNCTION_LIST) -> CK_RV) -> CK_RV {
    catch_unwind(AssertUnwindSafe(|| {
        let shim = match shim() {
            Ok(s) => s,
            Err(rv) => return rv,
        };
        let n = CALLS[f as usize].fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(d) = shim.config.latency {
            std::thread::sleep(d);
        }
        let injected = shim.config.fault(f as usize, n);
        let rv = injected.unwrap_or_else(|| forward(&shim.real));
        shim.log(f, n, rv, injected.is_some());
        rv
    }))
    .unwrap_or(CKR_GENERAL_ERROR)
}

/// `C_GetTokenInfo`, forwarded, with the configured `HSM_SYNC_SHIM_TOKEN_FLAGS` OR'ed
/// into a successful answer: how a locked or final-try PIN is shown on SoftHSM, which
/// has no PIN lockout of its own.
unsafe extern "C" fn token_info(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    // SAFETY: the arguments go on unchanged, under the caller's contract for them.
    let rv = unsafe { forward::C_GetTokenInfo(slot, info) };
    if rv == CKR_OK && !info.is_null() {
        if let Ok(shim) = shim() {
            // SAFETY: the real module has just filled `*info` and returned CKR_OK, so `info`
            // points to a valid, writable CK_TOKEN_INFO owned by the caller.
            unsafe { (*info).flags |= shim.config.token_flags };
        }
    }
    rv
}

/// The module's one exported entry point: loads the real module and the configuration
/// (once per process) and hands out the shim's function list.
///
/// # Safety
/// `list` must be null or valid for writing one pointer (PKCS#11 v2.40 §5.2). The list
/// written there is a static the caller must only read, as the standard requires.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    catch_unwind(AssertUnwindSafe(|| {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        if let Err(rv) = shim() {
            return rv;
        }
        // SAFETY: `list` is non-null and writable per this function's contract. `LIST` is
        // a static, valid for the life of the process; the `*mut` the C API asks for is
        // never written through (callers only read the list).
        unsafe { *list = std::ptr::addr_of!(LIST).cast_mut() };
        CKR_OK
    }))
    .unwrap_or(CKR_GENERAL_ERROR)
}
