//! Turns a byte span reported by the TOML deserializer into the dotted key path an operator
//! can search for (`listener.tls.cert`, `models[1].device`).

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The path of the deepest key or value whose span contains `span.start`; empty when the
/// document cannot be parsed or the span is outside every key.
pub fn key_path(source: &str, span: Range<usize>) -> String {
    let Ok(table) = DeTable::parse(source) else {
        return String::new();
    };
    find_in_table(table.get_ref(), span.start).unwrap_or_default()
}

/// Table and array-of-tables values may be spanned by their header only, so their children
/// are searched even when the value's own span does not contain `at`.
fn find_in_table(table: &DeTable<'_>, at: usize) -> Option<String> {
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if key.span().contains(&at) {
            return Some(name.to_owned());
        }
        if let Some(rest) = find_in_value(value, at) {
            return Some(if rest.is_empty() {
                name.to_owned()
            } else if rest.starts_with('[') {
                format!("{name}{rest}")
            } else {
                format!("{name}.{rest}")
            });
        }
    }
    None
}

/// `Some("")` when `at` is inside this value but not inside any of its children.
fn find_in_value(value: &Spanned<DeValue<'_>>, at: usize) -> Option<String> {
    let inner = value.get_ref();
    if let Some(table) = inner.as_table()
        && let Some(path) = find_in_table(table, at)
    {
        return Some(path);
    }
    if let Some(array) = inner.as_array() {
        for (i, item) in array.iter().enumerate() {
            if let Some(rest) = find_in_value(item, at) {
                return Some(if rest.is_empty() || rest.starts_with('[') {
                    format!("[{i}]{rest}")
                } else {
                    format!("[{i}].{rest}")
                });
            }
        }
    }
    let span = value.span();
    (span.contains(&at) || (span.is_empty() && span.start == at)).then(String::new)
}
