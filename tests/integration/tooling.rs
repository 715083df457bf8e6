//! The tool around the tool (issue 16, items 15–17): shell completions and the man page
//! from the real binary, and the CI recipes under `ci/`, whose every `hsm-sync` command
//! line must parse with the real command line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hsm-sync");

/// Runs `hsm-sync ARGS`, asserting exit 0, and returns its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run hsm-sync");
    assert!(out.status.success(), "hsm-sync {args:?}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Sources the bash completion in a clean `bash`, completes `words` (the last is the one
/// being completed) and returns COMPREPLY, one entry a line.
fn bash_complete(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let driver = format!(
        r#"set -e
source '{script}'
spec=$(complete -p hsm-sync)
fn=$(sed -E 's/.*-F ([^ ]+).*/\1/' <<<"$spec")
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
"$fn" hsm-sync "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = script.display(),
        words = quoted.join(" "),
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &driver])
        .output()
        .expect("bash is required for the completion test");
    assert!(out.status.success(), "completion of {words:?}: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_completes_subcommands_flags_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hsm-sync.bash");
    std::fs::write(&script, stdout_of(&["completions", "bash"])).unwrap();

    assert_eq!(bash_complete(&script, &["hsm-sync", "pl"]), ["plan"]);
    let flags = bash_complete(&script, &["hsm-sync", "plan", "p.yaml", "--detailed"]);
    assert_eq!(flags, ["--detailed-exitcode"]);
    let formats = bash_complete(&script, &["hsm-sync", "plan", "p.yaml", "--format", ""]);
    assert_eq!(formats, ["text", "json", "markdown"]);
    let mut shells = bash_complete(&script, &["hsm-sync", "completions", ""]);
    shells.retain(|w| !w.starts_with('-'));
    assert_eq!(shells, ["bash", "zsh", "fish", "powershell", "elvish"]);
}

#[test]
fn completions_exist_for_every_shell_of_the_contract() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef hsm-sync"),
        ("fish", "complete -c hsm-sync"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[hsm-sync]"),
    ] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no `{marker}` in\n{script}");
        assert!(script.contains("sync-key"), "{shell}: subcommands missing");
    }
    let bad = Command::new(BIN).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1), "an unknown shell is a usage error");
}

/// Renders roff the way a reader's `man` does: `man -l -`, else groff's man macros.
fn render_man(roff: &str) -> String {
    let man = Command::new("man")
        .args(["-l", "-"])
        .env("MANWIDTH", "200")
        .env("MANPAGER", "cat")
        .env("MAN_KEEP_FORMATTING", "")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let (mut child, name) = match man {
        Ok(c) => (c, "man -l -"),
        Err(_) => (
            Command::new("groff")
                .args(["-k", "-man", "-Tutf8", "-P-c", "-rLL=200n"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("neither man nor groff is installed: apt-get install man-db groff-base"),
            "groff",
        ),
    };
    child.stdin.take().unwrap().write_all(roff.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{name}: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{name} warns:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_man_page_is_roff_that_man_renders_with_every_command() {
    let roff = stdout_of(&["man"]);
    assert!(roff.contains(".TH hsm-sync 1"), "not a man page:\n{roff}");
    // groff itself, with every warning on: the roff is well-formed.
    let mut groff = Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff is required: apt-get install groff-base");
    groff.stdin.take().unwrap().write_all(roff.as_bytes()).unwrap();
    let checked = groff.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stderr.is_empty(),
        "groff -ww: {checked:?}"
    );

    let page = render_man(&roff);
    for section in ["NAME", "SYNOPSIS", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT"] {
        assert!(page.lines().any(|l| l == section), "no {section} section in\n{page}");
    }
    use clap::CommandFactory;
    let cli = hsm_sync::cli::Cli::command();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let heading = format!("   hsm-sync {}", sub.get_name());
        assert!(page.lines().any(|l| l == heading), "no `{heading}` in\n{page}");
    }
    for flag in ["--detailed-exitcode", "--allow-destroy", "--source", "--shard"] {
        assert!(page.contains(flag), "{flag} is not documented in\n{page}");
    }
    assert!(page.contains("changes are pending"), "exit code 2 is not documented");
}
