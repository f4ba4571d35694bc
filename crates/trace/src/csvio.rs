//! The streaming CSV edge shared by all importers: one reused record, header lookup by name, and
//! field parsers whose errors name the file, line and column.

use crate::error::{TraceError, TraceErrorKind, shorten};
use crate::limits::MAX_SECONDS;
use csv::StringRecord;
use std::io::Read;

/// A CSV file read record by record into one reused [`StringRecord`].
pub(crate) struct CsvRows<R: Read> {
    rdr: csv::Reader<R>,
    /// Display name used in errors.
    pub file: String,
    /// Column names, trimmed and lower-cased.
    pub header: Vec<String>,
    rec: StringRecord,
    /// Line of the current record (1-based).
    line: u64,
    /// The first record is data (headerless file) and has not been handed out yet.
    first_is_data: bool,
    /// Data records handed out so far.
    rows: u64,
}

impl<R: Read> CsvRows<R> {
    /// Opens the reader and reads the first record (the header, for all formats but headerless
    /// ones). Fails on an empty file.
    pub fn open(reader: R, file: &str) -> Result<Self, TraceError> {
        let rdr = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(reader);
        let mut rows = CsvRows {
            rdr,
            file: file.to_string(),
            header: Vec::new(),
            rec: StringRecord::new(),
            line: 0,
            first_is_data: false,
            rows: 0,
        };
        if !rows.read()? {
            return Err(TraceError::new(file, None, TraceErrorKind::Empty));
        }
        Ok(rows)
    }

    /// The first record's fields, trimmed, for format detection.
    pub fn first_fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = self.rec.iter().map(str::trim).collect();
        if let Some(first) = fields.first_mut() {
            *first = first.trim_start_matches('\u{feff}').trim();
        }
        fields
    }

    /// Takes the first record as the header.
    pub fn use_first_as_header(&mut self) {
        self.header = self.first_fields().iter().map(|s| s.to_ascii_lowercase()).collect();
    }

    /// Declares the file headerless with these column names; the first record is data.
    pub fn use_fixed_header(&mut self, names: &[&str]) {
        self.header = names.iter().map(|s| s.to_string()).collect();
        self.first_is_data = true;
    }

    fn read(&mut self) -> Result<bool, TraceError> {
        match self.rdr.read_record(&mut self.rec) {
            Ok(more) => {
                if let Some(pos) = self.rec.position() {
                    self.line = pos.line();
                }
                Ok(more)
            }
            Err(e) => Err(self.csv_error(e)),
        }
    }

    /// Advances to the next data record; `Ok(None)` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<Row<'_>>, TraceError> {
        if self.first_is_data {
            self.first_is_data = false;
        } else if !self.read()? {
            if self.rows == 0 {
                return Err(TraceError::new(&self.file, None, TraceErrorKind::NoRows));
            }
            return Ok(None);
        }
        if self.rec.len() != self.header.len() {
            let kind = TraceErrorKind::FieldCount { expected: self.header.len(), got: self.rec.len() };
            return Err(TraceError::new(&self.file, Some(self.line), kind));
        }
        self.rows += 1;
        Ok(Some(Row { rec: &self.rec, header: &self.header, file: &self.file, line: self.line, index: self.rows - 1 }))
    }

    /// The error for a missing column, pointing at the header line.
    pub fn missing(&self, names: &[&str]) -> TraceError {
        let mut wanted = format!("'{}'", names[0]);
        if names.len() > 1 {
            let others: Vec<String> = names[1..].iter().map(|n| format!("'{n}'")).collect();
            wanted.push_str(&format!(" (or {})", others.join(", ")));
        }
        TraceError::new(&self.file, Some(1), TraceErrorKind::MissingColumn { wanted })
    }

    /// The index of the first column named any of `names`.
    pub fn find(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.header.iter().position(|h| h == n))
    }

    /// Like [`CsvRows::find`], failing when there is no such column.
    pub fn require(&self, names: &[&str]) -> Result<usize, TraceError> {
        self.find(names).ok_or_else(|| self.missing(names))
    }

    fn csv_error(&self, e: csv::Error) -> TraceError {
        let line = e.position().map(|p| p.line()).or(Some(self.line + 1));
        match e.into_kind() {
            csv::ErrorKind::Io(io) => TraceError::new(&self.file, None, TraceErrorKind::Io(io)),
            csv::ErrorKind::Utf8 { err, .. } => {
                let column = err.field() + 1;
                let name = self.header.get(err.field()).cloned().unwrap_or_default();
                let kind = TraceErrorKind::Field {
                    column,
                    name,
                    expected: "UTF-8 text".into(),
                    got: format!("invalid UTF-8 after {} valid bytes", err.valid_up_to()),
                };
                TraceError::new(&self.file, line, kind)
            }
            csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
                let kind = TraceErrorKind::FieldCount { expected: expected_len as usize, got: len as usize };
                TraceError::new(&self.file, line, kind)
            }
            other => TraceError::new(&self.file, line, TraceErrorKind::Csv(format!("{other:?}"))),
        }
    }
}

/// One data record with its location, and parsers for its fields.
pub(crate) struct Row<'a> {
    rec: &'a StringRecord,
    header: &'a [String],
    /// Display name of the file, for errors.
    pub file: &'a str,
    /// 1-based line of the record.
    pub line: u64,
    /// 0-based index among the data records.
    pub index: u64,
}

impl<'a> Row<'a> {
    /// The trimmed field in column `col` (empty if the row is short).
    pub fn get(&self, col: usize) -> &'a str {
        self.rec.get(col).unwrap_or("").trim()
    }

    /// The trimmed field, `None` when the column is absent or the field empty.
    pub fn opt(&self, col: Option<usize>) -> Option<&'a str> {
        col.map(|c| self.get(c)).filter(|s| !s.is_empty())
    }

    /// An error about the field in column `col`.
    pub fn err(&self, col: usize, expected: impl Into<String>) -> TraceError {
        let kind = TraceErrorKind::Field {
            column: col + 1,
            name: self.header.get(col).cloned().unwrap_or_default(),
            expected: expected.into(),
            got: shorten(self.get(col)),
        };
        TraceError::new(self.file, Some(self.line), kind)
    }

    /// A non-negative integer no larger than `max`. `8.0` is accepted as 8 (spreadsheet exports).
    pub fn uint(&self, col: usize, max: u64) -> Result<u64, TraceError> {
        let s = self.get(col);
        let v = match s.parse::<u64>() {
            Ok(v) => v,
            Err(_) => match s.parse::<f64>() {
                Ok(f) if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= 9.0e15 => f as u64,
                _ => return Err(self.err(col, "a non-negative integer")),
            },
        };
        if v > max {
            return Err(self.err(col, format!("an integer at most {max}")));
        }
        Ok(v)
    }

    /// Like [`Row::uint`], `None` when the column is absent or the field empty.
    pub fn opt_uint(&self, col: Option<usize>, max: u64) -> Result<Option<u64>, TraceError> {
        match col {
            Some(c) if !self.get(c).is_empty() => self.uint(c, max).map(Some),
            _ => Ok(None),
        }
    }

    /// A finite, non-negative number no larger than `max`.
    pub fn number(&self, col: usize, max: f64) -> Result<f64, TraceError> {
        match self.get(col).parse::<f64>() {
            Ok(f) if f.is_finite() && f >= 0.0 => {
                if f > max {
                    Err(self.err(col, format!("a number at most {max}")))
                } else {
                    Ok(f)
                }
            }
            _ => Err(self.err(col, "a non-negative number")),
        }
    }

    /// A time or duration in seconds, as integer milliseconds.
    pub fn secs_millis(&self, col: usize) -> Result<u64, TraceError> {
        match self.get(col).parse::<f64>() {
            Ok(f) if (0.0..=MAX_SECONDS).contains(&f) => Ok((f * 1000.0).round() as u64),
            Ok(f) if f.is_finite() && f > MAX_SECONDS => {
                Err(self.err(col, format!("seconds at most {MAX_SECONDS} (100 years)")))
            }
            _ => Err(self.err(col, "a non-negative number of seconds")),
        }
    }

    /// Like [`Row::secs_millis`], `None` when the column is absent or the field empty.
    pub fn opt_secs_millis(&self, col: Option<usize>) -> Result<Option<u64>, TraceError> {
        match col {
            Some(c) if !self.get(c).is_empty() => self.secs_millis(c).map(Some),
            _ => Ok(None),
        }
    }

    /// A signed 32-bit integer.
    pub fn int32(&self, col: usize) -> Result<i32, TraceError> {
        self.get(col).parse::<i32>().map_err(|_| self.err(col, "an integer"))
    }
}
