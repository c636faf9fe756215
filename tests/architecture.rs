//! The module layering of `src/` (docs/ARCHITECTURE.md): a module may import only modules
//! of its own layer or of the layers below, and the imports between top-level modules
//! have no cycle. `cargo test --test architecture -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules from the top layer down; a module may import its own layer and the
/// layers below. Settings composes the components' configs, so it sits above them.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["startup"],
    &["settings"],
    &["routes", "error"],
    &["sink"],
    &[
        "auth",
        "edge",
        "idempotency",
        "ingest",
        "stream",
        "alerts",
        "telemetry",
    ],
    &["store"],
    &["wire", "domain", "clock", "server"],
];

/// Module → the modules it imports, read from `crate::…` paths in `src/`.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level modules a file's text names as `crate::name` or `crate::{a, b::c}`,
/// comments left out.
fn imports_in(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut name = String::new();
                let mut at_start = true;
                for c in group.chars() {
                    if c.is_alphanumeric() || c == '_' {
                        if at_start && depth == 0 {
                            name.push(c);
                        }
                        continue;
                    }
                    if !name.is_empty() {
                        found.insert(std::mem::take(&mut name));
                        at_start = false;
                    }
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => at_start = true,
                        _ => {}
                    }
                }
                if !name.is_empty() {
                    found.insert(name);
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the crate at `root` (lib.rs and main.rs, which only declare or use the
/// crate from outside, are left out).
fn module_graph(root: &Path) -> Graph {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src/");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let entry = graph.entry(module.clone()).or_default();
        entry.extend(imports_in(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

/// `importer → imported` edges that point to a higher layer, or name an unknown module.
fn upward_imports(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    for (module, imports) in graph {
        let Some(own) = layer_of(module) else {
            found.push(format!("{module} is in no layer: add it to LAYERS"));
            continue;
        };
        for imported in imports {
            match layer_of(imported) {
                Some(layer) if layer >= own => {}
                Some(_) => found.push(format!("{module} → {imported} imports upward")),
                None => found.push(format!("{module} → {imported}: {imported} is in no layer")),
            }
        }
    }
    found
}

/// One cycle of the graph, if there is one, as `a → b → … → a`.
fn a_cycle(graph: &Graph) -> Option<String> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle.join(" → "));
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn print(graph: &Graph) {
    for (module, imports) in graph {
        let list: Vec<&str> = imports.iter().map(String::as_str).collect();
        println!(
            "{module} → {}",
            if list.is_empty() {
                "∅".to_owned()
            } else {
                list.join(", ")
            }
        );
    }
}

#[test]
fn no_module_imports_upward_and_there_is_no_cycle() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let graph = module_graph(&root);
    print(&graph);

    assert!(
        graph.len() > 10,
        "the modules of src/ were found: {graph:?}"
    );
    let upward = upward_imports(&graph);
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
    assert_eq!(a_cycle(&graph), None, "an import cycle came back");
}

#[test]
fn imports_are_read_from_paths_and_groups_but_not_comments() {
    let text = "use crate::store::{Config, Store};\n\
                use crate::{alerts, auth::Caller, edge::{a, b}};\n\
                let x = crate::telemetry::prometheus::render();\n\
                // see crate::routes for why\n";

    let found: Vec<String> = imports_in(text).into_iter().collect();

    assert_eq!(found, ["alerts", "auth", "edge", "store", "telemetry"]);
}

#[test]
fn an_upward_import_and_a_cycle_are_reported() {
    let graph: Graph = [
        ("store", vec!["routes"]),
        ("routes", vec!["store"]),
        ("domain", vec![]),
    ]
    .into_iter()
    .map(|(m, i)| (m.to_owned(), i.into_iter().map(str::to_owned).collect()))
    .collect();

    assert_eq!(upward_imports(&graph), ["store → routes imports upward"]);
    assert_eq!(a_cycle(&graph).as_deref(), Some("routes → store → routes"));
}
