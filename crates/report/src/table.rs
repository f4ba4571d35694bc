//! Terminal tables with one look across drome's commands: a header row, numbers right-aligned,
//! box-drawing characters on a terminal and plain ASCII when the output goes to a file or a log
//! (where UTF-8 borders turn into mojibake on some viewers).

use comfy_table::presets::{ASCII_FULL_CONDENSED, UTF8_FULL_CONDENSED};
use comfy_table::{Cell, CellAlignment, ContentArrangement};
use std::fmt;
use std::io::IsTerminal;

/// True when standard output is a terminal: the usual argument to [`Table::utf8`].
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// A table of strings. Columns whose cells all read as numbers (see [`looks_numeric`]) are
/// right-aligned so that digits line up; others are left-aligned.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    utf8: bool,
    right: Vec<usize>,
    left: Vec<usize>,
}

impl Table {
    /// A table with these column headers, ASCII borders until [`Table::utf8`] says otherwise.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table { headers: headers.into_iter().map(Into::into).collect(), ..Table::default() }
    }

    /// Box-drawing borders (`UTF8_FULL_CONDENSED`) when `yes`, ASCII (`ASCII_FULL_CONDENSED`)
    /// otherwise. Pass [`stdout_is_tty`] for output meant for the terminal.
    pub fn utf8(mut self, yes: bool) -> Self {
        self.utf8 = yes;
        self
    }

    /// Forces column `col` right-aligned, whatever its cells look like.
    pub fn align_right(mut self, col: usize) -> Self {
        self.right.push(col);
        self.left.retain(|&c| c != col);
        self
    }

    /// Forces column `col` left-aligned, e.g. for numeric ids that are names rather than amounts.
    pub fn align_left(mut self, col: usize) -> Self {
        self.left.push(col);
        self.right.retain(|&c| c != col);
        self
    }

    /// Appends a row. Short rows are padded with empty cells; cells beyond the header are kept
    /// and shown under no header.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = cells.into_iter().map(Into::into).collect();
        if row.len() < self.headers.len() {
            row.resize(self.headers.len(), String::new());
        }
        self.rows.push(row);
        self
    }

    /// Builder-style [`Table::row`].
    pub fn with_row<I, S>(mut self, cells: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.row(cells);
        self
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn right_aligned(&self, col: usize) -> bool {
        if self.right.contains(&col) {
            return true;
        }
        if self.left.contains(&col) {
            return false;
        }
        let mut cells = self.rows.iter().filter_map(|r| r.get(col)).filter(|c| !is_placeholder(c)).peekable();
        cells.peek().is_some() && cells.all(|c| looks_numeric(c))
    }

    /// Renders the table to a string without a trailing newline.
    pub fn render(&self) -> String {
        let mut t = comfy_table::Table::new();
        t.load_preset(if self.utf8 { UTF8_FULL_CONDENSED } else { ASCII_FULL_CONDENSED });
        // Never wrap to the terminal width: a wrapped number is worse than a wide table, and
        // output must not depend on the terminal it happened to be rendered in.
        t.set_content_arrangement(ContentArrangement::Disabled);
        let columns = self.rows.iter().map(Vec::len).chain([self.headers.len()]).max().unwrap_or(0);
        let align = |col: usize| if self.right_aligned(col) { CellAlignment::Right } else { CellAlignment::Left };
        if !self.headers.is_empty() {
            t.set_header(self.headers.iter().enumerate().map(|(i, h)| Cell::new(h).set_alignment(align(i))));
        }
        for row in &self.rows {
            t.add_row(row.iter().enumerate().map(|(i, c)| Cell::new(c).set_alignment(align(i))));
        }
        for col in 0..columns {
            if let Some(c) = t.column_mut(col) {
                c.set_cell_alignment(align(col));
            }
        }
        t.to_string()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// Cells that stand for "no value" and should not decide a column's alignment.
fn is_placeholder(cell: &str) -> bool {
    matches!(cell.trim(), "" | "-" | "—" | "n/a")
}

/// True for cells that read as amounts: they start with a digit, or a sign or point followed by
/// one. Covers plain numbers, `4,096`, `12.3%`, `5.22 MW` and durations such as `1h 02m`.
pub fn looks_numeric(cell: &str) -> bool {
    let mut chars = cell.trim().chars();
    match chars.next() {
        Some(c) if c.is_ascii_digit() => true,
        Some('-' | '+' | '.') => chars.next().is_some_and(|c| c.is_ascii_digit() || c == '.'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_detection() {
        for s in ["0", "4,096", "12.3%", "-1", "+2", ".5", "-.5", "5.22 MW", "1h 02m"] {
            assert!(looks_numeric(s), "{s}");
        }
        for s in ["", "-", "fgd", "H200", "n/a", "-x"] {
            assert!(!looks_numeric(s), "{s}");
        }
    }

    #[test]
    fn columns_align_by_content() {
        let t = Table::new(["policy", "jobs", "note"]).with_row(["fgd", "1,024", "7"]).with_row(["best-fit", "-", "x"]);
        assert!(!t.right_aligned(0));
        assert!(t.right_aligned(1), "placeholders do not count");
        assert!(!t.right_aligned(2));
        assert!(!t.clone().align_left(1).right_aligned(1));
        assert!(t.align_right(0).right_aligned(0));
    }
}
