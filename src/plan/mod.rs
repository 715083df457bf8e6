//! Stage 1: the plan file. `raw` mirrors the YAML, `source` locates YAML paths in the
//! text, `validate` checks every rule of CONTRACT.md §1 and builds the `model`.
//! serde_yaml is named only inside this module.

pub mod model;
pub mod raw;
pub mod source;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, LabeledSpan, Severity, SourceSpan};

pub use model::*;

/// Plans larger than this are refused before parsing: a real plan is a few hundred KiB,
/// and a bound keeps hostile input from costing unbounded memory.
pub const MAX_PLAN_BYTES: u64 = 16 * 1024 * 1024;

/// The kind of a plan problem; its code (`plan::unknown-field`, …) is stable for tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueKind {
    /// The text is not YAML.
    Syntax,
    /// The file is not UTF-8.
    Encoding,
    /// The file is larger than [`MAX_PLAN_BYTES`].
    TooLarge,
    /// A field the plan format does not have.
    UnknownField,
    /// A value of the wrong type (a list for a mapping, a number for text, …).
    WrongType,
    /// A required field is absent.
    MissingField,
    /// A mapping key given twice, or a target listed twice.
    DuplicateKey,
    /// A cluster name defined twice.
    DuplicateCluster,
    /// Two sync entries with one name (given or default).
    DuplicateSync,
    /// A reference to a cluster that `clusters` does not define.
    UndefinedCluster,
    /// A source listed among its own targets.
    SourceInTargets,
    /// A target not linked to its source through `cloned_from`.
    NotCloned,
    /// A source and a target log in with different roles or users.
    CredentialMismatch,
    /// A PIN written in the plan.
    InlinePin,
    /// `pin` is not exactly one of `{env: VAR}` and `{file: PATH}`.
    PinSource,
    /// A PIN file that cannot be read (error) or is readable by others (warning).
    PinFile,
    /// A selector that selects nothing, or an empty `keys` list.
    EmptySelector,
    /// A selector with more than one of `id`, `label`, `handle`.
    AmbiguousSelector,
    /// An `id` that is not hex.
    InvalidHex,
    /// A `label` glob that does not parse.
    InvalidGlob,
    /// A `version` other than 1.
    Version,
    /// A cluster or sync name outside `[a-z0-9][a-z0-9_-]*`.
    InvalidName,
    /// A token not given by exactly one of `label`, `serial`, `slot`.
    TokenRef,
    /// An empty `targets` list.
    EmptyTargets,
    /// A duration humantime does not read.
    InvalidDuration,
    /// A notify URL that is not a plain http(s) URL.
    InvalidUrl,
    /// A `${VAR}` (or `~` without `HOME`) that is not set.
    UnsetVariable,
    /// A PKCS#11 module file that is not on this machine.
    ModuleFile,
    /// A value out of range (`parallelism: 0`).
    InvalidValue,
    /// A lineage fingerprint that is not hex.
    InvalidFingerprint,
    /// Two notify resources of one entry with one name.
    DuplicateResource,
    /// The plan has no content.
    Empty,
    /// `cloned_from` links that go round in a circle.
    CloneCycle,
    /// More problems than are listed.
    TooManyProblems,
    /// Two selectors of one entry name the same key or glob with different `state`.
    ConflictingState,
    /// A connection string written in the plan (`state.url`, or a URL as `url_env`).
    InlineUrl,
}

impl IssueKind {
    /// The diagnostic code, e.g. `plan::unknown-field`.
    pub fn code(self) -> &'static str {
        use IssueKind::*;
        match self {
            Syntax => "plan::syntax",
            Encoding => "plan::encoding",
            TooLarge => "plan::too-large",
            UnknownField => "plan::unknown-field",
            WrongType => "plan::wrong-type",
            MissingField => "plan::missing-field",
            DuplicateKey => "plan::duplicate-key",
            DuplicateCluster => "plan::duplicate-cluster",
            DuplicateSync => "plan::duplicate-sync",
            UndefinedCluster => "plan::undefined-cluster",
            SourceInTargets => "plan::source-in-targets",
            NotCloned => "plan::not-cloned",
            CredentialMismatch => "plan::credential-mismatch",
            InlinePin => "plan::inline-pin",
            PinSource => "plan::pin-source",
            PinFile => "plan::pin-file",
            ModuleFile => "plan::module-file",
            EmptySelector => "plan::empty-selector",
            AmbiguousSelector => "plan::ambiguous-selector",
            InvalidHex => "plan::invalid-hex",
            InvalidGlob => "plan::invalid-glob",
            Version => "plan::version",
            InvalidName => "plan::invalid-name",
            TokenRef => "plan::token-ref",
            EmptyTargets => "plan::empty-targets",
            InvalidDuration => "plan::invalid-duration",
            InvalidUrl => "plan::invalid-url",
            UnsetVariable => "plan::unset-variable",
            InvalidValue => "plan::invalid-value",
            InvalidFingerprint => "plan::invalid-fingerprint",
            DuplicateResource => "plan::duplicate-resource",
            Empty => "plan::empty",
            CloneCycle => "plan::clone-cycle",
            TooManyProblems => "plan::too-many-problems",
            ConflictingState => "plan::conflicting-state",
            InlineUrl => "plan::inline-url",
        }
    }
}

/// One problem in a plan, pointing at its YAML node.
#[derive(Debug, Clone)]
pub struct PlanIssue {
    /// What kind of problem.
    pub kind: IssueKind,
    /// The message.
    pub message: String,
    /// Where in the plan text.
    pub span: Option<SourceSpan>,
    /// The label shown at the span.
    pub label: String,
    /// How to fix it, where that is obvious.
    pub help: Option<String>,
    /// Error, or a warning that does not stop the run.
    pub severity: Severity,
    /// A second place worth showing (where a duplicate was first given), with its label.
    pub also: Option<(SourceSpan, String)>,
}

impl fmt::Display for PlanIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PlanIssue {}

impl Diagnostic for PlanIssue {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        let primary = LabeledSpan::new_primary_with_span(Some(self.label.clone()), span);
        let also = self
            .also
            .as_ref()
            .map(|(s, l)| LabeledSpan::new_with_span(Some(l.clone()), *s));
        Some(Box::new(std::iter::once(primary).chain(also)))
    }
}

/// Bytes of a label shown at most: a label marks where a node starts, and one over a
/// whole 30 MB node shows no more.
const MAX_LABEL_LEN: usize = 120;

/// A span cut to [`MAX_LABEL_LEN`] bytes, ending on a character boundary of `text`.
pub(crate) fn clip_label(text: &str, s: SourceSpan) -> SourceSpan {
    if s.len() <= MAX_LABEL_LEN {
        return s;
    }
    let mut end = (s.offset() + MAX_LABEL_LEN).min(text.len());
    while end > s.offset() && !text.is_char_boundary(end) {
        end -= 1;
    }
    SourceSpan::from((s.offset(), end - s.offset()))
}

/// Bytes of text a snippet shows at most around a label before it is cut to a window.
const MAX_SNIPPET: usize = 2048;

/// The plan text as diagnostics show it: miette prints whole lines around a label, so a
/// one-line JSON plan, or a hostile 30 MB line, would be echoed in full. Snippets longer
/// than `MAX_SNIPPET` are cut to a window of the label's own line, so an error on such
/// a plan stays a few lines long.
#[derive(Debug, Clone)]
pub struct PlanText {
    name: String,
    text: String,
}

impl PlanText {
    /// The text of the plan `name`.
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Self {
        PlanText {
            name: name.into(),
            text: text.into(),
        }
    }
}

impl miette::SourceCode for PlanText {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let full = self.text.read_span(span, before, after)?;
        if full.data().len() <= MAX_SNIPPET {
            return Ok(Box::new(miette::MietteSpanContents::new_named(
                self.name.clone(),
                full.data(),
                *full.span(),
                full.line(),
                full.column(),
                full.line_count(),
            )));
        }
        // A window of the label's line: some context before, the label, some after, on
        // character boundaries and never across a line break.
        let t = self.text.as_str();
        let floor = |mut i: usize| {
            while !t.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        let start_of_line = t[..span.offset()].rfind('\n').map_or(0, |i| i + 1);
        let end_of_line = t[span.offset()..].find('\n').map_or(t.len(), |i| span.offset() + i);
        let from = floor(span.offset().saturating_sub(60).max(start_of_line));
        let to = floor(
            (span.offset() + span.len() + 60)
                .min(end_of_line)
                .min(from + MAX_SNIPPET),
        );
        let line = t[..from].matches('\n').count();
        let column = t[start_of_line..from].chars().count();
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.name.clone(),
            &t.as_bytes()[from..to],
            SourceSpan::from((from, to - from)),
            line,
            column,
            1,
        )))
    }
}

/// Every problem of a plan, as one diagnostic with the problems related to it.
#[derive(Debug)]
pub struct InvalidPlan {
    /// The plan text, for rendering.
    pub src: PlanText,
    /// The problems, in file order.
    pub issues: Vec<PlanIssue>,
    /// Located problems, to compute line and column.
    pub source: source::PlanSource,
}

impl InvalidPlan {
    /// Whether every issue is a warning (the plan loads; nothing is wrong with it).
    fn warnings_only(&self) -> bool {
        self.issues.iter().all(|i| i.severity == Severity::Warning)
    }
}

impl fmt::Display for InvalidPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        // Warnings alone are not "problems" under an error mark (issue 16).
        let what = if self.warnings_only() { "warning" } else { "problem" };
        write!(
            f,
            "{} has {n} {what}{}",
            self.source.name(),
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for InvalidPlan {}

impl Diagnostic for InvalidPlan {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(if self.warnings_only() {
            "plan::warnings"
        } else {
            "plan::invalid"
        }))
    }
    fn severity(&self) -> Option<Severity> {
        Some(if self.warnings_only() {
            Severity::Warning
        } else {
            Severity::Error
        })
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.issues.iter().map(|i| i as &dyn Diagnostic)))
    }
}

/// Why a plan could not be loaded.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PlanError {
    /// The file cannot be read.
    #[error("cannot read plan {path}: {source}")]
    #[diagnostic(code(plan::read))]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The plan breaks rules; every problem is listed.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(Box<InvalidPlan>),
}

/// A loaded plan with the warnings validation found (e.g. a PIN file readable by others).
#[derive(Debug)]
pub struct Loaded {
    /// The validated plan.
    pub plan: Plan,
    /// Problems that do not stop the run, as one diagnostic (or none).
    pub warnings: Option<InvalidPlan>,
}

/// Validates plan text that was read earlier (a saved plan carries its plan's text);
/// `path` is where it came from, against which relative PIN files resolve.
pub fn load_text(path: &Path, text: String) -> Result<Loaded, PlanError> {
    validate::validate(path, &path.display().to_string(), text)
}

/// Reads and validates a plan file.
pub fn load(path: &Path) -> Result<Loaded, PlanError> {
    let read_err = |source| PlanError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let name = path.display().to_string();
    if meta.len() > MAX_PLAN_BYTES {
        return Err(validate::single(
            &name,
            String::new(),
            IssueKind::TooLarge,
            format!(
                "the plan is {} bytes; plans larger than {MAX_PLAN_BYTES} bytes are refused",
                meta.len()
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            // Shown with the bad bytes replaced; the text before them is unchanged, so the
            // label sits on the first one.
            let shown = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let mut err = validate::single(
                &name,
                shown,
                IssueKind::Encoding,
                format!("the plan is not valid UTF-8 (first bad byte at offset {at})"),
            );
            if let PlanError::Invalid(inv) = &mut err {
                for issue in &mut inv.issues {
                    issue.span = Some(SourceSpan::from((at, char::REPLACEMENT_CHARACTER.len_utf8())));
                    issue.label = "not UTF-8".into();
                    issue.help = Some("save the plan as UTF-8".into());
                }
            }
            return Err(err);
        }
    };
    validate::validate(path, &name, text)
}

/// The plan text as a JSON value, for checking it against `schemas/plan.schema.json`
/// (a YAML plan and its JSON form have the same shape). `Err` carries the YAML error.
pub fn yaml_to_json(text: &str) -> Result<serde_json::Value, String> {
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}
