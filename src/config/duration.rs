//! Durations as Distribution writes them (`168h`, `10s`, `1h30m`), plus `0` for "never".

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Written {
    Text(String),
    Number(u64),
}

pub fn deserialize_optional<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let written = Option::<Written>::deserialize(deserializer)
        .map_err(|_| serde::de::Error::custom("expected a duration such as 90s, 10m or 168h"))?;
    match written {
        None => Ok(None),
        Some(Written::Number(0)) => Ok(Some(Duration::ZERO)),
        Some(Written::Number(n)) => Err(serde::de::Error::custom(format!(
            "{n} has no unit; write e.g. {n}s"
        ))),
        Some(Written::Text(text)) => parse(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

/// The longest duration Distribution (Go's `time.Duration`, int64 nanoseconds) can express,
/// about 292 years. Longer values are refused: nothing could mean them, and the caches that
/// take these durations have limits of their own (moka panics past 1000 years).
pub const MAX: Duration = Duration::from_nanos(i64::MAX as u64);

fn parse(text: &str) -> Result<Duration, String> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration such as 90s, 10m or 168h: {e}"))?;
    if duration > MAX {
        return Err(format!(
            "{text:?} is longer than the longest duration Distribution accepts (2562047h)"
        ));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_style_durations() {
        assert_eq!(parse("168h").unwrap(), Duration::from_secs(168 * 3600));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("soon").is_err());
    }

    /// `proxy.notfoundttl: 1001y` passed validation and then panicked in moka at start.
    #[test]
    fn durations_past_go_s_limit_are_refused() {
        assert_eq!(
            parse("2562047h").unwrap(),
            Duration::from_secs(2562047 * 3600)
        );
        assert!(parse("2562048h").is_err());
        assert!(parse("1001y").is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_parses_or_fails_without_panicking(text in any::<String>()) {
            if let Ok(duration) = parse(&text) {
                prop_assert!(duration <= MAX);
            }
        }

        #[test]
        fn units_mean_what_they_say(n in 0u64..1_000_000) {
            prop_assert_eq!(parse(&format!("{n}s")), Ok(Duration::from_secs(n)));
            prop_assert_eq!(parse(&format!("{n}m")), Ok(Duration::from_secs(n * 60)));
            prop_assert_eq!(parse(&format!("{n}h")), Ok(Duration::from_secs(n * 3600)));
            prop_assert_eq!(parse(&format!("{n}ms")), Ok(Duration::from_millis(n)));
        }
    }
}
