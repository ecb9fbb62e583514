//! The runtime's modules depend on each other one way: the `Cache` handle on
//! the engine, the engine on the backends and the breaker, those on leaf
//! helpers. This test reads the sources, prints every edge between top-level
//! modules of `src/` (`cargo test -p cached-runtime --test module_graph --
//! --nocapture`) and fails on a cycle, naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules (`src/x.rs` or `src/x/`) and the files of each.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 file name")
            .to_owned();
        if name == "lib" {
            continue; // the root only declares and re-exports
        }
        let files = out.entry(name).or_default();
        if path.is_dir() {
            let mut stack = vec![path];
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).expect("a readable directory") {
                    let p = e.expect("a directory entry").path();
                    if p.is_dir() {
                        stack.push(p);
                    } else if p.extension().is_some_and(|x| x == "rs") {
                        files.push(p);
                    }
                }
            }
        } else if path.extension().is_some_and(|x| x == "rs") {
            files.push(path);
        }
    }
    out
}

/// The modules a file names as `crate::m`, outside comments.
fn uses(text: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if known.contains(&name) {
                found.insert(name);
            }
        }
        // `use crate::{a, b::c}` groups.
        if let Some(i) = code.find("crate::{") {
            let group = &code[i + "crate::{".len()..];
            for item in group.split([',', '}']) {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if known.contains(&name) {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(c) = visit(node, edges, &mut state, &mut Vec::new()) {
            return Some(c);
        }
    }
    None
}

#[test]
fn runtime_modules_depend_on_each_other_without_a_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let known: BTreeSet<String> = modules.keys().cloned().collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, files) in &modules {
        let out = edges.entry(name.clone()).or_default();
        for file in files {
            let text = std::fs::read_to_string(file).expect("a readable source file");
            out.extend(uses(&text, &known).into_iter().filter(|m| m != name));
        }
    }
    for (from, to) in &edges {
        let to: Vec<&str> = to.iter().map(String::as_str).collect();
        println!(
            "{from} -> {}",
            if to.is_empty() {
                "(none)".to_owned()
            } else {
                to.join(", ")
            }
        );
    }
    assert!(
        edges.contains_key("engine") && edges["cache"].contains("engine"),
        "the reader found the modules it is meant to check: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "runtime modules import each other in a circle: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    if let Some(s) = edges.get_mut("c") {
        s.clear();
    }
    assert_eq!(find_cycle(&edges), None);
}
