//! The import-layer check (DESIGN.md §2): reads every `crate::<module>` path in `src/**/*.rs`
//! (in `use` lines and inline paths alike) and fails on an edge between top-level modules that
//! points up the order below, or on a cycle. The allowed edges, bottom to top:
//!
//! 0. `push`, `units`, `clock`, `runtime`, `progress`, `config`, `telemetry`: domain rules and
//!    the utilities every layer uses; among themselves only the edges in `BOTTOM_EDGES`.
//! 1. `sender` (the sender core), `mock` (fake servers, mock Kafka) and `gen` (generator): each
//!    sees layer 0 only, never the others, so a sender bug cannot hide in the fakes.
//! 2. `pipeline` (`pusher run`): sender and below.
//! 3. `report` (report data, gate, HTML): layer 0 only; bench and replay fill it. `platform`
//!    (the HTTP API, the route and results consumers, their PostgreSQL store): pipeline and
//!    below (it shares the pipeline's PostgreSQL pool and Kafka conventions).
//! 4. `bench`: platform, pipeline, report, mock, gen, sender and below.
//! 5. `replay`: bench and below (its pacer and report are bench's).
//! 6. `cli`: everything; nothing imports it.
//!
//! `main.rs` and `lib.rs` are not modules and are skipped. Paths in comments and strings are
//! ignored; `super::` paths stay inside a module by construction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module (see the module docs).
const LAYERS: &[(&str, u8)] = &[
    ("push", 0),
    ("units", 0),
    ("clock", 0),
    ("runtime", 0),
    ("progress", 0),
    ("config", 0),
    ("telemetry", 0),
    ("sender", 1),
    ("mock", 1),
    ("gen", 1),
    ("pipeline", 2),
    ("report", 3),
    ("platform", 3),
    ("bench", 4),
    ("replay", 5),
    ("cli", 6),
];

/// Edges allowed between modules of layer 0 (the rest of that layer sees nothing of it).
const BOTTOM_EDGES: &[(&str, &str)] = &[
    // Valid app names and topics are domain rules the config checks.
    ("config", "push"),
    // Secrets are never logged.
    ("telemetry", "config"),
    // Log lines go above the progress bars.
    ("telemetry", "progress"),
];

/// Layer-1 and layer-3 modules see only the bottom layer.
const BOTTOM_ONLY: &[&str] = &["sender", "mock", "gen", "report"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Why `from -> to` is not allowed, or `None` when it is.
fn refuse(from: &str, to: &str) -> Option<String> {
    let (Some(lf), Some(lt)) = (layer(from), layer(to)) else {
        return Some(format!(
            "{from} -> {to}: a module this check does not know; give it a layer in tests/layers.rs"
        ));
    };
    if lf == 0 {
        return (!BOTTOM_EDGES.contains(&(from, to))).then(|| {
            format!("{from} -> {to}: the bottom layer sees only the edges listed in BOTTOM_EDGES")
        });
    }
    if BOTTOM_ONLY.contains(&from) && lt != 0 {
        return Some(format!(
            "{from} -> {to}: {from} sees only push and the bottom utilities"
        ));
    }
    (lt >= lf).then(|| format!("{from} -> {to}: points up (layer {lf} -> layer {lt})"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for main.rs and lib.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "main" | "lib")).then(|| name.to_string())
}

/// Code without comments and string literals, so that a path in a doc comment or a message
/// is not an edge.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            // A char literal such as '"' must not open a string; lifetimes ('a) pass through.
            '\'' => {
                let rest: String = chars.clone().take(3).collect();
                let quoted = match rest.chars().next() {
                    Some('\\') => rest.chars().nth(2) == Some('\''),
                    Some(_) => rest.chars().nth(1) == Some('\''),
                    None => false,
                };
                if quoted {
                    for c in chars.by_ref() {
                        if c == '\'' {
                            break;
                        }
                    }
                    // An escaped quote ('\'') ends one further on.
                    if rest.starts_with("\\'") {
                        chars.next();
                    }
                    out.push_str("' '");
                } else {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// The top-level modules a file's code names: `crate::x` paths, including those inside a
/// `use crate::{x::.., y::..}` group.
fn targets(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        // `pusher::crate::` cannot occur; `$crate::` (macros) is not ours.
        if code[..i].ends_with('$') || code[..i].ends_with(|c: char| c.is_alphanumeric()) {
            continue;
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the first segment of each item, to the matching brace.
            let mut depth = 1;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        item_start = false;
                        let name = ident(&group[j..]);
                        if !name.is_empty() {
                            found.insert(name);
                        }
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every edge between top-level modules, with one file that makes it.
fn edges() -> BTreeMap<(String, String), PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges = BTreeMap::new();
    for file in files {
        let Some(from) = module_of(&src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for to in targets(&code_only(&text)) {
            if to != from {
                edges
                    .entry((from.clone(), to))
                    .or_insert_with(|| file.strip_prefix(&src).unwrap_or(&file).to_path_buf());
            }
        }
    }
    edges
}

/// A cycle in the graph, as a path that returns to its start.
fn cycle(edges: &BTreeMap<(String, String), PathBuf>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut c: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            c.push(node.to_string());
            return Some(c);
        }
        if !done.insert(node) {
            return None;
        }
        path.push(node);
        for n in next.get(node).into_iter().flatten() {
            if let Some(c) = visit(n, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(c) = visit(node, &next, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn imports_point_down_the_layers() {
    let edges = edges();
    assert!(
        edges.contains_key(&("cli".to_string(), "push".to_string())),
        "the reader found no edges: {edges:?}"
    );
    let wrong: Vec<String> = edges
        .iter()
        .filter_map(|((from, to), file)| {
            refuse(from, to).map(|why| format!("{why} (src/{})", file.display()))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "imports against DESIGN.md §2:\n{}",
        wrong.join("\n")
    );
    assert_eq!(cycle(&edges), None, "an import cycle");
}

#[test]
fn the_reader_finds_paths_and_skips_comments_and_strings() {
    let code = code_only(
        r#"
        use crate::push::Outcome;
        use crate::{sender::Endpoint, config};
        let x = crate::bench::run();
        // crate::cli in a comment
        /* crate::replay in a block */
        let s = "crate::mock in a string \" crate::gen";
        let c = '"'; let t = crate::telemetry::init;
        fn f<'a>(x: &'a str) -> crate::units::Unit { todo!() }
        macro_rules! m { () => { $crate::report::x } }
        "#,
    );
    let found: Vec<String> = targets(&code).into_iter().collect();
    assert_eq!(
        found,
        ["bench", "config", "push", "sender", "telemetry", "units"]
    );
}

#[test]
fn the_rules_refuse_upward_and_sideways_edges() {
    assert_eq!(refuse("cli", "push"), None);
    assert_eq!(refuse("replay", "bench"), None);
    assert_eq!(refuse("bench", "pipeline"), None);
    assert_eq!(refuse("pipeline", "sender"), None);
    assert_eq!(refuse("config", "push"), None);
    for (from, to) in [
        ("config", "pipeline"),
        ("telemetry", "cli"),
        ("sender", "cli"),
        ("mock", "sender"),
        ("gen", "replay"),
        ("report", "bench"),
        ("pipeline", "replay"),
        ("bench", "replay"),
        ("push", "config"),
        ("sender", "newthing"),
    ] {
        assert!(refuse(from, to).is_some(), "{from} -> {to} allowed");
    }
    let mut edges = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a")] {
        edges.insert((a.to_string(), b.to_string()), PathBuf::new());
    }
    assert!(cycle(&edges).is_some());
    edges.remove(&("c".to_string(), "a".to_string()));
    assert_eq!(cycle(&edges), None);
}
