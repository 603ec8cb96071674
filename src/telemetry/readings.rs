//! The metrics as numbers, read back from the very text Prometheus scrapes: the status page
//! shows these, so the page and a Prometheus graph of the same counter always agree.

/// One sample: metric name (with `_total` on counters), labels, value.
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A parsed rendering of the metrics.
pub struct Readings {
    samples: Vec<Sample>,
}

impl Readings {
    /// Parses OpenMetrics text as `Metrics::render` writes it; lines that do not parse are
    /// skipped.
    pub fn parse(text: &str) -> Readings {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Readings { samples }
    }

    /// The sum of every sample of `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Like `sum`, over samples whose `label` satisfies `keep`.
    pub fn sum_where(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        label: &str,
        keep: impl Fn(&str) -> bool,
    ) -> f64 {
        self.matching(name, labels)
            .filter(|s| s.labels.iter().any(|(k, v)| k == label && keep(v)))
            .map(|s| s.value)
            .sum()
    }

    /// The value of the first sample of `name` with `labels`, if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).map(|s| s.value).next()
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }
}

/// `name{a="x",b="y"} 12` or `name 12`.
fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.trim().parse::<f64>().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `a="x",b="y"`, with `\"`, `\\` and `\n` escapes in values.
fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_summed_by_name_and_labels() {
        let text = "# HELP x y\n\
            cistern_cache_requests_total{registry=\"docker.io\",kind=\"blob\",outcome=\"hit\"} 3\n\
            cistern_cache_requests_total{registry=\"ghcr.io\",kind=\"blob\",outcome=\"hit\"} 4\n\
            cistern_cache_requests_total{registry=\"ghcr.io\",kind=\"blob\",outcome=\"miss\"} 5\n\
            cistern_odd{v=\"a \\\"q\\\" b\"} 1\n\
            cistern_cache_bytes 1024\n\
            garbage line\n\
            # EOF\n";
        let readings = Readings::parse(text);
        let name = "cistern_cache_requests_total";
        assert_eq!(readings.sum(name, &[]), 12.0);
        assert_eq!(readings.sum(name, &[("outcome", "hit")]), 7.0);
        assert_eq!(
            readings.sum(name, &[("registry", "ghcr.io"), ("outcome", "hit")]),
            4.0
        );
        assert_eq!(
            readings.sum_where(name, &[], "outcome", |o| o != "miss"),
            7.0
        );
        assert_eq!(
            readings.get("cistern_odd", &[("v", "a \"q\" b")]),
            Some(1.0)
        );
        assert_eq!(readings.get("cistern_cache_bytes", &[]), Some(1024.0));
        assert_eq!(readings.get("cistern_absent", &[]), None);
    }
}
