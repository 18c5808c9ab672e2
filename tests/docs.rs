//! Docs that cannot drift: every registered `kind` has a row in its crate's README and in the
//! root README, no README or doc points outside the repository (a clone has nothing beside it),
//! and no `--help` text states a default as a number written by hand.
//!
//! Nothing here keeps a list of its own: the kinds and their summaries come from the registries
//! (`KINDS`, checked against the pipeline loader's error for an unknown kind), the subcommands
//! from `beamflow --help`, the documents from walking the tree.

use std::path::{Component, Path, PathBuf};

use beamflow::pipeline::Pipeline;

use crate::util::{beamflow_output, root};

/// A `kind` no registry has, so the loader lists the ones it has.
const NOT_A_KIND: &str = "no_such_kind";

/// One registry of the pipeline file: its table, and where its kinds are documented.
struct Registry {
    /// The pipeline file's table (`[ingesters.<name>]`).
    table: &'static str,
    /// Each kind with its summary, from the registry itself.
    kinds: &'static [(&'static str, &'static str)],
    /// How the root README's "kind | output / view" table names one (`analysis`); `None` when
    /// that table has no rows for this registry.
    word: Option<&'static str>,
    /// The crate whose README has a row per kind.
    krate: &'static str,
    /// The folder of one file per kind, as the root README's "What works today" row names it.
    folder: &'static str,
}

const REGISTRIES: [Registry; 3] = [
    Registry {
        table: "ingesters",
        kinds: beamflow_ingesters::KINDS,
        word: None,
        krate: "ingesters",
        folder: "ingesters/src/sources/",
    },
    Registry {
        table: "analyses",
        kinds: beamflow_workers::analyses::KINDS,
        word: Some("analysis"),
        krate: "workers",
        folder: "workers/src/analyses/",
    },
    Registry {
        table: "accumulators",
        kinds: beamflow_reducer::accumulators::KINDS,
        word: Some("accumulator"),
        krate: "reducer",
        folder: "reducer/src/accumulators/",
    },
];

/// The kinds the real deserializer accepts for `[<table>.<name>]`, read from serde's "unknown
/// variant `x`, expected one of `a`, `b`, ..." (or "expected `a`" / "`a` or `b`" for fewer).
fn registered_kinds(table: &str) -> Vec<String> {
    let pipeline = format!("[{table}.probe]\nkind = \"{NOT_A_KIND}\"\n");
    let error = Pipeline::parse(&pipeline).expect_err("an unknown kind is refused");
    let message = format!("{error:#}");
    assert!(
        message.contains(&format!("unknown variant `{NOT_A_KIND}`")),
        "[{table}] refused {NOT_A_KIND} for another reason: {message}"
    );
    let (_, expected) = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("[{table}]: no list of kinds in {message:?}"));
    let kinds: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(!kinds.is_empty(), "[{table}]: no kinds in {message:?}");
    kinds
}

#[test]
fn every_registered_kind_has_a_readme_row() {
    let root_readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let mut missing = Vec::new();
    for registry in &REGISTRIES {
        let kinds: Vec<&str> = registry.kinds.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(
            registered_kinds(registry.table),
            kinds,
            "[{}]: the loader accepts other kinds than the registry lists",
            registry.table
        );
        let crate_dir = root().join(registry.krate);
        let readme = std::fs::read_to_string(crate_dir.join("README.md")).unwrap();
        let works_today = root_readme
            .lines()
            .find(|line| line.starts_with('|') && line.contains(&format!("`{}`", registry.folder)))
            .unwrap_or_default();
        for (kind, summary) in registry.kinds {
            let row_start = format!("| `{kind}` |");
            match readme.lines().find(|line| line.starts_with(&row_start)) {
                None => missing.push(format!(
                    "{}/README.md: no table row for {kind} (a line starting \"{row_start}\")",
                    registry.krate
                )),
                Some(row) => {
                    // The row's file column names files that exist (the stem is the kind).
                    let files: Vec<&str> = row
                        .split('`')
                        .skip(1)
                        .step_by(2)
                        .filter(|code| code.ends_with(".rs"))
                        .collect();
                    if !files
                        .iter()
                        .any(|file| file.ends_with(&format!("/{kind}.rs")))
                    {
                        missing.push(format!(
                            "{}/README.md: the row of `{kind}` names no `.../{kind}.rs`",
                            registry.krate
                        ));
                    }
                    for file in files.iter().filter(|file| !crate_dir.join(file).is_file()) {
                        missing.push(format!(
                            "{}/README.md: the row of `{kind}` names {file}, which does not exist",
                            registry.krate
                        ));
                    }
                    // The last column is the summary the kind's config declares.
                    if !row.ends_with(&format!("| {summary} |")) {
                        missing.push(format!(
                            "{}/README.md: the row of `{kind}` should end \"| {summary} |\" (its \
                             SUMMARY)",
                            registry.krate
                        ));
                    }
                }
            }
            if !works_today.contains(&format!("`{kind}`")) {
                missing.push(format!(
                    "README.md: the \"What works today\" row of `{}` does not list `{kind}`",
                    registry.folder
                ));
            }
            if let Some(word) = registry.word
                && !root_readme
                    .lines()
                    .any(|line| line.starts_with(&format!("| {word} `{kind}` |")))
            {
                missing.push(format!(
                    "README.md: the kind table has no row \"| {word} `{kind}` |\""
                ));
            }
        }
        // And no row documents a kind that is not registered.
        let documented = readme
            .lines()
            .filter_map(|line| line.strip_prefix("| `")?.split_once("` |"))
            .map(|(kind, _)| kind);
        let root_documented = registry.word.into_iter().flat_map(|word| {
            let prefix = format!("| {word} `");
            root_readme.lines().filter_map(move |line| {
                Some(line.strip_prefix(&prefix)?.split_once("` |")?.0.to_owned())
            })
        });
        for kind in documented
            .map(str::to_owned)
            .chain(root_documented)
            .filter(|kind| !kinds.contains(&kind.as_str()))
        {
            missing.push(format!(
                "a README row documents `{kind}`, which no registry has"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "registered kinds missing from the docs:\n{}",
        missing.join("\n")
    );
}

/// The user-facing documents: every README, the CHANGELOG and `docs/`.
fn documents() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                // Hidden folders (.git, .venv) and build output are not the repository's docs.
                if !name.starts_with('.') && name != "target" {
                    walk(&path, found);
                }
            } else if name == "README.md" || (dir.ends_with("docs") && name.ends_with(".md")) {
                found.push(path);
            }
        }
    }
    let mut found = vec![root().join("CHANGELOG.md")];
    walk(&root(), &mut found);
    found.sort();
    found
}

/// Where `target`, written in a document in `dir` (relative to the root), points: `None` if it
/// climbs out of the repository.
fn resolve(dir: &Path, target: &str) -> Option<PathBuf> {
    let mut parts: Vec<Component<'_>> = dir.components().collect();
    for part in Path::new(target).components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(_) => parts.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// Targets of markdown links in `line`: inline `[text](target)` and reference `[label]: target`.
fn link_targets(line: &str) -> Vec<&str> {
    let mut targets: Vec<&str> = line
        .split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .map(|target| target.split_whitespace().next().unwrap_or_default())
        .collect();
    if let Some(rest) = line.trim_start().strip_prefix('[')
        && let Some((_, after)) = rest.split_once(']')
        && let Some(definition) = after.strip_prefix(": ")
    {
        // CommonMark: a destination, then at most a quoted or parenthesised title; CHANGELOG's
        // `[#6]: issue 6, "title"` is text, not a definition.
        let (target, title) = definition
            .trim()
            .split_once(char::is_whitespace)
            .unwrap_or((definition.trim(), ""));
        if title.is_empty() || title.trim_start().starts_with(['"', '\'', '(']) {
            targets.push(target);
        }
    }
    targets
}

/// Paths in `line` that start by climbing (`../...`), in code spans and prose alike.
fn climbing_paths(line: &str) -> Vec<&str> {
    let mut paths = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("../") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| c.is_whitespace() || "`)]>\"',;".contains(c))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_alphanumeric() || "./_-".contains(c)) {
            paths.push(&tail[..end]);
        }
        rest = &tail[end.max(3)..];
    }
    paths
}

#[test]
fn no_doc_link_leaves_the_repository() {
    let root = root();
    let mut bad = Vec::new();
    for document in documents() {
        let text = std::fs::read_to_string(&document).unwrap();
        let relative = document.strip_prefix(&root).unwrap();
        let dir = relative.parent().unwrap();
        for (number, line) in text.lines().enumerate() {
            let place = format!("{}:{}", relative.display(), number + 1);
            for target in link_targets(line) {
                let target = target.split('#').next().unwrap_or_default();
                if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                match resolve(dir, target) {
                    None => bad.push(format!("{place}: link {target} leaves the repository")),
                    Some(path) if !root.join(&path).exists() => {
                        bad.push(format!("{place}: link {target}: no {}", path.display()));
                    }
                    Some(_) => {}
                }
            }
            for path in climbing_paths(line) {
                match resolve(dir, path) {
                    None => bad.push(format!("{place}: {path} leaves the repository")),
                    Some(resolved) if !root.join(&resolved).exists() => {
                        bad.push(format!("{place}: {path}: no {}", resolved.display()));
                    }
                    Some(_) => {}
                }
            }
            if line.contains("/work/") || line.contains("file://") {
                bad.push(format!(
                    "{place}: an absolute path on a developer's machine"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "docs pointing outside the repository (a clone has nothing beside it):\n{}",
        bad.join("\n")
    );
}

/// The subcommands a `--help` text lists under "Commands:", but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        // A wrapped description continues deeper; a command starts at two spaces.
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// `beamflow <command...> --help`, for every subcommand at every depth.
fn every_help() -> Vec<(String, String)> {
    let mut pending = vec![Vec::<String>::new()];
    let mut helps = Vec::new();
    while let Some(command) = pending.pop() {
        let mut args: Vec<&str> = command.iter().map(String::as_str).collect();
        args.push("--help");
        let output = beamflow_output(&args);
        assert!(
            output.status.success(),
            "beamflow {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        let help = String::from_utf8(output.stdout).unwrap();
        for sub in subcommands(&help) {
            let mut deeper = command.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
        helps.push((command.join(" "), help));
    }
    helps
}

/// Hand-written defaults in a help text: outside clap's own `[default: ...]` (which comes from
/// the code), case-insensitive, "default" then, within the same clause, a colon and a number
/// ("default: 5", "default without --pipeline: 100000"), or "default(s) to/is/of/= <number>".
fn hand_written_defaults(help: &str) -> Vec<String> {
    let mut text = help.split_whitespace().collect::<Vec<_>>().join(" ");
    while let Some(start) = text.find("[default: ") {
        let end = text[start..]
            .find(']')
            .map_or(text.len(), |end| start + end + 1);
        text.replace_range(start..end, "");
    }
    // ASCII only, so byte offsets in `lower` are offsets in `text`.
    let lower = text.to_ascii_lowercase();
    let starts_with_number = |s: &str| s.trim_start().starts_with(|c: char| c.is_ascii_digit());
    let mut found = Vec::new();
    for (at, _) in lower.match_indices("default") {
        if lower[..at]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
        {
            continue;
        }
        let rest = &lower[at + "default".len()..];
        let clause_end = rest.find(|c| ":.;()[]".contains(c)).unwrap_or(rest.len());
        let colon_number = rest[clause_end..].starts_with(':')
            && clause_end <= 60
            && starts_with_number(&rest[clause_end + 1..]);
        let rest = rest.strip_prefix('s').unwrap_or(rest).trim_start();
        let verb_number = ["to ", "is ", "of ", "="]
            .iter()
            .any(|verb| rest.strip_prefix(verb).is_some_and(starts_with_number));
        if colon_number || verb_number {
            let phrase = &text[at..];
            let end = phrase
                .char_indices()
                .skip("default".len())
                .find(|&(i, c)| i >= 80 || ".;)]".contains(c))
                .map_or(phrase.len(), |(i, _)| i);
            found.push(phrase[..end].to_owned());
        }
    }
    found
}

#[test]
fn help_defaults_come_from_the_code() {
    let helps = every_help();
    assert!(
        helps.iter().any(|(command, _)| command == "run"),
        "no `run` among the subcommands found: {:?}",
        helps.iter().map(|(command, _)| command).collect::<Vec<_>>()
    );
    let bad: Vec<String> = helps
        .iter()
        .flat_map(|(command, help)| {
            hand_written_defaults(help)
                .into_iter()
                .map(move |phrase| format!("beamflow {command} --help: \"{phrase}...\""))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "defaults written by hand in help text drift from the code; show them with clap's \
         `default_value_t` (printed as `[default: N]`) or from the constant:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_are_for() {
    assert_eq!(
        hand_written_defaults("--events <N>  A scan (default without --pipeline: 100000)"),
        ["default without --pipeline: 100000"]
    );
    assert_eq!(
        hand_written_defaults("Threads; defaults to 4"),
        ["defaults to 4"]
    );
    assert!(hand_written_defaults("Rate [default: 10]").is_empty());
    assert!(hand_written_defaults("(port default: EPICS_CA_SERVER_PORT or 5064)").is_empty());
    assert!(hand_written_defaults("Loopback by default: names must not leak").is_empty());

    assert_eq!(
        climbing_paths("as `../shared/x.md` §3, see ../a and a/../b"),
        ["../shared/x.md", "../a"]
    );
    assert_eq!(resolve(Path::new(""), "../shared/x.md"), None);
    assert_eq!(
        resolve(Path::new("ingesters"), "../docs/physics.md"),
        Some(PathBuf::from("docs/physics.md"))
    );
    assert_eq!(
        link_targets("[a](docs/a.md#x) and [b](https://x.org) [c]: ../c.md"),
        ["docs/a.md#x", "https://x.org"]
    );
    assert_eq!(link_targets("[c]: ../c.md \"C\""), ["../c.md"]);
    assert!(link_targets("[#6]: issue 6, \"Surrogates\"").is_empty());
    assert_eq!(
        subcommands("Commands:\n  run  Runs\n  help  Help\n\nOptions:\n"),
        ["run"]
    );
}

/// The fenced blocks of `lang` in a Markdown text, without their fences.
fn code_blocks<'a>(markdown: &'a str, lang: &str) -> Vec<&'a str> {
    let open = format!("```{lang}\n");
    markdown
        .split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .collect()
}

/// Lines before the tests, and of those the ones that are neither blank nor comments.
fn template_size(source: &str) -> (usize, usize) {
    let (body, _) = source.split_once("#[cfg(test)]").unwrap_or((source, ""));
    let lines: Vec<&str> = body.trim_end().lines().collect();
    let code = lines
        .iter()
        .filter(|line| !line.trim().is_empty() && !line.trim_start().starts_with("//"))
        .count();
    (lines.len(), code)
}

#[test]
fn the_tutorial_is_the_template_word_for_word() {
    let tutorial = std::fs::read_to_string(root().join("docs/tutorials/analysis.md")).unwrap();
    let analysis =
        std::fs::read_to_string(root().join("workers/src/analyses/centroid.rs")).unwrap();
    let accumulator =
        std::fs::read_to_string(root().join("reducer/src/accumulators/mean.rs")).unwrap();
    let blocks = code_blocks(&tutorial, "rust");
    assert_eq!(blocks.len(), 3, "the file, its tests, the accumulator");
    for block in &blocks {
        assert!(
            analysis.contains(block) || accumulator.contains(block),
            "docs/tutorials/analysis.md: a rust block is not in centroid.rs or mean.rs:\n{block}"
        );
    }
    assert!(analysis.starts_with(blocks[0]) && analysis.trim_end().ends_with(blocks[1]));
    assert!(accumulator.starts_with(blocks[2]));
    let ((lines, code), (acc_lines, acc_code)) =
        (template_size(&analysis), template_size(&accumulator));
    let proper = analysis
        .lines()
        .skip_while(|line| !line.starts_with("impl Analysis for"))
        .position(|line| line == "}")
        .map_or(0, |last| last + 1);
    let sizes = format!(
        "the analysis file is {lines} lines ({code} of code) before its tests, of which the\n\
         analysis proper (`impl Analysis`) is {proper}; the accumulator file is {acc_lines} lines \
         ({acc_code} of code)."
    );
    assert!(
        tutorial.contains(&sizes),
        "the tutorial should say: {sizes}"
    );
    for block in code_blocks(&tutorial, "toml") {
        if let Err(error) = Pipeline::parse(block) {
            panic!("docs/tutorials/analysis.md: {error:#}\n{block}");
        }
    }
}
