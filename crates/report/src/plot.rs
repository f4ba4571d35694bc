//! Line charts: one or more panels stacked vertically over a shared x axis, to PNG or SVG.
//!
//! One shape covers what drome draws: allocation and utilisation over time above queue length
//! (two panels rather than two y axes, which are hard to read), job-completion-time CDFs per
//! policy (one panel, log x), and allocation ratio against arrived demand per policy.
//!
//! Text uses DejaVu Sans embedded in the binary, so charts render identically on headless
//! machines with no fonts installed. Series longer than the plot is wide are reduced per pixel
//! column (see [`downsample`]) so a 200k-point trace draws in milliseconds and looks the same.

use crate::error::ReportError;
use crate::format::{fmt_duration_s, fmt_pct};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// DejaVu Sans (Bitstream Vera licence, see `assets/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// The family every text style below asks for. Registering the embedded font under plotters'
/// default family name means axis labels need no explicit font, and SVG viewers fall back to
/// their own sans-serif face.
const FAMILY: &str = "sans-serif";

/// Registers the embedded font once per process; `Err` if the bytes do not parse (a build
/// problem, reported as a drawing error rather than a panic).
fn ensure_font() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| "the embedded DejaVu Sans font did not load".to_string())
    })
    .clone()
}

/// Tableau 10: distinguishable, and still distinguishable in greyscale print-outs.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A named line: `(x, y)` points drawn in order. Non-finite points (and, on a log axis,
/// non-positive ones) are skipped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points }
    }

    /// The empirical CDF of `values`: point `(v_i, i/n)` for the `i`-th smallest value, so the
    /// curve reaches 1 at the largest. Non-finite values are dropped.
    pub fn cdf(name: impl Into<String>, values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        Series::new(name, v.iter().enumerate().map(|(i, &x)| (x, (i + 1) as f64 / n)).collect())
    }

    /// The series as a step function: each value holds until the next point's x. Right for
    /// quantities that change at events, such as GPUs allocated or jobs queued, where a straight
    /// line between samples would invent values that never existed.
    pub fn steps(mut self) -> Self {
        let mut out = Vec::with_capacity(self.points.len() * 2);
        for (i, &(x, y)) in self.points.iter().enumerate() {
            if i > 0 {
                out.push((x, self.points[i - 1].1));
            }
            out.push((x, y));
        }
        self.points = out;
        self
    }
}

/// Linear or base-10 logarithmic axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    #[default]
    Linear,
    Log,
}

/// How tick labels are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AxisFormat {
    /// Plotters' default numeric labels.
    #[default]
    Number,
    /// Values are seconds, written as `1h 02m` (see [`fmt_duration_s`]).
    Duration,
    /// Values are fractions, written as `25.0%`.
    Percent,
}

/// Where a panel's legend sits, or no legend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Legend {
    UpperLeft,
    UpperRight,
    LowerLeft,
    /// The default: empty for rising curves such as CDFs and allocation ratios.
    #[default]
    LowerRight,
    None,
}

/// One plot area of a [`Chart`]: its own y axis and series, the chart's x axis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Panel {
    /// Drawn above the panel when not empty.
    pub title: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed y range; `None` fits the data with a little margin.
    pub y_range: Option<(f64, f64)>,
    pub y_scale: Scale,
    pub y_format: AxisFormat,
    pub legend: Legend,
}

impl Panel {
    pub fn new(y_label: impl Into<String>) -> Self {
        Panel { y_label: y_label.into(), ..Panel::default() }
    }

    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Fixes the y axis to `lo..hi`, e.g. `0..1` for utilisation so that runs compare at a glance.
    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    pub fn y_log(mut self) -> Self {
        self.y_scale = Scale::Log;
        self
    }

    pub fn y_format(mut self, format: AxisFormat) -> Self {
        self.y_format = format;
        self
    }

    pub fn legend(mut self, legend: Legend) -> Self {
        self.legend = legend;
        self
    }
}

/// A figure: a title, a shared x axis and one or more panels stacked top to bottom.
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    /// Fixed x range; `None` spans all panels' data.
    pub x_range: Option<(f64, f64)>,
    pub x_scale: Scale,
    pub x_format: AxisFormat,
    pub panels: Vec<Panel>,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels; `None` gives each panel 320 pixels.
    pub height: Option<u32>,
}

/// Chart output formats, chosen by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format `path`'s extension names (case-insensitive), if any.
    pub fn from_path(path: &Path) -> Option<ImageFormat> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(ImageFormat::Png),
            "svg" => Some(ImageFormat::Svg),
            _ => None,
        }
    }
}

/// Where an SVG rendered to memory is said to be in error messages.
const IN_MEMORY: &str = "<svg in memory>";

impl Chart {
    pub fn new(title: impl Into<String>) -> Self {
        Chart {
            title: title.into(),
            x_label: String::new(),
            x_range: None,
            x_scale: Scale::Linear,
            x_format: AxisFormat::Number,
            panels: Vec::new(),
            width: 1000,
            height: None,
        }
    }

    pub fn x_label(mut self, label: impl Into<String>) -> Self {
        self.x_label = label.into();
        self
    }

    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    pub fn x_log(mut self) -> Self {
        self.x_scale = Scale::Log;
        self
    }

    pub fn x_format(mut self, format: AxisFormat) -> Self {
        self.x_format = format;
        self
    }

    pub fn panel(mut self, panel: Panel) -> Self {
        self.panels.push(panel);
        self
    }

    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = Some(height);
        self
    }

    fn dimensions(&self) -> (u32, u32) {
        let panels = self.panels.len().max(1) as u32;
        (self.width.max(100), self.height.unwrap_or(60 + 320 * panels).max(100))
    }

    /// Renders to `path`, as PNG or SVG according to its extension. Parent directories are
    /// created.
    pub fn render(&self, path: impl AsRef<Path>) -> Result<(), ReportError> {
        let path = path.as_ref();
        let format =
            ImageFormat::from_path(path).ok_or_else(|| ReportError::UnsupportedFormat { path: path.to_path_buf() })?;
        self.validate(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: path.to_path_buf(), source })?;
        }
        match format {
            ImageFormat::Svg => {
                let svg = self.to_svg_for(path)?;
                std::fs::write(path, svg).map_err(|source| ReportError::Io { path: path.to_path_buf(), source })
            }
            ImageFormat::Png => {
                let root = BitMapBackend::new(path, self.dimensions()).into_drawing_area();
                self.draw(root, ImageFormat::Png)
                    .map_err(|message| ReportError::Draw { path: path.to_path_buf(), message })
            }
        }
    }

    /// Renders to an SVG document in memory, for embedding in HTML reports.
    pub fn to_svg(&self) -> Result<String, ReportError> {
        let path = PathBuf::from(IN_MEMORY);
        self.validate(&path)?;
        self.to_svg_for(&path)
    }

    fn to_svg_for(&self, path: &Path) -> Result<String, ReportError> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.dimensions()).into_drawing_area();
            self.draw(root, ImageFormat::Svg)
                .map_err(|message| ReportError::Draw { path: path.to_path_buf(), message })?;
        }
        Ok(svg)
    }

    fn validate(&self, path: &Path) -> Result<(), ReportError> {
        let invalid = |message: String| Err(ReportError::InvalidChart { path: path.to_path_buf(), message });
        if self.panels.is_empty() {
            return invalid("a chart needs at least one panel".into());
        }
        let check = |what: &str, r: Option<(f64, f64)>, scale: Scale| match r {
            Some((lo, hi)) if !(lo.is_finite() && hi.is_finite() && lo < hi) => {
                Err(format!("{what} range {lo}..{hi} must be finite and increasing"))
            }
            Some((lo, _)) if scale == Scale::Log && lo <= 0.0 => {
                Err(format!("{what} range starts at {lo}, not positive on a log axis"))
            }
            _ => Ok(()),
        };
        if let Err(m) = check("x", self.x_range, self.x_scale) {
            return invalid(m);
        }
        for (i, p) in self.panels.iter().enumerate() {
            if let Err(m) = check(&format!("panel {} y", i + 1), p.y_range, p.y_scale) {
                return invalid(m);
            }
        }
        Ok(())
    }

    fn draw<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>, format: ImageFormat) -> Result<(), String> {
        ensure_font()?;
        root.fill(&WHITE).map_err(to_msg)?;
        let body = if self.title.is_empty() {
            root.clone()
        } else {
            root.titled(&self.title, (FAMILY, 22)).map_err(to_msg)?
        };
        let x_range = self.x_range.unwrap_or_else(|| {
            let pts = self.panels.iter().flat_map(|p| &p.series).flat_map(|s| &s.points).map(|&(x, _)| x);
            fit_range(pts, self.x_scale, 0.0)
        });
        let areas = body.split_evenly((self.panels.len(), 1));
        let buckets = self.dimensions().0 as usize;
        for (i, (panel, area)) in self.panels.iter().zip(&areas).enumerate() {
            let series: Vec<(&str, Vec<(f64, f64)>)> = panel
                .series
                .iter()
                .map(|s| {
                    (
                        s.name.as_str(),
                        downsample(&visible(&s.points, self.x_scale, panel.y_scale), buckets, self.x_scale),
                    )
                })
                .collect();
            let y_range = panel.y_range.unwrap_or_else(|| {
                let ys = series.iter().flat_map(|(_, p)| p).map(|&(_, y)| y);
                fit_range(ys, panel.y_scale, 0.05)
            });
            let ctx = PanelCtx {
                chart: self,
                panel,
                series,
                last: i + 1 == self.panels.len(),
                segmented: format == ImageFormat::Png,
            };
            let (x, y) = (x_range.0..x_range.1, y_range.0..y_range.1);
            match (self.x_scale, panel.y_scale) {
                (Scale::Linear, Scale::Linear) => draw_panel(area, x, y, &ctx),
                (Scale::Linear, Scale::Log) => draw_panel(area, x, y.log_scale(), &ctx),
                (Scale::Log, Scale::Linear) => draw_panel(area, x.log_scale(), y, &ctx),
                (Scale::Log, Scale::Log) => draw_panel(area, x.log_scale(), y.log_scale(), &ctx),
            }?;
        }
        root.present().map_err(to_msg)
    }
}

fn to_msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}

struct PanelCtx<'a> {
    chart: &'a Chart,
    panel: &'a Panel,
    series: Vec<(&'a str, Vec<(f64, f64)>)>,
    last: bool,
    /// Draw lines segment by segment. Plotters' bitmap rasteriser joins wide strokes with miters
    /// that shoot far past the line at sharp reversals (every pixel column of a noisy, downsampled
    /// series); separate segments have no joins. SVG leaves joins to the viewer and needs none.
    segmented: bool,
}

fn label_fn(format: AxisFormat) -> fn(&f64) -> String {
    match format {
        AxisFormat::Number => |v| {
            // Trim plotters-style float noise ("0.30000000000000004") without losing small ticks.
            let s = format!("{v:.6}");
            let s = s.trim_end_matches('0').trim_end_matches('.');
            if s == "-0" { "0".to_string() } else { s.to_string() }
        },
        AxisFormat::Duration => |v| fmt_duration_s(*v),
        AxisFormat::Percent => |v| {
            let s = fmt_pct(*v);
            s.strip_suffix(".0%").map(|s| format!("{s}%")).unwrap_or(s)
        },
    }
}

fn draw_panel<DB, X, Y>(area: &DrawingArea<DB, Shift>, x: X, y: Y, ctx: &PanelCtx<'_>) -> Result<(), String>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut builder = ChartBuilder::on(area);
    builder.margin(12).margin_right(28).x_label_area_size(if ctx.last { 48 } else { 24 }).y_label_area_size(80);
    if !ctx.panel.title.is_empty() {
        builder.caption(&ctx.panel.title, (FAMILY, 16));
    }
    let mut chart = builder.build_cartesian_2d(x, y).map_err(to_msg)?;
    let x_fmt = label_fn(ctx.chart.x_format);
    let y_fmt = label_fn(ctx.panel.y_format);
    let mut mesh = chart.configure_mesh();
    mesh.x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .y_desc(ctx.panel.y_label.as_str())
        .label_style((FAMILY, 13))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(0, 0, 0).mix(0.04));
    // Only the bottom panel names the shared x axis.
    if ctx.last {
        mesh.x_desc(ctx.chart.x_label.as_str());
    }
    mesh.draw().map_err(to_msg)?;

    // Plotters does not clip lines to the plot area, and zero-length segments in wide strokes
    // divide by zero, so points are clipped to the axes' ranges here and consecutive points
    // landing on the same pixel merged.
    let (x_range, y_range) = (chart.x_range(), chart.y_range());
    let (xs, ys) = (ctx.chart.x_scale, ctx.panel.y_scale);
    let mut labelled = false;
    for (i, (name, points)) in ctx.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = color.stroke_width(2);
        let mut runs = clip_polyline(points, (x_range.start, x_range.end), (y_range.start, y_range.end), xs, ys);
        for run in &mut runs {
            let mut last = None;
            run.retain(|p| {
                let px = chart.backend_coord(p);
                let keep = last != Some(px);
                last = Some(px);
                keep
            });
        }
        if runs.is_empty() {
            runs.push(Vec::new()); // still gets a legend entry
        }
        for (r, run) in runs.iter().enumerate() {
            let drawn = if ctx.segmented {
                chart.draw_series(run.windows(2).map(|w| PathElement::new(vec![w[0], w[1]], style)))
            } else {
                chart.draw_series(LineSeries::new(run.iter().copied(), style))
            }
            .map_err(to_msg)?;
            if r == 0 && !name.is_empty() {
                labelled = true;
                drawn.label(*name).legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
            }
        }
    }
    let position = match ctx.panel.legend {
        Legend::UpperLeft => SeriesLabelPosition::UpperLeft,
        Legend::UpperRight => SeriesLabelPosition::UpperRight,
        Legend::LowerLeft => SeriesLabelPosition::LowerLeft,
        Legend::LowerRight => SeriesLabelPosition::LowerRight,
        Legend::None => return Ok(()),
    };
    if labelled {
        chart
            .configure_series_labels()
            .position(position)
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(0, 0, 0).mix(0.3))
            .draw()
            .map_err(to_msg)?;
    }
    Ok(())
}

/// Clips a polyline to the rectangle `x_range` x `y_range`, working in each axis's scale (log
/// axes in log space, where lines are straight on screen). Returns the visible runs; a line
/// that leaves and re-enters the rectangle gives two runs.
fn clip_polyline(
    points: &[(f64, f64)],
    x_range: (f64, f64),
    y_range: (f64, f64),
    x_scale: Scale,
    y_scale: Scale,
) -> Vec<Vec<(f64, f64)>> {
    let fwd = |v: f64, s: Scale| if s == Scale::Log { v.ln() } else { v };
    let back = |v: f64, s: Scale| if s == Scale::Log { v.exp() } else { v };
    let (x0, x1) = (fwd(x_range.0.min(x_range.1), x_scale), fwd(x_range.0.max(x_range.1), x_scale));
    let (y0, y1) = (fwd(y_range.0.min(y_range.1), y_scale), fwd(y_range.0.max(y_range.1), y_scale));
    let inside = |p: (f64, f64)| {
        let (x, y) = (fwd(p.0, x_scale), fwd(p.1, y_scale));
        x0 <= x && x <= x1 && y0 <= y && y <= y1
    };
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    if points.len() == 1 && inside(points[0]) {
        return vec![points.to_vec()];
    }
    for w in points.windows(2) {
        let (a, b) = ((fwd(w[0].0, x_scale), fwd(w[0].1, y_scale)), (fwd(w[1].0, x_scale), fwd(w[1].1, y_scale)));
        // Liang-Barsky: the segment is a + t (b - a), t in [0, 1].
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        let mut visible = true;
        for (p, q) in [(-dx, a.0 - x0), (dx, x1 - a.0), (-dy, a.1 - y0), (dy, y1 - a.1)] {
            if p == 0.0 {
                if q < 0.0 {
                    visible = false;
                    break;
                }
            } else {
                let r = q / p;
                if p < 0.0 {
                    t0 = t0.max(r);
                } else {
                    t1 = t1.min(r);
                }
            }
        }
        if !visible || t0 > t1 {
            if !current.is_empty() {
                runs.push(std::mem::take(&mut current));
            }
            continue;
        }
        let at = |t: f64| {
            if t == 0.0 {
                w[0]
            } else if t == 1.0 {
                w[1]
            } else {
                (back(a.0 + t * dx, x_scale), back(a.1 + t * dy, y_scale))
            }
        };
        if t0 > 0.0 && !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current.push(at(t0));
        }
        current.push(at(t1));
        if t1 < 1.0 {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// The points a panel can show: finite, and positive on log axes.
fn visible(points: &[(f64, f64)], x_scale: Scale, y_scale: Scale) -> Vec<(f64, f64)> {
    let ok = |v: f64, s: Scale| v.is_finite() && (s == Scale::Linear || v > 0.0);
    points.iter().copied().filter(|&(x, y)| ok(x, x_scale) && ok(y, y_scale)).collect()
}

/// A range covering `values` with `pad` of its span added each side (linear) or a factor
/// (log). Degenerate data (no values, or all equal) gets a unit-wide range around it.
fn fit_range(values: impl Iterator<Item = f64>, scale: Scale, pad: f64) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in values.filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    match scale {
        Scale::Linear => {
            if lo > hi {
                return (0.0, 1.0);
            }
            if lo == hi {
                let half = if lo == 0.0 { 0.5 } else { lo.abs() * 0.5 };
                return (lo - half, hi + half);
            }
            let span = hi - lo;
            (lo - span * pad, hi + span * pad)
        }
        Scale::Log => {
            if lo > hi {
                return (1.0, 10.0);
            }
            if lo == hi {
                return (lo / 10f64.sqrt(), hi * 10f64.sqrt());
            }
            let f = (hi / lo).powf(pad);
            (lo / f, hi * f)
        }
    }
}

/// Reduces a series to at most about four points per bucket (pixel column) while keeping what
/// a line chart at that width shows: each bucket's first, lowest, highest and last point, in
/// their original order. Spikes survive, which plain striding would drop.
///
/// Buckets split the x span evenly in `scale`'s space. Series shorter than `4 * buckets`, and
/// series whose x values are not sorted (their drawing order carries meaning), are returned
/// unchanged.
pub fn downsample(points: &[(f64, f64)], buckets: usize, scale: Scale) -> Vec<(f64, f64)> {
    let buckets = buckets.max(1);
    if points.len() <= 4 * buckets || !points.windows(2).all(|w| w[0].0 <= w[1].0) {
        return points.to_vec();
    }
    let t = |x: f64| if scale == Scale::Log { x.ln() } else { x };
    let (x0, x1) = (t(points[0].0), t(points[points.len() - 1].0));
    let width = x1 - x0;
    if !(width.is_finite() && width > 0.0) {
        return points.to_vec();
    }
    let bucket_of = |x: f64| (((t(x) - x0) / width * buckets as f64) as usize).min(buckets - 1);

    let mut out = Vec::with_capacity(4 * buckets);
    let mut start = 0;
    while start < points.len() {
        let b = bucket_of(points[start].0);
        let mut end = start + 1;
        while end < points.len() && bucket_of(points[end].0) == b {
            end += 1;
        }
        let chunk = &points[start..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        let mut keep = [0, lo, hi, chunk.len() - 1];
        keep.sort_unstable();
        let mut last = None;
        for k in keep {
            if last != Some(k) {
                out.push(chunk[k]);
                last = Some(k);
            }
        }
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsample_keeps_extremes_and_ends() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        pts[54_321].1 = 1000.0;
        pts[77_777].1 = -1000.0;
        let d = downsample(&pts, 500, Scale::Linear);
        assert!(d.len() <= 2000, "{}", d.len());
        assert_eq!(d.first(), pts.first());
        assert_eq!(d.last(), pts.last());
        assert!(d.contains(&(54_321.0, 1000.0)));
        assert!(d.contains(&(77_777.0, -1000.0)));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0), "order is kept");
    }

    #[test]
    fn downsample_leaves_short_and_unsorted_series_alone() {
        let short: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 0.0)).collect();
        assert_eq!(downsample(&short, 3, Scale::Linear), short);
        let unsorted: Vec<(f64, f64)> = (0..1000).map(|i| (((i * 37) % 1000) as f64, 0.0)).collect();
        assert_eq!(downsample(&unsorted, 10, Scale::Linear), unsorted);
    }

    #[test]
    fn downsample_log_buckets_are_even_in_log_space() {
        let pts: Vec<(f64, f64)> = (1..=100_000).map(|i| (i as f64, i as f64)).collect();
        let d = downsample(&pts, 5, Scale::Log);
        // Five decades of x, one bucket each: the first bucket is x in [1, 10).
        assert!(d.len() <= 20);
        assert_eq!(d[0], (1.0, 1.0));
        assert!(d.contains(&(9.0, 9.0)) || d.contains(&(10.0, 10.0)));
    }

    #[test]
    fn clipping_splits_runs_at_the_edges() {
        let pts = [(0.0, 0.5), (1.0, 2.0), (2.0, 0.5), (3.0, 0.5)];
        let runs = clip_polyline(&pts, (0.0, 3.0), (0.0, 1.0), Scale::Linear, Scale::Linear);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0][0], (0.0, 0.5));
        let exit = runs[0][1];
        assert!((exit.0 - 1.0 / 3.0).abs() < 1e-12 && exit.1 == 1.0, "{exit:?}");
        assert_eq!(*runs[1].last().unwrap(), (3.0, 0.5));
        assert_eq!(runs[1].len(), 3);
        // Entirely outside: nothing; entirely inside: unchanged.
        assert!(
            clip_polyline(&[(0.0, 5.0), (1.0, 6.0)], (0.0, 1.0), (0.0, 1.0), Scale::Linear, Scale::Linear).is_empty()
        );
        let inside = [(1.0, 1.0), (10.0, 10.0), (100.0, 1.0)];
        assert_eq!(clip_polyline(&inside, (1.0, 100.0), (1.0, 10.0), Scale::Log, Scale::Log), vec![inside.to_vec()]);
    }

    #[test]
    fn cdf_and_steps() {
        let s = Series::cdf("x", &[3.0, f64::NAN, 1.0, 2.0, 2.0]);
        assert_eq!(s.points, vec![(1.0, 0.25), (2.0, 0.5), (2.0, 0.75), (3.0, 1.0)]);
        let s = Series::new("q", vec![(0.0, 1.0), (2.0, 3.0), (5.0, 0.0)]).steps();
        assert_eq!(s.points, vec![(0.0, 1.0), (2.0, 1.0), (2.0, 3.0), (5.0, 3.0), (5.0, 0.0)]);
    }

    #[test]
    fn ranges_fit_data() {
        assert_eq!(fit_range([0.0, 10.0].into_iter(), Scale::Linear, 0.05), (-0.5, 10.5));
        assert_eq!(fit_range([2.0].into_iter(), Scale::Linear, 0.05), (1.0, 3.0));
        assert_eq!(fit_range(std::iter::empty(), Scale::Log, 0.05), (1.0, 10.0));
        let (lo, hi) = fit_range([-1.0, 1.0, 100.0].into_iter(), Scale::Log, 0.0);
        assert_eq!((lo, hi), (1.0, 100.0));
    }

    #[test]
    fn formats_from_extension() {
        assert_eq!(ImageFormat::from_path(Path::new("a/b.PNG")), Some(ImageFormat::Png));
        assert_eq!(ImageFormat::from_path(Path::new("b.svg")), Some(ImageFormat::Svg));
        assert_eq!(ImageFormat::from_path(Path::new("b.pdf")), None);
        assert_eq!(ImageFormat::from_path(Path::new("b")), None);
    }
}
