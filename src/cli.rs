//! Command-line surface (clap derive types only; no domain logic). Names follow
//! CONTRACT.md §2 exactly.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// What the plan's `credentials` mean, for `hsm-sync --help` (issue 16: `user` and
/// `crypto-officer` did not do what they suggest).
const CREDENTIALS_HELP: &str = "Credentials in the plan:
  role: crypto-user     log in as the token's user (CKU_USER, user PIN); sync only the keys
                        it owns (CKA_PRIVATE true, and the public halves of its pairs)
  role: crypto-officer  log in the same way (CKU_USER); sync any key the plan selects
  user: NAME            the identity the plan claims; must match between a source and its
                        targets. SoftHSM logs in with the PIN alone, so it is not sent to
                        the token there; on a `user:password` token (the CloudHSM profile)
                        the login is USER:PIN.
  pin: {env: VAR} | {file: PATH}   never the PIN itself; tried once per run, never retried";

/// Keep cryptographic keys in step across PKCS#11 HSM clusters, declaratively.
#[derive(Debug, Parser)]
#[command(name = "hsm-sync", version, about, long_about = None, after_long_help = CREDENTIALS_HELP)]
pub struct Cli {
    /// How diagnostics are printed: human-readable, or JSON for CI annotations.
    #[arg(long, global = true, value_enum, default_value_t = DiagnosticsFormat::Human)]
    pub diagnostics: DiagnosticsFormat,
    /// More on stderr: `-v` each stage and its duration, `-vv` also every PKCS#11 call
    /// (function, CKR code, duration; never an argument, PIN or key material).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The format of error and warning diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiagnosticsFormat {
    /// miette's graphical report.
    Human,
    /// miette's JSON report, one object per diagnostic.
    Json,
}

/// The subcommands of CONTRACT.md §2.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a plan offline; with --online also log in and prove clone lineage.
    Validate(ValidateArgs),
    /// Print the dry-run diff of a plan.
    Plan(PlanArgs),
    /// Apply a plan: wrap on the source, unwrap on each target, verify.
    Apply(ApplyArgs),
    /// List the keys on one cluster, with handles and fingerprints.
    Inventory(InventoryArgs),
    /// Copy one key, by its handle on the source, to one cluster (CloudHSM syncKey).
    SyncKey(SyncKeyArgs),
    /// Make SoftHSM tokens, keys and a plan, then validate, plan, apply and plan again.
    Demo(DemoArgs),
    /// Re-send the latest lifecycle event of keys to their associated resources.
    Notify(NotifyArgs),
    /// Print a JSON Schema.
    Schema(SchemaArgs),
    /// Make the domain key that gives a lineage its identity (on a primary, before cloning),
    /// or import it from key components (tokens of different makes).
    Lineage(LineageArgs),
    /// What hsm-sync finds out about a token: its info, profile, each wrap mechanism and
    /// the format it really makes; writes no token object.
    Probe(ProbeArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell or elvish).
    Completions(CompletionsArgs),
    /// Print the man page (roff) of every command.
    Man,
}

/// `validate PLAN [--online]`
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Also log in to every cluster and prove lineage for every (source, target) pair.
    #[arg(long)]
    pub online: bool,
}

/// Output format of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Human-readable diff.
    Text,
    /// The report shape of CONTRACT.md §4 with status `pending`.
    Json,
    /// A summary table and one section per target, for pull requests.
    Markdown,
}

/// `plan PLAN [--format ...] [--detailed-exitcode]`
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Exit 2 when changes are pending, 0 when there are none.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also save the diff and a digest of every token's inventory, for `apply SAVED`.
    #[arg(long, value_name = "SAVED")]
    pub out: Option<PathBuf>,
    /// Only shard i of n (from 1): keys are split by a hash of their identity, so n
    /// runners with `--shard 1/n` … `--shard n/n` together do the whole plan.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::domain::shard::Shard>,
    /// Wrap every key again instead of trusting fingerprints cached by CKA_UNIQUE_ID
    /// (tokens that give one; the state backend keeps them), and cache them afresh.
    #[arg(long)]
    pub refresh: bool,
}

/// `apply PLAN|SAVED [--jobs N] [--report FILE] [--junit FILE] [--allow-destroy] [--quiet]`
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan file, or a saved plan written by `plan --out` (refused if stale).
    #[arg(value_name = "PLAN|SAVED")]
    pub plan: PathBuf,
    /// Worker threads, 1 to 256 (default: `options.parallelism`, else the available CPUs).
    #[arg(long, value_parser = crate::limits::parse_jobs)]
    pub jobs: Option<usize>,
    /// Write the JSON report here (atomically: complete or absent).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Write a JUnit XML file with one test case per job, so CI shows failed jobs.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Allow `state: absent` selectors to delete keys from targets.
    #[arg(long)]
    pub allow_destroy: bool,
    /// No progress bars and no per-job lines; the summary and errors only.
    #[arg(long)]
    pub quiet: bool,
    /// Off a terminal, print a progress line to stderr this often (e.g. 10s, 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
    pub progress_interval: std::time::Duration,
    /// Only shard i of n (from 1): keys are split by a hash of their identity, so n
    /// runners with `--shard 1/n` … `--shard n/n` together do the whole plan.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<crate::domain::shard::Shard>,
    /// Wait up to this long (e.g. 30s, 5m) for a target another run holds, instead of
    /// exiting 1 at once naming the holder.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub lock_timeout: Option<std::time::Duration>,
}

/// Output format of `inventory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InventoryFormat {
    /// A table.
    Text,
    /// JSON.
    Json,
}

/// `inventory PLAN CLUSTER [--format text|json]`
#[derive(Debug, Args)]
pub struct InventoryArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The cluster to list.
    pub cluster: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InventoryFormat::Text)]
    pub format: InventoryFormat,
}

/// `sync-key PLAN --source CLUSTER <key handle> <destination>`
#[derive(Debug, Args)]
pub struct SyncKeyArgs {
    /// The plan file (clusters, credentials and lineage come from it).
    pub plan: PathBuf,
    /// The cluster that holds the key.
    #[arg(long)]
    pub source: String,
    /// The key's object handle on the source (as `inventory` prints it).
    #[arg(value_name = "KEY_HANDLE")]
    pub handle: u64,
    /// The destination: a cluster name or its 0-based position in `clusters`.
    #[arg(value_name = "DESTINATION")]
    pub destination: String,
    /// Wait up to this long for a destination another run holds (default: exit 1 at once).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub lock_timeout: Option<std::time::Duration>,
}

/// `demo [--dir DIR]`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to make the tokens, plan and report (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many keys to create on the demo's primary token.
    #[arg(long, default_value_t = 100)]
    pub keys: usize,
}

/// `notify PLAN [--key SELECTOR] [--sync NAME] [--failed] [--report FILE]`
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Only this key: `id:HEX`, `label:GLOB` or `handle:N`.
    #[arg(long, value_name = "SELECTOR")]
    pub key: Option<String>,
    /// Only this sync entry.
    #[arg(long, value_name = "NAME")]
    pub sync: Option<String>,
    /// Re-send only the deliveries whose last attempt failed, to those resources only;
    /// not held by the cooldown.
    #[arg(long)]
    pub failed: bool,
    /// Write the JSON report (its `notifications`) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The claim protocol's settle time in milliseconds, for the test that races two
    /// runs (default: `notify::DEFAULT_CLAIM_SETTLE`). A hidden flag rather than an
    /// environment variable: it reaches exactly the run it is given to, clap checks it,
    /// and an inherited environment can never shorten the wait that keeps two runs from
    /// both sending. Not part of CONTRACT.md §2.
    #[arg(long, hide = true, value_name = "MS")]
    pub test_claim_settle_ms: Option<u64>,
}

/// Which schema to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaKind {
    /// The plan file.
    Plan,
    /// The apply/plan JSON report.
    Report,
    /// A saved plan written by `plan --out`.
    SavedPlan,
}

/// `lineage create|import PLAN CLUSTER …`
#[derive(Debug, Args)]
pub struct LineageArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LineageCommand,
}

/// The `lineage` subcommands.
#[derive(Debug, Subcommand)]
pub enum LineageCommand {
    /// Make the domain key on a token that has none (AES-256, token, private, sensitive,
    /// never extractable, wrap/unwrap/encrypt/decrypt) and print its lineage fingerprint.
    /// Do it on the primary before it is cloned: clones restored from its backup hold it.
    Create(LineageCreateArgs),
    /// Import the domain key from a key ceremony, for tokens of different makes (which
    /// cannot be clones): N components of 64 hex digits, from the --component-files in
    /// order and the rest typed at the terminal without echo, are XORed into the key and
    /// imported as `lineage create` makes it. Prints each component's check value and the
    /// lineage fingerprint, never a component. Run it with the same components on every
    /// token of the lineage.
    Import(LineageImportArgs),
}

/// `lineage import PLAN CLUSTER --components N [--component-file FILE]...`
#[derive(Debug, Args)]
pub struct LineageImportArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The cluster whose token gets the key (its `lineage.domain_key` label).
    pub cluster: String,
    /// How many components make the key (at least 2).
    #[arg(long, value_name = "N")]
    pub components: usize,
    /// A file holding one component (64 hex digits; surrounding whitespace ignored). Repeat
    /// it, in component order; components without a file are typed at the terminal.
    #[arg(long = "component-file", value_name = "FILE")]
    pub component_files: Vec<PathBuf>,
}

/// `lineage create PLAN CLUSTER`
#[derive(Debug, Args)]
pub struct LineageCreateArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The cluster whose token gets the key (its `lineage.domain_key` label).
    pub cluster: String,
}

/// `probe PLAN CLUSTER [--format text|json]`
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// The cluster whose token is probed.
    pub cluster: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = InventoryFormat::Text)]
    pub format: InventoryFormat,
}

/// `schema plan|report|saved-plan`
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which schema.
    #[arg(value_enum)]
    pub kind: SchemaKind,
}

/// A humantime duration of at least 10 ms (a zero interval would print without end).
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration ({e}): write e.g. 30s or 5m"))
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d >= std::time::Duration::from_millis(10) => Ok(d),
        Ok(_) => Err(format!("`{s}` is too short: write at least 10ms")),
        Err(e) => Err(format!("`{s}` is not a duration ({e}): write e.g. 10s or 1m")),
    }
}

/// A shell that `completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// `source <(hsm-sync completions bash)` in `~/.bashrc`.
    Bash,
    /// Save as `_hsm-sync` in a directory on `$fpath`.
    Zsh,
    /// Save as `~/.config/fish/completions/hsm-sync.fish`.
    Fish,
    /// `hsm-sync completions powershell | Out-String | Invoke-Expression` in `$PROFILE`.
    Powershell,
    /// `eval (hsm-sync completions elvish | slurp)` in `rc.elv`.
    Elvish,
}

/// `completions bash|zsh|fish|powershell|elvish`
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}
