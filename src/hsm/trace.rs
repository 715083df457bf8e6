//! The choke point of PKCS#11 calls for `-vv` (issue 16): each call made through
//! [`call`] (cryptoki) or [`raw`] (`raw.rs`) becomes one trace event on the [`TARGET`]
//! target naming the function, its CKR code and how long it took.
//!
//! Never an argument: the event holds the caller's static function name, the return
//! code and the elapsed time, nothing else, so no PIN, template value, handle or
//! wrapped blob can reach the log from here. Where cryptoki makes several PKCS#11 calls
//! for one of its methods (`find_objects`: `C_FindObjectsInit`, `C_FindObjects`…,
//! `C_FindObjectsFinal`; `sign`: `C_SignInit`, `C_Sign`), the line names the main call
//! and times them together. Without `-vv` no subscriber wants these events and a call
//! costs one cached branch.

use std::borrow::Cow;
use std::time::Instant;

use cryptoki::error::{Error as CkError, Rv};

/// The tracing target of PKCS#11 call events (the subscriber shows it at `-vv`).
pub(crate) const TARGET: &str = "pkcs11";

/// Runs one cryptoki call `name` (`"C_WrapKey"`) and traces its outcome.
pub(crate) fn call<T>(name: &'static str, f: impl FnOnce() -> Result<T, CkError>) -> Result<T, CkError> {
    if !tracing::enabled!(target: TARGET, tracing::Level::TRACE) {
        return f();
    }
    let t = Instant::now();
    let result = f();
    let rv = match &result {
        Ok(_) => Cow::Borrowed("CKR_OK"),
        Err(e) => outcome(e),
    };
    emit(name, &rv, t);
    result
}

/// Runs one raw call `name` that returns a `CK_RV` and traces it.
pub(crate) fn raw(name: &'static str, f: impl FnOnce() -> cryptoki_sys::CK_RV) -> cryptoki_sys::CK_RV {
    if !tracing::enabled!(target: TARGET, tracing::Level::TRACE) {
        return f();
    }
    let t = Instant::now();
    let rv = f();
    let code = match Rv::from(rv) {
        Rv::Ok => Cow::Borrowed("CKR_OK"),
        Rv::Error(e) => Cow::Owned(super::error::ckr_name(&e)),
    };
    emit(name, &code, t);
    rv
}

fn emit(name: &'static str, rv: &str, since: Instant) {
    let ms = since.elapsed().as_secs_f64() * 1e3;
    tracing::trace!(target: TARGET, rv = %rv, elapsed = %format_args!("{ms:.3}ms"), "{name}");
}

/// The CKR code of a failed call; for an error cryptoki raised itself (the module
/// was never called, or its answer could not be read), a fixed word, never the
/// error's text.
fn outcome(e: &CkError) -> Cow<'static, str> {
    Cow::Borrowed(match e {
        CkError::Pkcs11(rv, _) => return Cow::Owned(super::error::ckr_name(rv)),
        CkError::NotSupported => "not-supported",
        CkError::LibraryLoading(_) => "library-loading",
        CkError::NullFunctionPointer | CkError::MissingSymbol(_) => "no-such-function",
        CkError::PinNotSet => "pin-not-set",
        _ => "cryptoki-error",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki::context::Function;
    use cryptoki::error::RvError;

    #[test]
    fn a_failed_call_is_named_by_its_ckr_code() {
        assert_eq!(
            outcome(&CkError::Pkcs11(RvError::PinIncorrect, Function::Login)),
            "CKR_PIN_INCORRECT"
        );
        assert_eq!(outcome(&CkError::NotSupported), "not-supported");
        // The value passes through untouched.
        assert!(matches!(call("C_GenerateRandom", || Ok(7)), Ok(7)));
        assert_eq!(
            raw("C_WrapKey", || cryptoki_sys::CKR_BUFFER_TOO_SMALL),
            cryptoki_sys::CKR_BUFFER_TOO_SMALL
        );
    }
}
