//! Test and benchmark support, not for production HSMs: provisions SoftHSM token
//! directories the way `hsm-sync demo` does, so that each integration test gets its own
//! tokens (SoftHSM reads one `SOFTHSM2_CONF` per process, so tests cannot share one).
//!
//! Every command takes the directory first; PINs are `DIR/<token>.pin`.
//!
//! A token is SoftHSM's unless `init` names it `NAME@kryoptic`: then it is a Kryoptic
//! token (a slot of `DIR/kryoptic.toml`, its database in `DIR/kryoptic/`). Two "vendor
//! personalities" deny it mechanisms: `NAME@kryoptic-kw` has RFC 3394 only (no 0x210B,
//! no 0x210C), `NAME@kryoptic-nowrap` no AES key wrap at all, `NAME@kryoptic-nosha384`
//! no HMAC-SHA-384, `NAME@kryoptic-kwp` RFC 5649 only (no 0x2109). Every later
//! command finds its make in `DIR/makes`. Kryoptic's module comes from
//! `$HSM_SYNC_KRYOPTIC_MODULE` (the tests build it: `testkit::build::kryoptic`, or
//! `testkit::build::kryoptic_eddsa` for Ed25519 keys).
//!
//! `NAME@nss` makes an NSS softokn database in `DIR/nss/NAME` with `certutil -N` (its
//! password is the user PIN in `DIR/NAME.pin`; there is no SO PIN). Its token is labelled
//! "NSS Certificate DB" whatever NAME is; the fixture opens it through the `module_args`
//! a plan gives (`testkit::provision::nss_module_args`). softokn takes one database per
//! `C_Initialize`, and a process initialises it once: one NSS token per command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use secrecy::SecretString;
use testkit::provision::{self, Provisioner, SecretSpec};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(about = "Provision SoftHSM tokens for hsm-sync's tests, benchmarks and demos")]
struct Args {
    /// The token directory (holds softhsm2.conf, tokens/ and `<token>.pin`).
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print every token object as `CLASS ID-HEX LABEL`, one per line (id `-` when empty).
    Objects { token: String },
    /// Write DIR/softhsm2.conf and initialise tokens (PIN: `DIR/<token>.pin`);
    /// `NAME@kryoptic` makes a Kryoptic token.
    Init { tokens: Vec<String> },
    /// Import one fresh random domain key into each listed token (a "cloned" set).
    DomainKey {
        #[arg(long, default_value = "hsm-sync-domain")]
        label: String,
        /// The key's value in hex (default: random).
        #[arg(long)]
        value: Option<String>,
        tokens: Vec<String>,
    },
    /// Generate secret keys; with --count N, ids are ID followed by a 2-byte index and
    /// labels `LABEL-<index>`.
    Keygen {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
        /// generic secret (HMAC) instead of AES
        #[arg(long)]
        generic: bool,
        /// DES3 instead of AES
        #[arg(long)]
        des3: bool,
        /// An HMAC key type (`sha1`, `sha224`, `sha256`, `sha384`, `sha512`) instead of
        /// AES: the key is imported with a random value (tokens do not all generate these
        /// types), its key type sent raw (cryptoki 0.12 would send 0x2B for the SHA-224/384/512
        /// types). Kryoptic takes only the hash's length (20, 28, 32, 48, 64 bytes).
        #[arg(long)]
        hmac: Option<String>,
        #[arg(long, default_value_t = 32)]
        bytes: usize,
        #[arg(long)]
        count: Option<usize>,
        #[arg(long)]
        no_extractable: bool,
        /// CKA_PRIVATE false
        #[arg(long)]
        public: bool,
    },
    /// Import a secret key of a known value (AES, or generic secret with --generic).
    Import {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
        /// The value in hex.
        #[arg(long)]
        value: String,
        #[arg(long)]
        generic: bool,
    },
    /// Generate an RSA (--rsa BITS), EC (--ec p256|p384) or Ed25519 (--ec ed25519) key
    /// pair, both halves with ID and LABEL. Ed25519 on Kryoptic needs the EdDSA module
    /// (`testkit::build::kryoptic_eddsa`).
    KeygenPair {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
        #[arg(long)]
        rsa: Option<u64>,
        /// The curve when not --rsa: p256, p384 or ed25519.
        #[arg(long, default_value = "p256")]
        ec: String,
        #[arg(long)]
        no_extractable: bool,
    },
    /// Print the signature (hex) of a fixed message by the private key with this id:
    /// RSA PKCS#1 v1.5 SHA-256, ECDSA of its SHA-256 digest, or pure Ed25519 (`CKM_EDDSA`),
    /// by the key's type.
    Sign {
        token: String,
        #[arg(long)]
        id: String,
    },
    /// Exit 0 if SIG verifies under the public key with this id, 1 otherwise.
    Verify {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        sig: String,
    },
    /// Set usage flags of the key with this id: e.g. --set sign=false (class secret, private or public).
    SetFlags {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "secret")]
        class: String,
        #[arg(long = "set")]
        set: Vec<String>,
    },
    /// Replace the secret key with this id by an unmodifiable copy labelled LABEL.
    Freeze {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
    },
    /// Print the HMAC of a fixed message under the secret key with this id (hex).
    Hmac {
        token: String,
        #[arg(long)]
        id: String,
    },
    /// Print the raw `CKA_KEY_TYPE` (hex, e.g. `0x2c`) of the secret key with this id, as
    /// the token holds it (cryptoki 0.12 would read 0x2C–0x2E as 0x2B).
    KeyType {
        token: String,
        #[arg(long)]
        id: String,
    },
    /// Change the token's user PIN to NEW (the PIN file is left as it is).
    SetPin {
        token: String,
        #[arg(long)]
        new: String,
    },
    /// Set the label of the secret key with this id.
    SetLabel {
        token: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        label: String,
    },
    /// Write the lifecycle records hsm-sync before issue 15 kept (one data object per
    /// key), `synced` now, for every secret key on the token.
    LegacyState {
        token: String,
        #[arg(long)]
        sync: String,
        #[arg(long)]
        targets: Vec<String>,
    },
    /// Print the number of secret keys with this id (or all, without --id), or with
    /// --data the number of hsm-sync's own data objects.
    Count {
        token: String,
        #[arg(long)]
        id: Option<String>,
        #[arg(long, conflicts_with = "id")]
        data: bool,
    },
}

/// What `sign` signs, `verify` checks and `hmac` MACs.
const MESSAGE: &[u8] = b"hsm-sync fixture message";

fn pin(dir: &Path, token: &str) -> Result<SecretString, String> {
    let p = std::fs::read_to_string(dir.join(format!("{token}.pin"))).map_err(|e| format!("{token}.pin: {e}"))?;
    Ok(SecretString::from(p.trim().to_string()))
}

/// The PKCS#11 implementations the fixture provisions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Make {
    SoftHsm,
    Kryoptic,
    Nss,
}

/// `DIR/makes`: one `NAME MAKE` line per token `init` made (`kryoptic`,
/// `kryoptic-kw`, `kryoptic-nowrap`, `kryoptic-nosha384`, `kryoptic-kwp`, `nss`; SoftHSM tokens need none).
fn read_makes(dir: &Path) -> Vec<(String, Make, String)> {
    let text = std::fs::read_to_string(dir.join("makes")).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, m)| {
            let make = if m.starts_with("kryoptic") {
                Make::Kryoptic
            } else if m == "nss" {
                Make::Nss
            } else {
                Make::SoftHsm
            };
            (n.to_string(), make, m.to_string())
        })
        .collect()
}

/// The mechanisms a Kryoptic personality denies.
fn denied(personality: &str) -> &'static [&'static str] {
    match personality {
        "kryoptic-kw" => &["CKM_AES_KEY_WRAP_KWP", "CKM_AES_KEY_WRAP_PKCS7"],
        "kryoptic-nowrap" => &["CKM_AES_KEY_WRAP", "CKM_AES_KEY_WRAP_KWP", "CKM_AES_KEY_WRAP_PKCS7"],
        "kryoptic-nosha384" => &["CKM_SHA384_HMAC", "CKM_SHA384_HMAC_GENERAL"],
        "kryoptic-kwp" => &["CKM_AES_KEY_WRAP"],
        _ => &[],
    }
}

/// `DIR/kryoptic.toml`: one sqlite slot per Kryoptic token, numbered from 1 in `init`
/// order, with its personality's deny list.
fn write_kryoptic_conf(dir: &Path, tokens: &[(String, String)]) -> Result<(), String> {
    let slots: Vec<(&str, &[&str])> = tokens.iter().map(|(n, p)| (n.as_str(), denied(p))).collect();
    provision::write_kryoptic_conf(dir, &slots)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// One loaded module per make, loaded when a command first needs it.
struct Modules {
    softhsm: std::cell::OnceCell<Provisioner>,
    kryoptic: std::cell::OnceCell<Provisioner>,
    /// The one NSS token this process opened, by name, and its module.
    nss: std::cell::OnceCell<(String, Provisioner)>,
    makes: Vec<(String, Make, String)>,
    dir: PathBuf,
}

impl Modules {
    fn make(&self, token: &str) -> Make {
        self.makes
            .iter()
            .find(|(n, _, _)| n == token)
            .map_or(Make::SoftHsm, |(_, m, _)| *m)
    }

    fn for_token(&self, token: &str) -> Result<&Provisioner, String> {
        let load = |path: PathBuf| Provisioner::new(&path).map_err(|e| e.to_string());
        match self.make(token) {
            Make::SoftHsm => match self.softhsm.get() {
                Some(p) => Ok(p),
                None => {
                    let m =
                        provision::softhsm_module().ok_or("SoftHSM2 is not installed: apt-get install -y softhsm2")?;
                    Ok(self.softhsm.get_or_init(|| load(m).unwrap_or_else(|e| fail(&e))))
                }
            },
            Make::Kryoptic => match self.kryoptic.get() {
                Some(p) => Ok(p),
                None => {
                    let m = std::env::var_os("HSM_SYNC_KRYOPTIC_MODULE").map(PathBuf::from).ok_or(
                        "a Kryoptic token needs $HSM_SYNC_KRYOPTIC_MODULE (testkit::build::kryoptic builds it)",
                    )?;
                    Ok(self.kryoptic.get_or_init(|| load(m).unwrap_or_else(|e| fail(&e))))
                }
            },
            Make::Nss => {
                if let Some((name, p)) = self.nss.get() {
                    return match name == token {
                        true => Ok(p),
                        false => Err(format!(
                            "NSS tokens `{name}` and `{token}` in one command: softokn opens one database per process"
                        )),
                    };
                }
                let m = provision::nss_module()
                    .ok_or("NSS softokn (libsoftokn3.so) is not installed: apt-get install -y libnss3")?;
                let args = provision::nss_module_args(&nss_db(&self.dir, token));
                let p = Provisioner::with_module_args(&m, Some(&args)).map_err(|e| e.to_string())?;
                Ok(&self.nss.get_or_init(|| (token.to_string(), p)).1)
            }
        }
    }

    /// The token's label in its module: NSS's is fixed, the others are named by `init`.
    fn label<'a>(&self, token: &'a str) -> &'a str {
        match self.make(token) {
            Make::Nss => provision::NSS_TOKEN_LABEL,
            _ => token,
        }
    }

    fn user_session(&self, dir: &Path, token: &str) -> Result<cryptoki::session::Session, String> {
        self.for_token(token)?
            .user_session(self.label(token), &pin(dir, token)?)
            .map_err(|e| e.to_string())
    }
}

/// The NSS database of token `name`: `DIR/nss/NAME`.
fn nss_db(dir: &Path, name: &str) -> PathBuf {
    dir.join("nss").join(name)
}

/// Makes the NSS database of token `name` with `certutil -N`, its password the user PIN
/// in `pin_file`.
fn init_nss(dir: &Path, name: &str, pin_file: &Path) -> Result<(), String> {
    let db = nss_db(dir, name);
    std::fs::create_dir_all(&db).map_err(|e| format!("{}: {e}", db.display()))?;
    let out = std::process::Command::new("certutil")
        .arg("-N")
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .arg("-f")
        .arg(pin_file)
        .output()
        .map_err(|e| format!("certutil: {e} (apt-get install -y libnss3-tools)"))?;
    if !out.status.success() {
        return Err(format!("certutil -N: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// A module that will not load: the fixture cannot go on.
fn fail(msg: &str) -> ! {
    eprintln!("hsm-fixture: {msg}");
    std::process::exit(1)
}

fn run(a: Args) -> Result<(), String> {
    let conf = if let Cmd::Init { .. } = a.cmd {
        provision::write_conf(&a.dir).map_err(|e| e.to_string())?
    } else {
        a.dir.join("softhsm2.conf")
    };
    let mut makes = read_makes(&a.dir);
    if let Cmd::Init { tokens } = &a.cmd {
        for t in tokens {
            if let Some((name, personality)) = t.split_once('@') {
                let make = if personality == "nss" {
                    Make::Nss
                } else {
                    Make::Kryoptic
                };
                makes.push((name.to_string(), make, personality.to_string()));
            }
        }
        let lines: String = makes.iter().map(|(n, _, p)| format!("{n} {p}\n")).collect();
        std::fs::write(a.dir.join("makes"), lines).map_err(|e| e.to_string())?;
        let kry: Vec<(String, String)> = makes
            .iter()
            .filter(|(_, m, _)| *m == Make::Kryoptic)
            .map(|(n, _, p)| (n.clone(), p.clone()))
            .collect();
        write_kryoptic_conf(&a.dir, &kry)?;
    }
    std::env::set_var("SOFTHSM2_CONF", &conf);
    std::env::set_var("KRYOPTIC_CONF", a.dir.join("kryoptic.toml"));
    let mods = Modules {
        softhsm: std::cell::OnceCell::new(),
        kryoptic: std::cell::OnceCell::new(),
        nss: std::cell::OnceCell::new(),
        makes,
        dir: a.dir.clone(),
    };
    let e = |e: hsm_sync::hsm::HsmError| e.to_string();
    let hexid = |s: &str| hex::decode(s).map_err(|e| format!("--id: {e}"));
    // The one secret key with this id, in a session, with its raw CKA_KEY_TYPE.
    let typed_key = |token: &str, id: &str| {
        let s = mods.user_session(&a.dir, token)?;
        let found = provision::find_by_id(&s, &hexid(id)?).map_err(e)?;
        let [h] = found.as_slice() else {
            return Err(format!("{} keys with id {id}", found.len()));
        };
        let key_type = provision::raw_key_type(mods.for_token(token)?, &s, *h).map_err(e)?;
        Ok((s, *h, key_type))
    };
    match a.cmd {
        Cmd::Init { tokens } => {
            for t in tokens {
                let t = t.split_once('@').map_or(t.as_str(), |(n, _)| n).to_string();
                let user = format!("{t}-user-pin-0000");
                std::fs::write(a.dir.join(format!("{t}.pin")), &user).map_err(|e| e.to_string())?;
                use std::os::unix::fs::PermissionsExt;
                let perm = std::fs::Permissions::from_mode(0o600);
                std::fs::set_permissions(a.dir.join(format!("{t}.pin")), perm).map_err(|e| e.to_string())?;
                if mods.make(&t) == Make::Nss {
                    init_nss(&a.dir, &t, &a.dir.join(format!("{t}.pin")))?;
                    continue;
                }
                mods.for_token(&t)?
                    .init_token(
                        &t,
                        &SecretString::from(format!("{t}-so-pin-0000")),
                        &SecretString::from(user),
                    )
                    .map_err(e)?;
            }
        }
        Cmd::DomainKey { label, value, tokens } => {
            let v = match value {
                Some(h) => Zeroizing::new(hex::decode(h).map_err(|e| format!("--value: {e}"))?),
                None => {
                    let mut v = Zeroizing::new(vec![0u8; 32]);
                    getrandom::fill(&mut v).map_err(|e| e.to_string())?;
                    v
                }
            };
            for t in tokens {
                let s = mods.user_session(&a.dir, &t)?;
                provision::import_domain_key(&s, &label, &v).map_err(e)?;
            }
        }
        Cmd::Keygen {
            token,
            id,
            label,
            generic,
            des3,
            hmac,
            bytes,
            count,
            no_extractable,
            public,
        } => {
            let s = mods.user_session(&a.dir, &token)?;
            let id = hexid(&id)?;
            if let Some(h) = hmac {
                let key_type = provision::hmac_key_type(&h)
                    .ok_or(format!("--hmac {h}: sha1, sha224, sha256, sha384 or sha512"))?;
                let mut value = Zeroizing::new(vec![0u8; bytes]);
                getrandom::fill(&mut value).map_err(|e| e.to_string())?;
                provision::import_hmac_key(
                    mods.for_token(&token)?,
                    &s,
                    key_type,
                    &id,
                    &label,
                    !no_extractable,
                    &value,
                )
                .map_err(e)?;
                return Ok(());
            }
            let mut spec = SecretSpec {
                aes: !generic,
                des3,
                bytes,
                id: id.clone(),
                label: label.clone(),
                extractable: !no_extractable,
                private: !public,
                sensitive: true,
            };
            match count {
                None => {
                    provision::generate_secret(&s, &spec).map_err(e)?;
                }
                Some(n) => {
                    for i in 0..n {
                        spec.id = [id.as_slice(), &(i as u16).to_be_bytes()].concat();
                        spec.label = format!("{label}-{i}");
                        provision::generate_secret(&s, &spec).map_err(e)?;
                    }
                }
            }
        }
        Cmd::Import {
            token,
            id,
            label,
            value,
            generic,
        } => {
            let s = mods.user_session(&a.dir, &token)?;
            let value = Zeroizing::new(hex::decode(value).map_err(|e| format!("--value: {e}"))?);
            let spec = SecretSpec {
                aes: !generic,
                des3: false,
                bytes: value.len(),
                id: hexid(&id)?,
                label,
                extractable: true,
                private: true,
                sensitive: true,
            };
            provision::import_secret(&s, &spec, &value).map_err(e)?;
        }
        Cmd::KeygenPair {
            token,
            id,
            label,
            rsa,
            ec,
            no_extractable,
        } => {
            let s = mods.user_session(&a.dir, &token)?;
            let spec = provision::PairSpec {
                rsa_bits: rsa,
                curve: ec,
                id: hexid(&id)?,
                label,
                extractable: !no_extractable,
            };
            provision::generate_pair(&s, &spec).map_err(e)?;
        }
        Cmd::Sign { token, id } => {
            let s = mods.user_session(&a.dir, &token)?;
            println!(
                "{}",
                hex::encode(provision::sign(&s, &hexid(&id)?, MESSAGE).map_err(e)?)
            );
        }
        Cmd::Verify { token, id, sig } => {
            let s = mods.user_session(&a.dir, &token)?;
            let sig = hex::decode(sig).map_err(|e| format!("--sig: {e}"))?;
            if !provision::verify(&s, &hexid(&id)?, MESSAGE, &sig).map_err(e)? {
                return Err("signature does not verify".into());
            }
        }
        Cmd::SetFlags { token, id, class, set } => {
            use cryptoki::object::{Attribute, ObjectClass};
            let s = mods.user_session(&a.dir, &token)?;
            let class = match class.as_str() {
                "secret" => ObjectClass::SECRET_KEY,
                "private" => ObjectClass::PRIVATE_KEY,
                "public" => ObjectClass::PUBLIC_KEY,
                other => return Err(format!("unknown class {other}")),
            };
            let mut attrs = Vec::new();
            for kv in set {
                let (k, v) = kv.split_once('=').ok_or("--set takes name=true|false")?;
                let v = v == "true";
                attrs.push(match k {
                    "encrypt" => Attribute::Encrypt(v),
                    "decrypt" => Attribute::Decrypt(v),
                    "sign" => Attribute::Sign(v),
                    "verify" => Attribute::Verify(v),
                    "derive" => Attribute::Derive(v),
                    "modifiable" => Attribute::Modifiable(v),
                    other => return Err(format!("unknown flag {other}")),
                });
            }
            provision::set_flags(&s, &hexid(&id)?, class, &attrs).map_err(e)?;
        }
        Cmd::Freeze { token, id, label } => {
            let s = mods.user_session(&a.dir, &token)?;
            provision::freeze(&s, &hexid(&id)?, cryptoki::object::ObjectClass::SECRET_KEY, &label).map_err(e)?;
        }
        Cmd::Hmac { token, id } => {
            let (s, h, key_type) = typed_key(&token, &id)?;
            let mac = provision::hmac(&s, h, key_type, MESSAGE)
                .map_err(e)?
                .ok_or("key too short for HMAC")?;
            println!("{}", hex::encode(mac));
        }
        Cmd::KeyType { token, id } => {
            let (_, _, key_type) = typed_key(&token, &id)?;
            println!("{key_type:#x}");
        }
        Cmd::SetPin { token, new } => {
            let s = mods.user_session(&a.dir, &token)?;
            s.set_pin(&pin(&a.dir, &token)?, &SecretString::from(new))
                .map_err(|e| format!("C_SetPIN: {e}"))?;
        }
        Cmd::SetLabel { token, id, label } => {
            let s = mods.user_session(&a.dir, &token)?;
            let found = provision::find_by_id(&s, &hexid(&id)?).map_err(e)?;
            let [h] = found.as_slice() else {
                return Err(format!("{} keys with id {id}", found.len()));
            };
            provision::set_label(&s, *h, &label).map_err(e)?;
        }
        Cmd::Objects { token } => {
            let s = mods.user_session(&a.dir, &token)?;
            for (class, id, label) in provision::objects(&s).map_err(e)? {
                let id = if id.is_empty() {
                    "-".to_string()
                } else {
                    hex::encode(id)
                };
                println!("{class} {id} {label}");
            }
        }
        Cmd::LegacyState { token, sync, targets } => {
            let s = mods.user_session(&a.dir, &token)?;
            let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            for (id, label) in provision::secret_keys(&s).map_err(e)? {
                provision::write_legacy_record(&s, &id, &label, &at, &sync, &token, &targets).map_err(e)?;
            }
        }
        Cmd::Count { token, id, data } => {
            let s = mods.user_session(&a.dir, &token)?;
            let n = match id {
                Some(id) => provision::find_by_id(&s, &hexid(&id)?).map_err(e)?.len(),
                None if data => provision::count_data_objects(&s).map_err(e)?,
                None => provision::count_secret_keys(&s).map_err(e)?,
            };
            println!("{n}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("hsm-fixture: {msg}");
            ExitCode::FAILURE
        }
    }
}
