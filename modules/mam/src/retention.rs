//! Expiry of old messages (`expires_after`): a sweep at start and then every so often, as
//! Prosody's `archive_cleanup_interval` (4 hours) runs, sooner for short lifetimes.

use std::sync::Weak;
use std::time::Duration;

use crate::hooks::Mam;

/// The longest wait between sweeps.
const MAX_INTERVAL: Duration = Duration::from_secs(4 * 3600);

/// `expires_after` read: `None` for `never`.
pub fn parse(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "never" {
        return Ok(None);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("{s:?} is not \"never\" or a number with d, w, m or y"))?;
    let unit = match s[digits..].trim() {
        "" => 1,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "m" => 31 * 86_400,
        "y" => 365 * 86_400 + 86_400 / 4,
        other => return Err(format!("unknown unit {other:?}: use d, w, m or y")),
    };
    if n == 0 {
        return Err("0 would delete every message at once; use \"never\" to keep them".into());
    }
    Ok(Some(Duration::from_secs(n.saturating_mul(unit))))
}

/// Sweeps `mam`'s archive of what is older than `expiry` until the module is gone.
pub fn spawn(mam: Weak<Mam>, expiry: Duration) {
    let interval = (expiry / 4).clamp(Duration::from_secs(1), MAX_INTERVAL);
    tokio::spawn(async move {
        loop {
            let Some(m) = mam.upgrade() else { return };
            let cut = openspimed_module_api::datetime::now_ms() - expiry.as_millis() as i64;
            match m.archive.expire(cut).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired archived messages"),
                Err(e) => tracing::warn!(error = %e, "archive expiry failed; tried again later"),
            }
            drop(m);
            tokio::time::sleep(interval).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_prosody_reads_them() {
        assert_eq!(parse("never"), Ok(None));
        assert_eq!(parse("1w"), Ok(Some(Duration::from_secs(604_800))));
        assert_eq!(parse("2d"), Ok(Some(Duration::from_secs(172_800))));
        assert_eq!(parse("30"), Ok(Some(Duration::from_secs(30))));
        assert!(parse("1 fortnight").is_err());
        assert!(parse("0").is_err());
        assert!(parse("").is_err());
    }
}
