//! The code layout's rules, checked over `src/` as text (see the module docs of `src/lib.rs`):
//! modules import only modules below them, files inside a folder (its front file included)
//! import each other without a circle, and no source file is longer than 400 lines outside its
//! tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules (layers), lowest first. A layer may use the layers before it in this
/// list, never one after.
const LAYERS: &[&str] = &[
    "secret",
    "config",
    "upstream",
    "credential",
    "access",
    "telemetry",
    "state",
    "proxy",
    "server",
    "cli",
];

const MAX_LINES: usize = 400;

/// Every module of the library in `src` (`a::b` for `src/a/b.rs`), with its file.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let src = src.to_path_buf();
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).unwrap().with_extension("");
                let name = rel.to_str().unwrap().replace('/', "::");
                if name != "main" {
                    found.insert(name, path);
                }
            }
        }
    }
    found
}

/// The modules a file names as `crate::a::b…`, resolved to the longest module that exists.
/// Comments (doc links included) are left out: they are not imports.
fn imports(text: &str, modules: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_') {
                continue; // `keyward_crate::`, not ours
            }
            let mut path = String::new();
            let mut best = None;
            for segment in code[at + "crate::".len()..].split("::") {
                let name: String = segment
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                if name.is_empty() {
                    break;
                }
                if !path.is_empty() {
                    path.push_str("::");
                }
                path.push_str(&name);
                if modules.contains_key(&path) {
                    best = Some(path.clone());
                }
                if name.len() != segment.len() {
                    break;
                }
            }
            out.extend(best);
        }
    }
    out
}

/// Lines before the file's test module.
fn lines_outside_tests(text: &str) -> usize {
    text.lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .count()
}

fn layer(module: &str) -> &str {
    module.split("::").next().unwrap()
}

/// `a::b::c` → [`a`, `a::b`, `a::b::c`]
fn ancestry(module: &str) -> Vec<String> {
    let parts: Vec<&str> = module.split("::").collect();
    (1..=parts.len()).map(|n| parts[..n].join("::")).collect()
}

/// All the circles in `graph` (as one member each), found by depth-first search.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(stack[at..].to_vec());
            return;
        }
        if !done.insert(node.to_owned()) {
            return;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn imports_go_down_the_layers_and_no_file_is_too_long() {
    let problems = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Every way the library in `src` breaks the layout's rules.
fn check(src: &Path) -> Vec<String> {
    let modules = modules(src);
    let mut problems = Vec::new();
    // Between the files of one folder: `parent` → edges between its children.
    let mut folders: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let lines = lines_outside_tests(&text);
        if lines > MAX_LINES {
            problems.push(format!(
                "{} has {lines} lines outside its tests (at most {MAX_LINES}): split it along a seam",
                file.display()
            ));
        }
        if module == "lib" {
            continue;
        }
        if !LAYERS.contains(&layer(module)) {
            problems.push(format!(
                "{module} is in no layer: add `{}` to LAYERS here and to the layout in src/lib.rs",
                layer(module)
            ));
        }
        for target in imports(&text, &modules) {
            let (from, to) = (layer(module), layer(&target));
            let rank = |r: &str| LAYERS.iter().position(|x| *x == r);
            if from != to {
                if rank(to) >= rank(from) {
                    problems.push(format!(
                        "{module} imports {target}: `{from}` may not use `{to}`, which is not \
                         below it"
                    ));
                }
                continue;
            }
            let (a, b) = (ancestry(module), ancestry(&target));
            let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
            if common == a.len() && common == b.len() {
                continue; // itself
            }
            // A folder's front file is one of its files: `x.rs` is the node `x` in folder `x`.
            // The front file using a child, or a child using its front file (or one above).
            let (folder, from, to) = if common == a.len() {
                (module.clone(), module.clone(), b[common].clone())
            } else if common == b.len() {
                (target.clone(), a[common].clone(), target.clone())
            } else {
                (a[common - 1].clone(), a[common].clone(), b[common].clone())
            };
            folders
                .entry(folder)
                .or_default()
                .entry(from)
                .or_default()
                .insert(to);
        }
    }
    for (folder, graph) in &folders {
        for circle in circles(graph) {
            problems.push(format!(
                "files in {folder} import each other in a circle: {} → back",
                circle.join(" → ")
            ));
        }
    }
    problems
}

#[test]
fn the_checker_sees_an_import_that_goes_up() {
    let modules: BTreeMap<String, PathBuf> = ["proxy::body", "proxy::error", "server", "upstream"]
        .into_iter()
        .map(|m| (m.to_owned(), PathBuf::new()))
        .collect();
    let found = imports(
        "use crate::server::Running;\n// [`crate::upstream::Pool`]\nlet x = crate::proxy::body::ProxyBody::full(b);\n",
        &modules,
    );
    assert_eq!(
        found,
        BTreeSet::from(["server".to_owned(), "proxy::body".to_owned()])
    );
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(circles(&graph).len(), 1);
}

#[test]
fn a_circle_through_a_front_file_is_found() {
    let root = std::env::temp_dir().join(format!("keyward-layout-{}", std::process::id()));
    let src = root.join("src");
    std::fs::create_dir_all(src.join("proxy")).unwrap();
    std::fs::write(src.join("proxy.rs"), "use crate::proxy::relay::Relay;\n").unwrap();
    std::fs::write(src.join("proxy/relay.rs"), "use crate::proxy::Owner;\n").unwrap();
    let problems = check(&src);
    std::fs::remove_dir_all(&root).unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("files in proxy import each other in a circle")),
        "{problems:?}"
    );
}
