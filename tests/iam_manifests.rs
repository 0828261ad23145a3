//! The IAM documents in manifests/iam/ parse, and say what the code relies on:
//! the running bot cannot change SSM documents, runs only Passport's documents
//! and only on instances carrying the access tag; the install policy allows
//! exactly what `passport ssm install` calls; the bot may assume the session
//! role and end sessions; the session role may do no more than start sessions
//! with the documents a session policy can name and end or resume Passport's
//! sessions; only the bot may assume it, and only with a username, a source
//! identity and the request's tags; the tag guard keeps Passport's tag keys to
//! its admins.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;

use async_trait::async_trait;
use passport::adapters::aws::api::{
    ApiError, CommandRequest, DocumentState, DocumentVersions, Invocation, ManagedInstance, SsmApi,
};
use passport::adapters::aws::documents::{install_documents, passport_documents};
use passport::adapters::aws::sessions::{
    PORT_FORWARDING_DOCUMENT, REMOTE_PORT_FORWARDING_DOCUMENT, SSH_DOCUMENT,
};
use passport::adapters::aws::{AwsSettings, DocumentNames};
use passport::domain::values::InstanceId;
use serde_json::{json, Value};

/// SSM actions that change documents: never the running bot's.
const DOCUMENT_WRITES: [&str; 4] = [
    "ssm:CreateDocument",
    "ssm:UpdateDocument",
    "ssm:UpdateDocumentDefaultVersion",
    "ssm:DeleteDocument",
];

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

fn actions(policy: &Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| list(&s["Action"]))
        .collect()
}

#[test]
fn the_running_bot_cannot_change_ssm_documents() {
    let bot = load("passport-bot-policy.json");
    for s in bot["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow", "{s}");
        for action in list(&s["Action"]) {
            assert!(
                !DOCUMENT_WRITES.contains(&action.as_str()),
                "{action} belongs in passport-install-policy.json: {s}"
            );
            assert!(!action.contains('*'), "{action}");
        }
    }
    let expected = [
        "ec2:DescribeInstances",
        "ssm:DescribeDocument",
        "ssm:DescribeInstanceInformation",
        "ssm:DescribeSessions",
        "ssm:GetCommandInvocation",
        "ssm:GetDocument",
        "ssm:SendCommand",
        "ssm:TerminateSession",
        "sts:AssumeRole",
        "sts:SetSourceIdentity",
        "sts:TagSession",
    ]
    .map(String::from);
    assert_eq!(actions(&bot), BTreeSet::from(expected));
    let check = statement(&bot, "CheckPassportDocuments");
    assert_eq!(
        list(&check["Action"]),
        ["ssm:GetDocument", "ssm:DescribeDocument"]
    );
    assert_eq!(
        list(&check["Resource"]),
        ["arn:aws:ssm:*:*:document/Passport-*"]
    );
}

#[test]
fn send_command_runs_only_passports_documents_on_instances_with_the_access_tag() {
    let bot = load("passport-bot-policy.json");
    let sends: Vec<&Value> = bot["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| list(&s["Action"]).contains(&"ssm:SendCommand".to_owned()))
        .collect();
    assert_eq!(
        sends.len(),
        2,
        "one for the documents, one for the instances"
    );
    for s in &sends {
        assert_eq!(list(&s["Action"]), ["ssm:SendCommand"], "{s}");
    }

    let documents = statement(&bot, "RunOnlyPassportDocuments");
    assert_eq!(
        list(&documents["Resource"]),
        ["arn:aws:ssm:*:*:document/Passport-*"]
    );
    // The default names are covered by it.
    let names = DocumentNames::default();
    for name in [
        &names.grant_linux,
        &names.revoke_linux,
        &names.grant_windows,
        &names.revoke_windows,
    ] {
        assert!(name.starts_with("Passport-"), "{name}");
    }

    // The instance statement allows only instances carrying the tag Passport
    // itself checks by default, under SSM's own condition key for it.
    let instances = statement(&bot, "RunOnlyOnInstancesOpenToPassport");
    assert_eq!(list(&instances["Resource"]), ["arn:aws:ec2:*:*:instance/*"]);
    let tag = AwsSettings::default().instance_tag;
    let key = format!("ssm:resourceTag/{}", tag.key());
    assert_eq!(
        instances["Condition"],
        json!({ "StringEquals": { key: tag.value() } })
    );
    // No other statement lets the bot reach an instance or document some other way.
    for s in bot["Statement"].as_array().unwrap() {
        for resource in list(&s["Resource"]) {
            if resource.starts_with("arn:aws:ec2:") {
                assert_eq!(s["Sid"], "RunOnlyOnInstancesOpenToPassport", "{s}");
            }
            if resource.contains(":document/") {
                assert_eq!(resource, "arn:aws:ssm:*:*:document/Passport-*", "{s}");
            }
        }
    }
}

/// An SSM that records the IAM action of every call `passport ssm install`
/// makes, holding one document current, one missing, one outdated and one
/// whose earlier version already has this build's content (a rollback).
#[derive(Default)]
struct RecordingSsm {
    actions: Mutex<BTreeSet<&'static str>>,
}

impl RecordingSsm {
    fn called(&self, action: &'static str) {
        self.actions.lock().unwrap().insert(action);
    }
}

#[async_trait]
impl SsmApi for RecordingSsm {
    async fn managed_instances(
        &self,
        _ids: &[InstanceId],
    ) -> Result<Vec<ManagedInstance>, ApiError> {
        self.called("ssm:DescribeInstanceInformation");
        Ok(Vec::new())
    }

    async fn send_command(&self, _command: &CommandRequest) -> Result<String, ApiError> {
        self.called("ssm:SendCommand");
        Ok("c".into())
    }

    async fn get_invocation(
        &self,
        _command_id: &str,
        _instance: &InstanceId,
    ) -> Result<Invocation, ApiError> {
        self.called("ssm:GetCommandInvocation");
        Err(ApiError::service("InvocationDoesNotExist", ""))
    }

    async fn get_document(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Option<DocumentState>, ApiError> {
        self.called("ssm:GetDocument");
        let docs = passport_documents(&DocumentNames::default());
        let ours = docs.iter().find(|d| d.name == name).unwrap();
        let held = |content: &str, version: &str| DocumentState {
            content: content.to_owned(),
            status: "Active".into(),
            version: version.into(),
        };
        Ok(match (name, version) {
            ("Passport-GrantLinux", _) => Some(held(&ours.content, "1")),
            ("Passport-RevokeLinux", _) => None,
            ("Passport-RevokeWindows", Some("1")) => Some(held(&ours.content, "1")),
            _ => Some(held("schemaVersion: '2.2'\nmainSteps: []\n", "2")),
        })
    }

    async fn describe_document(&self, _name: &str) -> Result<Option<DocumentVersions>, ApiError> {
        self.called("ssm:DescribeDocument");
        Ok(Some(DocumentVersions {
            default_version: "2".into(),
            latest_version: "2".into(),
        }))
    }

    async fn create_document(&self, _name: &str, _content: &str) -> Result<(), ApiError> {
        self.called("ssm:CreateDocument");
        Ok(())
    }

    async fn update_document(&self, name: &str, _content: &str) -> Result<String, ApiError> {
        self.called("ssm:UpdateDocument");
        if name == "Passport-RevokeWindows" {
            return Err(ApiError::service("DuplicateDocumentContent", ""));
        }
        Ok("3".into())
    }

    async fn set_default_version(&self, _name: &str, _version: &str) -> Result<(), ApiError> {
        self.called("ssm:UpdateDocumentDefaultVersion");
        Ok(())
    }
}

#[tokio::test]
async fn the_install_policy_allows_exactly_what_ssm_install_calls() {
    let ssm = RecordingSsm::default();
    install_documents(&ssm, &passport_documents(&DocumentNames::default()))
        .await
        .unwrap();
    let called: BTreeSet<String> = ssm
        .actions
        .lock()
        .unwrap()
        .iter()
        .map(|a| (*a).to_owned())
        .collect();

    let install = load("passport-install-policy.json");
    assert_eq!(actions(&install), called);
    for s in install["Statement"].as_array().unwrap() {
        assert_eq!(s["Effect"], "Allow");
        assert_eq!(
            list(&s["Resource"]),
            ["arn:aws:ssm:*:*:document/Passport-*"],
            "only Passport's documents"
        );
        assert!(s.get("Condition").is_none());
    }
    // The installer may write documents; deleting them is never needed.
    for write in &DOCUMENT_WRITES[..3] {
        assert!(called.contains(*write), "{write}");
    }
    assert!(!called.contains("ssm:DeleteDocument"));
}

#[test]
fn the_tag_guard_keeps_passports_tag_keys_to_its_admins() {
    let guard = load("passport-tag-guard-scp.json");
    let admins = json!({ "aws:PrincipalArn": "arn:aws:iam::*:role/passport-admin" });
    let retag = statement(&guard, "OnlyPassportAdminsSetOrRemovePassportTags");
    assert_eq!(retag["Effect"], "Deny");
    assert_eq!(list(&retag["Action"]), ["ec2:CreateTags", "ec2:DeleteTags"]);
    let keys = list(&retag["Condition"]["ForAnyValue:StringEquals"]["aws:TagKeys"]);
    let tag = AwsSettings::default().instance_tag;
    assert!(keys.contains(&tag.key().to_owned()), "{keys:?}");
    // The example policy's rules match on env and pci.
    assert!(keys.contains(&"env".to_owned()) && keys.contains(&"pci".to_owned()));
    assert_eq!(retag["Condition"]["ArnNotLike"], admins);

    // DeleteTags without keys removes every tag: deny that too.
    let all = statement(&guard, "NobodyElseRemovesEveryTagAtOnce");
    assert_eq!(all["Effect"], "Deny");
    assert_eq!(list(&all["Action"]), ["ec2:DeleteTags"]);
    assert_eq!(all["Condition"]["Null"], json!({ "aws:TagKeys": "true" }));
    assert_eq!(all["Condition"]["ArnNotLike"], admins);
}
