//! passport.example.toml is the configuration reference: it must load, validate,
//! say what the README says about policy, and mention every configuration field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use passport::config::{Config, Settings};
use passport::domain::policy::{GroupSource, Membership, Principal};
use passport::domain::request::{InstanceInfo, Platform};
use passport::domain::time::Span;
use passport::domain::values::{InstanceId, UserId};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("passport.example.toml")
}

fn example() -> (Config, Settings) {
    let loaded = Config::load(Some(&example_path())).expect("passport.example.toml loads");
    assert_eq!(loaded.file.as_deref(), Some(example_path().as_path()));
    let settings = loaded
        .config
        .validate()
        .unwrap_or_else(|e| panic!("passport.example.toml does not validate: {e}"));
    (loaded.config, settings)
}

fn instance(settings: &Settings, id: &str) -> InstanceInfo {
    let id = InstanceId::parse(id).unwrap();
    settings
        .dry_run_instances
        .iter()
        .find(|i| i.id == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is not among dry_run.instances"))
}

fn member(settings: &Settings, user: &str) -> Membership {
    Membership::new(
        UserId::parse(user).unwrap(),
        settings
            .groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == user))
            .map(|(name, _)| (name.clone(), GroupSource::Config))
            .collect(),
    )
}

#[test]
fn the_example_configuration_validates() {
    let (config, settings) = example();
    assert!(config.validate().is_ok());
    assert_eq!(settings.grammar.durations.max, Span::from_hours(12));
    assert_eq!(
        settings.warnings,
        vec![Span::from_minutes(15), Span::from_minutes(5)]
    );
}

#[test]
fn prod_needs_two_sre_lead_approvals_for_at_most_four_hours() {
    let (_, settings) = example();
    let prod = settings
        .policy
        .rules
        .iter()
        .find(|r| r.name == "prod")
        .expect("a prod rule");
    assert_eq!(prod.tags.get("env").map(String::as_str), Some("prod"));
    assert_eq!(prod.approvals, 2);
    assert_eq!(prod.approvers, vec![Principal::Group("sre-leads".into())]);
    assert_eq!(prod.max_duration, Some(Span::from_hours(4)));
    assert!(!prod.sudo);
    assert!(
        settings.groups["sre-leads"].len() >= 2,
        "two approvals need at least two sre-leads"
    );

    let req = settings
        .policy
        .requirement_for(&[instance(&settings, "i-0aaaaaaaaaaaaaaa1")]);
    assert!(!req.auto_approved());
    assert_eq!(req.describe(), "2 approvals from group sre-leads");
    assert_eq!(req.max_duration, Span::from_hours(4));
    assert_eq!(
        req.rules_for(&member(&settings, "sre1")),
        vec!["prod".to_owned()]
    );
    assert!(req.rules_for(&member(&settings, "dev1")).is_empty());
}

#[test]
fn dev_auto_approves_with_sudo() {
    let (_, settings) = example();
    let dev = settings
        .policy
        .rules
        .iter()
        .find(|r| r.name == "dev")
        .expect("a dev rule");
    assert_eq!(dev.tags.get("env").map(String::as_str), Some("dev"));
    assert_eq!(dev.approvals, 0);
    assert!(dev.sudo);

    let req = settings
        .policy
        .requirement_for(&[instance(&settings, "i-0bbbbbbbbbbbbbbb2")]);
    assert!(req.auto_approved());
    assert!(req.sudo);
}

#[test]
fn mixing_dev_and_prod_takes_the_strictest() {
    let (_, settings) = example();
    let req = settings.policy.requirement_for(&[
        instance(&settings, "i-0bbbbbbbbbbbbbbb2"),
        instance(&settings, "i-0aaaaaaaaaaaaaaa1"),
    ]);
    assert!(!req.auto_approved());
    assert!(!req.sudo);
    assert_eq!(req.max_duration, Span::from_hours(4));
}

#[test]
fn the_readme_tour_instance_falls_back_to_one_approval_from_the_approvers() {
    let (_, settings) = example();
    let web = instance(&settings, "i-0123456789abcdef0");
    assert!(
        web.private_ips.len() >= 2,
        "the example shows an instance with several interfaces"
    );
    let req = settings.policy.requirement_for(&[web]);
    assert_eq!(req.rules.len(), 1);
    assert_eq!(req.rules[0].rule, "default");
    assert_eq!(req.describe(), "1 approval from group approvers");
    assert_eq!(
        settings.groups["approvers"],
        vec!["lead1".to_owned(), "lead2".to_owned()]
    );
    assert!(settings.policy.is_admin(&member(&settings, "admin")));
    assert!(!settings.policy.is_admin(&member(&settings, "lead1")));
    assert!(settings
        .dry_run_instances
        .iter()
        .any(|i| i.platform == Platform::Windows));
    assert!(settings
        .dry_run_instances
        .iter()
        .any(|i| i.state != "running"));
}

/// Dotted key paths of a serialized configuration; the entries of user-named
/// maps (`groups`, `tags`) are not fields, so only the map itself is listed.
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.insert(path.clone());
                if key != "groups" && key != "tags" {
                    key_paths(child, &path, out);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_configuration_field_is_documented_in_the_example() {
    let (config, _) = example();
    let text = std::fs::read_to_string(example_path()).unwrap();
    // The defaults name every field, unset options included (as null); the
    // example adds the fields of list entries such as dry_run.instances.
    let mut paths = BTreeSet::new();
    key_paths(
        &serde_json::to_value(Config::default()).unwrap(),
        "",
        &mut paths,
    );
    key_paths(&serde_json::to_value(&config).unwrap(), "", &mut paths);
    assert!(
        paths.contains("dry_run.instances[].private_ips"),
        "{paths:?}"
    );
    let written = |key: &str| {
        text.lines().any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            let line = line.trim_start_matches('[').trim_end_matches(']');
            line == key
                || line.starts_with(&format!("{key}."))
                || line.ends_with(&format!(".{key}"))
                || line
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    for path in &paths {
        let key = path.rsplit('.').next().unwrap().trim_end_matches("[]");
        assert!(
            written(key),
            "passport.example.toml does not mention `{key}` ({path})"
        );
    }
}
