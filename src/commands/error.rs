//! The ways a command itself refuses, as typed diagnostics (STYLE.md habit 3): the stages
//! have their own error enums, and these are the refusals no stage owns (an unknown
//! cluster on the command line, a saved plan that no longer fits, a missing
//! `--allow-destroy`). Each keeps the code, message and help it had as an ad-hoc
//! `miette!` (the integration tests and operators' scripts read them), and becomes the
//! edge [`crate::error::Error`] with `?`, which picks the exit status.

use miette::Diagnostic;

use crate::domain::handle::Handle;
use crate::domain::shard::Shard;

/// How a command refused, before or after its stages ran.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum CommandError {
    /// `validate --online`: the plan keeps state on tokens that hold no data objects.
    #[error("the `token` state backend keeps its records and journals on the tokens, and {clusters} hold(s) no data objects ({profiles})")]
    #[diagnostic(
        code(state::no_data_objects),
        help("keep state off the tokens: add `state: {{backend: file, path: ./.hsm-sync-state}}` (one machine or shared storage) or `state: {{backend: postgres, url_env: HSM_SYNC_STATE_URL}}` to the plan (README \"State\")")
    )]
    NoDataObjects {
        /// The clusters, named.
        clusters: String,
        /// Their profiles, named.
        profiles: String,
    },
    /// `inventory PLAN CLUSTER` names a cluster the plan does not define.
    #[error("cluster `{cluster}` is not defined in {plan}")]
    #[diagnostic(code(inventory::unknown_cluster), help("defined clusters: {defined}"))]
    InventoryUnknownCluster {
        /// The name given.
        cluster: String,
        /// The plan file, as the operator named it.
        plan: String,
        /// The plan's clusters, comma-separated.
        defined: String,
    },
    /// `lineage create PLAN CLUSTER` names a cluster the plan does not define.
    #[error("cluster `{cluster}` is not defined in {plan}")]
    #[diagnostic(code(lineage::unknown_cluster), help("defined clusters: {defined}"))]
    LineageUnknownCluster {
        /// The name given.
        cluster: String,
        /// The plan file, as the operator named it.
        plan: String,
        /// The plan's clusters, comma-separated.
        defined: String,
    },
    /// `probe PLAN CLUSTER` names a cluster the plan does not define.
    #[error("cluster `{cluster}` is not defined in {plan}")]
    #[diagnostic(code(probe::unknown_cluster), help("defined clusters: {defined}"))]
    ProbeUnknownCluster {
        /// The name given.
        cluster: String,
        /// The plan file, as the operator named it.
        plan: String,
        /// The plan's clusters, comma-separated.
        defined: String,
    },

    /// `sync-key` names a source or destination the plan does not define.
    #[error("the {what} cluster `{name}` is not in the plan")]
    #[diagnostic(code(sync_key::unknown_cluster), help("the plan defines: {defined}"))]
    SyncKeyUnknownCluster {
        /// `source` or `destination`.
        what: &'static str,
        /// The name given.
        name: String,
        /// The plan's clusters with their positions.
        defined: String,
    },
    /// `sync-key`'s destination is a position (CloudHSM numbers clusters) past the last.
    #[error("there is no cluster at position {index}")]
    #[diagnostic(code(sync_key::unknown_cluster), help("positions run from 0 to {last}: {defined}"))]
    NoClusterAtPosition {
        /// The position given.
        index: usize,
        /// The last position there is.
        last: usize,
        /// The plan's clusters with their positions.
        defined: String,
    },
    /// `sync-key` from a cluster to itself.
    #[error("the destination `{0}` is the source itself")]
    #[diagnostic(code(sync_key::same_cluster))]
    SameCluster(String),
    /// `sync-key` between clusters that log in as different users or roles (the plan's
    /// rule for sync entries).
    #[error("`{source_cluster}` logs in as {source_login} but `{dest}` as {dest_login}")]
    #[diagnostic(
        code(sync_key::credentials_differ),
        help("a key moves between the same user and role on both sides")
    )]
    CredentialsDiffer {
        /// The source cluster.
        source_cluster: String,
        /// Its role and user: ``crypto-user `alice` `` (one string, to keep the error small).
        source_login: String,
        /// The destination cluster.
        dest: String,
        /// Its role and user.
        dest_login: String,
    },
    /// `sync-key <handle>` names no key on the source: the operator's claim did not hold
    /// (a typo, not a blocked key: exit 1, nothing written).
    #[error("no key with handle {handle} on cluster `{cluster}`; nothing was changed")]
    #[diagnostic(
        code(sync_key::unknown_handle),
        help("list the keys and their handles with `hsm-sync inventory {plan} {cluster}`")
    )]
    UnknownHandle {
        /// The handle claimed.
        handle: Handle,
        /// The source cluster.
        cluster: String,
        /// The plan file, as the operator named it.
        plan: String,
    },

    /// `apply` was given a file that is neither a plan nor a saved plan.
    #[error("{plan}: {error}; nothing was changed")]
    #[diagnostic(
        code(apply::not_a_plan),
        help("apply takes a plan file, or the saved plan `hsm-sync plan PLAN --out SAVED` writes")
    )]
    NotAPlan {
        /// The file, as the operator named it.
        plan: String,
        /// Why it is not one.
        error: String,
    },
    /// `apply` was given a saved plan that does not parse as one.
    #[error("{plan} looks like a saved plan but is not a valid one: {error}")]
    #[diagnostic(
        code(apply::saved_plan_invalid),
        help("make a new one with `hsm-sync plan PLAN --out SAVED`")
    )]
    SavedPlanInvalid {
        /// The file, as the operator named it.
        plan: String,
        /// What is wrong with it.
        error: String,
    },
    /// `apply SAVED --shard` names another shard than the saved plan holds.
    #[error("--shard {given} given, but the saved plan holds {saved}")]
    #[diagnostic(
        code(apply::shard_mismatch),
        help("a saved plan carries its shard; apply it without --shard")
    )]
    ShardMismatch {
        /// The shard given.
        given: Shard,
        /// `the whole diff` or `shard I/N`.
        saved: String,
    },
    /// The saved plan no longer describes the tokens or the diff.
    #[error("saved plan is stale (made {made}): {changes}")]
    #[diagnostic(
        code(apply::stale_saved_plan),
        help("run `hsm-sync plan --out` again and review the new diff; nothing was changed")
    )]
    StaleSavedPlan {
        /// When it was made.
        made: String,
        /// What changed since, `; `-separated.
        changes: String,
    },
    /// Deletions are pending and `--allow-destroy` was not given.
    #[error("{0} deletion(s) pending and --allow-destroy not given: nothing was changed")]
    #[diagnostic(
        code(apply::destroy_not_allowed),
        help("review them with `hsm-sync plan`, then re-run apply with --allow-destroy")
    )]
    DestroyNotAllowed(usize),
    /// The report or JUnit file could not be written after the jobs ran. Whether tokens
    /// were changed decides the help and, at the edge, the exit status (CONTRACT.md §2).
    #[error("{unwritten}")]
    #[diagnostic(code(apply::record_not_written))]
    RecordNotWritten {
        /// What was not written and why, `; `-separated.
        unwritten: String,
        /// What the operator should know about the tokens.
        #[help]
        help: &'static str,
    },

    /// `demo` found no source of randomness for the tokens' PINs and domain key.
    #[error("no randomness available: {0}")]
    NoRandomness(getrandom::Error),
    /// `demo --dir` names a directory that already holds a demo.
    #[error("{0} already holds a demo")]
    #[diagnostic(help("choose an empty directory"))]
    DemoExists(String),
    /// One of the demo's own command lines did not parse (a bug of the demo).
    #[error("{0}")]
    DemoStep(clap::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Message, code and help, as the edge renders them.
    fn parts(e: &CommandError) -> (String, String, String) {
        let show = |d: Option<Box<dyn std::fmt::Display + '_>>| d.map(|d| d.to_string()).unwrap_or_default();
        (e.to_string(), show(e.code()), show(e.help()))
    }

    #[test]
    fn the_refusals_read_as_they_did_as_ad_hoc_diagnostics() {
        let e = CommandError::InventoryUnknownCluster {
            cluster: "nope".into(),
            plan: "plan.yaml".into(),
            defined: "primary, dr".into(),
        };
        assert_eq!(
            parts(&e),
            (
                "cluster `nope` is not defined in plan.yaml".into(),
                "inventory::unknown_cluster".into(),
                "defined clusters: primary, dr".into()
            )
        );
        let e = CommandError::CredentialsDiffer {
            source_cluster: "primary".into(),
            source_login: "crypto-user `alice`".into(),
            dest: "dr".into(),
            dest_login: "crypto-user `bob`".into(),
        };
        assert_eq!(
            parts(&e).0,
            "`primary` logs in as crypto-user `alice` but `dr` as crypto-user `bob`"
        );
        let e = CommandError::UnknownHandle {
            handle: Handle::claimed(7),
            cluster: "primary".into(),
            plan: "plan.yaml".into(),
        };
        assert_eq!(
            parts(&e),
            (
                "no key with handle 7 on cluster `primary`; nothing was changed".into(),
                "sync_key::unknown_handle".into(),
                "list the keys and their handles with `hsm-sync inventory plan.yaml primary`".into()
            )
        );
        let e = CommandError::RecordNotWritten {
            unwritten: "report: denied".into(),
            help: "nothing was changed",
        };
        assert_eq!(
            parts(&e),
            (
                "report: denied".into(),
                "apply::record_not_written".into(),
                "nothing was changed".into()
            )
        );
        let e = CommandError::DemoExists("/tmp/d".into());
        assert_eq!(
            parts(&e),
            (
                "/tmp/d already holds a demo".into(),
                String::new(),
                "choose an empty directory".into()
            )
        );
    }
}
