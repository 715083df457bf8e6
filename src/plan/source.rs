//! The plan text as a miette source, and a locator from YAML paths to spans.
//!
//! serde_yaml knows positions only while it parses; problems found later (an undefined
//! cluster, a source among its own targets) still have to point into the file. A pass of
//! saphyr-parser's spanned events records, for every node, the span of its key and of its
//! value under a path such as `sync[0].keys[1].id`.

use std::collections::HashMap;

use miette::SourceSpan;
use saphyr_parser::{Event, Parser, Span, SpannedEventReceiver};

/// Spans of one YAML node.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpans {
    /// The mapping key that names the node, if it is a mapping value.
    pub key: Option<SourceSpan>,
    /// The node itself.
    pub value: SourceSpan,
    /// Whether the node is a scalar (labels then sit on the value, else on the key).
    pub scalar: bool,
}

/// A plan file's text plus its path → span locator.
#[derive(Debug, Clone)]
pub struct PlanSource {
    name: String,
    text: String,
    nodes: HashMap<String, NodeSpans>,
    /// A YAML syntax error found by the locator pass, with its span.
    pub syntax_error: Option<(String, SourceSpan)>,
    /// Mapping keys given twice: (path of the repeated key, span of the repetition, span
    /// of the first use).
    pub duplicate_keys: Vec<(String, SourceSpan, SourceSpan)>,
}

/// Joins a mapping key onto a path.
pub fn child(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Joins a sequence index onto a path.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

impl PlanSource {
    /// Reads the text once with the spanned parser and records every node's spans.
    pub fn parse(name: impl Into<String>, text: impl Into<String>) -> Self {
        let name = name.into();
        let text = text.into();
        let mut recv = Recorder::new(&text);
        let mut parser = Parser::new_from_str(&text);
        let mut syntax_error = None;
        // The parser's iterator, not its recursive `load`: a plan nested thousands of
        // levels deep must not exhaust the stack (the recorder ignores levels past
        // MAX_DEPTH, and serde_yaml refuses them).
        for ev in &mut parser {
            match ev {
                Ok((ev, span)) => recv.on_event(ev, span),
                Err(e) => {
                    let at = recv.offset(e.marker().index());
                    syntax_error = Some((e.info().to_string(), SourceSpan::from((at, 0))));
                    break;
                }
            }
        }
        // Collections left open by a syntax error end where the text does.
        while !recv.stack.is_empty() {
            recv.close(text.len());
        }
        let Recorder { nodes, duplicates, .. } = recv;
        PlanSource {
            name,
            text,
            nodes,
            syntax_error,
            duplicate_keys: duplicates,
        }
    }

    /// The file name shown in diagnostics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plan text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text as a miette source for diagnostics.
    pub fn named_source(&self) -> super::PlanText {
        super::PlanText::new(&self.name, self.text.clone())
    }

    /// The recorded spans of a path.
    pub fn node(&self, path: &str) -> Option<NodeSpans> {
        self.nodes.get(path).copied()
    }

    /// Where a diagnostic about `path` should point: a scalar's value, else the key
    /// naming the node (a whole mapping is too large a label). Falls back to the
    /// nearest recorded ancestor.
    pub fn locate(&self, path: &str) -> Option<SourceSpan> {
        let mut p = path;
        loop {
            if let Some(n) = self.nodes.get(p) {
                return Some(match (n.scalar, n.key) {
                    (true, _) => n.value,
                    (false, Some(k)) => k,
                    // A list item that is a block mapping: its first line, not all of it.
                    (false, None) => self.first_line(n.value),
                });
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// The part of `span` on its first line.
    fn first_line(&self, span: SourceSpan) -> SourceSpan {
        let start = span.offset().min(self.text.len());
        let end = (start + span.len()).min(self.text.len());
        let len = self
            .text
            .get(start..end)
            .and_then(|t| t.find('\n'))
            .unwrap_or(end - start);
        SourceSpan::from((start, len))
    }

    /// The value of `path` itself (for a value of the wrong type): a scalar, or the first
    /// line of a collection. Falls back like [`Self::locate`].
    pub fn locate_value(&self, path: &str) -> Option<SourceSpan> {
        match self.nodes.get(path) {
            Some(n) if n.scalar => Some(n.value),
            Some(n) => Some(self.first_line(n.value)),
            None => self.locate(path),
        }
    }

    /// The key span of `path` (for a missing or unknown field), else [`Self::locate`].
    pub fn locate_key(&self, path: &str) -> Option<SourceSpan> {
        self.nodes.get(path).and_then(|n| n.key).or_else(|| self.locate(path))
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1; // an offset from serde_yaml may fall inside a character
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }
}

/// An open collection. Its own spans are recorded when it closes (one map insertion per
/// node: loading a plan of 50,000 keys is mostly this bookkeeping).
enum Frame {
    Map {
        path: String,
        start: usize,
        /// The key naming this mapping in its parent.
        named_by: Option<SourceSpan>,
        /// The key seen last and its span, while its value is awaited.
        key: Option<(String, SourceSpan)>,
        seen: KeysSeen,
    },
    Seq {
        path: String,
        start: usize,
        named_by: Option<SourceSpan>,
        next: usize,
    },
}

/// The keys of one mapping so far, to find repeated ones: a short list for the usual few
/// keys (no hashing), a set once a mapping grows large.
#[derive(Default)]
struct KeysSeen {
    few: Vec<(String, SourceSpan)>,
    many: HashMap<String, SourceSpan>,
}

impl KeysSeen {
    const FEW: usize = 16;

    /// Records `name` at `span`; the span of its first use when it was seen before.
    fn insert(&mut self, name: &str, span: SourceSpan) -> Option<SourceSpan> {
        if self.many.is_empty() {
            if let Some((_, first)) = self.few.iter().find(|(k, _)| k == name) {
                return Some(*first);
            }
            if self.few.len() < Self::FEW {
                self.few.push((name.to_string(), span));
                return None;
            }
            self.many.extend(self.few.drain(..));
        }
        match self.many.get(name) {
            Some(first) => Some(*first),
            None => {
                self.many.insert(name.to_string(), span);
                None
            }
        }
    }
}

/// The path segment of a mapping key that is not a scalar (`[a, b]: x`) or is an alias.
pub const COMPLEX_KEY: &str = "<complex-key>";

/// Nesting deeper than this is not recorded: a plan is about six levels deep, and paths of
/// hostile nesting would cost memory quadratic in the depth.
const MAX_DEPTH: usize = 64;

struct Recorder<'t> {
    text: &'t str,
    stack: Vec<Frame>,
    /// Collections opened below [`MAX_DEPTH`], skipped.
    deep: usize,
    nodes: HashMap<String, NodeSpans>,
    duplicates: Vec<(String, SourceSpan, SourceSpan)>,
    /// Byte offset of each char index; `None` for ASCII text where they are equal.
    char_bytes: Option<Vec<usize>>,
}

impl<'t> Recorder<'t> {
    fn new(text: &'t str) -> Self {
        let char_bytes = (!text.is_ascii()).then(|| {
            let mut v: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
            v.push(text.len());
            v
        });
        Recorder {
            text,
            stack: Vec::new(),
            deep: 0,
            nodes: HashMap::new(),
            duplicates: Vec::new(),
            char_bytes,
        }
    }

    /// saphyr counts in chars; miette wants bytes.
    fn offset(&self, char_index: usize) -> usize {
        match &self.char_bytes {
            None => char_index,
            Some(v) => v
                .get(char_index)
                .copied()
                .unwrap_or_else(|| v.last().copied().unwrap_or(0)),
        }
    }

    fn span(&self, s: Span) -> SourceSpan {
        let a = self.offset(s.start.index());
        let b = self.offset(s.end.index()).max(a);
        SourceSpan::from((a, b - a))
    }

    /// A scalar's span without the blanks the parser counts after it (`"1234" }`).
    fn scalar_span(&self, s: Span) -> SourceSpan {
        let span = self.span(s);
        let a = span.offset().min(self.text.len());
        let b = (a + span.len()).min(self.text.len());
        let len = self.text.get(a..b).map_or(b - a, |t| t.trim_end().len());
        SourceSpan::from((a, len))
    }

    /// The path a new node gets, and the key span naming it. `None` when the node is a
    /// mapping key rather than a value.
    fn slot(&mut self) -> Option<(String, Option<SourceSpan>)> {
        match self.stack.last_mut() {
            None => Some((String::new(), None)),
            Some(Frame::Seq { path, next, .. }) => {
                let p = index(path, *next);
                *next += 1;
                Some((p, None))
            }
            Some(Frame::Map { path, key, .. }) => key.take().map(|(k, ks)| (child(path, &k), Some(ks))),
        }
    }

    /// Closes the innermost collection, ending at byte `end`, and records its spans.
    fn close(&mut self, end: usize) {
        if let Some(
            Frame::Map {
                path, start, named_by, ..
            }
            | Frame::Seq {
                path, start, named_by, ..
            },
        ) = self.stack.pop()
        {
            let end = end.max(start);
            self.nodes.insert(
                path,
                NodeSpans {
                    key: named_by,
                    value: SourceSpan::from((start, end - start)),
                    scalar: false,
                },
            );
        }
    }

    fn record_key(&mut self, name: String, span: SourceSpan) {
        if let Some(Frame::Map { path, key, seen, .. }) = self.stack.last_mut() {
            if let Some(first) = (name != COMPLEX_KEY).then(|| seen.insert(&name, span)).flatten() {
                self.duplicates.push((child(path, &name), span, first));
            }
            *key = Some((name, span));
        }
    }
}

impl<'input> SpannedEventReceiver<'input> for Recorder<'_> {
    fn on_event(&mut self, ev: Event<'input>, span: Span) {
        let sspan = self.span(span);
        if self.deep > 0
            || (self.stack.len() >= MAX_DEPTH && matches!(ev, Event::MappingStart(..) | Event::SequenceStart(..)))
        {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.deep += 1,
                Event::MappingEnd | Event::SequenceEnd => self.deep -= 1,
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(value, ..) => match self.slot() {
                None => {
                    let sspan = self.scalar_span(span);
                    self.record_key(value.into_owned(), sspan)
                }
                Some((path, key)) => {
                    let sspan = self.scalar_span(span);
                    self.nodes.insert(
                        path,
                        NodeSpans {
                            key,
                            value: sspan,
                            scalar: true,
                        },
                    );
                }
            },
            Event::Alias(_) => {
                if let Some((path, key)) = self.slot() {
                    self.nodes.insert(
                        path,
                        NodeSpans {
                            key,
                            value: sspan,
                            scalar: true,
                        },
                    );
                } else {
                    self.record_key(COMPLEX_KEY.into(), sspan);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex (non-scalar) mapping key: the mapping's pending key becomes a
                // placeholder, so the value after it is still recorded as its value; what is
                // inside the key itself goes under a path no lookup asks for.
                let (path, key) = match self.slot() {
                    Some(s) => s,
                    None => {
                        self.record_key(COMPLEX_KEY.into(), sspan);
                        (String::from("<inside-complex-key>"), None)
                    }
                };
                let start = sspan.offset();
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        start,
                        named_by: key,
                        key: None,
                        seen: KeysSeen::default(),
                    }
                } else {
                    Frame::Seq {
                        path,
                        start,
                        named_by: key,
                        next: 0,
                    }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => self.close(sspan.offset() + sspan.len()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "version: 1\nclusters:\n  primary:\n    module: /lib/x.so\nsync:\n  - source: primary\n    targets: [dr, primary]\n";

    fn text_at(src: &PlanSource, s: SourceSpan) -> &str {
        &src.text()[s.offset()..s.offset() + s.len()]
    }

    #[test]
    fn locates_scalars_keys_and_sequence_items() {
        let src = PlanSource::parse("p.yaml", TEXT);
        assert_eq!(text_at(&src, src.locate("version").unwrap()), "1");
        assert_eq!(
            text_at(&src, src.locate("clusters.primary.module").unwrap()),
            "/lib/x.so"
        );
        assert_eq!(text_at(&src, src.locate("clusters.primary").unwrap()), "primary");
        assert_eq!(text_at(&src, src.locate("sync[0].targets[1]").unwrap()), "primary");
        assert_eq!(
            src.line_col(src.locate("sync[0].targets[1]").unwrap().offset()),
            (7, 19)
        );
    }

    #[test]
    fn unknown_paths_fall_back_to_the_nearest_ancestor() {
        let src = PlanSource::parse("p.yaml", TEXT);
        assert_eq!(
            text_at(&src, src.locate("clusters.primary.token.label").unwrap()),
            "primary"
        );
    }

    #[test]
    fn duplicate_keys_and_syntax_errors_are_recorded() {
        let src = PlanSource::parse("p.yaml", "a: 1\nb: 2\na: 3\n");
        assert_eq!(src.duplicate_keys.len(), 1);
        assert_eq!(src.duplicate_keys[0].0, "a");
        let bad = PlanSource::parse("p.yaml", "a: [1, 2\nb: 3\n");
        assert!(bad.syntax_error.is_some());
    }

    #[test]
    fn deep_nesting_is_not_recorded_below_the_limit() {
        let text = format!("a: {}1{}\nb: x\n", "[".repeat(200), "]".repeat(200));
        let src = PlanSource::parse("p.yaml", text);
        assert!(src.syntax_error.is_none());
        assert_eq!(text_at(&src, src.locate("b").unwrap()), "x");
        assert!(src.nodes.len() < 100);
    }

    #[test]
    fn non_ascii_text_maps_char_indices_to_bytes() {
        let src = PlanSource::parse("p.yaml", "name: \"héllo\"\nnext: x\n");
        assert_eq!(text_at(&src, src.locate("next").unwrap()), "x");
    }
}
