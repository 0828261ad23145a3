//! The one command grammar shared by every chat surface and the console.
//!
//! Every button the bot shows carries the text of a command from this grammar,
//! so a click and a typed command take exactly the same path.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::signin::LoginCode;
use super::time::Span;
use super::values::{
    looks_like_duration, quote, DurationLimits, GrantDuration, InputError, InstanceIds, Reason,
    RequestId, SshPublicKey, Ticket, TicketRules, UserId,
};

/// What the grammar needs to know from configuration.
#[derive(Debug, Clone)]
pub struct Grammar {
    pub durations: DurationLimits,
    pub tickets: TicketRules,
    pub max_instances: usize,
}

impl Default for Grammar {
    fn default() -> Self {
        Self {
            durations: DurationLimits::default(),
            tickets: TicketRules::default(),
            max_instances: 200,
        }
    }
}

/// A new access request as typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    pub instances: InstanceIds,
    pub duration: GrantDuration,
    pub ticket: Ticket,
    pub reason: Option<Reason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListFilter {
    /// Requests the caller made or may act on, most recent first.
    Default,
    Mine,
    Pending,
    Active,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Request(RequestSpec),
    Approve(RequestId),
    /// Approve exactly the decision a button was shown for (`approve AR-1
    /// @extension-2`), so a click under an old prompt or card can never
    /// approve a later, different decision.
    ApproveShown(RequestId, Shown),
    Deny(RequestId, Option<Reason>),
    /// Deny exactly the decision a button was shown for (`deny AR-1 @request`).
    DenyShown(RequestId, Shown, Option<Reason>),
    Complete(RequestId),
    Extend(RequestId, GrantDuration),
    Cancel(RequestId),
    Revoke(RequestId, Option<Reason>),
    List(ListFilter),
    Show(RequestId),
    Audit(RequestId),
    /// Provision again the instances that failed.
    Retry(RequestId),
    /// A certificate from Passport's SSH CA for the caller's registered key.
    Cert(RequestId),
    /// Register (or replace) the caller's SSH public key.
    KeySet(SshPublicKey),
    KeyShow,
    KeyRemove,
    /// A sign-in code typed in chat, or the Confirm or Cancel button under it.
    Login(LoginCode, LoginStep),
    /// End the caller's API tokens, or (admins) someone else's.
    Logout(Option<UserId>),
    Help,
}

/// The decision a button was shown for. Buttons carry it after the request
/// id: `@request` (the request's own approval, on its card), `@extension-N`
/// (its N-th extension that waited for an approver), or `+30m` (the length of
/// the extension, which prompts posted before extensions were numbered carry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Request,
    Extension(u32),
    ExtensionOf(super::time::Span),
}

impl Shown {
    /// `@request` or `@extension-N`; `None` for any other token.
    fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix('@')?.to_ascii_lowercase();
        if rest == "request" {
            return Some(Self::Request);
        }
        let n = rest.strip_prefix("extension-")?;
        if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        n.parse().ok().map(Self::Extension)
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Request => f.write_str("@request"),
            Self::Extension(n) => write!(f, "@extension-{n}"),
            Self::ExtensionOf(by) => write!(f, "+{by}"),
        }
    }
}

/// What a `login CODE` line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStep {
    /// The code as typed: show where the sign-in comes from, with Confirm and Cancel.
    Show,
    Confirm,
    Cancel,
}

impl Command {
    /// The request a command acts on, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Command::Approve(id)
            | Command::ApproveShown(id, _)
            | Command::Deny(id, _)
            | Command::DenyShown(id, _, _)
            | Command::Complete(id)
            | Command::Extend(id, _)
            | Command::Cancel(id)
            | Command::Revoke(id, _)
            | Command::Show(id)
            | Command::Audit(id)
            | Command::Retry(id)
            | Command::Cert(id) => Some(*id),
            Command::Request(_)
            | Command::List(_)
            | Command::KeySet(_)
            | Command::KeyShow
            | Command::KeyRemove
            | Command::Login(..)
            | Command::Logout(_)
            | Command::Help => None,
        }
    }
}

/// One entry of the grammar: its usage line and what it does. `help` is built from this table.
pub struct CommandSpec {
    pub name: &'static str,
    pub usage: &'static str,
    pub summary: &'static str,
}

pub const COMMANDS: &[CommandSpec] = &[
    CommandSpec {
        name: "request",
        usage: "request <instances> [duration] <ticket> [reason…]",
        summary: "ask for access, e.g. `request i-0123456789abcdef0 2h ticket#123 disk full` (default 1h)",
    },
    CommandSpec { name: "approve", usage: "approve AR-n", summary: "approve a pending request" },
    CommandSpec { name: "deny", usage: "deny AR-n [reason]", summary: "deny a pending request" },
    CommandSpec { name: "complete", usage: "complete AR-n", summary: "finish early: access is removed at once (also `done`)" },
    CommandSpec { name: "extend", usage: "extend AR-n <duration>", summary: "add time to active access, up to the maximum" },
    CommandSpec { name: "cancel", usage: "cancel AR-n", summary: "withdraw your pending request" },
    CommandSpec { name: "revoke", usage: "revoke AR-n [reason]", summary: "end someone's access now (approvers and admins)" },
    CommandSpec { name: "list", usage: "list [mine|pending|active]", summary: "list requests" },
    CommandSpec { name: "show", usage: "show AR-n", summary: "show one request and its instances" },
    CommandSpec { name: "audit", usage: "audit AR-n", summary: "show the Logbook timeline of a request" },
    CommandSpec { name: "retry", usage: "retry AR-n", summary: "set up access again on the instances that failed" },
    CommandSpec { name: "cert", usage: "cert AR-n", summary: "get an SSH certificate for your registered key, valid until the access ends" },
    CommandSpec { name: "key", usage: "key set <ssh public key> | key show | key remove", summary: "register the SSH key your Linux users log in with" },
    CommandSpec { name: "login", usage: "login <code>", summary: "sign in the terminal that shows this code (`passport login`); you confirm where it comes from first" },
    CommandSpec { name: "logout", usage: "logout [@user]", summary: "end your terminal sign-ins; admins may end someone else's" },
    CommandSpec { name: "help", usage: "help", summary: "show this help" },
];

/// The help text, generated from [`COMMANDS`].
pub fn help_text(prefix: &str) -> String {
    let mut out = String::from("Passport: just-in-time access to EC2 instances\n");
    for spec in COMMANDS {
        out.push_str(&format!("  {prefix}{:<44} {}\n", spec.usage, spec.summary));
    }
    out.push_str(
        "Durations look like 30m, 2h or 1h30m. In a request's thread you may leave out AR-n, \
         and write `extend 1h`, `+30m` or `done`.",
    );
    out
}

fn usage_of(name: &str) -> &'static str {
    let name = if name == "done" { "complete" } else { name };
    COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.usage)
        .unwrap_or("help")
}

fn usage_error(name: &str, problem: &str) -> InputError {
    InputError::new(format!("{problem}: use `{}`", usage_of(name)))
}

impl Grammar {
    /// Parses one command line. A leading `/passport` is ignored.
    pub fn parse(&self, line: &str) -> Result<Command, InputError> {
        self.parse_in_context(line, None)
    }

    /// Parses a line typed in the thread of `thread_request`: commands that take
    /// a request id act on that request when the id is left out, and the short
    /// forms `+30m`, `extend 1h`, `done` and `complete` are understood.
    pub fn parse_in_context(
        &self,
        line: &str,
        thread_request: Option<RequestId>,
    ) -> Result<Command, InputError> {
        let line = line.trim();
        let line = line
            .strip_prefix("/passport")
            .map(str::trim_start)
            .unwrap_or(line);
        let mut tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = tokens.first().copied() else {
            return Ok(Command::Help);
        };
        let name = first.to_ascii_lowercase();

        if let Some(id) = thread_request {
            if first.starts_with('+') && Span::parse(first).is_some() {
                // `+1h 30m` must not silently become one hour.
                if let Some(extra) = tokens.get(1) {
                    return Err(usage_error(
                        "extend",
                        &format!("unexpected {}", quote(extra)),
                    ));
                }
                return Ok(Command::Extend(id, self.extension(first)?));
            }
            if name == "done" && tokens.len() == 1 {
                return Ok(Command::Complete(id));
            }
            let takes_id = [
                "approve", "deny", "complete", "extend", "cancel", "revoke", "show", "audit",
                "retry", "cert",
            ];
            if takes_id.contains(&name.as_str())
                && tokens.get(1).is_none_or(|t| RequestId::parse(t).is_err())
            {
                // Fill in the thread's request so one path handles both forms.
                tokens.insert(1, "");
                return self.parse_tokens(&name, &tokens, Some(id), line);
            }
        }
        self.parse_tokens(&name, &tokens, None, line)
    }

    fn parse_tokens(
        &self,
        name: &str,
        tokens: &[&str],
        implied: Option<RequestId>,
        line: &str,
    ) -> Result<Command, InputError> {
        let id_at = |i: usize| -> Result<RequestId, InputError> {
            if let Some(id) = implied.filter(|_| i == 1) {
                return Ok(id);
            }
            match tokens.get(i) {
                Some(t) => RequestId::parse(t),
                None => Err(usage_error(name, "which request?")),
            }
        };
        // With an implied id, the typed line has one token fewer than `tokens`.
        let shift = usize::from(implied.is_some());
        let rest_from = |i: usize| -> Result<Option<Reason>, InputError> {
            Reason::parse(&rest_of_line(line, i - shift))
        };
        let no_more = |i: usize| -> Result<(), InputError> {
            match tokens.get(i) {
                None => Ok(()),
                Some(extra) => Err(usage_error(name, &format!("unexpected {}", quote(extra)))),
            }
        };
        match name {
            "request" => self.parse_request(&tokens[1..], line).map(Command::Request),
            "approve" => {
                let id = id_at(1)?;
                let shown = match tokens.get(2) {
                    Some(by) if by.starts_with('+') => {
                        let by = Span::parse(by).ok_or_else(|| {
                            usage_error(
                                name,
                                &format!("{} is not an extension length like +30m", quote(by)),
                            )
                        })?;
                        Some(Shown::ExtensionOf(by))
                    }
                    Some(token) => Shown::parse(token),
                    None => None,
                };
                match shown {
                    Some(shown) => {
                        no_more(3)?;
                        Ok(Command::ApproveShown(id, shown))
                    }
                    None => {
                        no_more(2)?;
                        Ok(Command::Approve(id))
                    }
                }
            }
            "deny" => {
                let id = id_at(1)?;
                match tokens.get(2).and_then(|t| Shown::parse(t)) {
                    Some(shown) => Ok(Command::DenyShown(id, shown, rest_from(3)?)),
                    None => Ok(Command::Deny(id, rest_from(2)?)),
                }
            }
            "complete" | "done" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Complete(id))
            }
            "extend" => {
                let id = id_at(1)?;
                let by = tokens
                    .get(2)
                    .ok_or_else(|| usage_error(name, "extend by how long?"))?;
                no_more(3)?;
                Ok(Command::Extend(id, self.extension(by)?))
            }
            "cancel" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Cancel(id))
            }
            "revoke" => Ok(Command::Revoke(id_at(1)?, rest_from(2)?)),
            "list" => {
                let filter = match tokens.get(1).map(|t| t.to_ascii_lowercase()).as_deref() {
                    None => ListFilter::Default,
                    Some("mine") => ListFilter::Mine,
                    Some("pending") => ListFilter::Pending,
                    Some("active") => ListFilter::Active,
                    Some(other) => {
                        return Err(usage_error(
                            name,
                            &format!("unknown list filter {}", quote(other)),
                        ))
                    }
                };
                no_more(2)?;
                Ok(Command::List(filter))
            }
            "show" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Show(id))
            }
            "audit" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Audit(id))
            }
            "retry" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Retry(id))
            }
            "cert" => {
                let id = id_at(1)?;
                no_more(2)?;
                Ok(Command::Cert(id))
            }
            "key" => match tokens.get(1).map(|t| t.to_ascii_lowercase()).as_deref() {
                Some("set") => Ok(Command::KeySet(SshPublicKey::parse(&rest_of_line(
                    line, 2,
                ))?)),
                Some("show") => {
                    no_more(2)?;
                    Ok(Command::KeyShow)
                }
                Some("remove") => {
                    no_more(2)?;
                    Ok(Command::KeyRemove)
                }
                _ => Err(usage_error(name, "set, show or remove your key?")),
            },
            "login" => {
                // The code may be typed with a space instead of the dash.
                let (code, step) = match tokens.len() {
                    2 => (tokens[1].to_owned(), None),
                    3 if LoginCode::parse(&format!("{}{}", tokens[1], tokens[2])).is_ok() => {
                        (format!("{}{}", tokens[1], tokens[2]), None)
                    }
                    3 => (tokens[1].to_owned(), Some(tokens[2])),
                    1 => return Err(usage_error(name, "which code?")),
                    _ => {
                        return Err(usage_error(
                            name,
                            &format!("unexpected {}", quote(tokens[3])),
                        ))
                    }
                };
                let step = match step.map(str::to_ascii_lowercase).as_deref() {
                    None => LoginStep::Show,
                    Some("confirm") => LoginStep::Confirm,
                    Some("cancel") => LoginStep::Cancel,
                    Some(other) => {
                        return Err(usage_error(name, &format!("unexpected {}", quote(other))))
                    }
                };
                Ok(Command::Login(LoginCode::parse(&code)?, step))
            }
            "logout" => {
                let user = match tokens.get(1) {
                    None => None,
                    Some(t) => Some(mentioned_user(t)?),
                };
                no_more(2)?;
                Ok(Command::Logout(user))
            }
            "help" => Ok(Command::Help),
            other => Err(InputError::new(format!(
                "unknown command {}: try `request`, `approve`, `extend`, `complete` or `help`",
                quote(other)
            ))),
        }
    }

    /// Parses the length of an extension: at least a minute, at most the cap.
    pub fn extension(&self, text: &str) -> Result<GrantDuration, InputError> {
        // An extension may be short, but not shorter than a minute or longer than the cap.
        let limits = DurationLimits {
            min: super::time::Span::from_minutes(1),
            ..self.durations
        };
        GrantDuration::parse(text, &limits)
    }

    fn parse_request(&self, args: &[&str], line: &str) -> Result<RequestSpec, InputError> {
        if args.is_empty() {
            return Err(usage_error(
                "request",
                "which instances, and for which ticket?",
            ));
        }
        let n_instances = args
            .iter()
            .take_while(|t| t.starts_with("i-") || t.starts_with(','))
            .count();
        if n_instances == 0 {
            return Err(InputError::new(format!(
                "{} is not an instance id: start with the instances, e.g. `request i-0123456789abcdef0 2h ticket#123 reason`",
                quote(args[0])
            )));
        }
        let instances =
            InstanceIds::parse(args[..n_instances].iter().copied(), self.max_instances)?;
        let mut next = n_instances;
        let duration = match args.get(next) {
            Some(t) if Span::parse(t).is_some() => {
                next += 1;
                GrantDuration::parse(t, &self.durations)?
            }
            Some(t) if looks_like_duration(t) && Ticket::parse(t, &self.tickets).is_err() => {
                return Err(GrantDuration::parse(t, &self.durations)
                    .err()
                    .unwrap_or_else(|| InputError::new(format!("unknown duration {}", quote(t)))));
            }
            _ => GrantDuration::within(self.durations.default, &self.durations)?,
        };
        let ticket_text = args
            .get(next)
            .ok_or_else(|| usage_error("request", "a ticket is required"))?;
        let ticket = Ticket::parse(ticket_text, &self.tickets)?;
        // `line` starts with the command word; args[i] is token i + 1 of the line.
        let reason = Reason::parse(&rest_of_line(line, next + 2))?;
        Ok(RequestSpec {
            instances,
            duration,
            ticket,
            reason,
        })
    }
}

/// The user a mention or id names: Slack's `<@U123>` or `<@U123|name>`,
/// Discord's `<@123>` or `<@!123>`, or a plain id.
fn mentioned_user(text: &str) -> Result<UserId, InputError> {
    let inner = text
        .strip_prefix("<@")
        .and_then(|t| t.strip_suffix('>'))
        .map(|t| t.trim_start_matches('!'))
        .map(|t| t.split('|').next().unwrap_or(t))
        .unwrap_or(text);
    if inner.is_empty() || inner.starts_with('<') || inner.starts_with('@') {
        return Err(usage_error(
            "logout",
            &format!(
                "{} is not a user id: mention them (`<@U0123ABCD>`) or give their user id, e.g. `logout U0123ABCD`",
                quote(text)
            ),
        ));
    }
    UserId::parse(inner)
}

/// The text of `line` from whitespace-separated token `index` on, spacing kept.
fn rest_of_line(line: &str, index: usize) -> String {
    let mut rest = line.trim_start();
    for _ in 0..index {
        match rest.find(char::is_whitespace) {
            Some(end) => rest = rest[end..].trim_start(),
            None => return String::new(),
        }
    }
    rest.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g() -> Grammar {
        Grammar::default()
    }

    #[test]
    fn a_full_request_parses() {
        let Command::Request(spec) = g()
            .parse("/passport request i-0123456789abcdef0 2h ticket#123 disk  full")
            .unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(spec.instances.len(), 1);
        assert_eq!(spec.duration.span().whole_minutes(), 120);
        assert_eq!(spec.ticket.as_str(), "ticket#123");
        assert_eq!(spec.reason.unwrap().as_str(), "disk  full");
    }

    #[test]
    fn duration_defaults_to_one_hour_and_instances_may_be_listed() {
        let Command::Request(spec) = g()
            .parse("request i-01234567, i-89abcdef,i-01234567 INC-7")
            .unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(spec.instances.len(), 2);
        assert_eq!(spec.duration.span().whole_minutes(), 60);
        assert!(spec.reason.is_none());
    }

    #[test]
    fn request_errors_say_what_to_type() {
        let e = |l: &str| g().parse(l).unwrap_err().0;
        assert!(e("request").contains("use `request <instances>"));
        assert!(e("request i-01234567").contains("a ticket is required"));
        assert!(e("request i-01234567 2hrs ticket#1").starts_with("unknown duration \"2hrs\""));
        assert!(e("request i-01234567 13h ticket#1").contains("maximum is 12h"));
        assert!(e("request web01 ticket#1").contains("is not an instance id"));
        assert!(e("request i-xyz ticket#1").contains("invalid instance id"));
        assert!(e("request i-01234567 2h nope").starts_with("unknown ticket"));
        assert!(e("frobnicate AR-1").starts_with("unknown command"));
        assert!(e("approve").contains("which request?"));
        assert!(e("approve AR-1 now").contains("unexpected \"now\""));
        assert!(e("extend AR-1").contains("extend by how long?"));
        assert!(e("list everything").contains("unknown list filter"));
    }

    #[test]
    fn every_command_in_the_table_parses() {
        let id = RequestId::new(3).unwrap();
        let g = g();
        assert_eq!(g.parse("approve AR-3").unwrap(), Command::Approve(id));
        assert_eq!(
            g.parse("deny AR-3 not now").unwrap(),
            Command::Deny(id, Reason::parse("not now").unwrap())
        );
        // What buttons carry: the decision they were shown for.
        assert_eq!(
            g.parse("approve AR-3 @request").unwrap(),
            Command::ApproveShown(id, Shown::Request)
        );
        assert_eq!(
            g.parse("approve AR-3 @extension-2").unwrap(),
            Command::ApproveShown(id, Shown::Extension(2))
        );
        assert_eq!(
            g.parse("approve AR-3 +1h").unwrap(),
            Command::ApproveShown(
                id,
                Shown::ExtensionOf(crate::domain::time::Span::from_hours(1))
            )
        );
        assert_eq!(
            g.parse("deny AR-3 @extension-12 too long").unwrap(),
            Command::DenyShown(id, Shown::Extension(12), Reason::parse("too long").unwrap())
        );
        // Only the exact forms are references; anything else is a reason.
        assert_eq!(
            g.parse("deny AR-3 @extension-x sure").unwrap(),
            Command::Deny(id, Reason::parse("@extension-x sure").unwrap())
        );
        assert!(g.parse("approve AR-3 @extension-").is_err());
        assert_eq!(Shown::Extension(4).to_string(), "@extension-4");
        assert_eq!(g.parse("complete AR-3").unwrap(), Command::Complete(id));
        assert!(
            matches!(g.parse("extend AR-3 30m").unwrap(), Command::Extend(i, d) if i == id && d.span().whole_minutes() == 30)
        );
        assert_eq!(g.parse("cancel AR-3").unwrap(), Command::Cancel(id));
        assert_eq!(g.parse("revoke AR-3").unwrap(), Command::Revoke(id, None));
        assert_eq!(
            g.parse("list pending").unwrap(),
            Command::List(ListFilter::Pending)
        );
        assert_eq!(g.parse("list").unwrap(), Command::List(ListFilter::Default));
        assert_eq!(g.parse("show AR-3").unwrap(), Command::Show(id));
        assert_eq!(g.parse("audit AR-3").unwrap(), Command::Audit(id));
        assert_eq!(g.parse("help").unwrap(), Command::Help);
        assert_eq!(g.parse("").unwrap(), Command::Help);
        let code = LoginCode::parse("ABCD-EFGH").unwrap();
        assert_eq!(
            g.parse("login abcd-efgh").unwrap(),
            Command::Login(code.clone(), LoginStep::Show)
        );
        assert_eq!(
            g.parse("login ABCD EFGH").unwrap(),
            Command::Login(code.clone(), LoginStep::Show)
        );
        assert_eq!(
            g.parse("login ABCD-EFGH confirm").unwrap(),
            Command::Login(code, LoginStep::Confirm)
        );
        assert!(g.parse("login").unwrap_err().0.contains("which code?"));
        assert_eq!(g.parse("logout").unwrap(), Command::Logout(None));
        let u = |s: &str| Some(UserId::parse(s).unwrap());
        assert_eq!(
            g.parse("logout <@U0DEV|dev>").unwrap(),
            Command::Logout(u("U0DEV"))
        );
        assert_eq!(
            g.parse("logout <@!1234>").unwrap(),
            Command::Logout(u("1234"))
        );
        assert_eq!(
            g.parse("logout U0DEV").unwrap(),
            Command::Logout(u("U0DEV"))
        );
        assert!(g.parse("logout @dev").is_err());
        for spec in COMMANDS {
            assert!(help_text("/passport ").contains(spec.usage));
        }
    }

    #[test]
    fn thread_short_forms_act_on_the_threads_request() {
        let id = RequestId::new(9).unwrap();
        let g = g();
        let in_thread = |l: &str| g.parse_in_context(l, Some(id));
        assert!(
            matches!(in_thread("extend 1h").unwrap(), Command::Extend(i, d) if i == id && d.span().whole_minutes() == 60)
        );
        assert!(matches!(in_thread("+30m").unwrap(), Command::Extend(i, _) if i == id));
        assert_eq!(in_thread("done").unwrap(), Command::Complete(id));
        assert_eq!(in_thread("complete").unwrap(), Command::Complete(id));
        assert_eq!(in_thread("approve").unwrap(), Command::Approve(id));
        assert_eq!(
            in_thread("deny too broad").unwrap(),
            Command::Deny(id, Reason::parse("too broad").unwrap())
        );
        // An explicit id still wins.
        let other = RequestId::new(4).unwrap();
        assert_eq!(
            in_thread("complete AR-4").unwrap(),
            Command::Complete(other)
        );
        assert!(in_thread("+1y").is_err());
    }
}
