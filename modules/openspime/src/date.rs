//! Dates (wire profile §6): RFC 3339 with a numeric offset on output; `Z`, fractional
//! seconds and pyopenspime's broken west-of-UTC offsets (`--5:00` = −05:00, `--4:30` =
//! −03:30: it floored the hours) on input.

use openspimed_stanza::datetime::{self, civil_from_days, days_from_civil};

use crate::error::OpenSpimeError;

/// Seconds since the Unix epoch of an OpenSpime date.
pub fn parse(s: &str) -> Result<i64, OpenSpimeError> {
    let bad = || OpenSpimeError::Malformed(format!("not an OpenSpime date: {s:?}"));
    let s = s.trim();
    let (date, rest) = s.split_once('T').ok_or_else(bad)?;
    let mut d = date.split('-');
    let year: i64 = d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let month: u32 = d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let day: u32 = d.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(bad());
    }
    if rest.len() < 8 {
        return Err(bad());
    }
    let (time, zone) = rest.split_at(8);
    let mut t = time.split(':');
    let h: i64 = t.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let m: i64 = t.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let sec: i64 = t.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    if h > 23 || m > 59 || sec > 60 {
        return Err(bad());
    }
    // Fractional seconds are accepted and dropped.
    let zone = match zone.strip_prefix('.') {
        Some(frac) => {
            let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            &frac[digits..]
        }
        None => zone,
    };
    let offset = if zone == "Z" || zone == "z" {
        0
    } else if let Some(broken) = zone.strip_prefix("--") {
        // pyopenspime: "--H:MM" means -H hours + MM minutes.
        let (hh, mm) = broken.split_once(':').ok_or_else(bad)?;
        let hh: i64 = hh.parse().map_err(|_| bad())?;
        let mm: i64 = mm.parse().map_err(|_| bad())?;
        -hh * 3600 + mm * 60
    } else {
        let sign = match zone.as_bytes().first() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return Err(bad()),
        };
        let (hh, mm) = zone[1..].split_once(':').ok_or_else(bad)?;
        if hh.len() != 2 || mm.len() != 2 {
            return Err(bad());
        }
        let hh: i64 = hh.parse().map_err(|_| bad())?;
        let mm: i64 = mm.parse().map_err(|_| bad())?;
        sign * (hh * 3600 + mm * 60)
    };
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400 + h * 3600 + m * 60 + sec - offset)
}

/// Formats seconds since the epoch as RFC 3339 with the given offset in minutes.
pub fn format(unix: i64, offset_minutes: i32) -> String {
    let local = unix + i64::from(offset_minutes) * 60;
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let off = offset_minutes.unsigned_abs();
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        off / 60,
        off % 60
    )
}

/// Now, as seconds since the epoch.
pub fn now() -> i64 {
    datetime::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_fractions_and_the_broken_west_offsets() {
        let utc = parse("2008-10-09T10:02:22+00:00").unwrap();
        assert_eq!(utc, 1_223_546_542);
        assert_eq!(parse("2008-10-09T10:02:22Z").unwrap(), utc);
        assert_eq!(parse("2008-10-09T10:02:22.123456Z").unwrap(), utc);
        assert_eq!(parse("2008-10-09T11:02:22+01:00").unwrap(), utc);
        assert_eq!(parse("2008-10-09T05:02:22-05:00").unwrap(), utc);
        // pyopenspime wrote UTC-05:00 as "--5:00" and UTC-03:30 as "--4:30".
        assert_eq!(parse("2008-10-09T05:02:22--5:00").unwrap(), utc);
        assert_eq!(parse("2008-10-09T06:32:22--4:30").unwrap(), utc);
        for bad in [
            "",
            "2008-10-09",
            "2008-13-09T10:02:22Z",
            "2008-10-09T10:02:22",
            "x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn format_round_trips() {
        let t = parse("2008-04-02T17:54:22+01:00").unwrap();
        assert_eq!(format(t, 60), "2008-04-02T17:54:22+01:00");
        assert_eq!(format(t, -330), "2008-04-02T11:24:22-05:30");
        assert_eq!(parse(&format(t, -330)).unwrap(), t);
        assert_eq!(format(0, 0), "1970-01-01T00:00:00+00:00");
    }
}
