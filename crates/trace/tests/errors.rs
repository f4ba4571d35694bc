//! Whole-file and byte-level problems: missing and empty files, header-only files, bad UTF-8,
//! broken quoting and unrecognised headers.

use trace::{NodeListOptions, TraceErrorKind, TraceFormat, TraceOptions};

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name
}

fn read(bytes: &[u8], name: &str) -> String {
    trace::read_workloads(bytes, name, None, &TraceOptions::default())
        .map(|t| t.workloads.len())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_missing_file_is_an_io_error_naming_it() {
    let e = trace::load_workloads(fixture("nope.csv"), None, &TraceOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::Io(_)));
    assert!(e.to_string().contains("nope.csv: "), "{e}");
    assert!(trace::load_node_list(fixture("nope.csv")).is_err());
    assert!(trace::sniff_format(fixture("nope.csv")).is_err());
}

#[test]
fn empty_files_are_errors() {
    let e = trace::load_workloads(fixture("empty.csv"), None, &TraceOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::Empty));
    assert!(e.to_string().ends_with("empty.csv: empty file (no header row)"), "{e}");
    let e = trace::load_node_list(fixture("empty.csv")).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::Empty));
}

#[test]
fn header_only_files_are_errors() {
    let e = trace::load_workloads(fixture("header_only.csv"), None, &TraceOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::NoRows), "{e}");
    assert_eq!(
        read(b"sn,cpu_milli,memory_mib,gpu,model\n", "n.csv"),
        "n.csv:1: cannot tell the format from the header [sn,cpu_milli,memory_mib,gpu,model]; expected an openb pod list, a Philly or jobs CSV, or a DLRM instance list"
    );
    let e =
        trace::read_node_list(&b"sn,cpu_milli,memory_mib,gpu,model\n"[..], "n.csv", None, &NodeListOptions::default())
            .unwrap_err();
    assert_eq!(e.to_string(), "n.csv: no data rows after the header");
}

#[test]
fn invalid_utf8_names_line_and_column() {
    let e = trace::load_workloads(fixture("philly_not_utf8.csv"), None, &TraceOptions::default()).unwrap_err();
    assert_eq!(e.line, Some(3));
    assert_eq!(e.column(), Some(5));
    assert!(e.to_string().contains(":3: column 5 'cluster': expected UTF-8 text"), "{e}");
}

#[test]
fn an_unterminated_quote_shows_as_a_short_row() {
    let e = trace::load_workloads(fixture("philly_open_quote.csv"), None, &TraceOptions::default()).unwrap_err();
    assert!(e.to_string().ends_with("philly_open_quote.csv:2: expected 5 fields like the header, got 1"), "{e}");
}

#[test]
fn garbage_headers_are_unknown_formats() {
    assert_eq!(
        read(b"foo,bar\n1,2\n", "g.csv"),
        "g.csv:1: cannot tell the format from the header [foo,bar]; expected an openb pod list, a Philly or jobs CSV, or a DLRM instance list"
    );
    let e = trace::sniff_format(fixture("tiresias_small.csv")).unwrap();
    assert_eq!(e, trace::DetectedFormat::Workloads(TraceFormat::Jobs));
}

#[test]
fn header_names_tolerate_bom_case_and_spaces() {
    let text = "\u{feff}Timestamp , Duration,NUM_GPUS,gpu_time,cluster\n2017-10-09 07:01:55, 66.0 ,1,66.0,a\n";
    let t = trace::read_workloads(text.as_bytes(), "p.csv", None, &TraceOptions::default()).unwrap();
    assert_eq!(t.format, TraceFormat::Philly);
    assert_eq!(t.workloads[0].duration, Some(model::SimDuration::from_secs(66)));
}
