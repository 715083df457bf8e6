//! Builds the workspace's test programs on demand and says where they are: the test-only
//! PKCS#11 module `tools/pkcs11-shim`, Kryoptic (`tools/kryoptic`, the second PKCS#11
//! implementation of the suite), and the `hsm-fixture` helper. A test of the
//! `hsm-sync` package cannot name another package's binary (`CARGO_BIN_EXE_*` covers its
//! own), so the tests build it here; a plain `cargo test` works on a fresh clone.

use std::path::PathBuf;
use std::process::Command;

/// Runs `cargo build -p pkcs11-shim` (in release mode when `release`) and returns the
/// path of `libpkcs11_shim.so`.
pub fn shim(release: bool) -> PathBuf {
    cdylib("pkcs11-shim", "pkcs11_shim", release)
}

/// Runs `cargo build -p kryoptic-token` and returns the path of `libkryoptic_pkcs11.so`:
/// Kryoptic 1.5.4 from the registry, built like any workspace crate (about 30 s the first
/// time; PKCS11-NOTES.md "Kryoptic 1.5.4" for its -dev packages).
pub fn kryoptic() -> PathBuf {
    kryoptic_built(false)
}

/// [`kryoptic`], in release mode when `release` (the benchmark's: a debug build of its
/// crypto would measure the compiler, not the token).
pub fn kryoptic_built(release: bool) -> PathBuf {
    cdylib("kryoptic-token", "kryoptic_pkcs11", release)
}

/// Builds `package` (in release mode when `release`) and returns its cdylib `name`'s `.so`.
fn cdylib(package: &str, name: &str, release: bool) -> PathBuf {
    let mut args = vec!["-p", package];
    if release {
        args.push("--release");
    }
    artifact(&args, name, shared_object)
}

/// The `.so` among the files of a cdylib's artifact message.
fn shared_object(m: &serde_json::Value) -> Option<PathBuf> {
    m["filenames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
}

/// Runs `cargo build -p testkit --bin hsm-fixture` and returns the executable's path.
pub fn fixture() -> PathBuf {
    artifact(&["-p", "testkit", "--bin", "hsm-fixture"], "hsm-fixture", |m| {
        m["executable"].as_str().map(PathBuf::from)
    })
}

/// The variables (or their prefixes) cargo sets for a test or bench binary it runs.
const RUN_VARS: &[&str] = &[
    "CARGO_MANIFEST_",
    "CARGO_PKG_",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Runs `cargo build --locked ARGS --message-format=json` and picks the file `pick` finds
/// in the artifact message of the target `name`. The path is the one cargo reports, so it
/// honours `CARGO_TARGET_DIR`. cargo releases its build lock before it runs test or bench
/// binaries, so this nested build does not wait on the outer one.
///
/// # Panics
/// When the build fails or reports no such file: a test cannot go on without it.
fn artifact(args: &[&str], name: &str, pick: impl Fn(&serde_json::Value) -> Option<PathBuf>) -> PathBuf {
    let mut all = vec!["build", "--locked", "--message-format=json"];
    all.extend_from_slice(args);
    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(&all).current_dir(env!("CARGO_MANIFEST_DIR"));
    // What cargo set for the test or bench that runs this, not the user's settings: left
    // in, build scripts that watch them (ring's watches CARGO_MANIFEST_DIR) would see a
    // change, and the nested and the outer build would rebuild each other's crates.
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| RUN_VARS.iter().any(|v| n.starts_with(v))) {
            cargo.env_remove(name);
        }
    }
    let out = cargo.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {} failed:\n{}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| pick(&m))
        .unwrap_or_else(|| panic!("cargo {} reports no file for {name}", all.join(" ")))
}
