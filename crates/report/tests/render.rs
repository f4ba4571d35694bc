//! Charts render to real files on a machine with no fonts configured: the three figures drome
//! draws most (utilisation over time, completion-time CDFs, allocation ratio vs demand).

use report::{AxisFormat, Chart, Legend, Panel, ReportError, Series};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A fresh directory per test under the system temp dir; tests run in parallel.
fn temp_dir(test: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("drome-report-{}-{test}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// GPU allocation and utilisation over a day above queue length, 200k samples each.
fn utilisation_chart() -> Chart {
    let n = 200_000;
    let t = |i: usize| i as f64 * 86_400.0 / n as f64;
    let alloc: Vec<(f64, f64)> = (0..n).map(|i| (t(i), 0.6 + 0.3 * (t(i) / 7200.0).sin())).collect();
    let util: Vec<(f64, f64)> = alloc.iter().map(|&(x, y)| (x, y * 0.8)).collect();
    // A queue that swells with the load, with bursts of arrivals that drain quickly.
    let queue: Vec<(f64, f64)> = (0..n)
        .map(|i| (t(i), (40.0 * (t(i) / 7200.0).sin().max(0.0) + if i % 9973 < 200 { 60.0 } else { 0.0 }).round()))
        .collect();
    Chart::new("valence: GPU allocation, utilisation and queue")
        .x_label("time")
        .x_format(AxisFormat::Duration)
        .panel(
            Panel::new("fraction of GPUs")
                .y_range(0.0, 1.0)
                .y_format(AxisFormat::Percent)
                .legend(Legend::UpperRight)
                .series(Series::new("allocated", alloc))
                .series(Series::new("utilised", util))
                // Above the fixed 0..1 range: clipped at the top, not drawn over the title.
                .series(Series::new("demand", vec![(0.0, 0.5), (43_200.0, 1.5), (86_400.0, 0.5)])),
        )
        .panel(Panel::new("queued jobs").series(Series::new("queue", queue).steps()).legend(Legend::None))
}

fn cdf_chart() -> Chart {
    let jct = |scale: f64| (1..=5000).map(|i| scale * (i as f64).powf(1.3)).collect::<Vec<_>>();
    Chart::new("job completion time").x_label("completion time").x_log().x_format(AxisFormat::Duration).panel(
        Panel::new("fraction of jobs")
            .y_range(0.0, 1.0)
            .series(Series::cdf("fgd", &jct(1.0)))
            .series(Series::cdf("best-fit", &jct(1.4))),
    )
}

fn allocation_ratio_chart() -> Chart {
    let curve = |knee: f64| (0..=120).map(|i| (i as f64 / 100.0, (i as f64 / 100.0).min(knee))).collect();
    Chart::new("allocation ratio vs arrived demand")
        .x_label("arrived GPU demand / capacity")
        .x_format(AxisFormat::Percent)
        .panel(
            Panel::new("GPU allocation ratio")
                .y_format(AxisFormat::Percent)
                .series(Series::new("fgd", curve(0.95)))
                .series(Series::new("best-fit", curve(0.88)))
                .series(Series::new("random", curve(0.8))),
        )
}

#[test]
fn renders_png() {
    let dir = temp_dir("png");
    for (name, chart) in [("util", utilisation_chart()), ("cdf", cdf_chart()), ("ratio", allocation_ratio_chart())] {
        let path = dir.join("nested").join(format!("{name}.png"));
        if let Some(keep) = std::env::var_os("DROME_KEEP_CHARTS") {
            chart.render(PathBuf::from(keep).join(format!("{name}.png"))).unwrap();
        }
        chart.render(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{name}");
        assert!(bytes.len() > 10_000, "{name}: {} bytes", bytes.len());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn renders_svg() {
    let dir = temp_dir("svg");
    for (name, chart) in [("util", utilisation_chart()), ("cdf", cdf_chart()), ("ratio", allocation_ratio_chart())] {
        let path = dir.join(format!("{name}.SVG"));
        chart.render(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("<svg"), "{name}");
        assert!(text.len() > 5_000, "{name}: {} bytes", text.len());
    }
    // Titles, legends and formatted ticks are text in the SVG.
    let svg = utilisation_chart().to_svg().unwrap();
    assert!(svg.contains("valence: GPU allocation"));
    assert!(svg.contains("allocated") && svg.contains("queued jobs"));
    assert!(svg.contains("50%"), "percent ticks");
    assert!(svg.contains("5h 33m"), "duration ticks");
    // 2 x 200k points reduced to a few per pixel column (1000 px wide).
    assert!(svg.len() < 2_000_000, "{} bytes", svg.len());
    let cdf = cdf_chart().to_svg().unwrap();
    assert!(cdf.contains("fgd") && cdf.contains("best-fit"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_the_output() {
    let dir = temp_dir("errors");
    let e = cdf_chart().render(dir.join("chart.pdf")).unwrap_err();
    assert!(matches!(e, ReportError::UnsupportedFormat { .. }));
    assert!(e.to_string().contains("chart.pdf"), "{e}");

    let e = Chart::new("empty").render(dir.join("empty.png")).unwrap_err();
    assert!(matches!(e, ReportError::InvalidChart { .. }) && e.to_string().contains("empty.png"), "{e}");

    let bad = Chart::new("t").x_log().x_range(0.0, 10.0).panel(Panel::new("y"));
    let e = bad.render(dir.join("log.svg")).unwrap_err();
    assert!(e.to_string().contains("log.svg") && e.to_string().contains("log axis"), "{e}");

    // A file where a directory should be.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file"), "x").unwrap();
    let e = cdf_chart().render(dir.join("file").join("c.svg")).unwrap_err();
    assert!(matches!(e, ReportError::Io { .. }) && e.to_string().contains("c.svg"), "{e}");
    let e = cdf_chart().render(dir.join("file").join("c.png")).unwrap_err();
    assert!(e.to_string().contains("c.png"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn degenerate_data_still_renders() {
    let chart = Chart::new("")
        .panel(Panel::new("empty"))
        .panel(Panel::new("flat").series(Series::new("", vec![(1.0, 5.0), (1.0, 5.0)])))
        .panel(Panel::new("nan").y_log().series(Series::new("n", vec![(0.0, f64::NAN), (1.0, -1.0), (2.0, 3.0)])));
    let svg = chart.to_svg().unwrap();
    assert!(svg.contains("<svg"));
}
