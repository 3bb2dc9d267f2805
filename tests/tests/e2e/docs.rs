//! The README's configuration table and the binaries' `--help` list the same settings.

use std::collections::BTreeSet;

/// (flag, env) pairs from `<binary> serve --help`.
fn help_pairs(binary: &std::path::Path) -> BTreeSet<(String, String)> {
    let out = std::process::Command::new(binary).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut pairs = BTreeSet::new();
    let mut flag: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("--") {
            flag = t.split_whitespace().next().map(str::to_owned);
        } else if let Some(rest) = t.strip_prefix("[env: ") {
            let env = rest.split(['=', ']']).next().unwrap().to_owned();
            pairs.insert((flag.clone().expect("env line before any flag"), env));
        }
    }
    pairs
}

fn readme_pairs() -> BTreeSet<(String, String)> {
    let readme = std::fs::read_to_string(hub_tests::workspace_root().join("README.md")).unwrap();
    readme
        .lines()
        .filter(|l| l.starts_with("| `--"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(|c| c.trim().trim_matches('`')).collect();
            (cells[1].to_owned(), cells[2].to_owned())
        })
        .collect()
}

/// Every flag/env pair in `--help` of both binaries is in the README table, and every row of the
/// table exists in one of them.
#[test]
fn the_readme_configuration_table_matches_the_help_of_both_binaries() {
    let bins = hub_tests::binaries();
    let mut help = help_pairs(&bins.gateway);
    help.extend(help_pairs(&bins.processor));
    let readme = readme_pairs();
    let missing: Vec<_> = help.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&help).collect();
    assert!(missing.is_empty(), "in --help but not in README.md: {missing:?}");
    assert!(stale.is_empty(), "in README.md but not in --help: {stale:?}");
}
