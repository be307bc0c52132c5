//! The file-level import graph of the workspace's crates (`broker`, `operator`, `config`): which
//! source files use which (`crate::…`, `super::…`, `self::…` paths), and its cycles. A file may
//! use its own ancestors freely (a child module is part of its parent's implementation), and a
//! parent counts as using each of its children (so what a child imports, its parent imports);
//! anything else that comes back to where it started is a cycle.
//!
//! No file of these crates is in a cycle: the test fails, naming the files, when one appears.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// Every `.rs` file under `src`, by module path.
fn modules(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            // A binary beside a library uses the library by its crate name: another crate.
            if path == src.join("main.rs") && src.join("lib.rs").exists() {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let mut parts: Module = relative
                .with_extension("")
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(
                parts.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                parts.pop();
            }
            found.insert(parts, path);
        }
    }
    found
}

/// The source without comments and without a trailing `#[cfg(test)] mod tests`.
fn code_of(source: &str) -> String {
    let source = source
        .find("#[cfg(test)]\nmod tests")
        .map_or(source, |at| &source[..at]);
    source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path starting with `crate`, `super` or `self`, as its segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segments.push(code[start..j].to_string());
            if code[j..].starts_with("::") && bytes.get(j + 2).is_some_and(|&b| ident(b)) {
                j += 2;
            } else {
                break;
            }
        }
        let rooted = matches!(segments[0].as_str(), "crate" | "super" | "self");
        if code[j..].starts_with("::{") {
            // A use group: each of its paths continues this one.
            let (items, end) = group_items(code, j + 3);
            if rooted {
                for item in items {
                    let mut path = segments.clone();
                    path.extend(item);
                    found.push(path);
                }
            }
            j = end;
        } else if segments.len() > 1 && rooted {
            found.push(segments);
        }
        i = j.max(i + 1);
    }
    found
}

/// The paths of a use group (`{a, b::c, d::{e, self}, f as g, *}`) whose contents start at
/// `at` (just after the `{`), relative to the group, and where the group ends. `self` is the
/// group's own path (an empty item).
fn group_items(code: &str, mut at: usize) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut items = Vec::new();
    let mut current: Option<Vec<String>> = None;
    while at < bytes.len() {
        match bytes[at] {
            b'}' => {
                items.extend(current.take());
                return (items, at + 1);
            }
            b',' => {
                items.extend(current.take());
                at += 1;
            }
            b'{' => {
                let (inner, end) = group_items(code, at + 1);
                let prefix = current.take().unwrap_or_default();
                for item in inner {
                    let mut path = prefix.clone();
                    path.extend(item);
                    items.push(path);
                }
                at = end;
            }
            b if ident(b) => {
                let start = at;
                while at < bytes.len() && ident(bytes[at]) {
                    at += 1;
                }
                match &code[start..at] {
                    // `x as y`: the renamed path is `x`; skip `y`.
                    "as" => {
                        while at < bytes.len() && !ident(bytes[at]) {
                            at += 1;
                        }
                        while at < bytes.len() && ident(bytes[at]) {
                            at += 1;
                        }
                    }
                    "self" => {
                        current.get_or_insert_with(Vec::new);
                    }
                    name => current.get_or_insert_with(Vec::new).push(name.to_string()),
                }
            }
            _ => at += 1,
        }
    }
    items.extend(current.take());
    (items, at)
}

/// The file module a path lands in: the longest prefix that is one.
fn file_of(path: &[String], files: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| files.contains_key(prefix))
}

/// Which file modules each file module uses (ancestors left out).
fn graph(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph = BTreeMap::new();
    for (module, path) in files {
        let source = std::fs::read_to_string(path).expect("source file");
        // `self` is the module itself; `super` its parent.
        let mut uses = BTreeSet::new();
        for path in paths(&code_of(&source)) {
            let (mut base, mut rest): (Module, &[String]) = match path[0].as_str() {
                "crate" => (Vec::new(), &path[1..]),
                "self" => (module.clone(), &path[1..]),
                _ => (
                    module[..module.len().saturating_sub(1)].to_vec(),
                    &path[1..],
                ),
            };
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            if let Some(target) = file_of(&base, files) {
                let is_ancestor = module.starts_with(&target);
                if !is_ancestor {
                    uses.insert(target);
                }
            }
        }
        // A parent is made of its children (`mod child;`, often `pub use child::Item`): what a
        // child uses, its parent uses too. The child's use of its parent stays free (above).
        // Test modules (`tests.rs`, compiled only for tests) are left out.
        for child in files.keys() {
            let is_tests = child.last().is_some_and(|last| last == "tests");
            if child.len() == module.len() + 1 && child.starts_with(module) && !is_tests {
                uses.insert(child.clone());
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The graph's strongly connected components of more than one file.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<BTreeSet<Module>> {
    // Kosaraju: finishing order on the graph, then components on its reverse.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for start in graph.keys() {
        if seen.contains(start) {
            continue;
        }
        let mut stack = vec![(start.clone(), false)];
        while let Some((node, done)) = stack.pop() {
            if done {
                order.push(node);
                continue;
            }
            if !seen.insert(node.clone()) {
                continue;
            }
            stack.push((node.clone(), true));
            for next in &graph[&node] {
                if !seen.contains(next) {
                    stack.push((next.clone(), false));
                }
            }
        }
    }
    let mut reverse: BTreeMap<&Module, Vec<&Module>> = BTreeMap::new();
    for (from, tos) in graph {
        for to in tos {
            reverse.entry(to).or_default().push(from);
        }
    }
    let mut assigned = BTreeSet::new();
    let mut components = Vec::new();
    for root in order.iter().rev() {
        if assigned.contains(root) {
            continue;
        }
        let mut component = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            if !assigned.insert(node.clone()) {
                continue;
            }
            component.insert(node.clone());
            for &previous in reverse.get(node).map(Vec::as_slice).unwrap_or(&[]) {
                if !assigned.contains(previous) {
                    stack.push(previous);
                }
            }
        }
        if component.len() > 1 {
            components.push(component);
        }
    }
    components
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "<crate root>".to_string()
    } else {
        module.join("/")
    }
}

#[test]
fn no_source_file_joins_an_import_cycle() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut problems = Vec::new();
    for krate in ["broker", "operator", "config"] {
        let files = modules(&workspace.join(krate).join("src"));
        assert!(files.len() > 1, "{krate}: no sources found");
        let graph = graph(&files);
        for component in cycles(&graph) {
            let files: Vec<String> = component.iter().map(name).collect();
            problems.push(format!("{krate}: files in an import cycle: {files:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_graph_sees_a_cycle_through_super_and_crate_paths() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod c;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use super::super::b::Thing;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::a::c::Other;\n").expect("write");
    let files = modules(src);
    let found = cycles(&graph(&files));
    assert_eq!(found.len(), 1, "{found:?}");
    let names: Vec<String> = found[0].iter().map(name).collect();
    assert_eq!(names, ["a/c", "b"]);
    // A child using its parent is not a cycle.
    std::fs::write(src.join("b.rs"), "pub struct Thing;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod c;\nuse self::c::X;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use super::Y;\n").expect("write");
    assert!(cycles(&graph(&modules(src))).is_empty());
}

#[test]
fn the_graph_sees_a_cycle_through_a_child_its_parent_re_exports() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).expect("mkdir");
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").expect("write");
    std::fs::write(src.join("a/mod.rs"), "mod c;\npub use c::Thing;\n").expect("write");
    std::fs::write(src.join("a/c.rs"), "use crate::b::Other;\n").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::a::Thing;\n").expect("write");
    let found = cycles(&graph(&modules(src)));
    assert_eq!(found.len(), 1, "{found:?}");
    let names: Vec<String> = found[0].iter().map(name).collect();
    assert_eq!(names, ["a", "a/c", "b"]);
}

#[test]
fn the_graph_sees_a_cycle_through_use_groups() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod p;\n").expect("write");
    std::fs::create_dir_all(src.join("p")).expect("mkdir");
    std::fs::write(src.join("p/mod.rs"), "mod codec;\nmod v4;\n").expect("write");
    // Sibling files naming each other inside groups, one nested and renamed.
    std::fs::write(src.join("p/codec.rs"), "use super::{v4, Version};\n").expect("write");
    std::fs::write(
        src.join("p/v4.rs"),
        "use crate::{p::{codec::Error as E, Other}, q};\n",
    )
    .expect("write");
    let found = cycles(&graph(&modules(src)));
    assert_eq!(found.len(), 1, "{found:?}");
    let names: Vec<String> = found[0].iter().map(name).collect();
    assert_eq!(names, ["p/codec", "p/v4"]);
    // The group's own path (`self`) and a glob name the module itself, not a sibling.
    std::fs::write(src.join("p/v4.rs"), "use super::{self, *};\n").expect("write");
    assert!(cycles(&graph(&modules(src))).is_empty());
}
