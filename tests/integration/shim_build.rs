//! Builds the test-only PKCS#11 module `tools/pkcs11-shim` and says where the library is.
//! Shared by the integration tests and `benches/sync.rs` (included there by path).

use std::path::PathBuf;
use std::process::Command;

/// Runs `cargo build -p pkcs11-shim` (in release mode when `release`) and returns the
/// path cargo reports for `libpkcs11_shim.so`, which honours `CARGO_TARGET_DIR`. cargo
/// releases its build lock before it runs test or bench binaries, so this nested build
/// does not wait on the outer one.
pub fn build_shim(release: bool) -> PathBuf {
    let mut args = vec!["build", "--locked", "-p", "pkcs11-shim", "--message-format=json"];
    if release {
        args.push("--release");
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "pkcs11_shim")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "so"))
        .expect("cargo reports where libpkcs11_shim.so is")
}
