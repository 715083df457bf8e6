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

/// The CI recipes under `ci/` (issue 16 item 17).
const RECIPES: &[&str] = &[
    "ci/github-actions/plan.yml",
    "ci/github-actions/apply.yml",
    "ci/gitlab-ci.yml",
];

/// Every shell script in a workflow: GitHub's `run`, GitLab's `script` lists.
fn scripts(value: &serde_yaml::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("run"), serde_yaml::Value::String(s)) => out.push(s.clone()),
                    (Some("script" | "before_script" | "after_script"), serde_yaml::Value::Sequence(lines)) => {
                        out.push(lines.iter().filter_map(|l| l.as_str()).collect::<Vec<_>>().join("\n"))
                    }
                    _ => scripts(v, out),
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| scripts(v, out)),
        _ => {}
    }
}

/// The variables a workflow defines (`env:`, `variables:`), with `${{ … }}` made a sample.
fn variables(value: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    (Some("env" | "variables"), serde_yaml::Value::Mapping(vars)) => {
                        for (name, value) in vars {
                            if let (Some(name), Some(value)) = (name.as_str(), value.as_str()) {
                                out.push((name.to_string(), expressions_to_samples(value)));
                            }
                        }
                    }
                    _ => variables(v, out),
                }
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| variables(v, out)),
        _ => {}
    }
}

/// `${{ matrix.shard }}` and friends, replaced by `1`: a value every place they stand in
/// takes (a shard index or count, a number, a name).
fn expressions_to_samples(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("an unclosed ${{") + start + 2;
        out.push('1');
        rest = &rest[end..];
    }
    out + rest
}

/// Each `hsm-sync …` command line of a script, where `hsm-sync` stands in command position,
/// up to the first unquoted shell operator (a redirect, pipe, `;`, `&`, `)`).
fn command_lines(script: &str) -> Vec<String> {
    let script = script.replace("\\\n", " ");
    let mut found = Vec::new();
    for line in script.lines() {
        let mut from = 0;
        while let Some(at) = line[from..].find("hsm-sync").map(|i| i + from) {
            from = at + "hsm-sync".len();
            let before = line[..at].trim_end();
            let after = &line[from..];
            let word_ends = after.is_empty() || after.starts_with(char::is_whitespace);
            let command_position = before.is_empty()
                || [";", "&&", "||", "|", "(", "$(", "!", "then", "do", "else"]
                    .iter()
                    .any(|op| before == *op || before.ends_with(&format!(" {op}")) || before.ends_with(['(', ';']))
                || before.ends_with(" if")
                || before == "if";
            if !(word_ends && command_position) {
                continue;
            }
            let mut end = after.len();
            let (mut single, mut double) = (false, false);
            for (i, c) in after.char_indices() {
                match c {
                    '\'' if !double => single = !single,
                    '"' if !single => double = !double,
                    '>' | '<' | '|' | ';' | '&' | ')' | '#' if !single && !double => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            found.push(format!("hsm-sync{}", &after[..end]).trim_end().to_string());
        }
    }
    found
}

/// The words bash makes of `command`, with `vars` (and `1` for any other variable) set.
fn shell_words(command: &str, vars: &[(String, String)]) -> Vec<String> {
    let mut bash = Command::new("bash");
    bash.args([
        "--norc",
        "--noprofile",
        "-c",
        "set -euf; eval \"set -- $1\"; printf '%s\\0' \"$@\"",
        "words",
    ])
    .arg(command);
    let mut rest = command;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            let value = vars
                .iter()
                .rev()
                .find(|(n, _)| *n == name)
                .map_or("1", |(_, v)| v.as_str());
            bash.env(&name, value);
        }
    }
    let out = bash.output().expect("bash");
    assert!(out.status.success(), "bash cannot split `{command}`: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_terminator('\0')
        .map(str::to_string)
        .collect()
}

/// Every `hsm-sync` command of a recipe, parsed by the real command line.
fn recipe_commands(path: &str) -> Vec<(String, hsm_sync::cli::Cli)> {
    use clap::Parser;
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{path}: {e}"));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (mut runs, mut vars) = (Vec::new(), Vec::new());
    scripts(&yaml, &mut runs);
    variables(&yaml, &mut vars);
    let mut parsed = Vec::new();
    for script in runs {
        for line in command_lines(&expressions_to_samples(&script)) {
            let words = shell_words(&line, &vars);
            let cli = hsm_sync::cli::Cli::try_parse_from(&words)
                .unwrap_or_else(|e| panic!("{path}: `{line}` does not parse ({words:?}):\n{e}"));
            parsed.push((line, cli));
        }
    }
    parsed
}

#[test]
fn every_hsm_sync_command_in_the_ci_recipes_parses_with_the_real_cli() {
    use hsm_sync::cli::{Command as Sub, PlanFormat};
    let mut all = Vec::new();
    for path in RECIPES {
        let commands = recipe_commands(path);
        assert!(!commands.is_empty(), "{path}: no hsm-sync command found");
        let saved_plan = |c: &Sub| matches!(c, Sub::Plan(a) if a.format == PlanFormat::Markdown && a.out.is_some() && a.detailed_exitcode && a.shard.is_some());
        let applies_saved = |c: &Sub| matches!(c, Sub::Apply(a) if a.report.is_some() && a.plan.extension().is_some_and(|e| e == "json"));
        let plans = commands.iter().any(|(_, c)| saved_plan(&c.command));
        let applies = commands.iter().any(|(_, c)| applies_saved(&c.command));
        match *path {
            "ci/github-actions/plan.yml" => assert!(
                plans,
                "{path}: no sharded markdown plan with --out and --detailed-exitcode"
            ),
            "ci/github-actions/apply.yml" => assert!(applies, "{path}: no apply of a saved plan"),
            _ => assert!(plans && applies, "{path}: plan and apply of the saved plan expected"),
        }
        all.extend(commands.into_iter().map(|(line, _)| line));
    }
    assert!(all.len() >= 7, "too few commands found: {all:#?}");
}

#[test]
fn the_ci_recipes_take_pins_from_ci_secrets_never_inline() {
    for path in RECIPES {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap();
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let mut vars = Vec::new();
        variables(&yaml, &mut vars);
        let raw: Vec<&str> = text.lines().collect();
        for (name, _) in vars.iter().filter(|(n, _)| n.contains("PIN")) {
            let line = raw
                .iter()
                .find(|l| l.trim_start().starts_with(&format!("{name}:")))
                .unwrap();
            assert!(
                line.contains("${{ secrets."),
                "{path}: {name} is not read from a CI secret: {line}"
            );
        }
        assert!(!text.contains("--pin"), "{path}: a PIN on a command line");
    }
}

#[test]
fn the_deb_ships_what_build_deb_makes_and_cargo_toml_describes_the_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    for field in [
        "rust-version = ",
        "readme = ",
        "keywords = ",
        "categories = ",
        "[package.metadata.deb]",
    ] {
        assert!(manifest.contains(field), "Cargo.toml has no `{field}`");
    }
    let build = std::fs::read_to_string(root.join("ci/build-deb")).unwrap();
    let assets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("[\"target/assets/"))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert_eq!(assets.len(), 4, "the man page and three completions: {assets:?}");
    for asset in assets {
        assert!(
            build.contains(&format!("$assets/{asset}")),
            "ci/build-deb does not make {asset}"
        );
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains("cargo install --locked --path ."),
        "README: no install line"
    );
    let msrv = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"');
    assert!(
        readme.contains(&format!("Rust {msrv} or newer")),
        "README does not state the MSRV {msrv}"
    );
}
