//! CSV output round-trips and refuses malformed rows, naming the file.

use report::{ReportError, Series, csv_out};
use std::path::PathBuf;

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("drome-report-csv-{}", std::process::id())).join(name)
}

#[test]
fn columns_round_trip() {
    let path = temp_file("columns.csv");
    let rows = [[0.0, 0.25, 3.0], [60.5, 0.1 + 0.2, f64::NAN]];
    csv_out::write_columns(&path, &["time_s", "utilisation", "queue"], rows).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "time_s,utilisation,queue\n0,0.25,3\n60.5,0.30000000000000004,\n");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn rows_are_quoted_and_checked() {
    let path = temp_file("rows.csv");
    csv_out::write_rows(&path, &["policy", "note"], [["fgd", "a, b"], ["best-fit", "say \"hi\""]]).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "policy,note\nfgd,\"a, b\"\nbest-fit,\"say \"\"hi\"\"\"\n");

    let e = csv_out::write_rows(&path, &["a", "b"], [vec!["1", "2"], vec!["3"]]).unwrap_err();
    assert!(matches!(e, ReportError::RowLength { row: 2, expected: 2, got: 1, .. }), "{e}");
    assert!(e.to_string().contains("rows.csv"), "{e}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn series_long_form() {
    let path = temp_file("series.csv");
    let series = [Series::new("fgd", vec![(0.5, 0.5), (1.0, 0.9)]), Series::new("random", vec![(1.0, 0.8)])];
    csv_out::write_series(&path, "demand", "alloc_ratio", &series).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, "series,demand,alloc_ratio\nfgd,0.5,0.5\nfgd,1,0.9\nrandom,1,0.8\n");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unwritable_path_is_named() {
    let blocker = temp_file("blocker");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, "x").unwrap();
    let e = csv_out::write_columns(blocker.join("x.csv"), &["a"], [[1.0]]).unwrap_err();
    assert!(matches!(e, ReportError::Io { .. }) && e.to_string().contains("x.csv"), "{e}");
    std::fs::remove_file(&blocker).unwrap();
}
