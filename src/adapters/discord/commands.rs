//! The `/passport` application command: its definition (registered at start)
//! and the mapping from a submitted command back to a line of the command
//! grammar, so Discord's typed options and typed text run the same parser.

use serde_json::{json, Value};

/// One typed option of a subcommand.
struct Opt {
    name: &'static str,
    description: &'static str,
    required: bool,
    choices: &'static [&'static str],
}

const fn opt(name: &'static str, description: &'static str, required: bool) -> Opt {
    Opt {
        name,
        description,
        required,
        choices: &[],
    }
}

/// A subcommand: its options, and the order their values take in the command line.
struct Sub {
    name: &'static str,
    description: &'static str,
    options: &'static [Opt],
    line: &'static [&'static str],
}

const REQUEST_ID: Opt = opt("request", "AR-n (leave out in the request's thread)", false);

const SUBCOMMANDS: &[Sub] = &[
    Sub {
        name: "request",
        description: "Ask for access to EC2 instances",
        options: &[
            opt(
                "instances",
                "Instance ids separated by spaces, e.g. i-0123456789abcdef0",
                true,
            ),
            opt(
                "ticket",
                "The ticket this work belongs to, e.g. OPS-123",
                true,
            ),
            opt(
                "duration",
                "How long, e.g. 30m, 2h or 1h30m (default 1h)",
                false,
            ),
            opt("reason", "Why you need access", false),
        ],
        line: &["instances", "duration", "ticket", "reason"],
    },
    Sub {
        name: "approve",
        description: "Approve a pending request",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "deny",
        description: "Deny a pending request",
        options: &[
            REQUEST_ID,
            opt("reason", "Why, shown to the requester", false),
        ],
        line: &["request", "reason"],
    },
    Sub {
        name: "extend",
        description: "Add time to active access, up to the maximum",
        options: &[
            opt("duration", "How much more, e.g. 30m or 1h", true),
            REQUEST_ID,
        ],
        line: &["request", "duration"],
    },
    Sub {
        name: "complete",
        description: "Finish early: access is removed at once",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "cancel",
        description: "Withdraw your pending request",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "revoke",
        description: "End someone's access now (approvers and admins)",
        options: &[
            REQUEST_ID,
            opt("reason", "Why, shown to the requester", false),
        ],
        line: &["request", "reason"],
    },
    Sub {
        name: "list",
        description: "List requests",
        options: &[Opt {
            name: "which",
            description: "Which requests (default: the ones you can act on)",
            required: false,
            choices: &["mine", "pending", "active"],
        }],
        line: &["which"],
    },
    Sub {
        name: "show",
        description: "Show one request and its instances",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "audit",
        description: "Show the Logbook timeline of a request",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "retry",
        description: "Set up access again on the instances that failed",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "cert",
        description: "Get an SSH certificate for your registered key, valid until the access ends",
        options: &[REQUEST_ID],
        line: &["request"],
    },
    Sub {
        name: "key",
        description: "Register the SSH key your Linux users log in with",
        options: &[
            Opt {
                name: "action",
                description: "set, show or remove your key",
                required: true,
                choices: &["set", "show", "remove"],
            },
            opt(
                "public_key",
                "For set: your SSH public key (ssh-ed25519 AAAA…)",
                false,
            ),
        ],
        line: &["action", "public_key"],
    },
    Sub {
        name: "login",
        description: "Sign in the terminal that shows this code (passport login)",
        options: &[opt(
            "code",
            "The code your terminal shows, e.g. ABCD-EFGH",
            true,
        )],
        line: &["code"],
    },
    Sub {
        name: "logout",
        description: "End your terminal sign-ins; admins may end someone else's",
        options: &[opt(
            "user",
            "For admins: whose sign-ins to end, e.g. @name",
            false,
        )],
        line: &["user"],
    },
    Sub {
        name: "help",
        description: "Show how to use Passport",
        options: &[],
        line: &[],
    },
];

/// The definitions to register (`PUT …/commands`): one `/passport` command
/// with a subcommand per grammar command.
pub fn definitions() -> Value {
    let subcommands: Vec<Value> = SUBCOMMANDS
        .iter()
        .map(|s| {
            let options: Vec<Value> = s
                .options
                .iter()
                .map(|o| {
                    let mut v = json!({
                        "type": 3,
                        "name": o.name,
                        "description": o.description,
                        "required": o.required,
                    });
                    if !o.choices.is_empty() {
                        v["choices"] = o
                            .choices
                            .iter()
                            .map(|c| json!({ "name": c, "value": c }))
                            .collect();
                    }
                    v
                })
                .collect();
            json!({
                "type": 1,
                "name": s.name,
                "description": s.description,
                "options": options,
            })
        })
        .collect();
    json!([{
        "type": 1,
        "name": "passport",
        "description": "Just-in-time access to EC2 instances",
        "dm_permission": false,
        "options": subcommands,
    }])
}

/// An option of a submitted command, as Discord sends it.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
pub struct SubmittedOption {
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: u8,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub options: Vec<SubmittedOption>,
}

/// One line with no control characters.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The command line a submitted `/passport <sub> …` stands for.
pub fn command_line(options: &[SubmittedOption]) -> String {
    let Some(sub) = options
        .iter()
        .find(|o| o.kind == 1 || !o.options.is_empty())
    else {
        // No subcommand: the typed text, if any, else help.
        return "help".into();
    };
    let value = |name: &str| -> Option<String> {
        sub.options
            .iter()
            .find(|o| o.name == name)
            .and_then(|o| match &o.value {
                Some(Value::String(s)) => Some(one_line(s)),
                Some(Value::Number(n)) => Some(n.to_string()),
                Some(Value::Bool(b)) => Some(b.to_string()),
                _ => None,
            })
            .filter(|v| !v.is_empty())
    };
    let order: &[&str] = SUBCOMMANDS
        .iter()
        .find(|s| s.name == sub.name)
        .map(|s| s.line)
        .unwrap_or(&[]);
    order
        .iter()
        .filter_map(|name| value(name))
        .fold(one_line(&sub.name), |line, v| format!("{line} {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::COMMANDS;

    fn sub(name: &str, options: &[(&str, &str)]) -> Vec<SubmittedOption> {
        vec![SubmittedOption {
            name: name.into(),
            kind: 1,
            value: None,
            options: options
                .iter()
                .map(|(n, v)| SubmittedOption {
                    name: (*n).into(),
                    kind: 3,
                    value: Some(json!(v)),
                    options: vec![],
                })
                .collect(),
        }]
    }

    #[test]
    fn every_grammar_command_has_a_subcommand() {
        for c in COMMANDS {
            assert!(SUBCOMMANDS.iter().any(|s| s.name == c.name), "{}", c.name);
        }
        for s in SUBCOMMANDS {
            // Discord wants required options first.
            let first_optional = s.options.iter().position(|o| !o.required);
            if let Some(i) = first_optional {
                assert!(s.options[i..].iter().all(|o| !o.required), "{}", s.name);
            }
            for name in s.line {
                assert!(s.options.iter().any(|o| o.name == *name), "{}", s.name);
            }
            assert!(s.description.len() <= 100 && s.options.len() <= 25);
        }
    }

    #[test]
    fn options_become_the_typed_line() {
        let line = command_line(&sub(
            "request",
            &[
                ("reason", "disk full\non web"),
                ("ticket", "OPS-1"),
                ("instances", "i-0123456789abcdef0"),
                ("duration", "2h"),
            ],
        ));
        assert_eq!(
            line,
            "request i-0123456789abcdef0 2h OPS-1 disk full on web"
        );
        assert_eq!(
            command_line(&sub("extend", &[("duration", "1h")])),
            "extend 1h"
        );
        assert_eq!(
            command_line(&sub("extend", &[("duration", "1h"), ("request", "AR-3")])),
            "extend AR-3 1h"
        );
        assert_eq!(command_line(&sub("list", &[])), "list");
        assert_eq!(command_line(&[]), "help");
    }
}
