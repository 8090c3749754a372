//! The README's metric table and the typed catalogue say the same: every family the agent can
//! emit is documented, with its kind and tags, and nothing documented is missing from the code.

use std::collections::BTreeMap;

use crate::catalogue::LATENCY_SUFFIXES;

/// Expands `a.{x,y}_b` into `a.x_b`, `a.y_b`; `{...}` stands for the latency suffixes.
fn expand(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else {
        return vec![pattern.to_string()];
    };
    let close = open + pattern[open..].find('}').expect("closing brace");
    let inner = &pattern[open + 1..close];
    let choices: Vec<&str> = if inner == "..." {
        LATENCY_SUFFIXES.to_vec()
    } else {
        inner.split(',').collect()
    };
    choices
        .iter()
        .flat_map(|c| expand(&format!("{}{c}{}", &pattern[..open], &pattern[close + 1..])))
        .collect()
}

/// Metric name → (kind, tags) from the README's catalogue table.
fn readme_table() -> BTreeMap<String, (String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("## Metric catalogue")
        .nth(1)
        .expect("a Metric catalogue section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut out = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let (names, kind, tags) = (cols[1], cols[2], cols[3]);
        for name in names.split(", ") {
            for n in expand(name.trim_matches('`')) {
                out.insert(n, (kind.to_string(), tags.replace('`', "")));
            }
        }
    }
    out
}

#[test]
fn the_readme_documents_exactly_the_catalogue() {
    let readme = readme_table();
    assert!(readme.len() > 50, "parsed {} rows", readme.len());
    let mut code = BTreeMap::new();
    for def in crate::metric_catalogue() {
        for n in def.names() {
            code.insert(n, (def.kind().as_str().to_string(), def.tags.join(", ")));
        }
    }
    let undocumented: Vec<&String> = code.keys().filter(|n| !readme.contains_key(*n)).collect();
    let unknown: Vec<&String> = readme.keys().filter(|n| !code.contains_key(*n)).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "not in the README: {undocumented:?}; in the README but not emitted: {unknown:?}"
    );
    for (name, doc) in &readme {
        assert_eq!(&code[name], doc, "kind and tags of {name}");
    }
}

#[test]
fn no_metric_tag_is_a_riemann_event_field() {
    // Riemann merges attributes into the event: a tag named like a field would overwrite it.
    for def in crate::metric_catalogue() {
        for tag in def.tags {
            assert!(
                !agent_core::sinks::riemann::RESERVED_KEYS.contains(tag),
                "{}: tag {tag:?} would overwrite a Riemann event field",
                def.name
            );
        }
    }
}
