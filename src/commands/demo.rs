//! `hsm-sync demo [--dir DIR]`: makes two SoftHSM tokens that share a domain key (a
//! "cloned" pair), about 100 AES and HMAC keys on `primary`, and a plan; then runs
//! validate → plan → apply → plan, as an operator would.

use std::path::{Path, PathBuf};

use miette::{IntoDiagnostic, WrapErr};
use secrecy::SecretString;
use zeroize::Zeroizing;

use clap::Parser;

use super::error::CommandError;
use crate::cli::{Cli, DemoArgs};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::hsm::softhsm::{self, Provisioner, SecretSpec};
use crate::output::Printer;
use crate::plan::DEFAULT_DOMAIN_KEY;

fn random_hex(n: usize) -> Result<Zeroizing<String>, CommandError> {
    let mut buf = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut buf).map_err(CommandError::NoRandomness)?;
    Ok(Zeroizing::new(hex::encode(&*buf)))
}

fn write_private(path: &Path, contents: &str) -> miette::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes()).into_diagnostic()
}

fn demo_dir(dir: Option<&Path>) -> miette::Result<PathBuf> {
    match dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .into_diagnostic()
                .wrap_err_with(|| format!("creating {}", d.display()))?;
            if d.join("softhsm2.conf").exists() {
                return Err(CommandError::DemoExists(d.display().to_string()).into());
            }
            Ok(d.to_path_buf())
        }
        None => {
            // tmpfs makes SoftHSM's one-file-per-object store about ten times faster.
            let base = Path::new("/dev/shm");
            let b = tempfile::Builder::new()
                .prefix("hsm-sync-demo-")
                .tempdir_in(if base.is_dir() { base } else { Path::new("/tmp") });
            Ok(b.into_diagnostic()?.keep())
        }
    }
}

pub(super) fn run(p: &Printer, a: &DemoArgs) -> Result<ExitStatus> {
    let Some(module) = softhsm::softhsm_module() else {
        p.error_line("hsm-sync demo needs SoftHSM2, which is not installed: run `sudo apt-get install -y softhsm2` (Debian/Ubuntu) and try again");
        return Ok(ExitStatus::Error);
    };
    let dir = demo_dir(a.dir.as_deref())?;
    let conf = softhsm::write_conf(&dir).into_diagnostic()?;
    // SoftHSM reads its configuration at C_Initialize; no other thread runs yet.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    p.outln(&format!("demo directory: {}", dir.display()));

    let prov = Provisioner::new(&module)?;
    let domain = Zeroizing::new({
        let mut v = vec![0u8; 32];
        getrandom::fill(&mut v).map_err(CommandError::NoRandomness)?;
        v
    });
    for token in ["primary", "dr"] {
        let so = SecretString::from(random_hex(8)?.to_string());
        let user_hex = random_hex(8)?;
        write_private(&dir.join(format!("{token}.pin")), &user_hex)?;
        let user = SecretString::from(user_hex.to_string());
        prov.init_token(token, &so, &user)?;
        let s = prov.user_session(token, &user)?;
        softhsm::import_domain_key(&s, DEFAULT_DOMAIN_KEY, &domain)?;
        if token == "primary" {
            for i in 0..a.keys {
                let aes = i % 3 != 2;
                let label = if aes {
                    format!("payments-{i:03}")
                } else {
                    format!("hmac-{i:03}")
                };
                let spec = SecretSpec {
                    aes,
                    des3: false,
                    bytes: 32,
                    id: (i as u32 + 1).to_be_bytes().to_vec(),
                    label,
                    extractable: true,
                    private: true,
                    sensitive: true,
                };
                softhsm::generate_secret(&s, &spec)?;
            }
            // A 20-byte HMAC key: SoftHSM stores its copy zero-padded; hsm-sync verifies HMACs agree.
            let odd = SecretSpec {
                aes: false,
                des3: false,
                bytes: 20,
                id: vec![0xff, 0x20],
                label: "hmac-odd-20".into(),
                extractable: true,
                private: true,
                sensitive: true,
            };
            softhsm::generate_secret(&s, &odd)?;
        }
    }
    drop(prov);
    p.outln(&format!(
        "made SoftHSM tokens `primary` and `dr` sharing domain key `{DEFAULT_DOMAIN_KEY}`, and {} keys on `primary`",
        a.keys + 1
    ));

    let plan_path = dir.join("plan.yaml");
    std::fs::write(&plan_path, demo_plan(&module)).into_diagnostic()?;
    // The schema beside the plan, so an editor opening plan.yaml finds it (a URL would
    // need a network and a host that serves it).
    let schema = super::schema::schema_text(crate::cli::SchemaKind::Plan).into_diagnostic()?;
    std::fs::write(dir.join("plan.schema.json"), schema).into_diagnostic()?;
    p.outln(&format!("wrote {}\n", plan_path.display()));

    // Each step is the command line it prints, parsed by the real CLI: what the demo
    // shows is exactly what it runs (and no command builds another's arguments).
    let step = |line: &str| -> Result<ExitStatus> {
        p.outln(&format!("\n$ hsm-sync {line}"));
        let words = line.split(' ').map(|w| match w {
            "plan.yaml" => plan_path.clone().into_os_string(),
            "saved-plan.json" => dir.join(w).into_os_string(),
            "report.json" => dir.join(w).into_os_string(),
            _ => w.into(),
        });
        let cli =
            Cli::try_parse_from(std::iter::once("hsm-sync".into()).chain(words)).map_err(CommandError::DemoStep)?;
        super::dispatch(&cli, p)
    };
    step("validate plan.yaml --online")?;
    let first = step("plan plan.yaml --out saved-plan.json --detailed-exitcode")?;
    let applied = step("apply saved-plan.json --report report.json")?;
    let second = step("plan plan.yaml --detailed-exitcode")?;
    let report = dir.join("report.json");
    p.outln(&format!(
        "\ndemo done: the first plan had changes ({}), apply {}, the second plan {}.\nreport: {}\ntry:    SOFTHSM2_CONF={} {} inventory {} dr",
        if first == ExitStatus::ChangesPending { "exit 2" } else { "none?" },
        if applied == ExitStatus::Success { "succeeded" } else { "left work undone (exit 3)" },
        if second == ExitStatus::Success { "shows no changes" } else { "still shows changes" },
        report.display(),
        conf.display(),
        // The binary that ran, so the hint works without hsm-sync on PATH.
        std::env::current_exe().map_or_else(|_| "hsm-sync".into(), |e| e.display().to_string()),
        plan_path.display()
    ));
    Ok(if applied == ExitStatus::Success && second == ExitStatus::Success {
        ExitStatus::Success
    } else {
        ExitStatus::Incomplete
    })
}

fn demo_plan(module: &Path) -> String {
    format!(
        r#"# yaml-language-server: $schema=./plan.schema.json
# Made by `hsm-sync demo`: two SoftHSM tokens that share a domain key, as clones do.
version: 1

clusters:
  primary:
    module: {m}
    token: {{ label: primary }}
    credentials:
      role: crypto-user
      user: demo-cu
      pin: {{ file: ./primary.pin }}
  dr:
    module: {m}
    token: {{ label: dr }}
    cloned_from: primary
    credentials:
      role: crypto-user
      user: demo-cu
      pin: {{ file: ./dr.pin }}

sync:
  - name: payments
    source: primary
    targets: [dr]
    keys:
      - label: "payments-*"
  - name: hmac
    source: primary
    targets: [dr]
    keys:
      - label: "hmac-*"
"#,
        m = module.display()
    )
}
