//! Human-readable numbers. Tables and chart axes use these so that a duration or a power reads
//! the same everywhere in drome's output. Non-finite inputs print as `n/a` rather than panic or
//! print `NaN`, since metrics of an empty run are routinely undefined.

/// A duration in seconds at the precision a person wants at that scale: `0s`, `350ms`, `4.2s`, `42s`,
/// `3m 05s`, `1h 02m`, `2d 03h`. Each form is rounded to its smallest unit, so `3599.6` reads
/// `1h 00m`, never `60m 00s`.
pub fn fmt_duration_s(secs: f64) -> String {
    if secs.is_nan() {
        return "n/a".to_string();
    }
    if secs < 0.0 {
        return format!("-{}", fmt_duration_s(-secs));
    }
    if secs.is_infinite() {
        return "inf".to_string();
    }
    if secs == 0.0 {
        return "0s".to_string();
    }
    if secs < 1.0 {
        let ms = (secs * 1000.0).round();
        if ms < 1000.0 {
            return format!("{ms:.0}ms");
        }
    }
    if secs < 10.0 {
        let tenths = (secs * 10.0).round();
        if tenths < 100.0 {
            return format!("{:.1}s", tenths / 10.0);
        }
    }
    let total_s = secs.round();
    if total_s < 60.0 {
        return format!("{total_s:.0}s");
    }
    if total_s < 3600.0 {
        let total_s = total_s as u64;
        return format!("{}m {:02}s", total_s / 60, total_s % 60);
    }
    let total_m = (secs / 60.0).round();
    if total_m < 24.0 * 60.0 {
        let total_m = total_m as u64;
        return format!("{}h {:02}m", total_m / 60, total_m % 60);
    }
    let total_h = (secs / 3600.0).round();
    if total_h >= u64::MAX as f64 {
        return "inf".to_string();
    }
    let total_h = total_h as u64;
    format!("{}d {:02}h", total_h / 24, total_h % 24)
}

/// A fraction as a percentage with one decimal: `0.1234` -> `12.3%`.
pub fn fmt_pct(fraction: f64) -> String {
    if fraction.is_finite() { format!("{:.1}%", fraction * 100.0) } else { "n/a".to_string() }
}

/// An integer with thousands separators: `4096` -> `4,096`, `-1234567` -> `-1,234,567`.
pub fn fmt_thousands(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let sign = if n < 0 { "-" } else { "" };
    format!("{sign}{}", group_digits(&n.unsigned_abs().to_string()))
}

/// A number with `decimals` decimals and thousands separators: `12345.678, 1` -> `12,345.7`.
pub fn fmt_num(x: f64, decimals: usize) -> String {
    if !x.is_finite() {
        return "n/a".to_string();
    }
    let s = format!("{:.*}", decimals, x.abs());
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s.as_str(), None),
    };
    // "-0.0" is not a number anyone wants to read.
    let negative = x < 0.0 && s.bytes().any(|b| b.is_ascii_digit() && b != b'0');
    let sign = if negative { "-" } else { "" };
    match frac {
        Some(f) => format!("{sign}{}.{f}", group_digits(int)),
        None => format!("{sign}{}", group_digits(int)),
    }
}

/// A value with an SI prefix and three significant digits: `5.2224e6, "W"` -> `5.22 MW`,
/// `40800.0, "W"` -> `40.8 kW`, `0.0042, "s"` -> `4.20 ms`. Powers of fleets span watts to
/// megawatts; this keeps them readable in one column.
pub fn fmt_si(value: f64, unit: &str) -> String {
    if !value.is_finite() {
        return "n/a".to_string();
    }
    if value == 0.0 {
        return format!("0 {unit}");
    }
    const PREFIXES: [(i32, &str); 9] =
        [(-9, "n"), (-6, "µ"), (-3, "m"), (0, ""), (3, "k"), (6, "M"), (9, "G"), (12, "T"), (15, "P")];
    let exp = value.abs().log10().floor() as i32;
    let mut idx = PREFIXES.iter().rposition(|&(e, _)| e <= exp).unwrap_or(0);
    let mut scaled = value / 10f64.powi(PREFIXES[idx].0);
    // Rounding to three significant digits can carry into the next prefix (999.7 W -> 1.00 kW).
    if format!("{:.0}", scaled.abs()).len() > 3 && idx + 1 < PREFIXES.len() {
        idx += 1;
        scaled = value / 10f64.powi(PREFIXES[idx].0);
    }
    let decimals = match scaled.abs() {
        a if a >= 99.95 => 0,
        a if a >= 9.995 => 1,
        _ => 2,
    };
    format!("{scaled:.decimals$} {}{unit}", PREFIXES[idx].1)
}

fn group_digits(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_at_every_scale() {
        let cases = [
            (0.0, "0s"),
            (0.0004, "0ms"),
            (0.35, "350ms"),
            (0.9996, "1.0s"),
            (4.24, "4.2s"),
            (9.96, "10s"),
            (42.4, "42s"),
            (59.6, "1m 00s"),
            (185.0, "3m 05s"),
            (3599.6, "1h 00m"),
            (3725.0, "1h 02m"),
            (86_399.0, "1d 00h"),
            (183_600.0, "2d 03h"),
            (-90.0, "-1m 30s"),
            (f64::NAN, "n/a"),
            (f64::INFINITY, "inf"),
        ];
        for (secs, want) in cases {
            assert_eq!(fmt_duration_s(secs), want, "{secs}");
        }
    }

    #[test]
    fn percentages() {
        assert_eq!(fmt_pct(0.1234), "12.3%");
        assert_eq!(fmt_pct(1.0), "100.0%");
        assert_eq!(fmt_pct(0.0), "0.0%");
        assert_eq!(fmt_pct(f64::NAN), "n/a");
    }

    #[test]
    fn thousands() {
        assert_eq!(fmt_thousands(0u8), "0");
        assert_eq!(fmt_thousands(999u32), "999");
        assert_eq!(fmt_thousands(4096u64), "4,096");
        assert_eq!(fmt_thousands(-1_234_567i64), "-1,234,567");
        assert_eq!(fmt_thousands(u64::MAX), "18,446,744,073,709,551,615");
        assert_eq!(fmt_num(12_345.678, 1), "12,345.7");
        assert_eq!(fmt_num(-1_000_000.0, 0), "-1,000,000");
        assert_eq!(fmt_num(-0.01, 1), "0.0");
        assert_eq!(fmt_num(999.96, 1), "1,000.0");
    }

    #[test]
    fn si_prefixes() {
        assert_eq!(fmt_si(5.2224e6, "W"), "5.22 MW");
        assert_eq!(fmt_si(40_800.0, "W"), "40.8 kW");
        assert_eq!(fmt_si(700.0, "W"), "700 W");
        assert_eq!(fmt_si(999.7, "W"), "1.00 kW");
        assert_eq!(fmt_si(0.0042, "s"), "4.20 ms");
        assert_eq!(fmt_si(-2.5e3, "W"), "-2.50 kW");
        assert_eq!(fmt_si(0.0, "W"), "0 W");
    }
}
