//! Scalars in the configuration that may be written in YAML (`maxfetches: 8`,
//! `forcepathstyle: true`) or come from the environment as text
//! (`REGISTRY_PROXY_MAXFETCHES=8`, `REGISTRY_STORAGE_S3_FORCEPATHSTYLE=true`).

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Written<T> {
    Value(T),
    Text(String),
}

fn from_text<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl Fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
{
    match Option::<Written<T>>::deserialize(d)? {
        None => Ok(None),
        Some(Written::Value(v)) => Ok(Some(v)),
        Some(Written::Text(text)) => parse(text.trim())
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not {expected}"))),
    }
}

/// A whole number.
pub fn deserialize_optional_count<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<usize>, D::Error> {
    from_text(d, |t| t.parse().ok(), "a whole number such as 8")
}

/// Text that may be written as a number too (`maxsize: 1073741824`, `lowwatermark: 0.8`).
pub fn deserialize_optional_text<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Whole(u64),
        Number(f64),
        Text(String),
    }
    Ok(
        Option::<Written>::deserialize(d)?.map(|written| match written {
            Written::Whole(n) => n.to_string(),
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        }),
    )
}

/// `true` or `false`.
pub fn deserialize_optional_bool<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<bool>, D::Error> {
    from_text(d, |t| t.parse().ok(), "true or false")
}

/// Present at all, whatever its value (`inmemory:` has none).
pub fn deserialize_present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// A list, written in YAML (`[a, b]`) or from the environment as comma-separated text.
pub fn deserialize_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Items(Vec<String>),
        Text(String),
    }
    Ok(match Option::<List>::deserialize(d)? {
        None => Vec::new(),
        Some(List::Items(items)) => items,
        Some(List::Text(text)) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}
