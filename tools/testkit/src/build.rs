//! Builds the workspace's test programs on demand and says where they are: the test-only
//! PKCS#11 module `tools/pkcs11-shim`, Kryoptic (`tools/kryoptic`, the second PKCS#11
//! implementation of the suite), Kryoptic with EdDSA (`tools/kryoptic-eddsa`, on an OpenSSL
//! 3.5 built here), and the `hsm-fixture` helper. A test of the
//! `hsm-sync` package cannot name another package's binary (`CARGO_BIN_EXE_*` covers its
//! own), so the tests build it here; a plain `cargo test` works on a fresh clone.

use std::fs::File;
use std::path::{Path, PathBuf};
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

/// Builds `tools/kryoptic-eddsa` and returns the path of its `libkryoptic_pkcs11.so`:
/// Kryoptic 1.5.4 with the `eddsa` feature (Ed25519 keys, `CKM_EDDSA`), OpenSSL 3.5 linked
/// in statically, so the module loads beside Debian 12's OpenSSL 3.0 in one process.
///
/// The first call on a target directory builds OpenSSL ([`openssl35`], 4–5 min on two
/// cores) and the module (1–1.5 min); later calls reuse both. The crate is not a
/// workspace member (machines without OpenSSL 3.2 build the workspace): it has its own
/// target directory, `TARGET/kryoptic-eddsa`, since the OpenSSL variables it builds with
/// would otherwise rebuild the workspace's `tools/kryoptic` each time.
///
/// # Panics
/// When OpenSSL or the module cannot be built: a test cannot go on without it.
pub fn kryoptic_eddsa() -> PathBuf {
    let openssl = openssl35();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../kryoptic-eddsa/Cargo.toml");
    let mut cargo = cargo();
    cargo
        .env("CARGO_TARGET_DIR", target_dir().join("kryoptic-eddsa"))
        .env("PKG_CONFIG_PATH", openssl.join("lib/pkgconfig"))
        .env("OPENSSL_STATIC", "1");
    let manifest = manifest.display().to_string();
    artifact_with(cargo, &["--manifest-path", &manifest], "kryoptic_pkcs11", shared_object)
}

/// The version of OpenSSL [`openssl35`] builds: the `openssl-src` crate's (its version
/// is `300.5.5+3.5.5`, OpenSSL's after the `+`).
pub fn openssl35_version() -> &'static str {
    let v = openssl_src::version();
    v.split_once('+').map_or(v, |(_, openssl)| openssl)
}

/// Builds OpenSSL 3.5 from the `openssl-src` crate's source into `TARGET/openssl-3.5/`
/// and returns the install prefix (`lib/libcrypto.a`, `lib/pkgconfig/`, `include/`). Static
/// libraries only (`-fPIC`, so a cdylib can take them in), no apps, docs, tests, engines or
/// loadable modules: `make build_libs` and `make install_dev`, the recipe of PKCS11-NOTES.md
/// ("Kryoptic with EdDSA"). Once per target directory: a later call finds the install.
/// Test processes that call it at once wait on a file lock, and the install is moved
/// into place whole, so an interrupted build leaves nothing that looks finished.
///
/// # Panics
/// When a tool the build needs is missing (perl with `IPC::Cmd`, make, a C compiler),
/// naming it, or when a step fails, with the end of its log.
pub fn openssl35() -> PathBuf {
    let root = target_dir().join("openssl-3.5");
    let prefix = root.join("install");
    // Outside /usr, where pkg-config and openssl-sys cannot take it for the system's
    // OpenSSL 3.0 (the recipe of PKCS11-NOTES.md is measured so).
    assert!(
        !prefix.starts_with("/usr"),
        "OpenSSL {} must not be installed under /usr (target directory {}): set CARGO_TARGET_DIR elsewhere",
        openssl35_version(),
        root.display()
    );
    let installed = |p: &Path| p.join("lib/pkgconfig/libcrypto.pc").is_file();
    if installed(&prefix) {
        return prefix;
    }
    mkdir(&root);
    let lock_path = root.join("lock");
    let lock = File::create(&lock_path).unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    // Another process may have built it while this one waited.
    if installed(&prefix) {
        return prefix;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    require(
        "perl",
        &["-MIPC::Cmd", "-e1"],
        "perl (with IPC::Cmd): apt-get install -y perl",
    );
    require("make", &["--version"], "make: apt-get install -y make");
    require(
        &cc,
        &["--version"],
        &format!("a C compiler (`{cc}`): apt-get install -y gcc"),
    );
    // A copy: the build writes into its source tree, and the registry's must stay clean.
    let src = root.join("src");
    remove(&src);
    copy_tree(&openssl_src::source_dir(), &src);
    let prefix_arg = format!("--prefix={}", prefix.display());
    let configure = [
        "Configure",
        &prefix_arg,
        "--libdir=lib",
        "no-shared",
        "no-docs",
        "no-tests",
        "no-apps",
        "no-legacy",
        "no-engine",
        "no-module",
    ];
    let jobs = format!("-j{}", std::thread::available_parallelism().map_or(2, |n| n.get()));
    // `make install_dev` writes under DESTDIR + prefix; the finished tree is then renamed
    // to the prefix, which the .pc files name.
    let stage = root.join("stage");
    remove(&stage);
    let destdir = format!("DESTDIR={}", stage.display());
    run_logged(Command::new("perl").args(configure).env("CC", &cc), &src, "configure");
    run_logged(Command::new("make").args([jobs.as_str(), "build_libs"]), &src, "make");
    run_logged(
        Command::new("make").args(["install_dev", destdir.as_str()]),
        &src,
        "install",
    );
    let staged = stage.join(prefix.strip_prefix("/").unwrap_or(&prefix));
    remove(&prefix);
    std::fs::rename(&staged, &prefix)
        .unwrap_or_else(|e| panic!("moving {} to {}: {e}", staged.display(), prefix.display()));
    assert!(
        installed(&prefix),
        "OpenSSL {} installed no lib/pkgconfig/libcrypto.pc in {}",
        openssl35_version(),
        prefix.display()
    );
    remove(&stage);
    remove(&src);
    prefix
}

/// Panics with `what` unless `program args…` runs and succeeds.
fn require(program: &str, args: &[&str], what: &str) {
    let ok = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "building OpenSSL {} needs {what}", openssl35_version());
}

/// Runs `cmd` in `dir`, its output in `dir/../STEP.log`; panics with the log's end when
/// it fails.
fn run_logged(cmd: &mut Command, dir: &Path, step: &str) {
    let log_path = dir.with_file_name(format!("{step}.log"));
    let log = File::create(&log_path).unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let err = log
        .try_clone()
        .unwrap_or_else(|e| panic!("{}: {e}", log_path.display()));
    let status = cmd
        .current_dir(dir)
        .stdout(log)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("OpenSSL {step}: {cmd:?} does not run: {e}"));
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        panic!(
            "OpenSSL {} {step} failed ({status}), {}:\n{tail}",
            openssl35_version(),
            log_path.display()
        );
    }
}

/// Copies the directory tree `from` to `to` (files keep their permissions: Configure's
/// helper scripts must stay executable).
fn copy_tree(from: &Path, to: &Path) {
    mkdir(to);
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
    }
}

/// Makes the directory `dir` and its parents.
fn mkdir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
}

/// Removes the directory tree `dir`, if there is one.
fn remove(dir: &Path) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("removing {}: {e}", dir.display()));
    }
}

/// The target directory cargo builds the workspace into (`CARGO_TARGET_DIR`, a config's
/// `build.target-dir`, or `target/`), as `cargo metadata` reports it.
///
/// # Panics
/// When `cargo metadata` fails.
pub fn target_dir() -> PathBuf {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version=1"])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo metadata failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .expect("cargo metadata names the target directory")
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
    artifact_with(cargo(), args, name, pick)
}

/// [`artifact`] with a `cargo` command of the caller's (its own environment).
fn artifact_with(
    mut cargo: Command,
    args: &[&str],
    name: &str,
    pick: impl Fn(&serde_json::Value) -> Option<PathBuf>,
) -> PathBuf {
    let mut all = vec!["build", "--locked", "--message-format=json"];
    all.extend_from_slice(args);
    let out = cargo.args(&all).output().expect("cargo runs");
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

/// `cargo`, in testkit's directory, without the variables cargo set for the test or bench
/// that runs this, not the user's settings: left in, build scripts that watch them (ring's
/// watches CARGO_MANIFEST_DIR) would see a change, and the nested and the outer build
/// would rebuild each other's crates.
fn cargo() -> Command {
    let mut cargo = Command::new(env!("CARGO"));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| RUN_VARS.iter().any(|v| n.starts_with(v))) {
            cargo.env_remove(name);
        }
    }
    cargo
}
