//! XEP-0082 date-times (`CCYY-MM-DDThh:mm:ss[.sss]TZD`) from seconds since the Unix epoch:
//! delayed delivery stamps (XEP-0203), and the calendar arithmetic protocols on top of XMPP
//! (OpenSpime's dates) share.

/// Now, as seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `unix` as a XEP-0082 DateTime in UTC, `Z` as the zone (the form XEP-0203 uses).
pub fn format_utc(unix: i64) -> String {
    let (y, mo, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Now, as milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `ms` milliseconds since the epoch as a XEP-0082 DateTime in UTC with milliseconds
/// (`2010-07-10T23:08:25.123Z`): the stamps of archived messages (XEP-0203 allows the
/// fraction), precise enough for a client to ask for what came after one.
pub fn format_utc_ms(ms: i64) -> String {
    let secs = format_utc(ms.div_euclid(1000));
    format!("{}.{:03}Z", &secs[..secs.len() - 1], ms.rem_euclid(1000))
}

/// Milliseconds since the epoch of a XEP-0082 DateTime (`CCYY-MM-DDThh:mm:ss[.sss]TZD`,
/// the zone `Z` or `±hh:mm`); fractions beyond milliseconds are cut. `None` for anything
/// else: what a MAM query's `start` and `end` or a MUC `since` must be.
pub fn parse_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (h, mi, sec) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0;
    if sep(i, b'.') {
        let start = i + 1;
        let n = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let kept = n.min(3);
        frac_ms = digits(start..start + kept)? * 10_i64.pow(3 - kept as u32);
        i = start + n;
    }
    let offset = match b.get(i..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (digits(i + 1..i + 3)?, digits(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset) * 1000 + frac_ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days-from-civil
/// algorithm, public domain).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month, day) `z` days after 1970-01-01; the inverse of
/// [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamps_and_the_calendar_both_ways() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_058_306_465), "2003-07-15T22:01:05Z");
        assert_eq!(format_utc(-14_159_025), "1969-07-21T02:56:15Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59Z");
        for days in [-719_468, -1, 0, 59, 60, 11_016, 20_794, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn xep_0082_date_times_parse_and_format_with_milliseconds() {
        assert_eq!(parse_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_ms("2003-07-15T22:01:05Z"), Some(1_058_306_465_000));
        assert_eq!(parse_ms("2003-07-15T22:01:05.5Z"), Some(1_058_306_465_500));
        assert_eq!(
            parse_ms("2003-07-15T22:01:05.123456Z"),
            Some(1_058_306_465_123)
        );
        assert_eq!(
            parse_ms("2003-07-16T00:01:05+02:00"),
            Some(1_058_306_465_000)
        );
        assert_eq!(
            parse_ms("2003-07-15T17:01:05-05:00"),
            Some(1_058_306_465_000)
        );
        for bad in [
            "",
            "2003-07-15",
            "2003-07-15T22:01:05",
            "2003-07-15T22:01:05.Z",
            "2003-13-15T22:01:05Z",
            "2003-07-15T22:01:05+0200",
            "2003-07-15 22:01:05Z",
            "２００３-07-15T22:01:05Z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
        assert_eq!(format_utc_ms(1_058_306_465_007), "2003-07-15T22:01:05.007Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
        let now = now_ms();
        assert_eq!(parse_ms(&format_utc_ms(now)), Some(now));
    }
}
