//! Calendar timestamps (`YYYY-MM-DD HH:MM:SS`) as found in job histories, without a date library:
//! the importers only need them as a monotone count of milliseconds, which is then rebased so that
//! the trace starts at zero.

/// Milliseconds since 1970-01-01 00:00:00 of a `YYYY-MM-DD HH:MM:SS[.fff]` time (a `T` may
/// separate date and time); `None` if `s` is not such a time. Time zones are not interpreted: a
/// trace's times are taken to be in one zone, and only their differences matter.
pub fn parse_datetime_millis(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 || !s.is_ascii() {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = &b[range];
        if part.iter().all(u8::is_ascii_digit) {
            Some(part.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0')))
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || !(b[10] == b' ' || b[10] == b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let millis = match &b[19..] {
        [] => 0,
        [b'.', frac @ ..] if !frac.is_empty() && frac.len() <= 9 && frac.iter().all(u8::is_ascii_digit) => {
            let mut digits = [b'0'; 3];
            for (d, f) in digits.iter_mut().zip(frac) {
                *d = *f;
            }
            digits.iter().fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'))
        }
        _ => return None,
    };
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

fn is_leap(year: u64) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date with `year >= 1970` (H. Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calendar_times() {
        assert_eq!(parse_datetime_millis("1970-01-01 00:00:00"), Some(0));
        assert_eq!(parse_datetime_millis("1970-01-02 00:00:01"), Some(86_401_000));
        // 2017-09-04 10:30:41 UTC = 1504521041 s.
        assert_eq!(parse_datetime_millis("2017-09-04 10:30:41"), Some(1_504_521_041_000));
        assert_eq!(parse_datetime_millis("2017-09-04T10:30:41.25"), Some(1_504_521_041_250));
        assert_eq!(parse_datetime_millis("2000-02-29 00:00:00"), Some(951_782_400_000));
    }

    #[test]
    fn rejects_non_times() {
        for bad in [
            "",
            "2017-09-04",
            "2017-13-01 00:00:00",
            "2017-02-29 00:00:00",
            "2017-09-04 24:00:00",
            "2017-09-04 10:60:00",
            "1969-12-31 23:59:59",
            "2017-09-04 10:30:41x",
            "2017-09-04 10:30:41.",
            "2017/09/04 10:30:41",
            "２017-09-04 10:30:41",
        ] {
            assert_eq!(parse_datetime_millis(bad), None, "{bad}");
        }
    }
}
