//! `-v` and `-vv` (issue 16): the tracing subscriber that prints stage timings (`-v`,
//! `crate::stage`) and every PKCS#11 call (`-vv`, `hsm::trace`) on stderr, one line
//! each, never on stdout (it carries reports and JSON). Installed only when asked for:
//! without `-v` there is no subscriber and nothing new is printed. `RUST_LOG` is not
//! read (no env-filter): an inherited environment cannot make a run print more than its
//! flags ask for. Only hsm-sync's own two targets are shown, whatever a dependency logs.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;

/// Installs the process's subscriber for `verbosity` (`-v` 1, `-vv` 2 and more); whether
/// the log is on. A second run in one process (the benchmark's) keeps the first one's.
pub(super) fn install(verbosity: u8) -> bool {
    let level = match verbosity {
        0 => return false,
        1 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // The builder's own default is INFO; which events show is the filter's to say.
        .with_max_level(level)
        .without_time()
        .with_level(false)
        .with_target(true)
        .finish()
        .with(
            Targets::new()
                .with_target(crate::stage::TARGET, level)
                .with_target(crate::hsm::TRACE_TARGET, level),
        );
    // Already set (an earlier run in this process): its log stays, which is still stderr.
    let _ = tracing::subscriber::set_global_default(subscriber);
    true
}
