//! The import graph of `daemon/src`'s top-level modules has no cycles (docs/STYLE §18: a
//! lower layer never names an upper layer's type).
//!
//! An edge `a -> b` is a `crate::b` path in code under `daemon/src/a.rs` or `daemon/src/a/`,
//! outside comments, string literals, `tests.rs` files and items marked `#[cfg(test)]`
//! (tests may reach anywhere). `use crate::{b, c::d}` groups count each first segment.
//! `lib.rs` (the module list) and `main.rs` (the binary, which sees the library as
//! `airlock_daemon::`) are not modules of the graph.

#![expect(
    clippy::unwrap_used,
    reason = "a test: daemon/src that cannot be read is a failed test"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Cycles tolerated, each as the exact set of its modules: none. (Kept so that a cycle met
/// during a refactor can be listed here, visibly, until it is taken apart.)
const ALLOWED_CYCLES: &[&[&str]] = &[];

type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    let cycles = cycles(&graph);
    let allowed: Vec<BTreeSet<&str>> = ALLOWED_CYCLES
        .iter()
        .map(|c| c.iter().copied().collect())
        .collect();
    let mut report = String::new();
    for cycle in &cycles {
        let names: BTreeSet<&str> = cycle.iter().map(String::as_str).collect();
        if allowed.contains(&names) {
            continue;
        }
        report.push_str(&format!("cycle over {{{}}}:\n", cycle.join(", ")));
        for from in cycle {
            for (to, files) in &graph[from] {
                if cycle.contains(to) {
                    let files: Vec<&str> = files.iter().map(String::as_str).collect();
                    report.push_str(&format!("  {from} -> {to}  ({})\n", files.join(", ")));
                }
            }
        }
    }
    for allowed in &allowed {
        if !cycles
            .iter()
            .any(|c| c.iter().map(String::as_str).collect::<BTreeSet<_>>() == *allowed)
        {
            report.push_str(&format!(
                "ALLOWED_CYCLES lists {allowed:?}, which is no longer a cycle: take it out\n"
            ));
        }
    }
    assert!(
        report.is_empty(),
        "import cycles among daemon/src's top-level modules:\n{report}"
    );
}

/// The checker itself: a planted cycle is found, a `#[cfg(test)]` module, a comment and a
/// string are not edges, and grouped imports are.
#[test]
fn the_checker_sees_cycles_and_ignores_tests_and_comments() {
    let text = "use crate::{b::X, c};\n// crate::d in a comment\nconst S: &str = \"crate::d\";\n\
                #[cfg(test)]\nmod tests { use crate::d::Y; fn f() { let _ = {}; } }\n\
                fn g() { crate::e::f(); }\n";
    let modules: BTreeSet<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
    let found: BTreeSet<String> = references(text, &modules);
    assert_eq!(found, ["b", "c", "e"].map(String::from).into());

    let mut graph = Graph::new();
    for (from, to) in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")] {
        graph
            .entry(from.into())
            .or_default()
            .entry(to.into())
            .or_default()
            .insert(format!("{from}.rs"));
    }
    graph.entry("d".into()).or_default();
    assert_eq!(cycles(&graph), vec![vec!["a", "b", "c"]]);
}

/// Module -> module it names -> files that name it.
fn graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() || (path.extension().is_some_and(|e| e == "rs")) {
            modules.insert(name);
        }
    }
    modules.remove("lib");
    modules.remove("main");
    let mut graph = Graph::new();
    for module in &modules {
        graph.entry(module.clone()).or_default();
    }
    let mut files = Vec::new();
    collect(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let top = Path::new(first).with_extension("");
        let top = top.to_string_lossy().into_owned();
        if !modules.contains(&top) || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for to in references(&text, &modules) {
            if to != top {
                graph
                    .get_mut(&top)
                    .unwrap()
                    .entry(to)
                    .or_default()
                    .insert(relative.display().to_string());
            }
        }
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules `text` names as `crate::X`, outside comments, strings and
/// `#[cfg(test)]` items.
fn references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let code = without_test_items(&without_comments_and_strings(text));
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // `airlock_crate::`, not `crate::`
        }
        let names = if let Some(group) = rest.strip_prefix('{') {
            let end = matching(group, '{', '}').unwrap_or(group.len());
            split_top_level(&group[..end])
                .into_iter()
                .map(|item| ident(item.trim_start()))
                .collect()
        } else {
            vec![ident(rest)]
        };
        found.extend(
            names
                .into_iter()
                .filter(|n| modules.contains(*n))
                .map(String::from),
        );
    }
    found
}

fn ident(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The comma-separated items of a `{…}` group's inside, nested groups kept whole.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// The index in `text` of the `close` that ends a group whose `open` came just before it.
fn matching(text: &str, open: char, close: char) -> Option<usize> {
    let mut depth = 1usize;
    for (i, c) in text.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// `text` with comments removed and string/char literal contents blanked, so that braces
/// and paths inside them count for nothing.
fn without_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
        } else if text[i..].starts_with("/*") {
            i = text[i + 2..]
                .find("*/")
                .map_or(bytes.len(), |n| i + 2 + n + 2);
        } else if text[i..].starts_with("r#\"") || text[i..].starts_with("r\"") {
            let hashes = text[i + 1..].bytes().take_while(|&b| b == b'#').count();
            let end = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            i = text[body..]
                .find(&end)
                .map_or(bytes.len(), |n| body + n + end.len());
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if bytes[i] == b'\'' && char_literal_len(&text[i..]).is_some() {
            i += char_literal_len(&text[i..]).unwrap_or(1);
            out.push_str("' '");
        } else {
            let c = text[i..].chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of a char literal (`'{'`, `'\n'`, `'\u{7f}'`) at the start of `text`, or
/// `None` for a lifetime.
fn char_literal_len(text: &str) -> Option<usize> {
    let rest = &text[1..];
    if let Some(escaped) = rest.strip_prefix('\\') {
        let first = escaped.chars().next()?;
        let close = escaped[first.len_utf8()..].find('\'')?;
        return Some(1 + 1 + first.len_utf8() + close + 1);
    }
    let c = rest.chars().next()?;
    rest[c.len_utf8()..]
        .starts_with('\'')
        .then(|| 1 + c.len_utf8() + 1)
}

/// `code` without the items that follow a `#[cfg(test)]` attribute (to their `;` or the
/// end of their `{…}` block).
fn without_test_items(code: &str) -> String {
    let mut out = code.to_owned();
    while let Some(at) = out.find("#[cfg(test)]") {
        let after = at + "#[cfg(test)]".len();
        let Some(stop) = out[after..].find([';', '{']).map(|n| after + n) else {
            out.truncate(at);
            break;
        };
        let end = if out[stop..].starts_with(';') {
            stop + 1
        } else {
            matching(&out[stop + 1..], '{', '}').map_or(out.len(), |n| stop + 1 + n + 1)
        };
        out.replace_range(at..end, "");
    }
    out
}

/// The strongly connected components with more than one module (Tarjan), each sorted,
/// in order of their first module.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph[v].keys() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found.sort();
    walk.found
}
