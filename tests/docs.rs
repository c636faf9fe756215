//! The documentation stays in step with the code: every key of `config/default.toml` is
//! named in `docs/CONFIGURATION.md`, the README stays short, and relative links (and their
//! `#anchors`) in README.md and docs/*.md point at something that exists.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The README must stay below this many bytes; the details live under docs/.
const README_MAX_BYTES: u64 = 10_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `key` of a `key = value` line, if `line` is one (bare keys only, as default.toml uses).
fn assigned_key(line: &str) -> Option<&str> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    (bare && !value.trim().is_empty()).then_some(key)
}

/// Every key of a TOML file as `section.key` (`key` before the first section), in order.
/// Commented-out assignments (`# admin_port = 9464`) count too: they are settings that
/// exist but are unset by default, and the documentation must name them as well.
fn toml_keys(text: &str) -> Vec<String> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let name = header.split(']').next().unwrap_or_default();
            section = name.trim().to_string();
            continue;
        }
        let assignment = match line.strip_prefix('#') {
            Some(comment) => comment.trim(),
            None => line,
        };
        if let Some(key) = assigned_key(assignment) {
            keys.push(if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            });
        }
    }
    keys
}

#[test]
fn the_key_parser_reads_sections_and_commented_keys() {
    let text = "top = 1\n\n[server]\n# Largest body.\nbody_limit_bytes = 1048576\n\
                host = \"127.0.0.1\" # trailing\n[metrics]\n# Unset: the main port.\n\
                # admin_port = 9464\n";
    assert_eq!(
        toml_keys(text),
        [
            "top",
            "server.body_limit_bytes",
            "server.host",
            "metrics.admin_port"
        ]
    );
}

#[test]
fn every_default_setting_is_documented() {
    let keys = toml_keys(&read(&root().join("config/default.toml")));
    assert!(
        keys.len() > 50,
        "config/default.toml parsed into only {} keys: {keys:?}",
        keys.len()
    );
    assert!(keys.iter().any(|k| k == "metrics.admin_port"));
    let doc = read(&root().join("docs/CONFIGURATION.md"));
    let missing: Vec<&String> = keys
        .iter()
        .filter(|key| !doc.contains(&format!("`{key}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/CONFIGURATION.md does not name these keys of config/default.toml \
         (write each as `section.key`): {missing:?}"
    );
}

#[test]
fn readme_is_short() {
    let size = fs::metadata(root().join("README.md"))
        .expect("README.md exists")
        .len();
    assert!(
        size < README_MAX_BYTES,
        "README.md is {size} bytes; keep it under {README_MAX_BYTES} and move details to docs/"
    );
}

/// The markdown files whose links are checked: README.md and docs/*.md.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no .md files");
    files.extend(docs);
    files
}

/// The text outside fenced code blocks, with inline code spans removed.
fn prose(markdown: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        lines.push(kept);
    }
    lines
}

/// Targets of inline links `[text](target)` and reference definitions `[x]: target`.
fn link_targets(markdown: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(markdown) {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((_, rest)) = trimmed.split_once("]:")
        {
            if let Some(target) = rest.split_whitespace().next() {
                targets.push(target.to_string());
            }
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or_default();
            targets.push(target.trim_matches(['<', '>']).to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's anchors for a file's headings: lower case, punctuation dropped, spaces to `-`,
/// repeated headings numbered `-1`, `-2`, ...
fn anchors(markdown: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let Some(heading) = line.strip_prefix('#') else {
            continue;
        };
        if in_fence {
            continue;
        }
        let text = heading.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let slug: String = text
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !anchors.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    anchors
}

/// What is wrong with one link target written in `file`, if anything.
fn broken(file: &Path, target: &str) -> Option<String> {
    let lower = target.to_ascii_lowercase();
    if target.is_empty() || lower.contains("://") || lower.starts_with("mailto:") {
        return None;
    }
    let (path, fragment) = match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    };
    let linked = if path.is_empty() {
        file.to_path_buf()
    } else {
        file.parent().expect("a file has a folder").join(path)
    };
    if !linked.exists() {
        return Some(format!("{target}: {} does not exist", linked.display()));
    }
    let fragment = fragment.filter(|f| !f.is_empty())?;
    if linked.extension().is_none_or(|ext| ext != "md") {
        return None;
    }
    (!anchors(&read(&linked)).contains(fragment))
        .then(|| format!("{target}: no heading with the anchor #{fragment}"))
}

#[test]
fn the_link_checker_finds_links_and_anchors() {
    let text = "# Title\n## Rate limits\n[a](docs/X.md) and [b](#rate-limits \"t\")\n\
                `[not](a-link)`\n```\n[no](code)\n```\n[ref]: ../bench/run.sh\n";
    assert_eq!(
        link_targets(text),
        ["docs/X.md", "#rate-limits", "../bench/run.sh"]
    );
    let found = anchors(text);
    assert!(found.contains("title") && found.contains("rate-limits"));
    assert!(
        anchors("## Browser ingestion: CORS and beacon mode\n")
            .contains("browser-ingestion-cors-and-beacon-mode")
    );
}

#[test]
fn relative_links_point_at_files_that_exist() {
    let mut problems = Vec::new();
    for file in markdown_files() {
        for target in link_targets(&read(&file)) {
            if let Some(problem) = broken(&file, &target) {
                let name = file.strip_prefix(root()).unwrap_or(&file);
                problems.push(format!("{}: {problem}", name.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}
