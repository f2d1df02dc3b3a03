//! The import graph of `daemon/src`'s top-level modules must have no cycles: a module
//! depends on another when its code (tests and comments aside) names `crate::<other>`.
//! Cycles make the request path hard to follow and every part hard to test alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules still in the import cycle that the `cli/` and `config/` split of issue 13
/// removes. Empty this list once that lands; no other module may be in a cycle.
const KNOWN_CYCLE_MEMBERS: &[&str] = &["audit", "cli", "config", "identity", "keys", "model_cli"];

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests and comments.
fn code(text: &str) -> String {
    let text = text
        .find("#[cfg(test)]\nmod tests")
        .map_or(text, |i| &text[..i]);
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers named after `crate::`, including `crate::{a, b::c}` groups.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            for item in group.split(',') {
                out.insert(ident(item.trim()));
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn graph(src: &Path) -> Graph {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src)
        .expect("daemon/src is readable")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(m) = name.strip_suffix(".rs")
            && m != "lib"
            && m != "main"
        {
            modules.insert(m.to_owned());
        }
    }
    let mut graph = Graph::new();
    for m in &modules {
        let mut files = vec![src.join(format!("{m}.rs"))];
        rust_files(&src.join(m), &mut files);
        let mut deps = BTreeSet::new();
        for file in files {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("source file is readable");
            deps.extend(
                crate_refs(&code(&text))
                    .into_iter()
                    .filter(|d| d != m && modules.contains(d)),
            );
        }
        graph.insert(m.clone(), deps);
    }
    graph
}

/// Strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn finds_cycles_and_references() {
    let refs = crate_refs("use crate::{a, b::c};\nlet x = crate::d::e();");
    assert_eq!(refs, ["a", "b", "d"].map(String::from).into());
    let g: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(m, d)| (m.to_string(), BTreeSet::from([d.to_string()])))
        .collect();
    assert_eq!(
        cycles(&g),
        vec![["a", "b", "c"].map(String::from).into()],
        "one cycle, d outside it"
    );
    assert_eq!(
        code("x // crate::y\n#[cfg(test)]\nmod tests { crate::z }"),
        "x "
    );
}

#[test]
fn top_level_modules_have_no_import_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(graph.contains_key("pipeline") && graph["pipeline"].contains("api"));
    for cycle in cycles(&graph) {
        let new: Vec<&String> = cycle
            .iter()
            .filter(|m| !KNOWN_CYCLE_MEMBERS.contains(&m.as_str()))
            .collect();
        assert!(
            new.is_empty(),
            "import cycle among daemon/src modules {cycle:?} (of which {new:?} must not be in \
             any): {graph:#?}"
        );
    }
}
