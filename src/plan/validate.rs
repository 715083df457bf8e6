//! Raw YAML → validated [`Plan`], collecting *every* problem (CONTRACT.md §1) rather than
//! stopping at the first, each placed on its YAML node by the [`PlanSource`] locator.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::Severity;
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::model::*;
use super::raw::*;
use super::source::{child, index, PlanSource, COMPLEX_KEY};
use super::{InvalidPlan, IssueKind, Loaded, PlanError, PlanIssue};
use crate::credentials::{loosely_readable, PinSource};
use crate::domain::event::{Event, DEFAULT_RETRIES, DEFAULT_TIMEOUT, MAX_RETRIES};
use crate::domain::wire::WireFormat;

const TOP_FIELDS: &[&str] = &["version", "clusters", "sync", "options", "state"];

/// Problems listed for one section (a cluster, an entry, a selector) at most: finding each
/// one costs a pass over the section, and a section with more is not a typo.
const MAX_SECTION_ROUNDS: usize = 32;

/// Problems listed for one plan at most (each renders a snippet of the file).
pub const MAX_ISSUES: usize = 200;

/// An [`PlanError`] with one problem and no location (encoding, size).
pub(crate) fn single(name: &str, text: String, kind: IssueKind, message: String) -> PlanError {
    let source = PlanSource::parse(name, text);
    PlanError::Invalid(Box::new(InvalidPlan {
        src: source.named_source(),
        issues: vec![PlanIssue {
            kind,
            label: String::new(),
            message,
            span: None,
            help: None,
            severity: Severity::Error,
            also: None,
        }],
        source,
    }))
}

/// Validates a plan's text. `path` resolves relative PIN files; `name` is shown in
/// diagnostics.
pub fn validate(path: &Path, name: &str, text: String) -> Result<Loaded, PlanError> {
    let mut v = Validator {
        src: PlanSource::parse(name, text),
        issues: Vec::new(),
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        declared: Vec::new(),
        clusters_unreadable: false,
        unresolved: Vec::new(),
    };
    let plan = v.run();
    let (errors, warnings): (Vec<_>, Vec<_>) = v.issues.into_iter().partition(|i| i.severity == Severity::Error);
    let wrap = |mut issues: Vec<PlanIssue>, src: &PlanSource| {
        for i in &mut issues {
            i.span = i.span.map(|s| super::clip_label(src.text(), s));
            if let Some((s, _)) = &mut i.also {
                *s = super::clip_label(src.text(), *s);
            }
        }
        issues.sort_by_key(|i| i.span.map_or(usize::MAX, |s| s.offset()));
        if issues.len() > MAX_ISSUES {
            let more = issues.len() - MAX_ISSUES;
            issues.truncate(MAX_ISSUES);
            issues.push(PlanIssue {
                kind: IssueKind::TooManyProblems,
                message: format!("{more} more problem(s) not listed; fix these first"),
                span: None,
                label: String::new(),
                help: None,
                severity: issues.last().map_or(Severity::Error, |i| i.severity),
                also: None,
            });
        }
        InvalidPlan {
            src: src.named_source(),
            issues,
            source: src.clone(),
        }
    };
    match plan {
        Some(plan) if errors.is_empty() => {
            let warnings = (!warnings.is_empty()).then(|| wrap(warnings, &v.src));
            Ok(Loaded {
                plan: Plan { source: v.src, ..plan },
                warnings,
            })
        }
        _ => Err(PlanError::Invalid(Box::new(wrap(errors, &v.src)))),
    }
}

struct Validator {
    src: PlanSource,
    issues: Vec<PlanIssue>,
    base_dir: PathBuf,
    /// Offline warnings of the cluster being validated, moved into it when it is built.
    unresolved: Vec<String>,
    /// Every cluster name the plan declares, valid or not: a reference to a declared but
    /// invalid cluster is not reported again as undefined.
    declared: Vec<String>,
    /// `clusters` is missing or not a mapping: references to clusters are not checked.
    clusters_unreadable: bool,
}

/// Names of clusters and sync entries: `[a-z0-9][a-z0-9_-]*`.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The candidate closest to `word`, if it is close enough.
fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" for the closest candidate, if it is close enough.
fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// Expands `~` (leading) and `${VAR}`; `Err(var)` names an unset variable.
pub fn expand(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let rest = if let Some(r) = s.strip_prefix("~/").or(if s == "~" { Some("") } else { None }) {
        out.push_str(&std::env::var("HOME").map_err(|_| "HOME".to_string())?);
        if !r.is_empty() || s.len() > 1 {
            out.push('/');
        }
        r
    } else {
        s
    };
    let mut it = rest;
    while let Some(start) = it.find("${") {
        out.push_str(&it[..start]);
        let after = &it[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&it[start..]);
            return Ok(out);
        };
        let var = &after[..end];
        out.push_str(&std::env::var(var).map_err(|_| var.to_string())?);
        it = &after[end + 1..];
    }
    out.push_str(it);
    Ok(out)
}

/// The backquoted words after "expected" in a serde message, for suggestions.
fn expected_words(msg: &str) -> Vec<&str> {
    let Some(pos) = msg.find("expected") else {
        return Vec::new();
    };
    msg[pos..].split('`').skip(1).step_by(2).collect()
}

fn first_backquoted(msg: &str) -> Option<&str> {
    msg.split('`').nth(1)
}

impl Validator {
    fn issue(&mut self, kind: IssueKind, path: &str, message: impl Into<String>, help: Option<String>) {
        // The offending value itself: a scalar, or the first line of a collection.
        let span = self.src.locate_value(path);
        self.push(kind, span, message.into(), help, Severity::Error);
    }

    fn issue_at_key(&mut self, kind: IssueKind, path: &str, message: impl Into<String>, help: Option<String>) {
        let span = self.src.locate_key(path);
        self.push(kind, span, message.into(), help, Severity::Error);
    }

    fn push(
        &mut self,
        kind: IssueKind,
        span: Option<miette::SourceSpan>,
        message: String,
        help: Option<String>,
        severity: Severity,
    ) {
        use IssueKind as K;
        let label = match kind {
            K::UnknownField => "unknown field",
            K::MissingField => "in here",
            K::UndefinedCluster => "not defined under `clusters`",
            K::InlinePin => "PIN written in the plan",
            K::WrongType => "wrong type",
            K::Version => "expected 1",
            K::InvalidHex | K::InvalidFingerprint => "not hex",
            K::InvalidGlob => "invalid glob",
            K::InvalidUrl => "not an http(s) URL",
            K::InvalidDuration => "not a duration",
            K::UnsetVariable => "unset variable",
            K::SourceInTargets => "the entry's source",
            K::NotCloned => "not a clone of the source",
            K::CredentialMismatch => "other role or user than the source",
            K::DuplicateKey | K::DuplicateCluster | K::DuplicateSync | K::DuplicateResource => "given again here",
            K::EmptySelector => "selects nothing",
            K::AmbiguousSelector => "more than one of id, label, handle",
            K::TokenRef => "needs exactly one of label, serial, slot",
            K::PinFile => "PIN file",
            K::ModuleFile => "module file",
            K::PinSource => "PIN source",
            K::EmptyTargets => "no targets",
            K::CloneCycle => "goes round in a circle",
            K::InvalidName => "invalid name",
            K::TooManyProblems => "too many problems",
            K::ConflictingState => "the other state",
            _ => "here",
        }
        .to_string();
        self.issues.push(PlanIssue {
            kind,
            message,
            span,
            label,
            help,
            severity,
            also: None,
        });
    }

    /// Deserializes one section (a mapping), reporting *every* problem in it: serde stops at
    /// the first, so each field it trips on is reported, taken out, and the section tried
    /// again. A required field that was taken out is not reported missing a second time.
    fn section<T: DeserializeOwned>(&mut self, value: &Value, base: &str) -> Option<T> {
        let mut err = match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let mut work = value.clone();
        let mut removed: HashSet<String> = HashSet::new();
        // Fields an unknown field probably meant (`tragets` → `targets`): not reported missing.
        let mut meant: HashSet<String> = HashSet::new();
        // A section whose only problems were unknown fields is still checked further; one
        // with a mistyped field is not, so that the field's absence raises no second error.
        let mut only_unknown = true;
        // Each round takes one field out, so a section has at most as many rounds as fields;
        // each round costs a pass over the section, so hostile sections are cut short.
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > MAX_SECTION_ROUNDS {
                self.issue_at_key(
                    IssueKind::TooManyProblems,
                    base,
                    format!("more than {MAX_SECTION_ROUNDS} problems here; the rest are not listed"),
                    None,
                );
                return None;
            }
            let msg = err.inner().to_string();
            let first = match err.path().iter().next() {
                Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
                _ => None,
            };
            let missing = msg
                .starts_with("missing field")
                .then(|| first_backquoted(&msg).unwrap_or_default());
            if first.is_none() && missing.is_some_and(|f| removed.contains(f) || meant.contains(f)) {
                return None; // already reported as broken, or as misspelt
            }
            self.report_serde(&err, base);
            let unknown = msg.starts_with("unknown field") && err.path().iter().count() <= 1;
            if unknown {
                let word = first_backquoted(&msg).unwrap_or_default();
                if let Some(m) = closest(word, expected_words(&msg)) {
                    meant.insert(m.to_string());
                }
            } else {
                only_unknown = false;
            }
            let field = first.or_else(|| {
                msg.starts_with("unknown field")
                    .then(|| first_backquoted(&msg).unwrap_or_default().to_string())
            });
            let Some(field) = field else {
                return None; // the section itself is wrong (type, missing field): nothing to take out
            };
            work.as_mapping_mut().and_then(|m| m.remove(field.as_str()))?;
            removed.insert(field);
            err = match serde_path_to_error::deserialize::<_, T>(&work) {
                Ok(t) => return only_unknown.then_some(t),
                Err(e) => e,
            };
        }
    }

    /// Turns one serde error into a located issue.
    fn report_serde(&mut self, e: &serde_path_to_error::Error<serde_yaml::Error>, base: &str) {
        let mut path = base.to_string();
        for seg in e.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index: i } => path = index(&path, *i),
                serde_path_to_error::Segment::Map { key } => path = child(&path, key),
                serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
            }
        }
        let msg = e.inner().to_string();
        if msg.starts_with("unknown field") {
            let field = first_backquoted(&msg).unwrap_or_default().to_string();
            let fpath = child(&path, &field);
            let help = suggest(&field, expected_words(&msg));
            // serde may report the unknown key's own path or its parent's.
            let target = if self.src.node(&fpath).is_some() { fpath } else { path };
            self.issue_at_key(IssueKind::UnknownField, &target, msg, help);
        } else if msg.starts_with("missing field") {
            let field = first_backquoted(&msg).unwrap_or_default().to_string();
            self.issue_at_key(IssueKind::MissingField, &path, msg, Some(format!("add `{field}:`")));
        } else if msg.starts_with("unknown variant") {
            let word = first_backquoted(&msg).unwrap_or_default().to_string();
            let help = suggest(&word, expected_words(&msg));
            self.issue(IssueKind::WrongType, &path, msg, help);
        } else {
            // `id: 123456` or `label: 2024`: YAML read a number (or a boolean) where text
            // was meant; quoting keeps it as written (a leading zero, every digit).
            let unquoted = msg.contains("expected a string")
                && [
                    "invalid type: integer",
                    "invalid type: floating",
                    "invalid type: boolean",
                ]
                .iter()
                .any(|p| msg.starts_with(p));
            let help = unquoted.then(|| {
                let written = self
                    .src
                    .locate_value(&path)
                    .and_then(|s| self.src.text().get(s.offset()..s.offset() + s.len()))
                    .unwrap_or_default();
                format!("YAML reads this as a number or a boolean; quote it to keep it as text: \"{written}\"")
            });
            self.issue(IssueKind::WrongType, &path, msg, help);
        }
    }

    fn run(&mut self) -> Option<Plan> {
        for (path, span, first) in self.src.duplicate_keys.clone() {
            let (kind, what) = if path.starts_with("clusters.") && path.matches('.').count() == 1 {
                (IssueKind::DuplicateCluster, "cluster")
            } else {
                (IssueKind::DuplicateKey, "key")
            };
            let name = path.rsplit('.').next().unwrap_or(&path).to_string();
            let (line, _) = self.src.line_col(first.offset());
            self.push(
                kind,
                Some(span),
                format!("duplicate {what} `{name}` (first given on line {line})"),
                Some("each name may appear once in a mapping: remove or rename one".into()),
                Severity::Error,
            );
            if let Some(last) = self.issues.last_mut() {
                last.also = Some((first, "first given here".into()));
            }
        }
        if let Some((msg, span)) = self.src.syntax_error.clone() {
            self.push(
                IssueKind::Syntax,
                Some(span),
                format!("YAML syntax error: {msg}"),
                None,
                Severity::Error,
            );
            return None;
        }
        let root: Value = match serde_yaml::from_str(self.src.text()) {
            Ok(v) => v,
            Err(e) => {
                if self.issues.is_empty() {
                    // libyaml's index is in bytes; kept inside the text and on a character.
                    let text = self.src.text();
                    let span = e.location().map(|l| {
                        let mut at = l.index().min(text.len());
                        while !text.is_char_boundary(at) {
                            at -= 1;
                        }
                        miette::SourceSpan::from((at, 0))
                    });
                    self.push(
                        IssueKind::Syntax,
                        span,
                        format!("YAML error: {e}"),
                        None,
                        Severity::Error,
                    );
                }
                return None;
            }
        };
        let Value::Mapping(top) = root else {
            let help = Some("start with `version: 1`, `clusters:` and `sync:`".into());
            if root.is_null() {
                // Nothing to point at but the start of the file.
                let span = Some(miette::SourceSpan::from((0, 0)));
                self.push(
                    IssueKind::Empty,
                    span,
                    "the plan is empty".into(),
                    help,
                    Severity::Error,
                );
            } else {
                self.issue(IssueKind::WrongType, "", "the plan must be a mapping", help);
            }
            return None;
        };
        for key in top.keys() {
            let k = key.as_str().unwrap_or("?");
            if !TOP_FIELDS.contains(&k) {
                let help = suggest(k, TOP_FIELDS.iter().copied());
                self.issue_at_key(
                    IssueKind::UnknownField,
                    k,
                    format!("unknown field `{k}`, expected one of `version`, `clusters`, `sync`, `options`"),
                    help,
                );
            }
        }
        match top.get("version") {
            None => self.issue_at_key(
                IssueKind::MissingField,
                "",
                "missing field `version`",
                Some("add `version: 1`".into()),
            ),
            Some(v) if v.as_u64() == Some(1) => {}
            Some(_) => self.issue(
                IssueKind::Version,
                "version",
                "unsupported plan version: this hsm-sync reads `version: 1`",
                Some("set `version: 1`".into()),
            ),
        }
        let clusters = match top.get("clusters") {
            None => {
                self.clusters_unreadable = true;
                self.issue_at_key(
                    IssueKind::MissingField,
                    "",
                    "missing field `clusters`",
                    Some("define at least a source and a target cluster".into()),
                );
                Vec::new()
            }
            Some(Value::Mapping(m)) => self.clusters(m),
            Some(_) => {
                self.issue(
                    IssueKind::WrongType,
                    "clusters",
                    "`clusters` must be a mapping of cluster names to clusters",
                    None,
                );
                // References cannot be checked against clusters that could not be read.
                self.clusters_unreadable = true;
                Vec::new()
            }
        };
        let syncs = match top.get("sync") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Sequence(items)) => self.syncs(items, &clusters),
            Some(_) => {
                self.issue(
                    IssueKind::WrongType,
                    "sync",
                    "`sync` must be a list of sync entries",
                    None,
                );
                Vec::new()
            }
        };
        let options = match top.get("options") {
            None | Some(Value::Null) => RawOptions::default(),
            Some(v) => self.section::<RawOptions>(v, "options").unwrap_or_default(),
        };
        let options = self.options(options);
        let state = match top.get("state") {
            None | Some(Value::Null) => StateConfig::Token,
            Some(v) => match self.section::<RawStateStore>(v, "state") {
                Some(raw) => self.state(raw),
                None => StateConfig::Token,
            },
        };
        Some(Plan {
            source: PlanSource::parse("", ""),
            clusters,
            syncs,
            options,
            state,
        })
    }

    fn clusters(&mut self, m: &Mapping) -> Vec<Cluster> {
        let mut out = Vec::new();
        for (k, v) in m {
            let Some(name) = k.as_str() else {
                let written = match k {
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => COMPLEX_KEY.to_string(),
                };
                self.issue_at_key(
                    IssueKind::InvalidName,
                    &child("clusters", &written),
                    "cluster names must be strings",
                    Some("names match [a-z0-9][a-z0-9_-]*".into()),
                );
                continue;
            };
            self.declared.push(name.to_string());
            let path = child("clusters", name);
            if !valid_name(name) {
                self.issue_at_key(
                    IssueKind::InvalidName,
                    &path,
                    format!("invalid cluster name `{name}`"),
                    Some("names match [a-z0-9][a-z0-9_-]*".into()),
                );
            }
            if let Some(raw) = self.section::<RawCluster>(v, &path) {
                if let Some(c) = self.cluster(name, &path, raw) {
                    out.push(c);
                }
            } else if let Some(pin) = v.get("credentials").and_then(|c| c.get("pin")) {
                // A PIN written in the plan is reported even when the cluster has other faults.
                self.pin(pin, &child(&child(&path, "credentials"), "pin"));
            }
        }
        let names = self.declared.clone();
        for c in &out {
            if let Some(via) = clone_cycle(&out, &c.name) {
                let path = child(&child("clusters", &c.name), "cloned_from");
                let msg = if via.len() == 1 {
                    format!("cluster `{}` is cloned from itself", c.name)
                } else {
                    format!("`cloned_from` goes round in a circle: {} → {}", via.join(" → "), c.name)
                };
                self.issue(
                    IssueKind::CloneCycle,
                    &path,
                    msg,
                    Some("`cloned_from` names the cluster this one was cloned from; the original has none".into()),
                );
            }
            if let Some(parent) = &c.cloned_from {
                if !names.contains(parent) {
                    let path = child(&child("clusters", &c.name), "cloned_from");
                    self.issue(
                        IssueKind::UndefinedCluster,
                        &path,
                        format!("cluster `{parent}` is not defined"),
                        Some(defined_help(&names)),
                    );
                }
            }
        }
        out
    }

    /// A problem of this machine rather than of the plan: a warning now, an error when
    /// the cluster is reached (CONTRACT.md §1).
    fn offline_warning(&mut self, kind: IssueKind, path: &str, message: String, help: Option<String>) {
        let span = self.src.locate_value(path);
        self.unresolved.push(message.clone());
        self.push(kind, span, message, help, Severity::Warning);
    }

    fn cluster(&mut self, name: &str, path: &str, raw: RawCluster) -> Option<Cluster> {
        let ok = true;
        let unresolved_before = self.unresolved.len();
        let module = match expand(&raw.module) {
            Ok(m) => {
                let m = PathBuf::from(m);
                if !m.exists() {
                    // Warned here; online the loader's own error (with its reason) says it.
                    let span = self.src.locate_value(&child(path, "module"));
                    self.push(
                        IssueKind::ModuleFile,
                        span,
                        format!("cluster `{name}`: PKCS#11 module {} does not exist here", m.display()),
                        Some("install the vendor's PKCS#11 library or fix `module:`".into()),
                        Severity::Warning,
                    );
                }
                m
            }
            Err(var) => {
                self.offline_warning(
                    IssueKind::UnsetVariable,
                    &child(path, "module"),
                    format!("cluster `{name}`: environment variable `{var}` is not set (in `module`)"),
                    Some(format!("export {var}=… before running hsm-sync")),
                );
                PathBuf::from(&raw.module)
            }
        };
        let tpath = child(path, "token");
        let token = match (raw.token.label, raw.token.serial, raw.token.slot) {
            (Some(l), None, None) => Some(TokenRef::Label(l)),
            (None, Some(s), None) => Some(TokenRef::Serial(s)),
            (None, None, Some(s)) => Some(TokenRef::Slot(s)),
            (None, None, None) => {
                self.issue_at_key(
                    IssueKind::TokenRef,
                    &tpath,
                    "the token is not identified",
                    Some("give exactly one of `label`, `serial`, `slot`".into()),
                );
                None
            }
            _ => {
                self.issue_at_key(
                    IssueKind::TokenRef,
                    &tpath,
                    "the token is identified more than once",
                    Some("give exactly one of `label`, `serial`, `slot`".into()),
                );
                None
            }
        };
        let pin = self.pin(&raw.credentials.pin, &child(&child(path, "credentials"), "pin"));
        let wrap = match raw.lineage.as_ref().and_then(|l| l.wrap) {
            None | Some(RawWrap::Auto) => None,
            Some(RawWrap::Rfc5649) => Some(WireFormat::Rfc5649),
            Some(RawWrap::Rfc3394) => Some(WireFormat::Rfc3394),
        };
        let (domain_key, fingerprint) = match raw.lineage {
            None => (DEFAULT_DOMAIN_KEY.to_string(), None),
            Some(l) => {
                if let Some(fp) = &l.fingerprint {
                    if fp.is_empty() || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                        self.issue(
                            IssueKind::InvalidFingerprint,
                            &child(&child(path, "lineage"), "fingerprint"),
                            "a lineage fingerprint is hex digits",
                            Some("copy it from `hsm-sync inventory PLAN CLUSTER`".into()),
                        );
                    }
                }
                (
                    l.domain_key.unwrap_or_else(|| DEFAULT_DOMAIN_KEY.to_string()),
                    l.fingerprint.map(|f| f.to_ascii_lowercase()),
                )
            }
        };
        let role = match raw.credentials.role {
            RawRole::CryptoUser => Role::CryptoUser,
            RawRole::CryptoOfficer => Role::CryptoOfficer,
        };
        let (Some(token), Some(pin), true) = (token, pin, ok) else {
            return None;
        };
        Some(Cluster {
            name: name.to_string(),
            module,
            module_args: raw.module_args,
            profile: raw.profile.filter(|p| p != "auto"),
            wrap,
            token,
            credentials: Credentials {
                role,
                user: raw.credentials.user,
                pin,
            },
            cloned_from: raw.cloned_from,
            domain_key,
            fingerprint,
            unresolved: self.unresolved.split_off(unresolved_before),
        })
    }

    fn pin(&mut self, v: &Value, path: &str) -> Option<PinSource> {
        let help =
            "put the PIN in an environment variable (`pin: {env: VAR}`) or a file (`pin: {file: ./x.pin}`)".to_string();
        let m = match v {
            Value::Mapping(m) => m,
            Value::String(_) | Value::Number(_) => {
                self.issue(
                    IssueKind::InlinePin,
                    path,
                    "a PIN is written in the plan; plans are reviewed and committed, PINs must not be",
                    Some(help),
                );
                return None;
            }
            _ => {
                self.issue(
                    IssueKind::PinSource,
                    path,
                    "`pin` must be `{env: VAR}` or `{file: PATH}`",
                    Some(help),
                );
                return None;
            }
        };
        let mut env = None;
        let mut file = None;
        for (k, val) in m {
            let key = k.as_str().unwrap_or("?");
            let kpath = child(path, key);
            match (key, val.as_str()) {
                ("env", Some(s)) => env = Some(s.to_string()),
                ("file", Some(s)) => file = Some(s.to_string()),
                ("env" | "file", None) => {
                    self.issue(IssueKind::WrongType, &kpath, format!("`{key}` must be a string"), None)
                }
                ("value" | "pin" | "secret" | "password" | "inline", _) => {
                    self.issue(
                        IssueKind::InlinePin,
                        &kpath,
                        "a PIN is written in the plan; plans are reviewed and committed, PINs must not be",
                        Some(help.clone()),
                    );
                    return None;
                }
                _ => {
                    let h = suggest(key, ["env", "file"]);
                    self.issue_at_key(
                        IssueKind::UnknownField,
                        &kpath,
                        format!("unknown field `{key}`, expected `env` or `file`"),
                        h,
                    );
                    return None;
                }
            }
        }
        match (env, file) {
            (Some(e), None) if !e.is_empty() => Some(PinSource::Env(e)),
            (None, Some(f)) => {
                let fpath = child(path, "file");
                let expanded = match expand(&f) {
                    Ok(x) => PathBuf::from(x),
                    Err(var) => {
                        self.offline_warning(
                            IssueKind::UnsetVariable,
                            &fpath,
                            format!("environment variable `{var}` is not set (in the PIN file path)"),
                            Some(format!("export {var}=… before running hsm-sync online")),
                        );
                        return Some(PinSource::File(PathBuf::from(f)));
                    }
                };
                let full = if expanded.is_absolute() {
                    expanded
                } else {
                    self.base_dir.join(expanded)
                };
                let problem = match std::fs::metadata(&full) {
                    Err(e) => Some(e.to_string()),
                    Ok(m) if !m.is_file() => Some("it is not a regular file".to_string()),
                    // Opening proves readability without reading the PIN here.
                    Ok(_) => std::fs::File::open(&full).err().map(|e| e.to_string()),
                };
                if let Some(why) = problem {
                    self.offline_warning(
                        IssueKind::PinFile,
                        &fpath,
                        format!("cannot read PIN file {}: {why}", full.display()),
                        Some("relative paths are relative to the plan file".into()),
                    );
                    return Some(PinSource::File(full));
                }
                if loosely_readable(&full) {
                    let span = self.src.locate(&fpath);
                    self.push(
                        IssueKind::PinFile,
                        span,
                        format!("PIN file {} is readable by group or others", full.display()),
                        Some(format!("chmod 600 {}", full.display())),
                        Severity::Warning,
                    );
                }
                Some(PinSource::File(full))
            }
            _ => {
                self.issue(
                    IssueKind::PinSource,
                    path,
                    "`pin` needs exactly one of `env` and `file`",
                    Some(help),
                );
                None
            }
        }
    }

    /// Deserializes each item of a list field; `None` when the field is absent.
    fn items<T: DeserializeOwned>(&mut self, list: Option<&Value>, path: &str, what: &str) -> Option<Items<T>> {
        match list? {
            Value::Sequence(items) => Some(Items {
                len: items.len(),
                ok: items
                    .iter()
                    .enumerate()
                    .filter_map(|(j, it)| self.section::<T>(it, &index(path, j)).map(|t| (j, t)))
                    .collect(),
            }),
            _ => {
                self.issue(
                    IssueKind::WrongType,
                    path,
                    format!("`{}` must be a list of {what}", path.rsplit('.').next().unwrap_or(path)),
                    None,
                );
                Some(Items { len: 1, ok: Vec::new() })
            }
        }
    }

    fn syncs(&mut self, items: &[Value], clusters: &[Cluster]) -> Vec<SyncEntry> {
        let names = self.declared.clone();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for (i, v) in items.iter().enumerate() {
            let path = index("sync", i);
            // Selectors and resources are deserialized one by one, so a bad selector neither
            // hides the next one nor the entry's own problems.
            let (shell, keys, notify) = split_entry(v);
            let keys = self.items::<RawSelector>(keys, &child(&path, "keys"), "key selectors");
            let notify = self.items::<RawNotify>(notify, &child(&path, "notify"), "resources");
            // Names are checked from the YAML itself, so that an entry with other faults
            // still takes its name and a second use of it is reported.
            let written = match v.get("name") {
                None | Some(Value::Null) => None,
                Some(Value::String(n)) => Some(n.clone()),
                Some(_) => Some(String::new()), // a wrong type: serde reports it below
            };
            let name = written.clone().unwrap_or_else(|| format!("sync-{}", i + 1));
            if written.as_deref().is_some_and(|n| !n.is_empty()) && !valid_name(&name) {
                self.issue(
                    IssueKind::InvalidName,
                    &child(&path, "name"),
                    format!("invalid sync name `{name}`"),
                    Some("names match [a-z0-9][a-z0-9_-]*".into()),
                );
            }
            if name.is_empty() {
                // reported as a wrong type by serde
            } else if let Some(first) = seen.insert(name.clone(), i) {
                let (l, _) = self
                    .src
                    .line_col(self.src.locate(&index("sync", first)).map_or(0, |s| s.offset()));
                let at = if written.is_some() {
                    child(&path, "name")
                } else {
                    path.clone()
                };
                self.issue(
                    IssueKind::DuplicateSync,
                    &at,
                    format!("duplicate sync name `{name}` (first used on line {l})"),
                    Some("give each sync entry its own `name`".into()),
                );
            }
            let Some(raw) = self.section::<RawSync>(&shell, &path) else {
                continue;
            };
            if let Some(entry) = self.sync(&path, name, raw, (keys, notify), clusters, &names) {
                out.push(entry);
            }
        }
        out
    }

    /// Checks one (source, target) pair; `tpath` points at the target's name.
    /// `source` is `None` when the source cluster is itself invalid or undefined: the
    /// target is then checked only for existence and for being the source.
    fn pair(
        &mut self,
        (sname, source): (&str, Option<&Cluster>),
        target: &str,
        tpath: &str,
        clusters: &[Cluster],
        names: &[String],
    ) {
        let Some(t) = clusters.iter().find(|c| c.name == target) else {
            if self.clusters_unreadable {
                return;
            }
            if names.iter().any(|n| n == target) {
                if target == sname {
                    self.issue(
                        IssueKind::SourceInTargets,
                        tpath,
                        format!("`{target}` is the source of this entry and cannot be one of its targets"),
                        Some("remove it from `targets`".into()),
                    );
                }
                return; // declared but invalid: its own problem is reported
            }
            let help = suggest(target, names.iter().map(String::as_str)).unwrap_or_else(|| defined_help(names));
            self.issue(
                IssueKind::UndefinedCluster,
                tpath,
                format!("cluster `{target}` is not defined"),
                Some(help),
            );
            return;
        };
        if t.name == sname {
            self.issue(
                IssueKind::SourceInTargets,
                tpath,
                format!("`{target}` is the source of this entry and cannot be one of its targets"),
                Some("remove it from `targets`".into()),
            );
            return;
        }
        let Some(source) = source else {
            return;
        };
        // A broken `cloned_from` (undefined, or a cycle) is reported on its own; the missing
        // link it causes here is not reported a second time.
        let broken = |c: &Cluster| {
            c.cloned_from.as_ref().is_some_and(|p| !names.contains(p)) || clone_cycle(clusters, &c.name).is_some()
        };
        if !broken(source) && !broken(t) && !linked(clusters, &source.name, &t.name) {
            self.issue(IssueKind::NotCloned, tpath, format!("`{target}` is not linked to `{}` through `cloned_from`", source.name), Some(format!("hsm-sync syncs only between clones: add `cloned_from: {}` to cluster `{target}` if it was cloned from it", source.name)));
        }
        if t.credentials.role != source.credentials.role || t.credentials.user != source.credentials.user {
            self.issue(
                IssueKind::CredentialMismatch,
                tpath,
                format!(
                    "credentials differ: `{}` logs in as {} `{}`, `{target}` as {} `{}`",
                    source.name,
                    source.credentials.role,
                    source.credentials.user,
                    t.credentials.role,
                    t.credentials.user
                ),
                Some("cloned clusters share their users: use the same role and user on both".into()),
            );
        }
    }

    fn sync(
        &mut self,
        path: &str,
        name: String,
        raw: RawSync,
        (keys, resources): (Option<Items<RawSelector>>, Option<Items<RawNotify>>),
        clusters: &[Cluster],
        names: &[String],
    ) -> Option<SyncEntry> {
        let spath = child(path, "source");
        // An undefined or invalid source still lets the rest of the entry be checked.
        let source = clusters.iter().find(|c| c.name == raw.source);
        if source.is_none() && !names.contains(&raw.source) && !self.clusters_unreadable {
            let help = suggest(&raw.source, names.iter().map(String::as_str)).unwrap_or_else(|| defined_help(names));
            self.issue(
                IssueKind::UndefinedCluster,
                &spath,
                format!("cluster `{}` is not defined", raw.source),
                Some(help),
            );
        }
        let src = (raw.source.as_str(), source);
        let tpath = child(path, "targets");
        if raw.targets.is_empty() {
            self.issue(
                IssueKind::EmptyTargets,
                &tpath,
                "`targets` is empty",
                Some("list at least one target cluster".into()),
            );
        }
        let mut dup = HashSet::new();
        for (j, t) in raw.targets.iter().enumerate() {
            if !dup.insert(t.as_str()) {
                self.issue(
                    IssueKind::DuplicateKey,
                    &index(&tpath, j),
                    format!("target `{t}` is listed twice"),
                    None,
                );
            }
            self.pair(src, t, &index(&tpath, j), clusters, names);
        }
        let kpath = child(path, "keys");
        let keys = keys.unwrap_or_default();
        if keys.len == 0 {
            self.issue(
                IssueKind::EmptySelector,
                &kpath,
                "`keys` is empty",
                Some("select keys by `id`, `label` or `handle`".into()),
            );
        }
        let mut selectors: Vec<Selector> = Vec::new();
        let mut paths: Vec<String> = Vec::new();
        for (j, sel) in keys.ok {
            let sp = index(&kpath, j);
            if let Some(s) = self.selector(&sp, sel, &raw.targets, src, clusters, names) {
                self.conflicting_state(&s, &sp, &selectors, &paths);
                selectors.push(s);
                paths.push(sp);
            }
        }
        let mut notify = Vec::new();
        let mut rnames = HashSet::new();
        for (j, n) in resources.unwrap_or_default().ok {
            let np = index(&child(path, "notify"), j);
            if !rnames.insert(n.name.clone()) {
                self.issue(
                    IssueKind::DuplicateResource,
                    &child(&np, "name"),
                    format!("resource `{}` is listed twice", n.name),
                    None,
                );
            }
            if let Err(why) = check_url(&n.url) {
                self.issue(
                    IssueKind::InvalidUrl,
                    &child(&np, "url"),
                    format!("invalid URL: {why}"),
                    Some("use http://host[:port]/path or https://…".into()),
                );
            }
            let events = match n.events {
                None => Event::ALL.to_vec(),
                Some(e) => e
                    .into_iter()
                    .map(|e| match e {
                        RawEvent::Synced => Event::Synced,
                        RawEvent::Deleted => Event::Deleted,
                    })
                    .collect(),
            };
            if let Some(var) = n.bearer_env.as_deref().filter(|v| !valid_env_name(v)) {
                self.issue(
                    IssueKind::InvalidValue,
                    &child(&np, "bearer_env"),
                    format!(
                        "`bearer_env` must name an environment variable, not `{}`",
                        var.escape_debug()
                    ),
                    Some(
                        "write the variable's name (e.g. `HOOK_TOKEN`); the token itself never goes in the plan".into(),
                    ),
                );
            }
            let timeout = match n.timeout {
                None => DEFAULT_TIMEOUT,
                Some(t) => humantime::parse_duration(&t)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .unwrap_or_else(|| {
                        self.issue(
                            IssueKind::InvalidDuration,
                            &child(&np, "timeout"),
                            format!("invalid timeout `{t}`"),
                            Some("write e.g. `500ms`, `10s`".into()),
                        );
                        DEFAULT_TIMEOUT
                    }),
            };
            if n.retries.is_some_and(|r| r > MAX_RETRIES) {
                self.issue(
                    IssueKind::InvalidValue,
                    &child(&np, "retries"),
                    format!("`retries` is at most {}", MAX_RETRIES),
                    None,
                );
            }
            notify.push(NotifyTarget {
                name: n.name,
                url: n.url,
                events,
                bearer_env: n.bearer_env,
                timeout,
                retries: n.retries.unwrap_or(DEFAULT_RETRIES),
            });
        }
        let source = source?;
        Some(SyncEntry {
            name,
            source: source.name.clone(),
            targets: raw.targets,
            selectors,
            notify,
        })
    }

    /// Same key or glob, other `state`, a target in common: which one wins would be
    /// decided by selector order, silently (issue 16 item 3; CONTRACT.md §1).
    fn conflicting_state(&mut self, sel: &Selector, sp: &str, earlier: &[Selector], paths: &[String]) {
        let Some((first, fpath)) = earlier.iter().zip(paths).find(|(e, _)| {
            e.state != sel.state && e.matcher.same_as(&sel.matcher) && e.targets.iter().any(|t| sel.targets.contains(t))
        }) else {
            return;
        };
        let name = |s: &Selector| format!("`{}` ({})", s.matcher.describe(), s.state.name());
        self.issue(
            IssueKind::ConflictingState,
            sp,
            format!(
                "selectors {} and {} name the same key with different `state`",
                name(first),
                name(sel)
            ),
            Some("keep one of them: a key is either present or absent on a target".into()),
        );
        let also = self.src.locate_value(fpath);
        if let (Some(last), Some(span)) = (self.issues.last_mut(), also) {
            last.also = Some((span, format!("`state: {}` here", first.state.name())));
        }
    }

    fn selector(
        &mut self,
        sp: &str,
        sel: RawSelector,
        entry_targets: &[String],
        source: (&str, Option<&Cluster>),
        clusters: &[Cluster],
        names: &[String],
    ) -> Option<Selector> {
        let help = Some("a selector has exactly one of `id`, `label`, `handle`".to_string());
        let value = match (&sel.id, &sel.label, sel.handle) {
            (Some(id), None, None) => SelectorValue::Id(id),
            (None, Some(label), None) => SelectorValue::Label(label),
            (None, None, Some(h)) => SelectorValue::Handle(h),
            (None, None, None) => {
                self.issue(IssueKind::EmptySelector, sp, "this selector selects nothing", help);
                return None;
            }
            _ => {
                self.issue(
                    IssueKind::AmbiguousSelector,
                    sp,
                    "this selector has more than one of `id`, `label`, `handle`",
                    help,
                );
                return None;
            }
        };
        let matcher = match KeyMatcher::from_value(value) {
            Ok(m) => m,
            Err(e) => {
                let (kind, field, message, help) = match e {
                    SelectorError::EmptyId => (
                        IssueKind::InvalidHex,
                        "id",
                        "an empty `id` selects nothing".to_string(),
                        Some("select keys without an id by `label`".into()),
                    ),
                    SelectorError::NotHex(e) => (
                        IssueKind::InvalidHex,
                        "id",
                        format!("`id` is not hex: {e}"),
                        Some("CKA_ID in hex, two digits a byte, e.g. `id: \"a1b2c3\"`".into()),
                    ),
                    SelectorError::BadGlob(e) => (
                        IssueKind::InvalidGlob,
                        "label",
                        format!("invalid label glob: {}", e.kind()),
                        Some("globs use `*`, `?` and `[...]`".into()),
                    ),
                    SelectorError::EmptyLabel => (
                        IssueKind::EmptySelector,
                        "label",
                        "an empty `label` selects nothing".to_string(),
                        None,
                    ),
                };
                self.issue(kind, &child(sp, field), message, help);
                return None;
            }
        };
        let targets = match sel.targets {
            None => entry_targets.to_vec(),
            Some(ts) => {
                let tp = child(sp, "targets");
                if ts.is_empty() {
                    self.issue(
                        IssueKind::EmptyTargets,
                        &tp,
                        "`targets` is empty",
                        Some("leave it out to use the entry's targets".into()),
                    );
                }
                for (k, t) in ts.iter().enumerate() {
                    self.pair(source, t, &index(&tp, k), clusters, names);
                }
                ts
            }
        };
        let state = match sel.state {
            None | Some(RawState::Present) => DesiredState::Present,
            Some(RawState::Absent) => DesiredState::Absent,
        };
        Some(Selector {
            matcher,
            state,
            targets,
            allow_empty: sel.allow_empty.unwrap_or(false),
        })
    }

    /// The `state` block (CONTRACT.md §1, §6): a backend and what it needs, never a
    /// connection string.
    fn state(&mut self, raw: RawStateStore) -> StateConfig {
        const NAMES: [&str; 3] = ["token", "file", "postgres"];
        if raw.url.is_some() {
            self.issue(
                IssueKind::InlineUrl,
                "state.url",
                "a connection string is written in the plan; plans are reviewed and committed, database passwords must not be",
                Some("export it in an environment variable and name that: `url_env: HSM_SYNC_STATE_URL`".into()),
            );
        }
        let backend = raw.backend.as_deref().unwrap_or("token");
        let misplaced = |me: &mut Self, field: &str, owner: &str| {
            me.issue_at_key(
                IssueKind::InvalidValue,
                &child("state", field),
                format!("`{field}` is for the `{owner}` backend, and this plan's backend is `{backend}`"),
                Some(format!("remove it, or set `backend: {owner}`")),
            );
        };
        match backend {
            "token" | "file" | "postgres" => {}
            other => {
                self.issue(
                    IssueKind::InvalidValue,
                    "state.backend",
                    format!("unknown state backend `{other}`"),
                    Some(suggest(other, NAMES).unwrap_or_else(|| "write token, file or postgres".into())),
                );
                return StateConfig::Token;
            }
        }
        if backend != "file" && raw.path.is_some() {
            misplaced(self, "path", "file");
        }
        if backend != "postgres" && raw.url_env.is_some() {
            misplaced(self, "url_env", "postgres");
        }
        match backend {
            "file" => match raw.path.as_deref() {
                None | Some("") => {
                    self.issue_at_key(
                        IssueKind::MissingField,
                        "state",
                        "the `file` backend needs `path`: the state directory",
                        Some("add e.g. `path: ./.hsm-sync-state` (relative to the plan file)".into()),
                    );
                    StateConfig::Token
                }
                Some(p) => {
                    let p = PathBuf::from(p);
                    StateConfig::File {
                        path: if p.is_absolute() { p } else { self.base_dir.join(p) },
                    }
                }
            },
            "postgres" => match raw.url_env {
                None => {
                    self.issue_at_key(
                        IssueKind::MissingField,
                        "state",
                        "the `postgres` backend needs `url_env`: the environment variable holding the connection string",
                        Some("add `url_env: HSM_SYNC_STATE_URL` and export the libpq URL there".into()),
                    );
                    StateConfig::Token
                }
                Some(var) if looks_like_a_connection_string(&var) => {
                    self.issue(
                        IssueKind::InlineUrl,
                        "state.url_env",
                        "`url_env` holds a connection string; it names the environment variable that holds one",
                        Some("export the URL in a variable and write its name: `url_env: HSM_SYNC_STATE_URL`".into()),
                    );
                    StateConfig::Token
                }
                Some(var) if !valid_env_name(&var) => {
                    self.issue(
                        IssueKind::InvalidValue,
                        "state.url_env",
                        format!("`{var}` is not an environment variable name"),
                        Some("names match [A-Za-z_][A-Za-z0-9_]*".into()),
                    );
                    StateConfig::Token
                }
                Some(var) => {
                    if std::env::var_os(&var).is_none() {
                        self.offline_warning(
                            IssueKind::UnsetVariable,
                            "state.url_env",
                            format!("environment variable `{var}` is not set (the state database's connection string)"),
                            Some(format!(
                                "export {var}='postgresql://USER@HOST/DB' before running hsm-sync online"
                            )),
                        );
                    }
                    StateConfig::Postgres { url_env: var }
                }
            },
            _ => StateConfig::Token,
        }
    }

    fn options(&mut self, raw: RawOptions) -> Options {
        match raw.parallelism {
            Some(0) => self.issue(
                IssueKind::InvalidValue,
                "options.parallelism",
                "`parallelism` must be at least 1",
                None,
            ),
            Some(n) if n > crate::limits::MAX_JOBS => self.issue(
                IssueKind::InvalidValue,
                "options.parallelism",
                format!(
                    "`parallelism: {n}` is more than the {} workers hsm-sync runs",
                    crate::limits::MAX_JOBS
                ),
                Some(format!(
                    "each worker holds a session on every token; write at most {} (tokens usually allow far fewer)",
                    crate::limits::MAX_JOBS
                )),
            ),
            _ => {}
        }
        let notify_cooldown = match raw.notify_cooldown {
            None => Duration::from_secs(3600),
            Some(s) => humantime::parse_duration(&s).unwrap_or_else(|e| {
                self.issue(
                    IssueKind::InvalidDuration,
                    "options.notify_cooldown",
                    format!("invalid duration `{s}`: {e}"),
                    Some("write e.g. `90s`, `30m`, `1h`".into()),
                );
                Duration::from_secs(3600)
            }),
        };
        Options {
            parallelism: raw.parallelism.filter(|p| (1..=crate::limits::MAX_JOBS).contains(p)),
            notify_cooldown,
        }
    }
}

/// The items of a list field that deserialized, with their indexes, and how many there were.
struct Items<T> {
    len: usize,
    ok: Vec<(usize, T)>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { len: 0, ok: Vec::new() }
    }
}

/// A sync entry without its `keys` and `notify` lists (left empty, so serde still reports
/// them missing when absent), and those lists.
fn split_entry(v: &Value) -> (Value, Option<&Value>, Option<&Value>) {
    let Value::Mapping(m) = v else {
        return (v.clone(), None, None);
    };
    let mut shell = Mapping::with_capacity(m.len());
    let (mut keys, mut notify) = (None, None);
    for (k, val) in m {
        let slot = match k.as_str() {
            Some("keys") => &mut keys,
            Some("notify") => &mut notify,
            _ => {
                shell.insert(k.clone(), val.clone());
                continue;
            }
        };
        *slot = Some(val);
        shell.insert(k.clone(), Value::Sequence(Vec::new()));
    }
    (Value::Mapping(shell), keys, notify)
}

fn defined_help(names: &[String]) -> String {
    if names.is_empty() {
        "no clusters are defined".to_string()
    } else {
        format!("defined clusters: {}", names.join(", "))
    }
}

/// Whether two clusters are connected by `cloned_from` links, in either direction,
/// transitively (clones of clones share the domain key).
fn linked(clusters: &[Cluster], a: &str, b: &str) -> bool {
    let mut seen: HashSet<&str> = HashSet::from([a]);
    let mut frontier = vec![a];
    while let Some(n) = frontier.pop() {
        if n == b {
            return true;
        }
        for c in clusters {
            let neighbour = if c.name == n {
                c.cloned_from.as_deref()
            } else if c.cloned_from.as_deref() == Some(n) {
                Some(c.name.as_str())
            } else {
                None
            };
            if let Some(x) = neighbour {
                if seen.insert(x) {
                    frontier.push(x);
                }
            }
        }
    }
    false
}

/// The chain of `cloned_from` links from `start` when it leads back to `start` (a cycle),
/// beginning with `start`; `None` when the chain ends.
fn clone_cycle(clusters: &[Cluster], start: &str) -> Option<Vec<String>> {
    let mut chain = vec![start.to_string()];
    let mut at = start;
    // A chain longer than the number of clusters has gone round; one not through `start` is
    // reported from its own members.
    for _ in 0..clusters.len() {
        let next = clusters.iter().find(|c| c.name == at)?.cloned_from.as_deref()?;
        if next == start {
            return Some(chain);
        }
        if chain.iter().any(|c| c == next) {
            return None;
        }
        chain.push(next.to_string());
        at = next;
    }
    None
}

/// A URL check light enough for validation: scheme http(s) and a host.
fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| "the scheme must be http or https".to_string())?;
    if url.contains(char::is_whitespace) {
        return Err("the URL contains a blank".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    // user:password@ in a URL would put a secret in the plan, like an inline PIN.
    if authority.contains('@') {
        return Err("credentials in the URL; keep secrets out of the plan".into());
    }
    let (host, port) = match authority.strip_prefix('[') {
        // [v6::address]:port
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or("an IPv6 host is missing its `]`")?;
            (h, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '%'))
    {
        return Err(format!("`{host}` is not a host name"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(format!("`{p}` is not a port (1-65535)"));
        }
    }
    Ok(())
}

/// A POSIX environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a `url_env` value is a connection string rather than a variable's name.
fn looks_like_a_connection_string(v: &str) -> bool {
    v.contains("://") || v.contains('=') || v.contains('@') || v.contains(' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert!(valid_name("dr-euw1"));
        assert!(valid_name("0a_b"));
        assert!(!valid_name("Primary"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
    }

    #[test]
    fn expansion_of_variables_and_home() {
        std::env::set_var("HSM_SYNC_TEST_DIR", "/opt/hsm");
        assert_eq!(expand("${HSM_SYNC_TEST_DIR}/lib.so").unwrap(), "/opt/hsm/lib.so");
        assert_eq!(expand("${HSM_SYNC_UNSET_XYZ}/x").unwrap_err(), "HSM_SYNC_UNSET_XYZ");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand("~/a.pin").unwrap(), format!("{home}/a.pin"));
    }

    #[test]
    fn lineage_links_are_transitive_and_undirected() {
        let c = |n: &str, from: Option<&str>| Cluster {
            name: n.into(),
            module: PathBuf::new(),
            module_args: None,
            profile: None,
            wrap: None,
            token: TokenRef::Slot(0),
            credentials: Credentials {
                role: Role::CryptoUser,
                user: "u".into(),
                pin: PinSource::Env("X".into()),
            },
            cloned_from: from.map(String::from),
            domain_key: DEFAULT_DOMAIN_KEY.into(),
            fingerprint: None,
            unresolved: Vec::new(),
        };
        let cs = vec![c("a", None), c("b", Some("a")), c("c", Some("b")), c("z", None)];
        assert!(linked(&cs, "a", "c"));
        assert!(linked(&cs, "c", "a"));
        assert!(!linked(&cs, "a", "z"));
    }

    #[test]
    fn urls_need_http_a_host_and_a_valid_port() {
        for ok in [
            "http://127.0.0.1:8080/key-events",
            "https://audit.example/hook?x=1",
            "http://[::1]:9000/",
            "http://host",
        ] {
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ftp://x",
            "http://",
            "http:///path",
            "http://host:99999/",
            "http://host:0/",
            "http://host:/",
            "http://a b/",
            "http://user:pw@host/",
            "http://[::1/",
            "key events",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_section_with_thousands_of_problems_is_cut_short() {
        let mut text = String::from("version: 1\nclusters: {}\noptions:\n");
        for i in 0..5000 {
            text.push_str(&format!("  k{i}: 1\n"));
        }
        let Err(PlanError::Invalid(inv)) = validate(Path::new("p.yaml"), "p.yaml", text) else {
            panic!("invalid")
        };
        assert_eq!(inv.issues.len(), MAX_SECTION_ROUNDS + 1);
        assert!(inv.issues.iter().any(|i| i.kind == IssueKind::TooManyProblems));
    }

    #[test]
    fn label_globs_match_whole_labels_and_slashes_are_ordinary() {
        let g = |p: &str| LabelGlob::parse(p).unwrap();
        assert!(g("payments-*").is_match("payments-2026/eu"));
        assert!(!g("payments-*").is_match("old-payments-1"));
        assert!(g("key-?").is_match("key-7"));
        assert!(!g("key-?").is_match("key-10"));
        assert!(g("[ab]-1").is_match("b-1"));
        assert!(LabelGlob::parse("[ab").is_err());
    }

    #[test]
    fn suggestions_pick_the_closest_field() {
        assert_eq!(
            suggest("tragets", ["name", "source", "targets", "keys"]).as_deref(),
            Some("did you mean `targets`?")
        );
        assert_eq!(suggest("zzz", ["name", "source"]), None);
    }

    #[test]
    fn long_labels_are_cut_on_character_boundaries() {
        // Found by the fuzzer: a 126-byte label cut to 120 bytes ended inside a 4-byte
        // character, and miette slices the text at label ends.
        let text = String::from_utf8_lossy(include_bytes!(
            "../../tests/plans/regressions/long-label-ends-in-a-character.yaml"
        ))
        .into_owned();
        let Err(crate::plan::PlanError::Invalid(inv)) = validate(Path::new("p.yaml"), "p.yaml", text.clone()) else {
            panic!("the input is not a valid plan");
        };
        for issue in &inv.issues {
            for s in issue.span.iter().chain(issue.also.iter().map(|(s, _)| s)) {
                assert!(s.len() <= 120, "{issue:?}");
                assert!(
                    text.is_char_boundary(s.offset()) && text.is_char_boundary(s.offset() + s.len()),
                    "{issue:?}"
                );
            }
        }
    }
}
