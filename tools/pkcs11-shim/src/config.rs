//! The shim's configuration, read from the environment once when the module is loaded.
//! Parsing is pure (it takes a lookup function) so it is tested without touching the
//! process environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki_sys::{
    CKF_SO_PIN_COUNT_LOW, CKF_SO_PIN_FINAL_TRY, CKF_SO_PIN_LOCKED, CKF_SO_PIN_TO_BE_CHANGED, CKF_USER_PIN_COUNT_LOW,
    CKF_USER_PIN_FINAL_TRY, CKF_USER_PIN_LOCKED, CKF_USER_PIN_TO_BE_CHANGED, CK_FLAGS, CK_RV,
};

use crate::ckr;

/// The real module to forward to.
pub(crate) const TARGET: &str = "HSM_SYNC_SHIM_TARGET";
/// Microseconds to sleep in every call.
pub(crate) const LATENCY: &str = "HSM_SYNC_SHIM_LATENCY_US";
/// Faults to inject: `C_Fn:N:CKR_X` or `C_Fn:N+:CKR_X`, comma-separated.
pub(crate) const FAIL: &str = "HSM_SYNC_SHIM_FAIL";
/// Flags OR'ed into every `C_GetTokenInfo` result.
pub(crate) const TOKEN_FLAGS: &str = "HSM_SYNC_SHIM_TOKEN_FLAGS";
/// File that gets one line per call.
pub(crate) const LOG: &str = "HSM_SYNC_SHIM_LOG";

/// Where Debian and others install SoftHSM2 (the same list as `hsm_sync::hsm::softhsm`).
const SOFTHSM_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// One injected fault: calls of `function` numbered `nth` (or `nth` and later) return
/// `rv` without reaching the real module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fault {
    /// Index of the function in the shim's function table.
    pub function: usize,
    /// 1-based call number.
    pub nth: u64,
    /// Whether every call from `nth` on fails, not only that one.
    pub onwards: bool,
    /// The return value injected.
    pub rv: CK_RV,
}

impl Fault {
    fn hits(&self, function: usize, call: u64) -> bool {
        self.function == function && (call == self.nth || (self.onwards && call > self.nth))
    }
}

/// Everything the environment asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    pub target: PathBuf,
    pub latency: Option<Duration>,
    pub faults: Vec<Fault>,
    pub token_flags: CK_FLAGS,
    pub log: Option<PathBuf>,
}

impl Config {
    /// Reads the configuration through `var` (the environment in production). `functions`
    /// names the functions faults may target, in table order.
    pub(crate) fn from_lookup(var: impl Fn(&str) -> Option<String>, functions: &[&str]) -> Result<Config, String> {
        let target = match var(TARGET).filter(|s| !s.is_empty()) {
            Some(t) => PathBuf::from(t),
            None => var("HSM_SYNC_SOFTHSM_MODULE")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .or_else(|| SOFTHSM_PATHS.iter().map(PathBuf::from).find(|p| Path::exists(p)))
                .ok_or_else(|| format!("{TARGET} is not set and SoftHSM2 is not installed"))?,
        };
        let latency = match var(LATENCY).filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => {
                let us: u64 = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("{LATENCY}={s}: expected microseconds, e.g. 1000"))?;
                (us > 0).then(|| Duration::from_micros(us))
            }
        };
        let faults = match var(FAIL) {
            None => Vec::new(),
            Some(s) => s
                .split(',')
                .map(str::trim)
                .filter(|f| !f.is_empty())
                .map(|f| parse_fault(f, functions))
                .collect::<Result<_, _>>()?,
        };
        let token_flags = match var(TOKEN_FLAGS) {
            None => 0,
            Some(s) => parse_flags(&s)?,
        };
        let log = var(LOG).filter(|s| !s.is_empty()).map(PathBuf::from);
        Ok(Config {
            target,
            latency,
            faults,
            token_flags,
            log,
        })
    }

    /// The return value to inject into call number `call` (1-based) of `function`, if any.
    pub(crate) fn fault(&self, function: usize, call: u64) -> Option<CK_RV> {
        self.faults.iter().find(|f| f.hits(function, call)).map(|f| f.rv)
    }
}

fn parse_fault(spec: &str, functions: &[&str]) -> Result<Fault, String> {
    let bad = |why: &str| {
        format!(
            "{FAIL}: `{spec}`: {why} (expected e.g. C_UnwrapKey:3:CKR_DEVICE_ERROR or C_UnwrapKey:3+:CKR_DEVICE_ERROR)"
        )
    };
    let mut parts = spec.split(':');
    let (Some(func), Some(nth), Some(rv), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("three fields separated by `:`"));
    };
    let function = functions
        .iter()
        .position(|f| *f == func)
        .ok_or_else(|| bad(&format!("unknown function `{func}`")))?;
    let (nth, onwards) = match nth.strip_suffix('+') {
        Some(n) => (n, true),
        None => (nth, false),
    };
    let nth: u64 = nth
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| bad("the call number counts from 1"))?;
    let rv = ckr::parse(rv).ok_or_else(|| bad(&format!("unknown return value `{rv}`")))?;
    Ok(Fault {
        function,
        nth,
        onwards,
        rv,
    })
}

fn parse_flags(s: &str) -> Result<CK_FLAGS, String> {
    let mut flags = 0;
    for name in s.split([',', '|']).map(str::trim).filter(|n| !n.is_empty()) {
        flags |= match name.to_ascii_lowercase().trim_start_matches("ckf_") {
            "user_pin_locked" => CKF_USER_PIN_LOCKED,
            "user_pin_final_try" => CKF_USER_PIN_FINAL_TRY,
            "user_pin_count_low" => CKF_USER_PIN_COUNT_LOW,
            "user_pin_to_be_changed" => CKF_USER_PIN_TO_BE_CHANGED,
            "so_pin_locked" => CKF_SO_PIN_LOCKED,
            "so_pin_final_try" => CKF_SO_PIN_FINAL_TRY,
            "so_pin_count_low" => CKF_SO_PIN_COUNT_LOW,
            "so_pin_to_be_changed" => CKF_SO_PIN_TO_BE_CHANGED,
            other => {
                return Err(format!(
                    "{TOKEN_FLAGS}: unknown flag `{other}` (user_pin_locked, user_pin_final_try, user_pin_count_low, user_pin_to_be_changed, or so_pin_*)"
                ))
            }
        };
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::{CKR_DEVICE_ERROR, CKR_KEY_SIZE_RANGE};

    const FNS: &[&str] = &["C_Login", "C_UnwrapKey"];

    fn config(vars: &[(&str, &str)]) -> Result<Config, String> {
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()), FNS)
    }

    #[test]
    fn faults_hit_the_nth_call_or_every_call_from_it_on() {
        let c = config(&[
            (TARGET, "/x.so"),
            (FAIL, "C_UnwrapKey:3:CKR_DEVICE_ERROR, C_Login:2+:CKR_KEY_SIZE_RANGE"),
        ])
        .unwrap();
        let unwrap: Vec<_> = (1..=5).map(|n| c.fault(1, n)).collect();
        assert_eq!(unwrap, [None, None, Some(CKR_DEVICE_ERROR), None, None]);
        let login: Vec<_> = (1..=4).map(|n| c.fault(0, n)).collect();
        assert_eq!(
            login,
            [
                None,
                Some(CKR_KEY_SIZE_RANGE),
                Some(CKR_KEY_SIZE_RANGE),
                Some(CKR_KEY_SIZE_RANGE)
            ]
        );
    }

    #[test]
    fn mistakes_are_refused_with_the_variable_named() {
        for bad in [
            "C_Unwrap:1:CKR_DEVICE_ERROR",
            "C_UnwrapKey:0:CKR_DEVICE_ERROR",
            "C_UnwrapKey:1:CKR_NOPE",
            "C_UnwrapKey:1",
        ] {
            let e = config(&[(TARGET, "/x.so"), (FAIL, bad)]).unwrap_err();
            assert!(e.starts_with("HSM_SYNC_SHIM_FAIL"), "{e}");
        }
        assert!(config(&[(TARGET, "/x.so"), (LATENCY, "1ms")]).is_err());
        assert!(config(&[(TARGET, "/x.so"), (TOKEN_FLAGS, "pin_locked")]).is_err());
    }

    #[test]
    fn flags_latency_and_log() {
        let c = config(&[
            (TARGET, "/x.so"),
            (TOKEN_FLAGS, "user_pin_locked|CKF_USER_PIN_FINAL_TRY"),
            (LATENCY, "1500"),
            (LOG, "/tmp/l"),
        ])
        .unwrap();
        assert_eq!(c.token_flags, CKF_USER_PIN_LOCKED | CKF_USER_PIN_FINAL_TRY);
        assert_eq!(c.latency, Some(Duration::from_micros(1500)));
        assert_eq!(c.log.as_deref(), Some(Path::new("/tmp/l")));
        assert_eq!(c.target, Path::new("/x.so"));
        let plain = config(&[(TARGET, "/x.so")]).unwrap();
        assert_eq!((plain.latency, plain.token_flags, plain.faults.len()), (None, 0, 0));
    }
}
