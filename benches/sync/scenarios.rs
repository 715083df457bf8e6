//! The scenarios: what one row of the table measures (key kind and count, targets, store,
//! latency, threads), its name, and how it travels to a child process as arguments.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The source keys: AES keys, or RSA or EC pairs.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Kind {
    Aes,
    Rsa,
    Ec,
}

/// Where the token directory lives: tmpfs or disk.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Store {
    Shm,
    Disk,
}

/// Where hsm-sync keeps its state in the row (issue 15: every backend measured).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Backend {
    Token,
    File,
    Postgres,
}

/// The PKCS#11 implementation every token of the row is (issue 15: the fingerprint
/// cache is measured on a token with `CKA_UNIQUE_ID`, which SoftHSM 2.6 lacks).
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Make {
    SoftHsm,
    Kryoptic,
}

/// What a child does.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(crate) enum Mode {
    /// raw loop, apply, plan, raw inventory
    Sync,
    /// provision only (for the 100k plan-RSS row)
    Gen,
    /// plan only, in a fresh process, on a directory `Gen` made
    PlanRss,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    pub(crate) mode: Mode,
    pub(crate) kind: Kind,
    /// Source keys to generate: AES keys, or pairs.
    pub(crate) keys: usize,
    pub(crate) targets: usize,
    pub(crate) store: Store,
    pub(crate) latency_us: u64,
    pub(crate) threads: usize,
    pub(crate) state: Backend,
    pub(crate) make: Make,
}

impl Scenario {
    /// The row's name, e.g. `aes-1000-t1-shm-j2` (what `--only` matches).
    pub(crate) fn name(&self) -> String {
        let kind = match self.kind {
            Kind::Aes => "aes",
            Kind::Rsa => "rsa",
            Kind::Ec => "ec",
        };
        let store = match self.store {
            Store::Shm => "shm",
            Store::Disk => "disk",
        };
        let mut n = format!("{kind}-{}-t{}-{store}", self.keys, self.targets);
        if self.latency_us > 0 {
            let _ = write!(n, "-lat{}ms", self.latency_us / 1000);
        }
        let _ = write!(n, "-j{}", self.threads);
        match self.state {
            Backend::Token => {}
            Backend::File => n.push_str("-file"),
            Backend::Postgres => n.push_str("-pg"),
        }
        if self.make == Make::Kryoptic {
            n.push_str("-kry");
        }
        match self.mode {
            Mode::Sync => n,
            Mode::Gen | Mode::PlanRss => format!("plan-rss-{n}"),
        }
    }

    /// The scenario as the child's arguments (read back by [`Scenario::parse`]).
    pub(crate) fn args(&self) -> Vec<String> {
        vec![
            format!("{:?}", self.mode),
            format!("{:?}", self.kind),
            self.keys.to_string(),
            self.targets.to_string(),
            format!("{:?}", self.store),
            self.latency_us.to_string(),
            self.threads.to_string(),
            format!("{:?}", self.state),
            format!("{:?}", self.make),
        ]
    }

    /// The scenario [`Scenario::args`] wrote.
    pub(crate) fn parse(a: &[String]) -> Scenario {
        let num = |i: usize| a[i].parse::<u64>().expect("a numeric scenario argument");
        Scenario {
            mode: match a[0].as_str() {
                "Sync" => Mode::Sync,
                "Gen" => Mode::Gen,
                _ => Mode::PlanRss,
            },
            kind: match a[1].as_str() {
                "Aes" => Kind::Aes,
                "Rsa" => Kind::Rsa,
                _ => Kind::Ec,
            },
            keys: num(2) as usize,
            targets: num(3) as usize,
            store: if a[4] == "Shm" { Store::Shm } else { Store::Disk },
            latency_us: num(5),
            threads: num(6) as usize,
            state: match a[7].as_str() {
                "File" => Backend::File,
                "Postgres" => Backend::Postgres,
                _ => Backend::Token,
            },
            make: match a.get(8).map(String::as_str) {
                Some("Kryoptic") => Make::Kryoptic,
                _ => Make::SoftHsm,
            },
        }
    }

    /// Key objects on the source (a pair is two).
    pub(crate) fn objects(&self) -> usize {
        match self.kind {
            Kind::Aes => self.keys,
            _ => 2 * self.keys,
        }
    }

    /// The token directory: one per scenario and bench run, under `/dev/shm` or `/var/tmp`.
    pub(crate) fn dir(&self) -> PathBuf {
        let base = match self.store {
            Store::Shm => "/dev/shm",
            Store::Disk => "/var/tmp",
        };
        let mut s = self.clone();
        s.mode = Mode::Sync;
        // One id per bench run (the orchestrator's pid), shared by its children.
        let run = std::env::var("HSM_SYNC_BENCH_RUN").unwrap_or_else(|_| std::process::id().to_string());
        PathBuf::from(base).join(format!("hsm-sync-bench-{run}-{}", s.name()))
    }
}

/// The orchestrator's options (`--help` lists them).
pub(crate) struct Opts {
    pub(crate) quick: bool,
    pub(crate) only: Vec<String>,
    pub(crate) threads: usize,
    pub(crate) rss: bool,
    pub(crate) keep: bool,
}

/// The scenarios `o` selects, in table order.
pub(crate) fn scenarios(o: &Opts) -> Vec<Scenario> {
    let j = o.threads;
    let s = |kind, keys, targets, store, latency_us, threads| Scenario {
        mode: Mode::Sync,
        kind,
        keys,
        targets,
        store,
        latency_us,
        threads,
        state: Backend::Token,
        make: Make::SoftHsm,
    };
    let on = |mut s: Scenario, state| {
        s.state = state;
        s
    };
    let kry = |mut s: Scenario| {
        s.make = Make::Kryoptic;
        s
    };
    use Kind::*;
    use Store::*;
    let mut v = if o.quick {
        vec![
            s(Aes, 1000, 1, Shm, 0, j),
            s(Aes, 1000, 2, Shm, 0, j),
            on(s(Aes, 1000, 2, Shm, 0, j), Backend::File),
            on(s(Aes, 1000, 2, Shm, 0, j), Backend::Postgres),
            s(Ec, 100, 1, Shm, 0, j),
            s(Rsa, 25, 1, Shm, 0, j),
            s(Aes, 200, 1, Shm, 1000, j),
            kry(s(Aes, 1000, 2, Shm, 0, j)),
        ]
    } else {
        vec![
            s(Aes, 1000, 1, Shm, 0, j),
            s(Aes, 1000, 2, Shm, 0, j),
            s(Aes, 10000, 1, Shm, 0, j),
            s(Aes, 10000, 2, Shm, 0, j),
            on(s(Aes, 1000, 2, Shm, 0, j), Backend::File),
            on(s(Aes, 1000, 2, Shm, 0, j), Backend::Postgres),
            on(s(Aes, 10000, 2, Shm, 0, j), Backend::File),
            on(s(Aes, 10000, 2, Shm, 0, j), Backend::Postgres),
            s(Rsa, 200, 1, Shm, 0, j),
            s(Rsa, 200, 2, Shm, 0, j),
            s(Ec, 200, 1, Shm, 0, j),
            s(Ec, 200, 2, Shm, 0, j),
            s(Aes, 1000, 1, Disk, 0, j),
            s(Aes, 1000, 2, Disk, 0, j),
            s(Ec, 200, 1, Disk, 0, j),
            s(Aes, 1000, 1, Shm, 1000, j),
            s(Aes, 1000, 2, Shm, 1000, j),
            s(Aes, 1000, 1, Shm, 1000, 8),
            s(Aes, 1000, 2, Shm, 1000, 8),
            s(Aes, 200, 1, Shm, 5000, j),
            s(Aes, 200, 2, Shm, 5000, j),
            s(Aes, 200, 2, Shm, 5000, 8),
            // Not 10,000 keys: Kryoptic's sqlite store slows with its object count (the
            // raw loop's 10,000 × 2 copies took over 20 minutes, 1,000 × 2 take 8 s).
            kry(s(Aes, 1000, 2, Shm, 0, j)),
        ]
    };
    if o.rss {
        v.push(Scenario {
            mode: Mode::PlanRss,
            kind: Aes,
            keys: if o.quick { 10_000 } else { 100_000 },
            targets: 1,
            store: Shm,
            latency_us: 0,
            threads: j,
            state: Backend::Token,
            make: Make::SoftHsm,
        });
    }
    v.retain(|s| o.only.is_empty() || o.only.iter().any(|p| s.name().contains(p.as_str())));
    v
}
