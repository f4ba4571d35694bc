//! CSV files with a header row, for the numbers behind every chart: users re-plot them in their
//! own tools, and tests diff them. Parent directories are created; errors name the file.

use crate::error::ReportError;
use crate::plot::Series;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

fn create(path: &Path) -> Result<csv::Writer<BufWriter<File>>, ReportError> {
    let io = |source| ReportError::Io { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = File::create(path).map_err(io)?;
    Ok(csv::Writer::from_writer(BufWriter::new(file)))
}

fn finish(path: &Path, w: csv::Writer<BufWriter<File>>) -> Result<(), ReportError> {
    let io = |source| ReportError::Io { path: path.to_path_buf(), source };
    let buf = w.into_inner().map_err(|e| io(e.into_error()))?;
    let file = buf.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Writes `header` and then `rows` of strings. Every row must have as many fields as the header,
/// so that a short row is caught here rather than misread as shifted columns later.
pub fn write_rows<P, R, I, S>(path: P, header: &[&str], rows: R) -> Result<(), ReportError>
where
    P: AsRef<Path>,
    R: IntoIterator<Item = I>,
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let path = path.as_ref();
    let csv_err = |source| ReportError::Csv { path: path.to_path_buf(), source };
    let mut w = create(path)?;
    w.write_record(header).map_err(csv_err)?;
    let mut record = csv::ByteRecord::new();
    for (i, row) in rows.into_iter().enumerate() {
        record.clear();
        for field in row {
            record.push_field(field.as_ref());
        }
        if record.len() != header.len() {
            return Err(ReportError::RowLength {
                path: path.to_path_buf(),
                row: i + 1,
                expected: header.len(),
                got: record.len(),
            });
        }
        w.write_byte_record(&record).map_err(csv_err)?;
    }
    finish(path, w)
}

/// Writes rows of numbers, e.g. a time series `time_s,allocated,utilisation,queue`. Numbers are
/// written in Rust's shortest round-trip form, so reading the file back gives the same `f64`s;
/// non-finite values are written as empty fields.
pub fn write_columns<P, R, T>(path: P, header: &[&str], rows: R) -> Result<(), ReportError>
where
    P: AsRef<Path>,
    R: IntoIterator<Item = T>,
    T: AsRef<[f64]>,
{
    let rows = rows.into_iter().map(|row| row.as_ref().iter().map(|&v| number(v)).collect::<Vec<_>>());
    write_rows(path, header, rows)
}

/// Writes several series in long form, one `series,<x_name>,<y_name>` row per point: series of
/// different lengths and x values (one per policy, say) fit one file.
pub fn write_series<P: AsRef<Path>>(path: P, x_name: &str, y_name: &str, series: &[Series]) -> Result<(), ReportError> {
    let rows = series.iter().flat_map(|s| s.points.iter().map(move |&(x, y)| [s.name.clone(), number(x), number(y)]));
    write_rows(path, &["series", x_name, y_name], rows)
}

fn number(v: f64) -> String {
    if v.is_finite() { v.to_string() } else { String::new() }
}
