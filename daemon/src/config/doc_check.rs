//! Keeps `docs/config.md` and `docs/examples/airlock.full.toml` in step with the code: every
//! key of every `Raw*` struct must be documented and must appear in the full example, and the
//! example must parse with `deny_unknown_fields` (so it names no key the code does not know).
//!
//! The keys are not listed by hand: serde's derive passes each struct's field names to
//! `Deserializer::deserialize_struct`, and [`FieldNames`] is a deserializer that only
//! captures them. A key added to a `Raw*` struct therefore fails this test until it is
//! documented.
//!
//! Documentation convention (see the top of `docs/config.md`): a key `k` of section `s` is
//! documented when `docs/config.md` contains `` `s.k` `` anywhere, or when a table row under a
//! heading naming `` `[s]` `` or `` `[[s]]` `` has `` `k` `` in its first cell.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};

use super::admin::{RawAdmin, RawAdminTls};
use super::audit::{RawAudit, RawSink};
use super::cluster::{RawCluster, RawClusterLimits};
use super::policy::{RawAuth, RawFilterRule, RawTenant};
use super::raw::{
    RawConfig, RawEngineRole, RawLimits, RawListener, RawLogging, RawModel, RawProxy, RawTls,
};
use super::telemetry::RawTelemetry;

const CONFIG_MD: &str = include_str!("../../../docs/config.md");
const FULL_EXAMPLE: &str = include_str!("../../../docs/examples/airlock.full.toml");

/// Every table of the file: its dotted path and the field names of its `Raw*` struct. A new
/// table (a new `Raw*` struct reachable from [`RawConfig`]) needs an entry here; the test
/// `every_table_is_listed` fails until it has one.
fn tables() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("listener", fields::<RawListener>()),
        ("listener.tls", fields::<RawTls>()),
        ("listener.proxy", fields::<RawProxy>()),
        ("listener.engine", fields::<RawEngineRole>()),
        ("limits", fields::<RawLimits>()),
        ("models", fields::<RawModel>()),
        (
            "models.speculative",
            fields::<super::model::RawSpeculative>(),
        ),
        ("logging", fields::<RawLogging>()),
        ("auth", fields::<RawAuth>()),
        ("tenants", fields::<RawTenant>()),
        ("tenants.filters", fields::<RawFilterRule>()),
        ("audit", fields::<RawAudit>()),
        ("audit.sinks", fields::<RawSink>()),
        ("admin", fields::<RawAdmin>()),
        ("admin.tls", fields::<RawAdminTls>()),
        ("cluster", fields::<RawCluster>()),
        ("cluster.limits", fields::<RawClusterLimits>()),
        ("telemetry", fields::<RawTelemetry>()),
    ]
}

/// The field names serde's derive declares for `T` (empty for a type that is not a struct).
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldNames) {
        Err(Captured(names)) => names,
        Ok(_) => &[],
    }
}

/// A deserializer that succeeds at nothing: `deserialize_struct` fails with the field names
/// it was given, everything else fails empty.
struct FieldNames;

#[derive(Debug)]
struct Captured(&'static [&'static str]);

impl fmt::Display for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields {:?}", self.0)
    }
}

impl std::error::Error for Captured {}

impl de::Error for Captured {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Captured(&[])
    }
}

impl<'de> de::Deserializer<'de> for FieldNames {
    type Error = Captured;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Captured> {
        Err(Captured(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Captured> {
        Err(Captured(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// Every `section.key` the code accepts, subsections (`listener.tls`) excluded: they are
/// tables, documented by their own heading.
fn all_keys() -> Vec<String> {
    let tables = tables();
    let names: BTreeSet<&str> = tables.iter().map(|(t, _)| *t).collect();
    let mut keys = Vec::new();
    for (table, fields) in &tables {
        for field in *fields {
            let path = format!("{table}.{field}");
            if !names.contains(path.as_str()) {
                keys.push(path);
            }
        }
    }
    keys
}

/// Keys documented in table rows, per section: the backticked words of each row's first
/// cell, under the nearest heading that names `` `[section]` `` or `` `[[section]]` ``.
fn documented_in_tables(markdown: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    let mut in_code = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if line.starts_with('#') {
            section = heading_section(line);
            continue;
        }
        let (Some(section), Some(row)) = (&section, line.strip_prefix('|')) else {
            continue;
        };
        let first_cell = row.split('|').next().unwrap_or_default();
        let entry = out.entry(section.clone()).or_default();
        entry.extend(backticked(first_cell).map(str::to_owned));
    }
    out
}

/// `## `[listener.tls]` (required)` → `listener.tls`.
fn heading_section(line: &str) -> Option<String> {
    backticked(line).find_map(|word| {
        let inner = word
            .strip_prefix("[[")
            .and_then(|w| w.strip_suffix("]]"))
            .or_else(|| word.strip_prefix('[').and_then(|w| w.strip_suffix(']')))?;
        Some(inner.to_owned())
    })
}

/// The words between pairs of backticks.
fn backticked(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The dotted paths of every key in a TOML value (arrays of tables: every element's keys
/// under the array's own path).
fn toml_paths(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                toml_paths(&path, value, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                toml_paths(prefix, item, out);
            }
        }
        _ => {}
    }
}

#[test]
fn field_names_come_from_serde() {
    assert_eq!(
        fields::<RawLogging>(),
        &["format", "level"],
        "the FieldNames deserializer no longer sees serde's field list"
    );
    assert!(fields::<String>().is_empty());
}

#[test]
fn every_table_is_listed() {
    // Each top-level section must have a `tables()` entry, or its keys would escape the
    // checks below. (A new nested table, say `[admin.tls]`, shows as the key `admin.tls`
    // until it gets its own entry.)
    let listed: BTreeSet<&str> = tables().iter().map(|(t, _)| *t).collect();
    let missing: Vec<&str> = fields::<RawConfig>()
        .iter()
        .copied()
        .filter(|s| !listed.contains(s))
        .collect();
    assert!(
        missing.is_empty(),
        "config sections without an entry in `tables()` (daemon/src/config/doc_check.rs): \
         {missing:?}"
    );
}

#[test]
fn every_key_is_documented_in_config_md() {
    let rows = documented_in_tables(CONFIG_MD);
    let missing: Vec<String> = all_keys()
        .into_iter()
        .filter(|path| {
            let (section, key) = path.rsplit_once('.').unwrap_or(("", path));
            let in_row = rows.get(section).is_some_and(|keys| keys.contains(key));
            !in_row && !CONFIG_MD.contains(&format!("`{path}`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys accepted by the code but not documented in docs/config.md (add a table row under \
         the section's heading, or write `section.key`): {missing:?}"
    );
}

#[test]
fn full_example_parses_and_names_every_key() {
    // deny_unknown_fields: a key the code does not know fails here, with its path.
    if let Err(e) = toml::from_str::<RawConfig>(FULL_EXAMPLE) {
        panic!("docs/examples/airlock.full.toml does not parse: {e}");
    }
    let value: toml::Value = match toml::from_str(FULL_EXAMPLE) {
        Ok(v) => v,
        Err(e) => panic!("docs/examples/airlock.full.toml: {e}"),
    };
    let mut present = BTreeSet::new();
    toml_paths("", &value, &mut present);
    let missing: Vec<String> = all_keys()
        .into_iter()
        .filter(|k| !present.contains(k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/examples/airlock.full.toml (it must show every key): {missing:?}"
    );
}

#[test]
fn documentation_convention_is_what_the_check_reads() {
    // The parser above must see the sections config.md uses, or every key would be reported
    // missing for the wrong reason.
    let rows = documented_in_tables(CONFIG_MD);
    for (table, _) in tables() {
        assert!(
            rows.contains_key(table) || CONFIG_MD.contains(&format!("`{table}.")),
            "docs/config.md has no heading naming `[{table}]` (or `[[{table}]]`)"
        );
    }
}

#[test]
fn table_rows_count_only_under_their_own_section() {
    let markdown = "\
## `[limits]` (optional)

| key | meaning |
|---|---|
| `max_body_bytes` | … |
| `a`, `b` / `c` | several keys in one row |

```toml
| `in_code` | a code block is not a table |
```

### `[[tenants.filters]]`

| `id` | … |

## Reload

| `not_a_section_key` | … |
";
    let rows = documented_in_tables(markdown);
    let limits = &rows["limits"];
    for key in ["max_body_bytes", "a", "b", "c"] {
        assert!(limits.contains(key), "{key}: {rows:?}");
    }
    assert!(!limits.contains("in_code"), "{rows:?}");
    assert!(
        !limits.contains("key"),
        "a header row without backticks: {rows:?}"
    );
    assert!(!limits.contains("id"), "{rows:?}");
    assert!(rows["tenants.filters"].contains("id"), "{rows:?}");
    assert!(
        rows.values()
            .all(|keys| !keys.contains("not_a_section_key")),
        "{rows:?}"
    );
}
