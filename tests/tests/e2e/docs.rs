//! The README's configuration table and the binaries' `--help` list the same settings.

use std::collections::BTreeSet;

/// (flag, env) pairs from `<binary> serve --help`.
fn help_pairs(binary: &std::path::Path) -> BTreeSet<(String, String)> {
    let out = std::process::Command::new(binary)
        .args(["serve", "--help"])
        .output()
        .unwrap();
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
    assert!(
        missing.is_empty(),
        "in --help but not in README.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in README.md but not in --help: {stale:?}"
    );
}

/// The Compose stack stays in step with the binaries: its hub services run the real
/// subcommands, set only environment variables the binaries read, and use their health routes.
#[test]
fn the_compose_file_uses_only_real_settings_and_subcommands() {
    let text =
        std::fs::read_to_string(hub_tests::workspace_root().join("compose/docker-compose.yml"))
            .unwrap();
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).expect("docker-compose.yml is not valid YAML");
    let bins = hub_tests::binaries();
    let mut known: BTreeSet<String> = help_pairs(&bins.gateway)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    known.extend(help_pairs(&bins.processor).into_iter().map(|(_, e)| e));
    known.insert("RUST_LOG".into());
    let services = doc["services"].as_mapping().expect("services");
    for (name, binary) in [("processor", "processor"), ("gateway", "gateway")] {
        let svc = &services[name];
        let command: Vec<&str> = svc["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(command, vec![binary, "serve"], "{name} command");
        let env = svc["environment"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{name} environment"));
        for key in env.keys().filter_map(|k| k.as_str()).filter(|k| *k != "<<") {
            assert!(
                known.contains(key),
                "{name} sets {key}, which no binary reads"
            );
        }
        let health = format!("{:?}", svc["healthcheck"]["test"]);
        assert!(health.contains("/readyz"), "{name} health check: {health}");
    }
    let anchors = doc["x-hub-env"].as_mapping().expect("x-hub-env");
    for key in anchors.keys().filter_map(|k| k.as_str()) {
        assert!(
            known.contains(key),
            "x-hub-env sets {key}, which no binary reads"
        );
    }
}
