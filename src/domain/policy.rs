//! Who may request, who may approve, and what each request requires.
//!
//! Rules match on instance tags, or on instance ids a rule names (pinning). A
//! request that touches instances of several rules must satisfy every one of
//! them (the strictest combination): each rule's approvals, the shortest
//! maximum duration, sudo only if all allow it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::request::{Approval, InstanceInfo};
use super::time::Span;
use super::values::{InstanceId, UserId};

/// Someone named in configuration: a user id, a group, or everyone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Principal {
    Anyone,
    User(UserId),
    Group(String),
}

impl Principal {
    /// `*` is everyone, `group:NAME` a group, anything else a user id.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t == "*" {
            return Ok(Self::Anyone);
        }
        if let Some(group) = t.strip_prefix("group:") {
            if group.is_empty() || group.chars().any(char::is_whitespace) {
                return Err(format!("invalid group {text:?}: write group:NAME"));
            }
            return Ok(Self::Group(group.to_owned()));
        }
        UserId::parse(t).map(Self::User).map_err(|e| e.0)
    }

    pub fn matches(&self, who: &Membership) -> bool {
        match self {
            Self::Anyone => true,
            Self::User(id) => id == &who.user,
            Self::Group(g) => who.groups.contains(g),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Anyone => f.write_str("anyone"),
            Self::User(u) => write!(f, "{u}"),
            Self::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// Where a person's membership of a group was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum GroupSource {
    /// A member list under `[groups]` in configuration.
    Config,
    /// A Slack user group (`[slack.usergroups]`), by its id.
    SlackUserGroup { id: String },
    /// A Discord role (`[discord.roles]`), by its id.
    DiscordRole { id: String },
}

impl fmt::Display for GroupSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config => f.write_str("the configuration's member list"),
            Self::SlackUserGroup { id } => write!(f, "the Slack user group {id}"),
            Self::DiscordRole { id } => write!(f, "the Discord role {id}"),
        }
    }
}

/// A person and the groups they belong to, resolved by the use case before
/// the policy is asked anything.
#[derive(Debug, Clone)]
pub struct Membership {
    pub user: UserId,
    pub groups: BTreeSet<String>,
    /// Where each membership in `groups` was read from; a group missing here
    /// was given without saying (tests, built-in groups).
    pub sources: BTreeMap<String, GroupSource>,
}

impl Membership {
    /// `user` in `groups`, each read from wherever `sources` says.
    pub fn new(user: UserId, sources: BTreeMap<String, GroupSource>) -> Self {
        Self {
            user,
            groups: sources.keys().cloned().collect(),
            sources,
        }
    }
}

/// How an approver qualified for one rule: the entry of the rule's approvers
/// they matched, and for a group where their membership was read from. Kept
/// with each approval and written to the Logbook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qualification {
    pub rule: String,
    /// The matching entry as configuration writes it: a user id or `group:NAME`.
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<GroupSource>,
}

/// One configured rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// Tag key → required value; `*` accepts any value as long as the tag exists.
    /// A rule with no tags (and no instances) matches every instance.
    pub tags: BTreeMap<String, String>,
    /// Instance ids this rule is pinned to. When there are any, the rule
    /// matches exactly these instances whatever their tags, so retagging an
    /// instance can neither take it out of the rule nor bring another in.
    pub instances: BTreeSet<InstanceId>,
    pub approvers: Vec<Principal>,
    /// Approvals needed from distinct approvers; 0 means auto-approve.
    pub approvals: u32,
    pub max_duration: Option<Span>,
    pub sudo: bool,
    /// Certificates carry `permit-port-forwarding` (default off).
    pub port_forwarding: bool,
    /// Session Manager may forward to other hosts through the instance (default off).
    pub remote_port_forwarding: bool,
    /// Approvals channel for requests that match this rule.
    pub channel: Option<String>,
    /// Extensions that would add more than this in total wait for an approver.
    pub extension_approval_over: Option<Span>,
}

impl Rule {
    pub fn matches(&self, instance: &InstanceInfo) -> bool {
        if !self.instances.is_empty() {
            return self.instances.contains(&instance.id);
        }
        self.tags
            .iter()
            .all(|(key, want)| match instance.tags.get(key) {
                Some(have) => want == "*" || have == want,
                None => false,
            })
    }
}

/// The whole policy, built from configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub requesters: Vec<Principal>,
    pub admins: Vec<Principal>,
    /// Applies to instances that match no rule.
    pub default_rule: Rule,
    pub rules: Vec<Rule>,
    pub approval_window: Span,
    pub max_duration: Span,
}

/// What one rule asks of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRequirement {
    pub rule: String,
    pub approvers: Vec<Principal>,
    pub approvals: u32,
    /// Extensions adding more than this in total need this rule's approvals again.
    #[serde(default)]
    pub extension_approval_over: Option<Span>,
}

/// What a request needs before it may be granted, and the bounds it is granted within.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub rules: Vec<RuleRequirement>,
    pub max_duration: Span,
    pub sudo: bool,
    /// SSH port forwarding, only when every rule allows it.
    #[serde(default)]
    pub port_forwarding: bool,
    /// `AWS-StartPortForwardingSessionToRemoteHost`, only when every rule allows it.
    #[serde(default)]
    pub remote_port_forwarding: bool,
    pub channel: Option<String>,
    /// Extensions adding more than this in total need an approver's click.
    #[serde(default)]
    pub extension_approval_over: Option<Span>,
}

/// How far a request has come towards one rule's approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleProgress<'a> {
    pub rule: &'a RuleRequirement,
    pub have: u32,
}

impl RuleProgress<'_> {
    pub fn satisfied(&self) -> bool {
        self.have >= self.rule.approvals
    }
}

impl Requirement {
    pub fn auto_approved(&self) -> bool {
        self.rules.iter().all(|r| r.approvals == 0)
    }

    /// The rules `who` may approve for.
    pub fn rules_for(&self, who: &Membership) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| r.approvals > 0 && r.approvers.iter().any(|p| p.matches(who)))
            .map(|r| r.rule.clone())
            .collect()
    }

    /// How `who` qualifies for each of `rules`: the first of each rule's
    /// approvers that matches them, a named user before a group.
    pub fn qualifications(&self, who: &Membership, rules: &[String]) -> Vec<Qualification> {
        self.rules
            .iter()
            .filter(|r| rules.contains(&r.rule))
            .filter_map(|r| {
                let matched = r
                    .approvers
                    .iter()
                    .filter(|p| p.matches(who))
                    .min_by_key(|p| !matches!(p, Principal::User(_)))?;
                let (via, source) = match matched {
                    Principal::Anyone => ("*".to_owned(), None),
                    Principal::User(u) => (u.to_string(), None),
                    Principal::Group(g) => (format!("group:{g}"), who.sources.get(g).cloned()),
                };
                Some(Qualification {
                    rule: r.rule.clone(),
                    via,
                    source,
                })
            })
            .collect()
    }

    /// The rules `who` may approve for that still lack approvals: what an
    /// approval by `who` would count towards.
    pub fn still_open_for(&self, who: &Membership, approvals: &[Approval]) -> Vec<String> {
        let progress = self.progress(approvals);
        self.rules_for(who)
            .into_iter()
            .filter(|rule| {
                progress
                    .iter()
                    .any(|p| &p.rule.rule == rule && !p.satisfied())
            })
            .collect()
    }

    pub fn progress<'a>(&'a self, approvals: &[Approval]) -> Vec<RuleProgress<'a>> {
        self.rules
            .iter()
            .map(|rule| RuleProgress {
                rule,
                have: approvals
                    .iter()
                    .filter(|a| a.counts_for.contains(&rule.rule))
                    .count() as u32,
            })
            .collect()
    }

    pub fn satisfied(&self, approvals: &[Approval]) -> bool {
        self.progress(approvals).iter().all(RuleProgress::satisfied)
    }

    /// What approvals are still missing, e.g. "1 more approval from group sre-leads".
    pub fn still_needed(&self, approvals: &[Approval]) -> String {
        let parts: Vec<String> = self
            .progress(approvals)
            .iter()
            .filter(|p| !p.satisfied())
            .map(|p| {
                let missing = p.rule.approvals - p.have;
                let who: Vec<String> = p.rule.approvers.iter().map(ToString::to_string).collect();
                let noun = if missing == 1 {
                    "approval"
                } else {
                    "approvals"
                };
                format!("{missing} more {noun} from {}", who.join(" or "))
            })
            .collect();
        if parts.is_empty() {
            "no more approvals".into()
        } else {
            parts.join(" and ")
        }
    }

    /// The rules an extension bringing the total extended time to `total`
    /// must be approved by again: those whose `extension_approval_over` it
    /// passes, each with its own approvals.
    pub fn for_extension(&self, total: Span) -> Requirement {
        Requirement {
            rules: self
                .rules
                .iter()
                .filter(|r| r.extension_approval_over.is_some_and(|over| total > over))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }

    /// "2 approvals from group sre-leads and 1 from security-oncall", or "none (auto-approved)".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.approvals > 0)
            .map(|r| {
                let who: Vec<String> = r.approvers.iter().map(ToString::to_string).collect();
                let noun = if r.approvals == 1 {
                    "approval"
                } else {
                    "approvals"
                };
                format!("{} {noun} from {}", r.approvals, who.join(" or "))
            })
            .collect();
        if parts.is_empty() {
            "none (auto-approved)".to_owned()
        } else {
            parts.join(" and ")
        }
    }
}

impl Policy {
    pub fn may_request(&self, who: &Membership) -> bool {
        self.requesters.iter().any(|p| p.matches(who))
    }

    pub fn is_admin(&self, who: &Membership) -> bool {
        self.admins.iter().any(|p| p.matches(who))
    }

    /// The groups that hold power over access, each with what it may do: the
    /// approvers of every rule that can apply and the admins. The default rule
    /// can apply only while no rule matches every instance (a rule without
    /// tags). Groups that may only request are left out: they let a person
    /// ask, never decide.
    pub fn groups_in_power(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // A rule with neither tags nor pinned instances matches every instance,
        // and then the default rule never applies.
        let default_applies = !self
            .rules
            .iter()
            .any(|r| r.tags.is_empty() && r.instances.is_empty());
        let rules = default_applies
            .then_some(&self.default_rule)
            .into_iter()
            .chain(&self.rules);
        for rule in rules {
            for p in &rule.approvers {
                if let Principal::Group(g) = p {
                    out.entry(g.clone())
                        .or_default()
                        .push(format!("approves for rule {:?}", rule.name));
                }
            }
        }
        for p in &self.admins {
            if let Principal::Group(g) = p {
                out.entry(g.clone()).or_default().push("is admin".into());
            }
        }
        out
    }

    /// The combined requirement of every rule the instances match; instances
    /// that match no rule bring in the default rule.
    pub fn requirement_for(&self, instances: &[InstanceInfo]) -> Requirement {
        let mut matched: Vec<&Rule> = Vec::new();
        for instance in instances {
            let mut any = false;
            for rule in self.rules.iter().filter(|r| r.matches(instance)) {
                any = true;
                if !matched.iter().any(|m| m.name == rule.name) {
                    matched.push(rule);
                }
            }
            if !any && !matched.iter().any(|m| m.name == self.default_rule.name) {
                matched.push(&self.default_rule);
            }
        }
        if matched.is_empty() {
            matched.push(&self.default_rule);
        }
        let max_duration = matched
            .iter()
            .filter_map(|r| r.max_duration)
            .fold(self.max_duration, Span::min);
        Requirement {
            rules: matched
                .iter()
                .map(|r| RuleRequirement {
                    rule: r.name.clone(),
                    approvers: r.approvers.clone(),
                    approvals: r.approvals,
                    extension_approval_over: r.extension_approval_over,
                })
                .collect(),
            max_duration,
            sudo: matched.iter().all(|r| r.sudo),
            port_forwarding: matched.iter().all(|r| r.port_forwarding),
            remote_port_forwarding: matched.iter().all(|r| r.remote_port_forwarding),
            channel: matched.iter().find_map(|r| r.channel.clone()),
            extension_approval_over: matched
                .iter()
                .filter_map(|r| r.extension_approval_over)
                .min(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::request::Platform;

    fn user(id: &str, groups: &[&str]) -> Membership {
        Membership::new(
            UserId::parse(id).unwrap(),
            groups
                .iter()
                .map(|g| (g.to_string(), GroupSource::Config))
                .collect(),
        )
    }

    fn instance(tags: &[(&str, &str)]) -> InstanceInfo {
        InstanceInfo {
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..InstanceInfo::assumed(
                crate::domain::values::InstanceId::parse("i-01234567").unwrap(),
                Platform::Linux,
            )
        }
    }

    fn rule(
        name: &str,
        tag: Option<(&str, &str)>,
        approvers: &str,
        approvals: u32,
        max_h: Option<i64>,
        sudo: bool,
    ) -> Rule {
        Rule {
            name: name.into(),
            tags: tag
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            instances: BTreeSet::new(),
            approvers: vec![Principal::parse(approvers).unwrap()],
            approvals,
            max_duration: max_h.map(Span::from_hours),
            sudo,
            port_forwarding: false,
            remote_port_forwarding: false,
            channel: None,
            extension_approval_over: None,
        }
    }

    fn policy() -> Policy {
        Policy {
            requesters: vec![Principal::Anyone],
            admins: vec![Principal::parse("group:admins").unwrap()],
            default_rule: rule("default", None, "group:approvers", 1, None, false),
            rules: vec![
                rule(
                    "prod",
                    Some(("env", "prod")),
                    "group:sre-leads",
                    2,
                    Some(4),
                    false,
                ),
                rule(
                    "dev",
                    Some(("env", "dev")),
                    "group:approvers",
                    0,
                    None,
                    true,
                ),
                rule(
                    "pci",
                    Some(("pci", "*")),
                    "group:security",
                    1,
                    Some(2),
                    false,
                ),
            ],
            approval_window: Span::from_hours(1),
            max_duration: Span::from_hours(12),
        }
    }

    #[test]
    fn principals_parse_and_match() {
        assert_eq!(Principal::parse("*").unwrap(), Principal::Anyone);
        assert_eq!(
            Principal::parse("group:sre").unwrap(),
            Principal::Group("sre".into())
        );
        assert!(Principal::parse("group:").is_err());
        let who = user("u1", &["sre"]);
        assert!(Principal::parse("u1").unwrap().matches(&who));
        assert!(Principal::parse("group:sre").unwrap().matches(&who));
        assert!(!Principal::parse("group:dba").unwrap().matches(&who));
    }

    #[test]
    fn prod_needs_two_sre_leads_and_four_hours_at_most() {
        let req = policy().requirement_for(&[instance(&[("env", "prod")])]);
        assert_eq!(req.rules.len(), 1);
        assert_eq!(req.rules[0].approvals, 2);
        assert_eq!(req.max_duration, Span::from_hours(4));
        assert!(!req.auto_approved());
        assert_eq!(req.describe(), "2 approvals from group sre-leads");
    }

    #[test]
    fn dev_auto_approves_with_sudo() {
        let req = policy().requirement_for(&[instance(&[("env", "dev")])]);
        assert!(req.auto_approved());
        assert!(req.sudo);
        assert_eq!(req.max_duration, Span::from_hours(12));
    }

    #[test]
    fn untagged_instances_fall_back_to_the_default_rule() {
        let req = policy().requirement_for(&[instance(&[])]);
        assert_eq!(req.rules[0].rule, "default");
    }

    #[test]
    fn several_rules_take_the_strictest() {
        let p = policy();
        let req = p.requirement_for(&[
            instance(&[("env", "dev")]),
            instance(&[("env", "prod"), ("pci", "yes")]),
        ]);
        let names: Vec<_> = req.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, ["dev", "prod", "pci"]);
        assert!(
            !req.auto_approved(),
            "one auto-approving rule must not waive the others"
        );
        assert!(!req.sudo, "sudo only when every rule allows it");
        assert_eq!(req.max_duration, Span::from_hours(2));
        // Mixing a dev instance with an untagged one needs the default approval.
        let req = p.requirement_for(&[instance(&[("env", "dev")]), instance(&[])]);
        assert!(!req.auto_approved());
    }

    #[test]
    fn approvals_count_per_rule() {
        let p = policy();
        let req = p.requirement_for(&[instance(&[("env", "prod"), ("pci", "1")])]);
        let lead = user("lead1", &["sre-leads"]);
        let sec = user("sec1", &["security"]);
        assert_eq!(req.rules_for(&lead), vec!["prod".to_string()]);
        assert_eq!(req.rules_for(&sec), vec!["pci".to_string()]);
        assert!(req.rules_for(&user("dev", &[])).is_empty());
        let approval = |who: &Membership| Approval {
            by: who.user.clone(),
            handle: who.user.to_string(),
            at: crate::domain::time::Timestamp::from_millis(0),
            counts_for: req.rules_for(who),
            qualified: Vec::new(),
        };
        let mut approvals = vec![approval(&lead), approval(&sec)];
        assert!(!req.satisfied(&approvals));
        approvals.push(approval(&user("lead2", &["sre-leads"])));
        assert!(req.satisfied(&approvals));
    }

    #[test]
    fn a_qualification_says_which_entry_matched_and_where_it_was_read() {
        let p = policy();
        let req = p.requirement_for(&[instance(&[("env", "prod"), ("pci", "1")])]);
        let who = Membership::new(
            UserId::parse("U1").unwrap(),
            BTreeMap::from([
                (
                    "sre-leads".to_owned(),
                    GroupSource::SlackUserGroup { id: "S1".into() },
                ),
                (
                    "security".to_owned(),
                    GroupSource::DiscordRole { id: "42".into() },
                ),
            ]),
        );
        let q = req.qualifications(&who, &["prod".to_owned(), "pci".to_owned()]);
        assert_eq!(
            q,
            vec![
                Qualification {
                    rule: "prod".into(),
                    via: "group:sre-leads".into(),
                    source: Some(GroupSource::SlackUserGroup { id: "S1".into() }),
                },
                Qualification {
                    rule: "pci".into(),
                    via: "group:security".into(),
                    source: Some(GroupSource::DiscordRole { id: "42".into() }),
                },
            ]
        );
        assert_eq!(
            serde_json::to_value(&q[0]).unwrap(),
            serde_json::json!({"rule": "prod", "via": "group:sre-leads", "source": {"from": "slack_user_group", "id": "S1"}})
        );
    }

    fn instance_with_id(id: &str, tags: &[(&str, &str)]) -> InstanceInfo {
        InstanceInfo {
            id: InstanceId::parse(id).unwrap(),
            ..instance(tags)
        }
    }

    /// The example policy with a rule pinned to two instance ids: the
    /// database hosts need two sre-leads whatever their tags say.
    fn pinned_policy() -> Policy {
        let mut p = policy();
        let mut db = rule("databases", None, "group:sre-leads", 2, Some(1), false);
        db.instances = ["i-0aaaaaaaaaaaaaaa1", "i-0aaaaaaaaaaaaaaa2"]
            .into_iter()
            .map(|id| InstanceId::parse(id).unwrap())
            .collect();
        p.rules.push(db);
        p
    }

    #[test]
    fn a_pinned_rule_matches_its_instances_whatever_their_tags() {
        let p = pinned_policy();
        for tags in [&[][..], &[("env", "dev")], &[("env", "prod")]] {
            let req = p.requirement_for(&[instance_with_id("i-0aaaaaaaaaaaaaaa1", tags)]);
            assert!(
                req.rules.iter().any(|r| r.rule == "databases"),
                "{tags:?}: {req:?}"
            );
            assert!(!req.auto_approved(), "{tags:?}");
            assert!(!req.sudo, "{tags:?}");
            assert_eq!(req.max_duration, Span::from_hours(1), "{tags:?}");
        }
        // Retagged to dev, the pinned host still needs the pinned rule's two
        // approvals: the dev rule adds to it and takes nothing away.
        let req = p.requirement_for(&[instance_with_id("i-0aaaaaaaaaaaaaaa2", &[("env", "dev")])]);
        let names: Vec<_> = req.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, ["dev", "databases"]);
        assert_eq!(req.describe(), "2 approvals from group sre-leads");
    }

    #[test]
    fn a_pinned_rule_matches_no_other_instance_even_with_matching_tags() {
        let p = pinned_policy();
        let other = instance_with_id("i-0bbbbbbbbbbbbbbb9", &[("env", "dev")]);
        let req = p.requirement_for(&[other]);
        let names: Vec<_> = req.rules.iter().map(|r| r.rule.as_str()).collect();
        assert_eq!(names, ["dev"]);
        assert!(req.auto_approved());
        // A pinned rule ignores its tags: naming ids is the whole match.
        let mut rule = rule(
            "pinned",
            Some(("env", "dev")),
            "group:sre-leads",
            1,
            None,
            false,
        );
        rule.instances = BTreeSet::from([InstanceId::parse("i-0aaaaaaaaaaaaaaa1").unwrap()]);
        assert!(!rule.matches(&instance_with_id("i-0bbbbbbbbbbbbbbb9", &[("env", "dev")])));
        assert!(rule.matches(&instance_with_id("i-0aaaaaaaaaaaaaaa1", &[])));
    }

    #[test]
    fn admins_and_requesters_come_from_configuration() {
        let mut p = policy();
        assert!(p.is_admin(&user("a", &["admins"])));
        assert!(!p.is_admin(&user("a", &[])));
        p.requesters = vec![Principal::parse("group:eng").unwrap()];
        assert!(p.may_request(&user("a", &["eng"])));
        assert!(!p.may_request(&user("a", &[])));
    }

    #[test]
    fn groups_in_power_are_the_approvers_of_rules_that_can_apply_and_the_admins() {
        let mut p = policy();
        p.requesters = vec![Principal::parse("group:contractors").unwrap()];
        let powers = p.groups_in_power();
        assert_eq!(
            powers["approvers"],
            vec![
                "approves for rule \"default\"".to_owned(),
                "approves for rule \"dev\"".to_owned()
            ]
        );
        assert_eq!(powers["sre-leads"], vec!["approves for rule \"prod\""]);
        assert_eq!(powers["admins"], vec!["is admin"]);
        // Asking for access is no power over it.
        assert!(!powers.contains_key("contractors"));

        // A rule matching every instance leaves the default rule unused.
        p.rules = vec![rule("all", None, "group:security", 1, None, false)];
        p.default_rule = rule("default", None, "group:approvers", 1, None, false);
        let powers = p.groups_in_power();
        assert_eq!(
            powers.keys().collect::<Vec<_>>(),
            vec!["admins", "security"]
        );
    }
}
