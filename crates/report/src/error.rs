use std::path::PathBuf;

/// Why a report could not be written. Every variant names the output it was for, so that a
/// command writing a dozen files says which one failed.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{}: row {row} has {got} fields, the header has {expected}", path.display())]
    RowLength { path: PathBuf, row: usize, expected: usize, got: usize },
    #[error("{}: unsupported image format (use a .png or .svg file name)", path.display())]
    UnsupportedFormat { path: PathBuf },
    #[error("{}: {message}", path.display())]
    InvalidChart { path: PathBuf, message: String },
    #[error("{}: drawing failed: {message}", path.display())]
    Draw { path: PathBuf, message: String },
}
