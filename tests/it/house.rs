//! The house rules that no compiler checks, checked on the source tree: no circle of imports
//! among the modules of one crate, and no table name spelled outside n0m1-core.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use n0m1_core::schema::{N0M1_TABLES, ORIGINAL_TABLES};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// The text with `//` comments and everything from the first `#[cfg(test)]` on removed
/// (tests spell tables and reach into their parents freely).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal (a URL) is kept: only whole comment lines and
            // trailing comments after code with no quote before them are dropped.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are module `a::b`; `lib.rs` and `main.rs` the root.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod")
        || (parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main"))
    {
        parts.pop();
    }
    parts
}

/// `use a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand_use(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_owned()];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').filter(|c| *c > open).unwrap_or(tree.len());
    let body = &tree[open + 1..close];
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand_use(&format!("{prefix}{p}")))
        .collect()
}

/// Every path a module names that starts at `crate`, `super` or `self`: in its `use`
/// items and written out in its code.
fn paths_in(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let item = line.trim_start();
        let item = item
            .strip_prefix("pub ")
            .or_else(|| item.strip_prefix("pub(crate) "))
            .or_else(|| item.strip_prefix("pub(super) "))
            .unwrap_or(item);
        let Some(tree) = item.strip_prefix("use ") else {
            continue;
        };
        let mut tree = tree.to_owned();
        while !tree.contains(';') {
            match lines.next() {
                Some(more) => tree.push_str(more),
                None => break,
            }
        }
        let tree: String = tree
            .split(';')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        paths.extend(expand_use(&tree));
    }
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start).map(|i| i + from) {
            from = at + start.len();
            // Inside a longer path (`super::super::`, `n0m1_core::`): counted from its start.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || b"_:".contains(&bytes[at - 1])) {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| e + at);
            paths.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    paths
}

/// The module a path from `module` lands in: the longest known prefix.
fn target(module: &[String], path: &str, known: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments = path.split("::").peekable();
    let mut base: Vec<String> = match *segments.peek()? {
        "crate" => {
            segments.next();
            Vec::new()
        }
        "super" | "self" => module.to_vec(),
        _ => return None,
    };
    while let Some(&segment) = segments.peek() {
        match segment {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        segments.next();
    }
    let mut best = base.clone();
    for segment in segments {
        base.push(segment.to_owned());
        if known.contains(&base) {
            best = base.clone();
        }
    }
    Some(best)
}

/// The circles of imports among one crate's modules (strongly connected components of more
/// than one module).
fn circles(src: &Path) -> Vec<Vec<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_none_or(|n| n != "tests.rs"))
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let known: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    let edges: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> = modules
        .iter()
        .map(|(module, file)| {
            let targets = paths_in(&code_of(file))
                .iter()
                .filter_map(|path| target(module, path, &known))
                .filter(|t| t != module && known.contains(t))
                .collect();
            (module, targets)
        })
        .collect();
    // Two modules are in one circle when each reaches the other.
    let reach = |from: &Vec<String>| -> BTreeSet<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(next) = stack.pop() {
            for to in &edges[&next] {
                if seen.insert(to.clone()) {
                    stack.push(to.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&Vec<String>, BTreeSet<Vec<String>>> =
        known.iter().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for module in &known {
        if !reaches[module].contains(module) {
            continue;
        }
        let mut circle: Vec<String> = known
            .iter()
            .filter(|other| reaches[module].contains(*other) && reaches[*other].contains(module))
            .map(|m| {
                if m.is_empty() {
                    "crate".to_owned()
                } else {
                    m.join("::")
                }
            })
            .collect();
        circle.sort();
        if !out.contains(&circle) {
            out.push(circle);
        }
    }
    out
}

#[test]
fn no_crate_has_a_circle_of_imports_among_its_modules() {
    let crates = workspace().join("crates");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&crates).unwrap().flatten() {
        let src = entry.path().join("src");
        for circle in circles(&src) {
            found.push(format!(
                "{}: {}",
                entry.file_name().to_string_lossy(),
                circle.join(" <-> ")
            ));
        }
    }
    found.sort();
    assert!(
        found.is_empty(),
        "modules that import each other (move what both need into a module of its own):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_circle_finder_finds_a_circle() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::{Thing, other::X};\n").unwrap();
    std::fs::create_dir(src.join("b")).unwrap();
    std::fs::write(
        src.join("b/mod.rs"),
        "pub mod other;\nfn f() { super::a::g() }\n",
    )
    .unwrap();
    std::fs::write(src.join("b/other.rs"), "use super::super::c;\n").unwrap();
    std::fs::write(src.join("c.rs"), "// use crate::a;\nfn g() {}\n").unwrap();
    assert_eq!(circles(src), [vec!["a".to_owned(), "b".to_owned()]]);
}

/// A string literal outside n0m1-core that names a table, either alone or inside SQL: the
/// table's name belongs to `n0m1_core::schema`, its SQL to the module that owns it.
#[test]
fn no_table_name_is_spelled_outside_core() {
    let tables: Vec<&str> = ORIGINAL_TABLES.iter().chain(N0M1_TABLES).copied().collect();
    let root = workspace();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        if entry.file_name() != "core" {
            rust_files(&entry.path().join("src"), &mut files);
        }
    }
    rust_files(&root.join("bins"), &mut files);
    let sql_words = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "FROM", "INTO", "CREATE", "DROP", "JOIN",
    ];
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.file_name().is_none_or(|n| n != "tests.rs"))
    {
        let code = code_of(file);
        for literal in code.split('"').skip(1).step_by(2) {
            let is_sql = sql_words.iter().any(|w| literal.contains(w));
            for table in &tables {
                let named = literal == *table
                    || (is_sql
                        && literal
                            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .any(|word| word == *table));
                if named {
                    found.push(format!(
                        "{}: {table} in \"{}\"",
                        file.strip_prefix(&root).unwrap().display(),
                        literal.chars().take(80).collect::<String>()
                    ));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "table names spelled outside n0m1-core (use n0m1_core::schema's constants and the table's owning module):\n{}",
        found.join("\n")
    );
}
