//! Diagnostics data: what went wrong, where (file:line:column) and what would be valid.
//!
//! Rendering follows cargo and rustc: a headline with a stable code, an arrow
//! to the location, the source line with a caret under the spot, then help.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// A configuration file kept in memory so that byte spans can be turned into lines and columns.
///
/// A layered configuration (`extends`, environment, `--set`) is a composed document
/// whose `origins` say where each of its pieces was written; a plain file has none.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
    /// Byte ranges of `text` and where they came from, sorted by start; empty for a plain file.
    pub origins: Vec<Segment>,
}

/// A piece of a composed document and its origin.
#[derive(Debug, Clone)]
pub struct Segment {
    pub range: Range<usize>,
    pub origin: Origin,
}

/// Where a value of a composed configuration was written.
#[derive(Debug, Clone)]
pub enum Origin {
    /// In a file, starting at byte `start` of it.
    File { file: Arc<SourceFile>, start: usize },
    /// An environment variable (`LORA__TRAIN__BATCH_SIZE=16`, `OVERRIDE_LR=1e-4`).
    Env { var: String, value: String },
    /// A `--set section.key=value` argument.
    Cli { arg: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { file, start } => {
                let (line, col) = file.line_col(*start);
                write!(f, "{}:{line}:{col}", file.path.display())
            }
            Origin::Env { var, value } => write!(f, "environment {var}={value}"),
            Origin::Cli { arg } => write!(f, "command line --set {arg}"),
        }
    }
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: String) -> Arc<Self> {
        Arc::new(Self {
            path: path.into(),
            text,
            origins: Vec::new(),
        })
    }

    /// A composed document; `origins` map its byte ranges back to where they were written.
    pub fn composed(path: impl Into<PathBuf>, text: String, mut origins: Vec<Segment>) -> Arc<Self> {
        origins.sort_by_key(|s| (s.range.start, std::cmp::Reverse(s.range.end)));
        Arc::new(Self {
            path: path.into(),
            text,
            origins,
        })
    }

    /// Where byte `offset` of this document was written: the innermost segment holding it.
    pub fn origin_of(&self, offset: usize) -> Option<Origin> {
        let seg = self
            .origins
            .iter()
            .filter(|s| s.range.contains(&offset) || (s.range.is_empty() && s.range.start == offset))
            .min_by_key(|s| s.range.len())?;
        Some(match &seg.origin {
            Origin::File { file, start } => Origin::File {
                file: file.clone(),
                start: start + (offset - seg.range.start),
            },
            other => other.clone(),
        })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = self.text[line_start..offset].chars().count() + 1;
        (line, col)
    }

    fn line_text(&self, line: usize) -> &str {
        self.text.lines().nth(line - 1).unwrap_or("")
    }
}

/// A place in a configuration file.
#[derive(Debug, Clone)]
pub struct Location {
    pub file: Arc<SourceFile>,
    pub span: Range<usize>,
}

impl Location {
    /// The file the location was written in (for a composed document, the layer's file).
    pub fn path(&self) -> PathBuf {
        match self.origin() {
            Some(Origin::File { file, .. }) => file.path.clone(),
            _ => self.file.path.clone(),
        }
    }

    /// Line and column where it was written; (0, 0) for an environment or command-line value.
    pub fn line_col(&self) -> (usize, usize) {
        match self.origin() {
            Some(Origin::File { file, start }) => file.line_col(start),
            Some(_) => (0, 0),
            None => self.file.line_col(self.span.start),
        }
    }

    /// The layer this location came from, for a composed document.
    pub fn origin(&self) -> Option<Origin> {
        if self.file.origins.is_empty() {
            return None;
        }
        self.file.origin_of(self.span.start)
    }

    /// The file and span to show: the original file for a composed document's file layer.
    fn shown(&self) -> Option<(Arc<SourceFile>, Range<usize>)> {
        match self.origin() {
            None => Some((self.file.clone(), self.span.clone())),
            Some(Origin::File { file, start }) => {
                // Keep the span's length, clipped to the original text.
                let end = (start + self.span.len()).min(file.text.len());
                Some((file, start..end))
            }
            Some(_) => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable identifier, for example `config::unknown-key` or `lora::rank-exceeds-hidden`.
    pub code: String,
    pub message: String,
    pub location: Option<Location>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: code.into(),
            message: message.into(),
            location: None,
            help: None,
        }
    }

    pub fn warning(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    pub fn at(mut self, location: Option<Location>) -> Self {
        self.location = location;
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{kind}[{}]: {}", self.code, self.message)?;
        if let Some(loc) = &self.location {
            match loc.shown() {
                Some((file, span)) => {
                    let (line, col) = file.line_col(span.start);
                    let text = file.line_text(line);
                    let gutter = " ".repeat(line.to_string().len());
                    let width = file
                        .text
                        .get(span.clone())
                        .unwrap_or("")
                        .lines()
                        .next()
                        .map_or(1, |s| s.chars().count().max(1))
                        .min(text.chars().count().saturating_sub(col - 1).max(1));
                    write!(f, "\n{gutter}--> {}:{line}:{col}", file.path.display())?;
                    write!(
                        f,
                        "\n{gutter} |\n{line} | {text}\n{gutter} | {}{}",
                        " ".repeat(col - 1),
                        "^".repeat(width)
                    )?;
                }
                None => {
                    let origin = loc.origin().expect("not shown means a non-file origin");
                    write!(f, "\n  --> {origin}")?;
                }
            }
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found at once.
#[derive(Debug, Clone, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|d| d.severity == Severity::Error)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Err(self)` when any error is present, so that callers can `?` after collecting.
    pub fn into_result(self) -> Result<Vec<Diagnostic>, Diagnostics> {
        if self.has_errors() { Err(self) } else { Ok(self.0) }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        let errors = self.0.iter().filter(|d| d.severity == Severity::Error).count();
        if errors > 0 {
            write!(f, "\n\nerror: {errors} problem(s) in the configuration")?;
        }
        Ok(())
    }
}

/// Levenshtein distance, for "did you mean" suggestions.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a third of the word's length, if any.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= word.chars().count().div_ceil(3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_matches_hand_computation() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("query", "query"), 0);
    }

    #[test]
    fn did_you_mean_picks_the_closest_name() {
        assert_eq!(did_you_mean("quary", ["query", "key", "value"]), Some("query"));
        assert_eq!(did_you_mean("zzzzzz", ["query", "key"]), None);
    }

    #[test]
    fn line_and_column_are_one_based() {
        let f = SourceFile::new("x.toml", "a = 1\nbb = 2\n".into());
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        assert_eq!(f.line_col(11), (2, 6));
    }
}
