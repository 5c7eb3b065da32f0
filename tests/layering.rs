//! The crate's top-level modules form layers: a module may use the ones below it, never one
//! above (src/lib.rs has the map). Read from the sources: every `crate::NAME` a module
//! mentions (in paths and in `use crate::{...}` groups) is an edge; the graph must have no
//! cycle, and a cycle is printed with the files that make each of its edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// module -> (module it uses -> files that use it)
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().to_string();
            match name.strip_suffix(".rs") {
                Some("lib") | Some("main") => None,
                Some(m) => Some(m.to_string()),
                None if e.path().is_dir() => Some(name),
                None => None,
            }
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Identifiers right after `crate::`, and the first segment of each item of `use crate::{...}`.
fn used(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(inner.split(',').map(|item| ident(item.trim())).filter(|s| !s.is_empty()));
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if !mods.contains(&top) {
            continue;
        }
        for target in used(&std::fs::read_to_string(&f).unwrap()) {
            if target != top && mods.contains(&target) {
                g.entry(top.clone()).or_default().entry(target).or_default().insert(rel.clone());
            }
        }
    }
    g
}

/// A cycle through the graph, if there is one (depth-first search with a path stack).
fn cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(m: &str, g: &Graph, done: &mut BTreeSet<String>, path: &mut Vec<String>) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            return Some(path[i..].iter().cloned().chain([m.to_string()]).collect());
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in g.get(m).into_iter().flat_map(|t| t.keys()) {
            if let Some(c) = visit(next, g, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys().find_map(|m| visit(m, g, &mut done, &mut Vec::new()))
}

#[test]
fn no_module_uses_one_above_it() {
    let g = graph();
    // The reader sees the edges the layers are made of (a sanity check that it reads them).
    assert!(g["pipeline"].contains_key("decode") && g["api"].contains_key("pipeline"), "{g:?}");
    if let Some(c) = cycle(&g) {
        let edges: Vec<String> = c.windows(2).map(|w| format!("{} -> {} ({:?})", w[0], w[1], g[&w[0]][&w[1]])).collect();
        panic!("import cycle among src/ modules:\n{}", edges.join("\n"));
    }
}

#[test]
fn the_reader_finds_a_cycle_when_there_is_one() {
    let mut g = Graph::new();
    for (a, b) in [("api", "pipeline"), ("pipeline", "decode"), ("decode", "api")] {
        g.entry(a.into()).or_default().entry(b.into()).or_default().insert(format!("{a}.rs"));
    }
    assert_eq!(cycle(&g), Some(vec!["api".into(), "pipeline".into(), "decode".into(), "api".into()]));
    assert_eq!(used("use crate::{bundle, engine::X};\nlet x = crate::metrics::f();"), BTreeSet::from(["bundle".into(), "engine".into(), "metrics".into()]));
}
