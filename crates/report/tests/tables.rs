//! Terminal tables keep one look; snapshots catch a change of preset or alignment.

use report::{Table, fmt_duration_s, fmt_pct, fmt_si, fmt_thousands};

fn policies() -> Table {
    let mut t = Table::new(["policy", "jobs", "GPU alloc", "p99 JCT", "peak power"]);
    for (policy, jobs, alloc, p99, watts) in [
        ("fgd", 12_345u64, 0.9412, 3725.0, 5.02e6),
        ("best-fit", 12_345, 0.8871, 9000.0, 4.71e6),
        ("random", 987, 0.8, 59.6, 700.0),
    ] {
        t.row([policy.to_string(), fmt_thousands(jobs), fmt_pct(alloc), fmt_duration_s(p99), fmt_si(watts, "W")]);
    }
    t.row(["(no policy)", "-", "", "n/a", "0 W"]);
    t
}

#[test]
fn ascii_table() {
    insta::assert_snapshot!(policies().utf8(false).render());
}

#[test]
fn utf8_table() {
    insta::assert_snapshot!(policies().utf8(true).to_string());
}

#[test]
fn ragged_rows_and_forced_alignment() {
    let mut t = Table::new(["node", "gpus"]).align_left(1).align_right(0);
    t.row(["hall-a-r001-n01"]).row(["n2", "8", "extra"]);
    assert_eq!(t.len(), 2);
    insta::assert_snapshot!(t.render());
}
