//! `hsm-sync completions bash|zsh|fish|powershell|elvish`: a shell completion script for
//! the whole command line, made by clap_complete from the same clap types that parse it,
//! so it can never name a flag the binary does not take.

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionShell, CompletionsArgs};
use crate::error::Result;
use crate::exit::ExitStatus;
use crate::output::Printer;

/// The completion script for `shell`, for a binary named `hsm-sync`.
fn script(shell: CompletionShell) -> String {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
        CompletionShell::Powershell => Shell::PowerShell,
        CompletionShell::Elvish => Shell::Elvish,
    };
    // Into memory first: clap_complete panics on a failed write, and a closed stdout is
    // the printer's to handle quietly.
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "hsm-sync", &mut buf);
    let script = String::from_utf8_lossy(&buf).into_owned();
    if shell == Shell::Bash {
        // clap_complete's bash script spells a subcommand's state `hsm__sync__subcmd__plan`
        // where it computes it and `hsm__subcmd__sync__subcmd__plan` in the arms that
        // match it, so nothing after a subcommand completes for a binary whose name has a
        // hyphen (clap-rs/clap#6421, open). Spell the arms the way the state is computed;
        // a no-op once clap_complete is fixed, and the completion test notices either way.
        return script.replace("hsm__subcmd__sync", "hsm__sync");
    }
    script
}

pub(super) fn run(p: &Printer, a: &CompletionsArgs) -> Result<ExitStatus> {
    p.out(&script(a.shell));
    Ok(ExitStatus::Success)
}
