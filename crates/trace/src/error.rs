//! The one error type of the importers. Every error names the file, and where it can the line and
//! the column (by number and header name), so that a user can open the trace and fix the row.

use std::fmt;

/// Why a trace or node list could not be imported, and where in the file.
///
/// Displays as `FILE:LINE: column N 'NAME': expected ..., got "..."` for a bad field,
/// `FILE:LINE: ...` for a bad row and `FILE: ...` for problems with the file as a whole.
#[derive(Debug, thiserror::Error)]
pub struct TraceError {
    /// The file's display name (its file name, or what the caller passed for a reader).
    pub file: String,
    /// 1-based line of the record at fault (the header is line 1); `None` for whole-file problems.
    pub line: Option<u64>,
    /// What went wrong.
    pub kind: TraceErrorKind,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.kind),
            None => write!(f, "{}: {}", self.file, self.kind),
        }
    }
}

/// The kinds of [`TraceError`], so that callers and tests can match on them.
#[derive(Debug, thiserror::Error)]
pub enum TraceErrorKind {
    /// The file could not be opened or read.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// Not even a header row.
    #[error("empty file (no header row)")]
    Empty,
    /// A header but no data rows.
    #[error("no data rows after the header")]
    NoRows,
    /// The header matches none of the formats drome reads.
    #[error("cannot tell the format from the header [{header}]; expected {expected}")]
    UnknownFormat {
        /// The header row as read, comma-joined (shortened if long).
        header: String,
        /// The kinds of file the caller asked for.
        expected: &'static str,
    },
    /// A column the format needs is not in the header.
    #[error("missing column {wanted}")]
    MissingColumn {
        /// The accepted names, e.g. `'num_gpus' (or 'num_gpu', 'gpus')`.
        wanted: String,
    },
    /// A row with another number of fields than the header.
    #[error("expected {expected} fields like the header, got {got}")]
    FieldCount {
        /// Fields in the header.
        expected: usize,
        /// Fields in this row.
        got: usize,
    },
    /// A field that does not hold what its column should.
    #[error("column {column} '{name}': expected {expected}, got {got:?}")]
    Field {
        /// 1-based column number.
        column: usize,
        /// The column's header name.
        name: String,
        /// What the column should hold.
        expected: String,
        /// What the field holds (shortened if long).
        got: String,
    },
    /// A malformed CSV record (e.g. an unterminated quote) the CSV reader gave up on.
    #[error("malformed CSV: {0}")]
    Csv(String),
    /// Two node-list rows give the same node name.
    #[error("duplicate node name {0:?}")]
    DuplicateNode(String),
}

impl TraceError {
    pub(crate) fn new(file: &str, line: Option<u64>, kind: TraceErrorKind) -> Self {
        TraceError { file: file.to_string(), line, kind }
    }

    /// The 1-based column this error points at, for bad fields.
    pub fn column(&self) -> Option<usize> {
        match self.kind {
            TraceErrorKind::Field { column, .. } => Some(column),
            _ => None,
        }
    }
}

/// Shortens a value quoted in an error message so that a garbage line does not flood the terminal.
pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX { s.to_string() } else { format!("{}...", s.chars().take(MAX).collect::<String>()) }
}
