//! The two text formats `/metrics` speaks. prometheus-client writes OpenMetrics 1.0, which
//! a Prometheus server asks for; curl, promtool and older scrapers read the classic
//! Prometheus text format 0.0.4, so without an OpenMetrics `Accept` header the same text is
//! rewritten into it: a counter family is named with its `_total` suffix, and the `# UNIT`
//! and `# EOF` lines (OpenMetrics only) are dropped.

use std::collections::HashSet;

/// Content type of OpenMetrics text.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4.
pub fn to_text_format(openmetrics: &str) -> String {
    // Families declared as counters: their HELP and TYPE lines take the `_total` name that
    // their samples already carry.
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .filter(|(_, kind)| *kind == "counter")
        .map(|(name, _)| name)
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 64 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let tail = match (prefix, tail) {
                    // OpenMetrics' `unknown` is the text format's `untyped`.
                    ("# TYPE ", "unknown") => "untyped",
                    _ => tail,
                };
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => {
                // A counter's `_created` sample has no place in the text format.
                let sample_name = line.split(['{', ' ']).next().unwrap_or("");
                if sample_name
                    .strip_suffix("_created")
                    .is_some_and(|family| counters.contains(family))
                {
                    continue;
                }
                out.push_str(line);
            }
        }
        out.push('\n');
    }
    out
}
