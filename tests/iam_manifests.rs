//! The IAM documents in manifests/iam/ parse, and say what the code relies on:
//! the bot may assume the session role and end sessions; the session role may
//! do no more than start sessions with the documents a session policy can name
//! and end or resume Passport's sessions; only the bot may assume it, and only
//! with a username, a source identity and the request's tags.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use passport::adapters::aws::sessions::{
    PORT_FORWARDING_DOCUMENT, REMOTE_PORT_FORWARDING_DOCUMENT, SSH_DOCUMENT,
};
use serde_json::{json, Value};

fn load(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/iam")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(value["Version"], "2012-10-17", "{name}");
    value
}

fn statement<'a>(policy: &'a Value, sid: &str) -> &'a Value {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Sid"] == sid)
        .unwrap_or_else(|| panic!("no statement {sid}"))
}

/// A field that may be a string or a list, as a list.
fn list(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("not a string or list: {other}"),
    }
}

#[test]
fn the_bot_may_assume_the_session_role_and_end_passports_sessions() {
    let bot = load("passport-bot-policy.json");
    let assume = statement(&bot, "AssumeTheSessionRole");
    assert_eq!(assume["Effect"], "Allow");
    assert_eq!(
        list(&assume["Action"]),
        ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
    );
    assert_eq!(
        list(&assume["Resource"]),
        ["arn:aws:iam::*:role/passport-session"]
    );
    assert_eq!(
        list(&statement(&bot, "FindOpenSessions")["Action"]),
        ["ssm:DescribeSessions"]
    );
    let end = statement(&bot, "EndSessionsOfEndedAccess");
    assert_eq!(list(&end["Action"]), ["ssm:TerminateSession"]);
    assert_eq!(list(&end["Resource"]), ["arn:aws:ssm:*:*:session/pp-*"]);
    // The bot itself never starts sessions.
    for s in bot["Statement"].as_array().unwrap() {
        assert!(!list(&s["Action"])
            .iter()
            .any(|a| a == "ssm:StartSession" || a.ends_with('*')));
    }
}

#[test]
fn the_session_role_can_do_no_more_than_a_session_policy_can_name() {
    let role = load("passport-session-role-policy.json");
    let statements = role["Statement"].as_array().unwrap();
    assert!(statements.iter().all(|s| s["Effect"] == "Allow"));
    let mut actions: Vec<String> = statements.iter().flat_map(|s| list(&s["Action"])).collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            "ssm:ResumeSession",
            "ssm:StartSession",
            "ssm:TerminateSession"
        ]
    );
    let start = statement(&role, "StartSessionsOnInstancesWithTheirDocuments");
    let mut expected = vec!["arn:aws:ec2:*:*:instance/*".to_owned()];
    for document in [
        SSH_DOCUMENT,
        PORT_FORWARDING_DOCUMENT,
        REMOTE_PORT_FORWARDING_DOCUMENT,
    ] {
        expected.push(format!("arn:aws:ssm:*::document/{document}"));
    }
    assert_eq!(list(&start["Resource"]), expected);
    assert_eq!(
        start["Condition"],
        json!({ "BoolIfExists": { "ssm:SessionDocumentAccessCheck": "true" } })
    );
    let own = statement(&role, "EndOrResumePassportSessions");
    assert_eq!(list(&own["Resource"]), ["arn:aws:ssm:*:*:session/pp-*"]);
}

#[test]
fn only_the_bot_may_assume_the_session_role_and_only_for_one_request() {
    let trust = load("passport-session-role-trust.json");
    let statements = trust["Statement"].as_array().unwrap();
    let mut actions = Vec::new();
    for s in statements {
        assert_eq!(s["Effect"], "Allow");
        assert_eq!(
            s["Principal"],
            json!({ "AWS": "arn:aws:iam::123456789012:role/passport-bot" }),
            "only Passport's bot role"
        );
        assert!(
            s["Condition"].is_object(),
            "every action has conditions: {s}"
        );
        actions.extend(list(&s["Action"]));
    }
    actions.sort();
    assert_eq!(
        actions,
        ["sts:AssumeRole", "sts:SetSourceIdentity", "sts:TagSession"]
    );
    let assume = statement(&trust, "OnlyPassportForOneRequest");
    assert_eq!(
        assume["Condition"]["StringLike"],
        json!({
            "sts:RoleSessionName": "pp-*",
            "sts:SourceIdentity": "*",
            "aws:RequestTag/passport:request": "AR-*",
        })
    );
    let tags = statement(&trust, "TagTheRequestOnly");
    assert_eq!(
        tags["Condition"]["ForAllValues:StringEquals"]["aws:TagKeys"],
        json!(["passport:request", "passport:requester"])
    );
    assert_eq!(
        tags["Condition"]["Null"]["sts:TransitiveTagKeys"], "true",
        "no tag outlives the session"
    );
}
