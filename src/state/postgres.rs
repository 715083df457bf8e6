//! The `postgres` state backend (CONTRACT.md §6, issue 15): records, claims, journals,
//! cached fingerprints and run-lock holders in tables of one PostgreSQL database, made on
//! first use and versioned (`hsm_sync_schema`). Everything is keyed by token identity
//! ([`super::token_id`]), so runs on different machines that reach one token through
//! different cluster names or module paths still meet.
//!
//! Locks across machines are session-level advisory locks on a connection the [`Held`]
//! keeps open: the server drops them when that connection goes (the run ends, or is killed
//! with `kill -9`), so there is never a stale lock and no timeout guess. `notify`'s claims
//! are made in one transaction per call under a transaction-level advisory lock per token.
//!
//! The connection string comes from the environment variable the plan names (`url_env`)
//! and is never in a message: errors carry the variable's name and the server's words,
//! with the URL and its password scrubbed out.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use sha2::{Digest, Sha256};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::flock::{self, LockError, RunLock};
use super::{id_of, Check, Claim, Claimed, Held, KeyState, StateError, StateStore, TokenIds};
use crate::domain::event::KeyInfo;

/// The schema this build writes and reads. A database at a newer version is refused (a
/// newer hsm-sync made it); an older one would be migrated here, step by step.
const SCHEMA_VERSION: i32 = 1;

/// Version 1's tables. Records and journals are stored as the JSON text every backend
/// writes (habit 17: our encoding, byte for byte, not a `jsonb` normal form).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS hsm_sync_records (
    token text NOT NULL,
    identity text NOT NULL,
    record text NOT NULL,
    PRIMARY KEY (token, identity)
);
CREATE TABLE IF NOT EXISTS hsm_sync_claims (
    token text NOT NULL,
    identity text NOT NULL,
    nonce text NOT NULL,
    at text NOT NULL,
    pid bigint NOT NULL,
    PRIMARY KEY (token, identity)
);
CREATE TABLE IF NOT EXISTS hsm_sync_journals (
    token text PRIMARY KEY,
    entries text NOT NULL
);
CREATE TABLE IF NOT EXISTS hsm_sync_fingerprints (
    token text NOT NULL,
    unique_id text NOT NULL,
    fingerprint text NOT NULL,
    PRIMARY KEY (token, unique_id)
);
CREATE TABLE IF NOT EXISTS hsm_sync_locks (
    token text PRIMARY KEY,
    holder text NOT NULL,
    since text NOT NULL
);
";

/// How long a connection attempt may take when the URL sets no `connect_timeout`: a
/// server that does not answer stops the run instead of hanging it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a busy run lock is tried again while `wait` lasts.
const LOCK_RETRY: Duration = Duration::from_millis(50);

/// The advisory-lock key of `purpose` for `token`: the first 8 bytes of
/// SHA-256(`hsm-sync <purpose>\0<token>`), big-endian. Every version on every machine must
/// compute the same key, so it is spelled out here (habit 17); the purposes keep the run
/// locks, the claims and the schema setup from ever waiting on one another.
fn advisory_key(purpose: &str, token: &str) -> i64 {
    let digest = Sha256::digest(format!("hsm-sync {purpose}\0{token}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The postgres backend: one connection for records, claims, journals and the cache (the
/// pipeline calls it from one thread at a time), plus one per [`Held`] run lock.
pub(crate) struct PgState {
    db: Db,
    client: Mutex<Client>,
    ids: TokenIds,
    /// Where the machine-local lock files go; `None`: [`flock::machine_dir`] at lock time.
    lock_dir: Option<PathBuf>,
}

/// How to reach the database, and how to speak of it without its secrets.
struct Db {
    /// The variable the URL came from: what messages name.
    url_env: String,
    /// The parsed URL (with its password), for the run locks' own connections.
    config: Config,
    /// The URL and its password as written and as decoded, removed from every message.
    secrets: Vec<String>,
    /// TLS for `sslmode=prefer` (the default) and `require`.
    tls: MakeRustlsConnect,
}

impl Db {
    /// Reads and parses `$url_env`.
    fn from_env(url_env: &str) -> Result<Db, StateError> {
        let fail = |why: String| StateError::Db {
            url_env: url_env.to_string(),
            what: "reading the connection string",
            why,
        };
        let url = match std::env::var(url_env) {
            Ok(url) if url.trim().is_empty() => return Err(fail(format!("${url_env} is empty"))),
            Ok(url) => url,
            Err(std::env::VarError::NotPresent) => return Err(fail(format!("${url_env} is not set"))),
            Err(std::env::VarError::NotUnicode(_)) => return Err(fail(format!("${url_env} is not UTF-8"))),
        };
        let mut secrets = vec![url.clone()];
        secrets.extend(raw_password(&url));
        let mut config = Config::from_str(&url).map_err(|e| fail(scrub(&describe(&e), &secrets)))?;
        if let Some(pw) = config.get_password() {
            secrets.push(String::from_utf8_lossy(pw).into_owned());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("hsm-sync");
        }
        let tls = tls_connector().map_err(|why| StateError::Db {
            url_env: url_env.to_string(),
            what: "setting up TLS",
            why,
        })?;
        Ok(Db {
            url_env: url_env.to_string(),
            config,
            secrets,
            tls,
        })
    }

    /// Maps a client error to [`StateError::Db`], scrubbed.
    fn err(&self, what: &'static str) -> impl Fn(postgres::Error) -> StateError + '_ {
        move |e| self.fail(what, describe(&e))
    }

    /// A [`StateError::Db`] saying `why`, scrubbed.
    fn fail(&self, what: &'static str, why: String) -> StateError {
        StateError::Db {
            url_env: self.url_env.clone(),
            what,
            why: scrub(&why, &self.secrets),
        }
    }

    /// A new connection. `sslmode=prefer` (the default) tries TLS first and, as libpq
    /// does, plain text when TLS cannot be had; the server's own refusal (a password, a
    /// missing database) is not tried twice.
    fn open(&self, what: &'static str) -> Result<Client, StateError> {
        match self.config.get_ssl_mode() {
            SslMode::Disable => self.config.connect(NoTls).map_err(self.err(what)),
            SslMode::Require => self.config.connect(self.tls.clone()).map_err(self.err(what)),
            _ => match self.config.connect(self.tls.clone()) {
                Ok(c) => Ok(c),
                Err(e) if e.as_db_error().is_some() => Err(self.err(what)(e)),
                Err(tls) => {
                    let mut plain = self.config.clone();
                    plain.ssl_mode(SslMode::Disable);
                    plain.connect(NoTls).map_err(|e| {
                        let (tls, plain) = (describe(&tls), describe(&e));
                        if tls == plain {
                            self.fail(what, plain)
                        } else {
                            self.fail(what, format!("{plain} (with TLS: {tls})"))
                        }
                    })
                }
            },
        }
    }
}

impl PgState {
    /// Connects to the database whose URL is in `$url_env` and makes (or checks) the
    /// tables. A server that is down, a refused password or a schema newer than this build
    /// is an error naming the backend and the variable, never the URL.
    pub(crate) fn connect(url_env: &str, ids: TokenIds) -> Result<PgState, StateError> {
        let db = Db::from_env(url_env)?;
        let mut client = db.open("connecting")?;
        setup(&db, &mut client)?;
        Ok(PgState {
            db,
            client: Mutex::new(client),
            ids,
            lock_dir: None,
        })
    }

    /// The shared connection. A panic while it was held left no transaction open (a
    /// dropped `Transaction` rolls back), so a poisoned lock is used as it is.
    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token<'a>(&'a self, cluster: &'a str) -> &'a str {
        id_of(&self.ids, cluster)
    }
}

/// Makes the tables, or checks that they are a version this build knows. Serialised by a
/// transaction-level advisory lock: two first runs at once must not both create them
/// (concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog).
fn setup(db: &Db, client: &mut Client) -> Result<(), StateError> {
    let err = db.err("creating the tables");
    let mut tx = client.transaction().map_err(&err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&advisory_key("schema", "")])
        .map_err(&err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS hsm_sync_schema (version integer NOT NULL)")
        .map_err(&err)?;
    let version: Option<i32> = tx
        .query_one("SELECT max(version) FROM hsm_sync_schema", &[])
        .map_err(&err)?
        .get(0);
    match version {
        None => {
            tx.batch_execute(SCHEMA_V1).map_err(&err)?;
            tx.execute("INSERT INTO hsm_sync_schema (version) VALUES ($1)", &[&SCHEMA_VERSION])
                .map_err(&err)?;
        }
        Some(v) if v > SCHEMA_VERSION => {
            return Err(db.fail(
                "checking the schema version",
                format!(
                    "the database holds hsm-sync's tables at schema version {v}, made by a newer hsm-sync; \
                     this one knows versions up to {SCHEMA_VERSION}: upgrade it (nothing was changed)"
                ),
            ))
        }
        Some(_) => {}
    }
    tx.commit().map_err(&err)
}

/// The client's TLS: rustls with the platform's verifier (the system's trust store, as
/// the HTTP sink uses), ring as its provider. It verifies the server's certificate and
/// name, so `sslmode=require` is as strict as libpq's `verify-full`.
fn tls_connector() -> Result<MakeRustlsConnect, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_platform_verifier())
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// A client error in words: the server's severity and message where it answered
/// (`FATAL: password authentication failed for user "x"`), else the client's own.
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// `why` with every secret replaced by `***`, longest first (the URL holds the password).
fn scrub(why: &str, secrets: &[String]) -> String {
    let mut secrets: Vec<&String> = secrets.iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
        .iter()
        .fold(why.to_string(), |out, s| out.replace(s.as_str(), "***"))
}

/// The password of a `postgres://user:password@host` URL as written (percent-encoded),
/// or of a `password=…` key/value string; the parsed [`Config`] holds the decoded one.
fn raw_password(url: &str) -> Option<String> {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let (userinfo, _) = authority.rsplit_once('@')?;
        let (_, pw) = userinfo.split_once(':')?;
        return Some(pw.to_string());
    }
    let (_, rest) = url.split_once("password")?;
    let value = rest.trim_start().strip_prefix('=')?.trim_start();
    let value = match value.strip_prefix('\'') {
        Some(quoted) => quoted.split('\'').next().unwrap_or_default(),
        None => value.split_whitespace().next().unwrap_or_default(),
    };
    Some(value.to_string())
}

/// This machine's name, for the holder a busy lock names.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "an unknown host".into())
}

/// Run locks held in the database: the connection they live on (the server frees them
/// when it closes, even if this process is killed) and this machine's file locks.
struct PgHeld {
    client: Client,
    /// The tokens whose holder rows are ours.
    tokens: Vec<String>,
    _machine: RunLock,
}

impl Drop for PgHeld {
    /// Frees the locks at once rather than when the server notices the closed
    /// connection, so the next run on any machine gets them without a wait. Best effort:
    /// closing the connection frees them anyway.
    fn drop(&mut self) {
        if !self.tokens.is_empty() {
            let _ = self
                .client
                .execute("DELETE FROM hsm_sync_locks WHERE token = ANY($1)", &[&self.tokens]);
        }
        let _ = self.client.batch_execute("SELECT pg_advisory_unlock_all()");
    }
}

/// The last of each key in `pairs` (later ones win), for one upsert of distinct keys.
fn last_wins<'a>(pairs: impl IntoIterator<Item = (String, &'a str)>) -> (Vec<String>, Vec<&'a str>) {
    let by: BTreeMap<String, &str> = pairs.into_iter().collect();
    by.into_iter().unzip()
}

impl StateStore for PgState {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn read(&self, source: &str) -> Result<Vec<KeyState>, StateError> {
        let token = self.token(source);
        let rows = self
            .client()
            .query(
                "SELECT identity, record FROM hsm_sync_records WHERE token = $1",
                &[&token],
            )
            .map_err(self.db.err("reading records"))?;
        let mut out = rows
            .iter()
            .map(|row| parse_record(token, row.get(0), row.get(1)))
            .collect::<Result<Vec<_>, _>>()?;
        // In Rust's order, not the database's collation.
        out.sort_by_key(KeyState::identity);
        Ok(out)
    }

    fn append(&self, source: &str, records: &[KeyState]) -> Result<Vec<String>, StateError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let token = self.token(source);
        let json: Vec<String> = records.iter().map(KeyState::to_json).collect();
        let (identities, json) = last_wins(
            records
                .iter()
                .map(KeyState::identity)
                .zip(json.iter().map(String::as_str)),
        );
        // One statement whatever the count (issue 15: bookkeeping ≤ 3% of apply).
        self.client()
            .execute(
                "INSERT INTO hsm_sync_records (token, identity, record)
                 SELECT $1, i, r FROM unnest($2::text[], $3::text[]) AS t(i, r)
                 ON CONFLICT (token, identity) DO UPDATE SET record = excluded.record",
                &[&token, &identities, &json],
            )
            .map_err(self.db.err("writing records"))?;
        Ok(Vec::new())
    }

    fn claim(
        &self,
        source: &str,
        keys: &[KeyInfo],
        mine: &Claim,
        _settle: Duration,
        check: Check<'_>,
    ) -> Result<Claimed, StateError> {
        let token = self.token(source);
        let err = self.db.err("claiming keys");
        let identities: Vec<String> = keys.iter().map(KeyInfo::identity).collect();
        let mut client = self.client();
        let mut tx = client.transaction().map_err(&err)?;
        // Claimers of one token take turns; readers and apply's appends do not wait.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&advisory_key("claims", token)])
            .map_err(&err)?;
        // Claims first, then records: each statement has its own snapshot, and another
        // run appends its records and then releases its claim without this lock. Read in
        // the other order, a run finishing between the two reads left its old records
        // and no claim in view, and both runs sent (seen in 2 of 12 runs of the racing
        // `notify --failed` test under load). A claim gone now means its records are in.
        let mut claims = HashMap::new();
        for row in tx
            .query(
                "SELECT identity, nonce, at, pid FROM hsm_sync_claims WHERE token = $1 AND identity = ANY($2)",
                &[&token, &identities],
            )
            .map_err(&err)?
        {
            let pid: i64 = row.get(3);
            let claim = Claim {
                nonce: row.get(1),
                at: row.get(2),
                pid: u32::try_from(pid).unwrap_or_default(),
            };
            claims.insert(row.get::<_, String>(0), claim);
        }
        let mut states = HashMap::new();
        for row in tx
            .query(
                "SELECT identity, record FROM hsm_sync_records WHERE token = $1 AND identity = ANY($2)",
                &[&token, &identities],
            )
            .map_err(&err)?
        {
            let st = parse_record(token, row.get(0), row.get(1))?;
            states.insert(row.get::<_, String>(0), st);
        }
        let now = SystemTime::now();
        let mut refused = Vec::new();
        for (key, identity) in keys.iter().zip(&identities) {
            match claims.get(identity) {
                Some(other) if other.nonce != mine.nonce && other.is_fresh(now) => refused.push(other.refusal(key)),
                _ => refused.extend(check(key, states.get(identity))),
            }
        }
        if refused.is_empty() && !identities.is_empty() {
            let (distinct, _) = last_wins(identities.iter().map(|i| (i.clone(), "")));
            tx.execute(
                "INSERT INTO hsm_sync_claims (token, identity, nonce, at, pid)
                 SELECT $1, i, $3, $4, $5 FROM unnest($2::text[]) AS t(i)
                 ON CONFLICT (token, identity) DO UPDATE
                 SET nonce = excluded.nonce, at = excluded.at, pid = excluded.pid",
                &[&token, &distinct, &mine.nonce, &mine.at, &i64::from(mine.pid)],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(Claimed { refused, states })
    }

    fn release(&self, source: &str, keys: &[KeyInfo], mine: &Claim) -> Result<(), StateError> {
        let identities: Vec<String> = keys.iter().map(KeyInfo::identity).collect();
        self.client()
            .execute(
                "DELETE FROM hsm_sync_claims WHERE token = $1 AND identity = ANY($2) AND nonce = $3",
                &[&self.token(source), &identities, &mine.nonce],
            )
            .map_err(self.db.err("releasing claims"))?;
        Ok(())
    }

    fn lock(&self, targets: &[&str], command: &str, wait: Duration) -> Result<super::Held, StateError> {
        let started = Instant::now();
        let targets = flock::targets(&self.ids, targets);
        // This machine's runs first (as with every backend), then every machine's.
        let dir = self.lock_dir.clone().unwrap_or_else(flock::machine_dir);
        let machine = flock::acquire(&dir, &targets, command, wait)?;
        let client = self.db.open("connecting for the run lock")?;
        let mut held = PgHeld {
            client,
            tokens: Vec::new(),
            _machine: machine,
        };
        let err = self.db.err("taking the run lock");
        let me = format!("{command}, pid {} on {}", std::process::id(), hostname());
        for t in &targets {
            let key = advisory_key("lock", t.id);
            loop {
                let got: bool = held
                    .client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                    .map_err(&err)?
                    .get(0);
                if got {
                    break;
                }
                if started.elapsed() >= wait {
                    let holder = held
                        .client
                        .query_opt("SELECT holder, since FROM hsm_sync_locks WHERE token = $1", &[&t.id])
                        .map_err(&err)?
                        .map(|row| format!("{}, since {}", row.get::<_, String>(0), row.get::<_, String>(1)));
                    // `held` drops here: the locks taken so far go with it (all or none).
                    return Err(LockError::Busy {
                        cluster: t.cluster.to_string(),
                        holder: holder.unwrap_or_else(|| "starting".into()),
                    }
                    .into());
                }
                std::thread::sleep(LOCK_RETRY);
            }
            let since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
            held.client
                .execute(
                    "INSERT INTO hsm_sync_locks (token, holder, since) VALUES ($1, $2, $3)
                     ON CONFLICT (token) DO UPDATE SET holder = excluded.holder, since = excluded.since",
                    &[&t.id, &me, &since],
                )
                .map_err(&err)?;
            held.tokens.push(t.id.to_string());
        }
        Ok(Box::new(held) as Held)
    }

    fn journal_write(&self, target: &str, entries: &[String]) -> Result<(), StateError> {
        // A list of strings always serialises.
        let json = serde_json::to_string(entries).unwrap_or_else(|_| "[]".into());
        self.client()
            .execute(
                "INSERT INTO hsm_sync_journals (token, entries) VALUES ($1, $2)
                 ON CONFLICT (token) DO UPDATE SET entries = excluded.entries",
                &[&self.token(target), &json],
            )
            .map_err(self.db.err("writing the journal"))?;
        Ok(())
    }

    fn journal_read(&self, target: &str) -> Result<Vec<String>, StateError> {
        let token = self.token(target);
        let row = self
            .client()
            .query_opt("SELECT entries FROM hsm_sync_journals WHERE token = $1", &[&token])
            .map_err(self.db.err("reading the journal"))?;
        let Some(row) = row else { return Ok(Vec::new()) };
        let json: String = row.get(0);
        serde_json::from_str(&json).map_err(|e| StateError::Corrupt {
            backend: "postgres",
            what: format!("hsm_sync_journals row of token {token}"),
            why: e.to_string(),
        })
    }

    fn journal_clear(&self, target: &str) -> Result<(), StateError> {
        self.client()
            .execute("DELETE FROM hsm_sync_journals WHERE token = $1", &[&self.token(target)])
            .map_err(self.db.err("clearing the journal"))?;
        Ok(())
    }

    /// The `token` column holds the cache's scope ([`super::cache_scope`]): the token's
    /// identity with the wire format and lineage its fingerprints are made in.
    fn cached_fingerprints(&self, _cluster: &str, scope: &str) -> Result<HashMap<String, String>, StateError> {
        let rows = self
            .client()
            .query(
                "SELECT unique_id, fingerprint FROM hsm_sync_fingerprints WHERE token = $1",
                &[&scope],
            )
            .map_err(self.db.err("reading cached fingerprints"))?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    fn cache_fingerprints(&self, _cluster: &str, scope: &str, entries: &[(String, String)]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (ids, fps) = last_wins(entries.iter().map(|(u, f)| (u.clone(), f.as_str())));
        self.client()
            .execute(
                "INSERT INTO hsm_sync_fingerprints (token, unique_id, fingerprint)
                 SELECT $1, u, f FROM unnest($2::text[], $3::text[]) AS t(u, f)
                 ON CONFLICT (token, unique_id) DO UPDATE SET fingerprint = excluded.fingerprint",
                &[&scope, &ids, &fps],
            )
            .map_err(self.db.err("caching fingerprints"))?;
        Ok(())
    }
}

/// One `hsm_sync_records` row as a record.
fn parse_record(token: &str, identity: &str, json: &str) -> Result<KeyState, StateError> {
    serde_json::from_str(json).map_err(|e| StateError::Corrupt {
        backend: "postgres",
        what: format!("hsm_sync_records row ({token}, {identity})"),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use testkit::pg;

    use super::*;
    use crate::domain::event::Event;

    /// A fresh database for one test, its URL in a variable of the test's own.
    fn database(name: &str) -> (String, String) {
        let url = pg::server().database(name);
        let var = format!("HSM_SYNC_TEST_PG_URL_{}", name.to_uppercase());
        std::env::set_var(&var, &url);
        (var, url)
    }

    fn ids() -> TokenIds {
        TokenIds::from([
            ("primary".to_string(), "0123456789abcdef01234567".to_string()),
            ("dr".to_string(), "fedcba9876543210fedcba98".to_string()),
        ])
    }

    /// A "machine": its own connection and its own lock directory.
    fn machine(var: &str, lock_dir: &Path) -> PgState {
        let mut st = PgState::connect(var, ids()).unwrap();
        st.lock_dir = Some(lock_dir.to_path_buf());
        st
    }

    fn record(id: &str, event: Event, at: &str) -> KeyState {
        KeyState {
            source: "primary".into(),
            targets: vec!["dr".into()],
            ..KeyState::sample(id, event, at)
        }
    }

    fn busy(e: StateError) -> (String, String) {
        match e {
            StateError::Lock(LockError::Busy { cluster, holder }) => (cluster, holder),
            other => panic!("expected Busy, got {other:?}"),
        }
    }

    #[test]
    fn records_append_and_read_back_later_ones_winning() {
        let (var, _) = database("records");
        let dir = tempfile::tempdir().unwrap();
        let st = machine(&var, dir.path());
        assert_eq!(st.name(), "postgres");
        assert!(st.read("primary").unwrap().is_empty());
        let a1 = record("a1", Event::Synced, "2027-01-15T08:00:00.000Z");
        let b2 = record("b2", Event::Synced, "2027-01-15T08:00:00.000Z");
        let a1_gone = record("a1", Event::Deleted, "2027-01-15T07:00:00.000Z");
        st.append("primary", &[a1.clone(), b2.clone(), a1_gone.clone()])
            .unwrap();
        assert_eq!(
            st.read("primary").unwrap(),
            vec![a1_gone, b2.clone()],
            "write order wins"
        );
        st.append("primary", std::slice::from_ref(&a1)).unwrap();
        assert_eq!(st.read("primary").unwrap(), vec![a1.clone(), b2]);
        assert!(st.read("dr").unwrap().is_empty(), "keyed by token");
        // Another machine reads what this one wrote.
        let other = machine(&var, dir.path());
        assert_eq!(other.read("primary").unwrap()[0], a1);
    }

    #[test]
    fn a_second_machine_is_refused_the_lock_naming_the_first_until_it_drops() {
        let (var, _) = database("lock");
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (machine(&var, one.path()), machine(&var, two.path()));
        let t = Instant::now();
        let held = a.lock(&["dr"], "apply", Duration::ZERO).unwrap();
        let took = t.elapsed();
        let t = Instant::now();
        let (cluster, holder) = busy(b.lock(&["dr"], "sync-key", Duration::ZERO).err().unwrap());
        let refused = t.elapsed();
        assert_eq!(cluster, "dr");
        let me = format!("apply, pid {} on {}, since ", std::process::id(), hostname());
        assert!(holder.starts_with(&me), "{holder}");
        // Another target is free.
        let _primary = b.lock(&["primary"], "apply", Duration::ZERO).unwrap();
        drop(held);
        let t = Instant::now();
        let _dr = b.lock(&["dr"], "sync-key", Duration::ZERO).unwrap();
        eprintln!(
            "lock taken in {took:?}, refused in {refused:?}, retaken in {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_waiting_run_gets_the_lock_when_the_holder_drops_it() {
        let (var, _) = database("lock_wait");
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (machine(&var, one.path()), machine(&var, two.path()));
        let held = a.lock(&["primary", "dr"], "apply", Duration::ZERO).unwrap();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let t = Instant::now();
        let _held = b.lock(&["dr", "primary"], "apply", Duration::from_secs(10)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(250), "{:?}", t.elapsed());
        dropper.join().unwrap();
        // And a wait that runs out is the holder's name again.
        let c = machine(&var, one.path());
        let t = Instant::now();
        busy(c.lock(&["dr"], "apply", Duration::from_millis(200)).err().unwrap());
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_lock_is_all_or_none() {
        let (var, _) = database("lock_all");
        let (one, two, three) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let (a, b, c) = (
            machine(&var, one.path()),
            machine(&var, two.path()),
            machine(&var, three.path()),
        );
        let _dr = a.lock(&["dr"], "apply", Duration::ZERO).unwrap();
        let (cluster, _) = busy(b.lock(&["primary", "dr"], "apply", Duration::ZERO).err().unwrap());
        assert_eq!(cluster, "dr");
        // `primary`, taken before `dr` was found busy, went with the failed attempt.
        let _primary = c.lock(&["primary"], "apply", Duration::ZERO).unwrap();
    }

    #[test]
    fn one_of_two_racing_claims_wins_and_release_lets_the_other_claim() {
        let (var, _) = database("claims");
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (machine(&var, dir.path()), machine(&var, dir.path()));
        let key = KeyInfo::sample("a1");
        let other_key = KeyInfo::sample("b2");
        a.append("primary", &[record("a1", Event::Synced, "2027-01-15T08:00:00.000Z")])
            .unwrap();
        let pass: Check<'_> = &|_, _| None;
        let first = Claim {
            pid: 4242,
            ..Claim::new()
        };
        let second = Claim::new();
        let t = Instant::now();
        let won = a
            .claim(
                "primary",
                &[key.clone(), other_key.clone()],
                &first,
                Duration::ZERO,
                pass,
            )
            .unwrap();
        let took = t.elapsed();
        assert!(won.refused.is_empty(), "{:?}", won.refused);
        assert_eq!(won.states.len(), 1, "only a1 has a record");
        assert_eq!(won.states["secret-key/a1"].event, Event::Synced);
        // Claiming again with one's own claim is no refusal.
        assert!(a
            .claim("primary", std::slice::from_ref(&key), &first, Duration::ZERO, pass)
            .unwrap()
            .refused
            .is_empty());
        let lost = b
            .claim(
                "primary",
                &[other_key.clone(), key.clone()],
                &second,
                Duration::ZERO,
                pass,
            )
            .unwrap();
        assert_eq!(lost.refused.len(), 2, "{:?}", lost.refused);
        assert!(lost.refused[0].contains("pid 4242"), "{:?}", lost.refused);
        // The same key on another token is free.
        assert!(b
            .claim("dr", std::slice::from_ref(&key), &second, Duration::ZERO, pass)
            .unwrap()
            .refused
            .is_empty());
        // A refused claim wrote nothing: after release the second run gets both.
        a.release("primary", &[key.clone(), other_key.clone()], &first).unwrap();
        let now_mine = b
            .claim("primary", &[key.clone(), other_key], &second, Duration::ZERO, pass)
            .unwrap();
        assert!(now_mine.refused.is_empty(), "{:?}", now_mine.refused);
        // A release by a run whose claim it is not leaves it.
        a.release("primary", std::slice::from_ref(&key), &first).unwrap();
        let third = Claim::new();
        assert_eq!(
            a.claim("primary", std::slice::from_ref(&key), &third, Duration::ZERO, pass)
                .unwrap()
                .refused
                .len(),
            1
        );
        eprintln!("claim of 2 keys in {took:?}");
    }

    #[test]
    fn a_crashed_runs_claim_expires_and_the_checks_refusal_propagates() {
        let (var, _) = database("claims_check");
        let dir = tempfile::tempdir().unwrap();
        let st = machine(&var, dir.path());
        let key = KeyInfo::sample("a1");
        let pass: Check<'_> = &|_, _| None;
        let crashed = Claim {
            at: super::super::time_millis(SystemTime::now() - super::super::CLAIM_TTL - Duration::from_secs(1)),
            ..Claim::new()
        };
        st.claim("primary", std::slice::from_ref(&key), &crashed, Duration::ZERO, pass)
            .unwrap();
        let mine = Claim::new();
        let cooldown: Check<'_> = &|k, st| {
            assert!(st.is_none(), "no record yet");
            Some(format!("{} is in its cooldown", k.name()))
        };
        let out = st
            .claim("primary", std::slice::from_ref(&key), &mine, Duration::ZERO, cooldown)
            .unwrap();
        assert_eq!(out.refused, vec![format!("{} is in its cooldown", key.name())]);
        // Refused by the check: nothing claimed, so the crashed claim is still the one there,
        // and a passing check replaces it.
        let out = st
            .claim("primary", std::slice::from_ref(&key), &mine, Duration::ZERO, pass)
            .unwrap();
        assert!(out.refused.is_empty(), "{:?}", out.refused);
        let other = Claim::new();
        let out = st
            .claim("primary", std::slice::from_ref(&key), &other, Duration::ZERO, pass)
            .unwrap();
        assert_eq!(out.refused, vec![mine.refusal(&key)]);
    }

    #[test]
    fn journals_are_written_replaced_read_and_cleared() {
        let (var, _) = database("journal");
        let dir = tempfile::tempdir().unwrap();
        let st = machine(&var, dir.path());
        assert!(st.journal_read("dr").unwrap().is_empty());
        st.journal_write("dr", &["secret-key/a1".into(), "secret-key/b2".into()])
            .unwrap();
        st.journal_write("dr", &["secret-key/c3".into()]).unwrap();
        assert_eq!(st.journal_read("dr").unwrap(), vec!["secret-key/c3".to_string()]);
        assert!(st.journal_read("primary").unwrap().is_empty());
        st.journal_clear("dr").unwrap();
        st.journal_clear("dr").unwrap();
        assert!(st.journal_read("dr").unwrap().is_empty());
    }

    #[test]
    fn fingerprints_are_cached_by_token_and_unique_id() {
        let (var, _) = database("fingerprints");
        let dir = tempfile::tempdir().unwrap();
        let st = machine(&var, dir.path());
        assert!(st.cached_fingerprints("dr", "s-dr").unwrap().is_empty());
        st.cache_fingerprints("dr", "s-dr", &[]).unwrap();
        st.cache_fingerprints(
            "dr",
            "s-dr",
            &[
                ("u1".into(), "f1".into()),
                ("u2".into(), "f2".into()),
                ("u1".into(), "f1b".into()),
            ],
        )
        .unwrap();
        st.cache_fingerprints("dr", "s-dr", &[("u3".into(), "f3".into())])
            .unwrap();
        let cached = st.cached_fingerprints("dr", "s-dr").unwrap();
        assert_eq!(
            cached,
            HashMap::from([
                ("u1".to_string(), "f1b".to_string()),
                ("u2".to_string(), "f2".to_string()),
                ("u3".to_string(), "f3".to_string()),
            ])
        );
        assert!(st.cached_fingerprints("primary", "s-primary").unwrap().is_empty());
    }

    fn db_error(var: &str) -> (String, String) {
        match PgState::connect(var, ids()) {
            Err(e @ StateError::Db { .. }) => (e.to_string(), format!("{e:?}")),
            Err(other) => panic!("expected a Db error, got {other:?}"),
            Ok(_) => panic!("connected"),
        }
    }

    #[test]
    fn a_refused_password_is_an_error_without_the_url_or_password() {
        let (_, url) = database("wrong_password");
        let bad = pg::server().wrong_password(&url);
        std::env::set_var("HSM_SYNC_TEST_PG_BAD_PASSWORD", &bad);
        let (shown, debug) = db_error("HSM_SYNC_TEST_PG_BAD_PASSWORD");
        assert!(
            shown.contains("postgres state backend (HSM_SYNC_TEST_PG_BAD_PASSWORD)"),
            "{shown}"
        );
        assert!(shown.contains("password authentication failed for user"), "{shown}");
        for secret in [bad.as_str(), "not-the-password", url.as_str(), pg::server().password()] {
            assert!(
                !shown.contains(secret) && !debug.contains(secret),
                "{secret} in {shown} / {debug}"
            );
        }
    }

    #[test]
    fn a_server_that_is_down_is_an_error_naming_the_backend() {
        let url = pg::nowhere_url();
        std::env::set_var("HSM_SYNC_TEST_PG_DOWN", &url);
        let t = Instant::now();
        let (shown, debug) = db_error("HSM_SYNC_TEST_PG_DOWN");
        let took = t.elapsed();
        assert!(
            shown.starts_with("postgres state backend (HSM_SYNC_TEST_PG_DOWN): connecting: "),
            "{shown}"
        );
        for secret in [url.as_str(), "down-server-password"] {
            assert!(!shown.contains(secret) && !debug.contains(secret), "{shown} / {debug}");
        }
        // And a variable that is not set.
        let (shown, _) = db_error("HSM_SYNC_TEST_PG_NEVER_SET");
        assert!(shown.contains("$HSM_SYNC_TEST_PG_NEVER_SET is not set"), "{shown}");
        eprintln!("down server refused in {took:?}: {shown}");
    }

    #[test]
    fn sslmode_require_against_a_server_without_tls_is_refused() {
        let (_, url) = database("tls");
        std::env::set_var("HSM_SYNC_TEST_PG_TLS", format!("{url}?sslmode=require"));
        let (shown, _) = db_error("HSM_SYNC_TEST_PG_TLS");
        assert!(shown.contains("connecting"), "{shown}");
        assert!(!shown.contains(pg::server().password()), "{shown}");
        // The default (prefer) falls back to plain text, as libpq does.
        std::env::set_var("HSM_SYNC_TEST_PG_TLS_PREFER", format!("{url}?sslmode=prefer"));
        PgState::connect("HSM_SYNC_TEST_PG_TLS_PREFER", ids()).unwrap();
    }

    #[test]
    fn a_schema_newer_than_this_build_is_refused_and_setup_is_once() {
        let (var, url) = database("schema");
        // First runs at once: one makes the tables, the other waits and finds them.
        let runs: Vec<_> = (0..3)
            .map(|_| {
                let var = var.clone();
                std::thread::spawn(move || PgState::connect(&var, ids()).map(|_| ()))
            })
            .collect();
        for r in runs {
            r.join().unwrap().unwrap();
        }
        let mut admin = Client::connect(&url, NoTls).unwrap();
        let versions: Vec<i32> = admin
            .query("SELECT version FROM hsm_sync_schema", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, vec![SCHEMA_VERSION]);
        admin.execute("UPDATE hsm_sync_schema SET version = 99", &[]).unwrap();
        let (shown, _) = db_error(&var);
        assert!(shown.contains("schema version 99"), "{shown}");
        assert!(shown.contains("upgrade"), "{shown}");
    }

    #[test]
    fn a_corrupt_record_is_named_not_skipped() {
        let (var, url) = database("corrupt");
        let dir = tempfile::tempdir().unwrap();
        let st = machine(&var, dir.path());
        let mut admin = Client::connect(&url, NoTls).unwrap();
        admin
            .execute(
                "INSERT INTO hsm_sync_records VALUES ($1, 'secret-key/a1', '{not json')",
                &[&st.token("primary")],
            )
            .unwrap();
        match st.read("primary") {
            Err(StateError::Corrupt { backend, what, .. }) => {
                assert_eq!(backend, "postgres");
                assert!(what.contains("secret-key/a1"), "{what}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_are_scrubbed_as_written_and_as_decoded() {
        assert_eq!(
            raw_password("postgresql://u:p%40ss@h:5/db?x=1").as_deref(),
            Some("p%40ss")
        );
        assert_eq!(raw_password("postgresql://u@h/db"), None);
        assert_eq!(raw_password("host=h password='a b' user=u").as_deref(), Some("a b"));
        assert_eq!(raw_password("host=h password = s3 user=u").as_deref(), Some("s3"));
        let secrets = vec!["postgresql://u:p%40ss@h/db".into(), "p%40ss".into(), "p@ss".into()];
        assert_eq!(
            scrub("bad postgresql://u:p%40ss@h/db p@ss p%40ss", &secrets),
            "bad *** *** ***"
        );
        assert_ne!(advisory_key("lock", "a"), advisory_key("claims", "a"));
        assert_eq!(advisory_key("lock", "a"), advisory_key("lock", "a"));
    }
}
