//! The hourly CSV files drome reads: a header naming the columns, then one row per hour of the
//! year, `hour` first (0, 1, 2, ... in order). Lines starting with `#` and blank lines are skipped.
//! Errors name the line and the column (1-based), so a user's file can be fixed at a glance.

use crate::EnergyError;

/// Parses `text` whose header must be exactly `columns` (case-insensitive, spaces trimmed), the
/// first being `hour`. Returns the value columns (all but `hour`), row by row.
pub(crate) fn parse(text: &str, columns: &[&str], max_rows: usize) -> Result<Vec<Vec<f64>>, EnergyError> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut header_seen = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if !header_seen {
            let matches =
                fields.len() == columns.len() && fields.iter().zip(columns).all(|(f, c)| f.eq_ignore_ascii_case(c));
            if !matches {
                return Err(EnergyError::Csv {
                    line: line_no,
                    column: 1,
                    message: format!("expected the header `{}`, found `{line}`", columns.join(",")),
                });
            }
            header_seen = true;
            continue;
        }
        if fields.len() != columns.len() {
            let column = fields.len().min(columns.len()) + 1;
            return Err(EnergyError::Csv {
                line: line_no,
                column,
                message: format!("expected {} fields, found {}", columns.len(), fields.len()),
            });
        }
        let expected_hour = rows.len();
        if rows.len() >= max_rows {
            return Err(EnergyError::Csv {
                line: line_no,
                column: 1,
                message: format!("more than {max_rows} hourly rows"),
            });
        }
        match fields[0].parse::<usize>() {
            Ok(h) if h == expected_hour => {}
            _ => {
                return Err(EnergyError::Csv {
                    line: line_no,
                    column: 1,
                    message: format!("`hour` must be {expected_hour} (rows in order from 0), found `{}`", fields[0]),
                });
            }
        }
        let mut values = Vec::with_capacity(columns.len() - 1);
        for (j, f) in fields.iter().enumerate().skip(1) {
            match f.parse::<f64>() {
                Ok(v) if v.is_finite() => values.push(v),
                _ => {
                    return Err(EnergyError::Csv {
                        line: line_no,
                        column: j + 1,
                        message: format!("`{}` must be a finite number, found `{f}`", columns[j]),
                    });
                }
            }
        }
        rows.push(values);
    }
    if !header_seen {
        return Err(EnergyError::Csv {
            line: 1,
            column: 1,
            message: format!("empty file; expected the header `{}`", columns.join(",")),
        });
    }
    if rows.is_empty() {
        return Err(EnergyError::Csv { line: text.lines().count().max(1), column: 1, message: "no data rows".into() });
    }
    Ok(rows)
}
