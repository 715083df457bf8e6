//! A throwaway PostgreSQL for the postgres state backend's tests (issue 15: a real server,
//! never a mock). [`server`] is `$HSM_SYNC_TEST_PG_URL` (an admin URL) when it is set,
//! else a cluster of this test process's own, started once: `initdb` on `/dev/shm`,
//! `postgres` on a free port of 127.0.0.1 with `fsync=off`, and a watchdog that stops it
//! and removes its files when the process exits (POSTGRES-NOTES.md has the timings).
//! Each test takes a fresh database of its own ([`Server::database`]), so tests run in
//! parallel. A machine without PostgreSQL fails the tests, naming the package: they never
//! skip silently.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The variable that points the tests at a server of one's own (a URL whose role may
/// create databases), instead of a cluster per test process.
pub const URL_ENV: &str = "HSM_SYNC_TEST_PG_URL";

/// Where Debian installs the server's programs (one directory per major version).
pub const PG_LIB: &str = "/usr/lib/postgresql";

/// A PostgreSQL server the tests may make databases on.
#[derive(Debug)]
pub struct Server {
    user: String,
    password: String,
    /// `host:port`.
    authority: String,
    /// The database the admin connects to for `CREATE DATABASE`.
    admin_db: String,
    /// `?…` as given, or empty.
    query: String,
}

/// The test server, started on first use (panics, naming the package, if PostgreSQL is
/// not installed).
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| match std::env::var(URL_ENV) {
        Ok(url) if !url.is_empty() => Server::parse(&url)
            .unwrap_or_else(|| panic!("${URL_ENV} must be a URL postgresql://USER:PASSWORD@HOST:PORT/DB")),
        _ => start(),
    })
}

impl Server {
    fn parse(url: &str) -> Option<Server> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, format!("?{q}")),
            None => (rest, String::new()),
        };
        let (authority, db) = rest.split_once('/').unwrap_or((rest, "postgres"));
        let (userinfo, hostport) = authority.rsplit_once('@')?;
        let (user, password) = userinfo.split_once(':')?;
        Some(Server {
            user: user.into(),
            password: password.into(),
            authority: hostport.into(),
            admin_db: if db.is_empty() { "postgres".into() } else { db.into() },
            query,
        })
    }

    fn url(&self, db: &str, password: &str) -> String {
        format!(
            "postgresql://{}:{password}@{}/{db}{}",
            self.user, self.authority, self.query
        )
    }

    /// The admin's URL (to the admin database).
    pub fn admin_url(&self) -> String {
        self.url(&self.admin_db, &self.password)
    }

    /// The admin's password (tests check that it never shows in a message).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// A fresh, empty database named after `name` (and this process, so test processes
    /// sharing one server never meet), dropped first if a previous run left it; its URL.
    pub fn database(&self, name: &str) -> String {
        // One CREATE DATABASE at a time: concurrent ones copying template1 can collide.
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut db: String = format!("hsm_sync_t{}_{name}", std::process::id())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        db.truncate(63);
        let mut admin = postgres::Client::connect(&self.admin_url(), postgres::NoTls)
            .unwrap_or_else(|e| panic!("connecting to the test PostgreSQL as its admin: {e}"));
        // Two statements: several in one string are one transaction, which DROP DATABASE
        // refuses.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            format!("CREATE DATABASE \"{db}\""),
        ] {
            admin.batch_execute(&sql).unwrap_or_else(|e| {
                let why = e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or(e.to_string());
                panic!("{sql}: {why}")
            });
        }
        self.url(&db, &self.password)
    }

    /// `url` (one of [`Self::database`]'s) with a password the server refuses.
    pub fn wrong_password(&self, url: &str) -> String {
        url.replacen(&format!(":{}@", self.password), ":not-the-password@", 1)
    }
}

/// A URL to a port of this machine where nothing listens (a server that is down).
pub fn nowhere_url() -> String {
    let port = free_port();
    format!("postgresql://admin:down-server-password@127.0.0.1:{port}/hsm_sync")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("finding a free port: {e}"))
}

/// The newest installed major version's `bin` directory.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(PG_LIB)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no {PG_LIB}/*/bin/initdb): the postgres state backend's tests need a \
             real server. Install Debian's `postgresql` package (`apt-get install postgresql`; .ci/run does), \
             or set ${URL_ENV} to an admin URL of a server of your own"
        ),
    }
}

/// `program` with `args`, as the `postgres` user when this process is root (`initdb`
/// and `postgres` refuse to run as root).
fn as_server_user(program: &Path, args: &[&str]) -> Command {
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let mut cmd = if root {
        // setpriv execs the program itself (runuser would stay as its parent).
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]);
        c.arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null());
    cmd
}

fn start() -> Server {
    let bin = bin_dir();
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let mut nonce = [0u8; 6];
    getrandom::fill(&mut nonce).unwrap_or_else(|e| panic!("randomness: {e}"));
    let dir = base.join(format!("hsm-sync-pg-{}-{}", std::process::id(), hex::encode(nonce)));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("making {}: {e}", dir.display()));
    let mut pw = [0u8; 12];
    getrandom::fill(&mut pw).unwrap_or_else(|e| panic!("randomness: {e}"));
    let password = format!("pw-{}", hex::encode(pw));
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, &password).unwrap_or_else(|e| panic!("writing {}: {e}", pwfile.display()));
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    if root {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "chown postgres {} failed (is there a `postgres` user?)",
            dir.display()
        );
    }
    let data = dir.join("data");
    let (data_s, dir_s, pwfile_s) = (
        data.display().to_string(),
        dir.display().to_string(),
        pwfile.display().to_string(),
    );
    let started = Instant::now();
    let out = as_server_user(
        &bin.join("initdb"),
        &[
            "-D",
            &data_s,
            "-U",
            "admin",
            &format!("--pwfile={pwfile_s}"),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "--encoding=UTF8",
            "--locale=C",
        ],
    )
    .output()
    .unwrap_or_else(|e| panic!("running initdb: {e}"));
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let initdb = started.elapsed();
    // A port found free may be taken before the server binds it: try a few.
    for _ in 0..5 {
        let port = free_port();
        let log = std::fs::File::create(dir.join(format!("log-{port}")))
            .unwrap_or_else(|e| panic!("making the server log in {dir_s}: {e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("server log: {e}"));
        let port_s = port.to_string();
        // Output to a file, never our stdout: a `cargo test | tee` would wait for it.
        let mut child = as_server_user(
            &bin.join("postgres"),
            &[
                "-D",
                &data_s,
                "-h",
                "127.0.0.1",
                "-p",
                &port_s,
                "-k",
                &dir_s,
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
        )
        .stdout(log)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting postgres: {e}"));
        watchdog(child.id(), &dir);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port_s])
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                if std::env::var_os("HSM_SYNC_TEST_PG_VERBOSE").is_some() {
                    eprintln!("test PostgreSQL: initdb {initdb:?}, up {:?} later", t.elapsed());
                }
                return Server {
                    user: "admin".into(),
                    password,
                    authority: format!("127.0.0.1:{port}"),
                    admin_db: "postgres".into(),
                    query: String::new(),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    let logs: String = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("log-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    panic!("the test PostgreSQL did not start in {dir_s}:\n{logs}");
}

/// A shell that waits for this process to end, however it ends, then stops the server
/// (SIGINT: fast shutdown) and removes its directory. Never waited for.
fn watchdog(server: u32, dir: &Path) {
    let script = r#"
        while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
        kill -INT "$2" 2>/dev/null
        i=0
        while kill -0 "$2" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$2" 2>/dev/null
        rm -rf "$3"
    "#;
    let spawned = Command::new("sh")
        .args(["-c", script, "hsm-sync-pg-watchdog"])
        .arg(std::process::id().to_string())
        .arg(server.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        panic!("starting the test PostgreSQL's watchdog: {e}");
    }
}
