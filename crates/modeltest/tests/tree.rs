//! Checks on the source tree itself, so that what `ARCHITECTURE.md` promises a newcomer stays
//! true:
//!
//! * no crate's modules form a cycle (a module may use its ancestors' items, as Rust's
//!   privacy wants; between siblings and cousins, dependencies point one way);
//! * a source file over 800 lines says why at its top ("Over 800 lines");
//! * every source file of every crate is named in the code map of `ARCHITECTURE.md`;
//! * every repository path the documentation quotes in backticks, and every relative link,
//!   exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The crates of the workspace: `(name of its directory, its src directory)`.
fn crates() -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = std::fs::read_dir(root().join("crates"))
        .expect("crates/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("src").is_dir())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                p.join("src"),
            )
        })
        .collect();
    v.sort();
    v
}

/// The module path of a source file under `src` (`a/b.rs` and `a/b/mod.rs` are `[a, b]`;
/// `lib.rs` and `main.rs` are the root, `[]`); `None` for a file of `src/bin/`.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts
        .last()
        .is_some_and(|l| l == "mod" || ((l == "lib" || l == "main") && parts.len() == 1))
    {
        parts.pop();
    }
    Some(parts)
}

/// The text without comments and without a trailing `#[cfg(test)] mod tests`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a use tree body (`a::b, c::{d, e}`) names, each as segments after `prefix`.
fn expand_use_tree(prefix: &[String], body: &str, out: &mut Vec<Vec<String>>) {
    let mut depth = 0;
    let mut items = Vec::new();
    let mut cur = String::new();
    for ch in body.chars() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(ch);
        }
    }
    items.push(cur);
    for it in items {
        let it = it.trim();
        if it.is_empty() {
            continue;
        }
        if let Some(open) = it.find("::{") {
            let mut p = prefix.to_vec();
            p.extend(it[..open].split("::").map(str::to_string));
            expand_use_tree(&p, &it[open + 3..it.len() - 1], out);
        } else {
            let it = it.split(" as ").next().unwrap_or(it).trim();
            let mut p = prefix.to_vec();
            p.extend(it.split("::").map(|s| s.trim().to_string()));
            out.push(p);
        }
    }
}

/// The end of a brace-balanced body starting right after an opening `{` at `from`.
fn balanced_end(s: &str, from: usize) -> usize {
    let mut depth = 1;
    for (i, ch) in s[from..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return from + i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

/// The `crate::` and `super::` paths a file's code names, as segments (first `crate` or
/// `super`).
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut at = 0;
        while let Some(i) = code[at..].find(start) {
            let i = at + i;
            at = i + start.len();
            // A whole word: not the tail of `type1_crate::` or `$crate::`.
            if i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || b"_$".contains(&bytes[i - 1])) {
                continue;
            }
            // `super::super::x` is read from its first `super`.
            if start == "super::" && code[..i].ends_with("super::") {
                continue;
            }
            let head = start.trim_end_matches("::").to_string();
            let rest = &code[at..];
            if rest.starts_with('{') {
                let end = balanced_end(code, at + 1);
                expand_use_tree(&[head], &code[at + 1..end], &mut out);
                continue;
            }
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut p = vec![head];
            p.extend(
                rest[..len]
                    .trim_end_matches(':')
                    .split("::")
                    .map(str::to_string),
            );
            out.push(p);
        }
    }
    out
}

/// The module graph of one crate: each module (a file) and the modules it uses, leaving out
/// its own ancestors and descendants.
fn module_graph(src: &Path) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .filter_map(|f| Some((module_of(src, f)?, f.clone())))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let code = code_of(&std::fs::read_to_string(file).expect("readable source"));
        let mut uses = BTreeSet::new();
        for path in paths_named(&code) {
            let absolute: Vec<String> = if path[0] == "crate" {
                path[1..].to_vec()
            } else {
                let mut base = module.clone();
                let mut rest = &path[..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                base
            };
            let target = (1..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|m| modules.contains_key(m));
            if let Some(t) = target {
                let related = t.starts_with(module) || module.starts_with(&t);
                if !related {
                    uses.insert(t);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        v: &Vec<String>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        marks.insert(v.clone(), Mark::Open);
        stack.push(v.clone());
        for w in g.get(v).into_iter().flatten() {
            match marks.get(w) {
                Some(Mark::Open) => {
                    let from = stack.iter().position(|x| x == w).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[from..].iter().map(|m| m.join("::")).collect();
                    cycle.push(w.join("::"));
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(g, w, marks, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        marks.insert(v.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for v in graph.keys() {
        if !marks.contains_key(v) {
            if let Some(c) = visit(graph, v, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_only_one() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<Vec<_>>();
    let mut g = BTreeMap::new();
    g.insert(m("a"), BTreeSet::from([m("b")]));
    g.insert(m("b"), BTreeSet::from([m("c")]));
    g.insert(m("c"), BTreeSet::new());
    assert_eq!(find_cycle(&g), None);
    g.get_mut(&m("c")).unwrap().insert(m("a"));
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    let named = paths_named("use crate::{x::{Y, z}, w};\nfn f() { super::super::q::r(); }");
    assert!(named.contains(&m("crate::x::Y")), "{named:?}");
    assert!(named.contains(&m("crate::x::z")), "{named:?}");
    assert!(named.contains(&m("crate::w")), "{named:?}");
    assert!(named.contains(&m("super::super::q::r")), "{named:?}");
}

#[test]
fn no_crate_has_a_module_cycle() {
    let mut cycles = Vec::new();
    for (name, src) in crates() {
        let g = module_graph(&src);
        assert!(
            !g.is_empty(),
            "{name}: no modules found under {}",
            src.display()
        );
        if let Some(c) = find_cycle(&g) {
            cycles.push(format!("{name}: {}", c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

#[test]
fn every_long_source_file_says_why() {
    let mut files = Vec::new();
    for (_, src) in crates() {
        rust_files(&src, &mut files);
        rust_files(&src.join("../tests"), &mut files);
        rust_files(&src.join("../benches"), &mut files);
    }
    assert!(files.len() > 100, "found only {} source files", files.len());
    let mut unexplained = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable source");
        let lines = text.lines().count();
        let head: String = text.lines().take(40).collect::<Vec<_>>().join("\n");
        if lines > 800 && !head.contains("Over 800 lines") {
            unexplained.push(format!("{} ({lines} lines)", f.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "over 800 lines with no reason at the top (\"Over 800 lines: ...\"):\n{}",
        unexplained.join("\n")
    );
}

#[test]
fn the_code_map_names_every_source_file() {
    let map = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut missing = Vec::new();
    for (name, src) in crates() {
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let base = f.file_name().unwrap().to_string_lossy().into_owned();
            if matches!(base.as_str(), "lib.rs" | "main.rs" | "mod.rs") {
                continue;
            }
            let stem = base.trim_end_matches(".rs");
            // Named by its path, its file name, its module (`hooks/`'s `paths`), or its
            // directory (`crates/sim/src/*`, `crates/check/src/`).
            let dir = f
                .parent()
                .unwrap()
                .strip_prefix(root())
                .map_or(String::new(), |d| {
                    d.to_string_lossy().trim_start_matches("./").to_string()
                });
            let dir = dir.trim_start_matches("crates/../").to_string();
            let named = map.contains(&rel)
                || map.contains(&format!("`{base}`"))
                || map.contains(&format!("`{stem}`"))
                || map.contains(&format!("`crates/{name}/src/{rel}`"))
                || map.contains(&format!("`{}/`", normalize(&dir)))
                || map.contains(&format!("`{}/*`", normalize(&dir)));
            if !named {
                missing.push(format!("crates/{name}/src/{rel}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "source files the code map of ARCHITECTURE.md does not name:\n{}",
        missing.join("\n")
    );
}

/// `crates/x/src/..` without any `../` components (the root is `crates/modeltest/../..`).
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            ".." => {
                out.pop();
            }
            "" | "." => {}
            c => out.push(c),
        }
    }
    // Keep the part from `crates/` on.
    let s = out.join("/");
    match s.find("crates/") {
        Some(i) => s[i..].to_string(),
        None => s,
    }
}

/// The Markdown files of the repository: the top level, `docs/` and `docs/findings/`.
fn markdown_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    for dir in [root(), root().join("docs"), root().join("docs/findings")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.path().extension().is_some_and(|x| x == "md") {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn every_path_the_docs_quote_exists() {
    let tops = [
        "crates/",
        "docs/",
        "scripts/",
        "tests/",
        "fuzz/",
        "machines/",
        ".ci/",
    ];
    let docs = markdown_files();
    assert!(docs.len() >= 10, "found only {} Markdown files", docs.len());
    let mut broken = Vec::new();
    for f in docs {
        let text = std::fs::read_to_string(&f).expect("readable");
        // Quoted paths: `crates/...`.
        for quoted in text.split('`').skip(1).step_by(2) {
            if !tops.iter().any(|t| quoted.starts_with(t)) || quoted.contains(char::is_whitespace) {
                continue;
            }
            if quoted.contains(['*', '<', '{']) {
                continue;
            }
            // `file.rs:12` or `file.rs::Item` name a place in the file.
            let path = quoted.split("::").next().unwrap_or(quoted);
            let path = path.split(':').next().unwrap_or(path);
            let path = path.trim_end_matches(['.', ',', ';', ')']);
            if !root().join(path).exists() {
                broken.push(format!("{}: `{quoted}`", f.display()));
            }
        }
        // Relative links: [text](path).
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            if !f.parent().unwrap().join(target).exists() {
                broken.push(format!("{}: link ({target})", f.display()));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "paths in the docs that do not exist:\n{}",
        broken.join("\n")
    );
}
