//! [`Mentions`]: whom a card notifies while it waits for approval, the same
//! on every platform. An approver `group:NAME` is the platform's own group
//! for it (a Slack user group, a Discord role), when one is configured, and
//! its members listed under `[groups]`, at most [`GROUP_MEMBER_MENTIONS`] of
//! them; any other approver is a person. Each platform writes the mentions
//! in its own syntax.

use std::collections::BTreeMap;

/// Members of a configured group mentioned one by one, at most.
pub const GROUP_MEMBER_MENTIONS: usize = 10;

/// One mention: the platform's group, or a person, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mention<'a> {
    Group(&'a str),
    Person(&'a str),
}

/// Who may be notified by a card.
#[derive(Debug, Clone, Default)]
pub struct Mentions {
    /// Passport group name → the platform's group id (a Slack user group,
    /// a Discord role).
    pub platform_groups: BTreeMap<String, String>,
    /// Passport group name → member user ids, from configuration.
    pub groups: BTreeMap<String, Vec<String>>,
}

impl Mentions {
    /// The mentions for `approvers` (`group:NAME` or user ids), each once,
    /// in the order the approvers name them; `anyone` mentions nobody.
    pub fn of<'a>(&'a self, approvers: &'a [String]) -> Vec<Mention<'a>> {
        let mut out = Vec::new();
        let mut push = |m: Mention<'a>| {
            if !out.contains(&m) {
                out.push(m);
            }
        };
        for a in approvers {
            if let Some(group) = a.strip_prefix("group:") {
                if let Some(id) = self.platform_groups.get(group) {
                    push(Mention::Group(id));
                }
                for m in self
                    .groups
                    .get(group)
                    .into_iter()
                    .flatten()
                    .take(GROUP_MEMBER_MENTIONS)
                {
                    push(Mention::Person(m));
                }
            } else if a != "anyone" && !a.is_empty() {
                push(Mention::Person(a));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mentions() -> Mentions {
        Mentions {
            platform_groups: BTreeMap::from([("leads".into(), "G1".into())]),
            groups: BTreeMap::from([("leads".into(), (0..15).map(|i| format!("U{i}")).collect())]),
        }
    }

    #[test]
    fn a_group_is_its_platform_group_and_at_most_ten_members_each_once() {
        let approvers = vec![
            "group:leads".to_owned(),
            "U3".to_owned(),
            "U99".to_owned(),
            "anyone".to_owned(),
            "group:nobody".to_owned(),
        ];
        let m = mentions();
        let got = m.of(&approvers);
        assert_eq!(got[0], Mention::Group("G1"));
        let people: Vec<&str> = got
            .iter()
            .filter_map(|m| match m {
                Mention::Person(p) => Some(*p),
                Mention::Group(_) => None,
            })
            .collect();
        let mut expected: Vec<String> = (0..10).map(|i| format!("U{i}")).collect();
        expected.push("U99".into());
        assert_eq!(people, expected);
    }
}
