//! Renders Passport's notices as Discord messages (content, one embed,
//! buttons), within Discord's limits: content ≤ 2,000 characters; an embed's
//! title ≤ 256, description ≤ 4,096, ≤ 25 fields of name ≤ 256 and value
//! ≤ 1,024, footer ≤ 2,048, and ≤ 6,000 in all; ≤ 5 rows of ≤ 5 buttons,
//! labels ≤ 80 and custom ids ≤ 100 characters.
//!
//! What people typed (reasons, tickets, names) is escaped so it shows as
//! typed, and every message says exactly whom it may notify
//! (`allowed_mentions`), so a reason containing `@everyone` notifies nobody.
//! Cards escape each field; thread replies, direct messages, answers and
//! audit lines arrive as finished text, so [`escape_text`] escapes all of it
//! but Passport's own code spans.

use serde_json::{json, Value};

use crate::adapters::chat::card;
use crate::adapters::chat::mentions::{Mention, Mentions};
use crate::domain::notice::{Action, ActionStyle, CardInstance, CardView};
use crate::domain::request::RequestState;

pub const MAX_CONTENT: usize = 2000;
pub const MAX_TITLE: usize = 256;
pub const MAX_DESCRIPTION: usize = 4096;
pub const MAX_FIELD_VALUE: usize = 1024;
pub const MAX_FOOTER: usize = 2048;
pub const MAX_EMBED_TOTAL: usize = 6000;
pub const MAX_ROWS: usize = 5;
pub const MAX_PER_ROW: usize = 5;
pub const MAX_LABEL: usize = 80;
pub const MAX_CUSTOM_ID: usize = 100;
/// Thread names are 1–100 characters.
pub const MAX_THREAD_NAME: usize = 100;
/// Buttons carry `passport:` and the command they stand for.
pub const CUSTOM_ID_PREFIX: &str = "passport:";

fn chars(text: &str) -> usize {
    text.chars().count()
}

/// Cuts `text` to at most `max` characters, ending in `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if chars(text) <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    // Never end in a lone escaping backslash.
    if cut.ends_with('\\') && !cut.ends_with("\\\\") {
        cut.pop();
    }
    cut.push('…');
    cut
}

/// Escapes Discord's markdown so text shows as typed.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '*' | '_' | '~' | '`' | '|' | '>' | '#' | '[' | ']' | '(' | ')' | '<' | '@'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Escapes a finished text (a thread reply, direct message, answer or audit
/// line) so that only its code spans keep their meaning. Passport's texts use
/// no markdown but `` `code` `` spans around commands and user names, inside
/// which Discord parses nothing (no mentions, links or formatting); anything
/// people typed sits between them and is escaped. A backtick someone typed
/// can only make more of the text a code span, which shows it literally; an
/// unpaired last one is escaped.
pub fn escape_text(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    let paired = if parts.len() % 2 == 1 {
        parts.len()
    } else {
        parts.len() - 1
    };
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(if i < paired { "`" } else { "\\`" });
        }
        if i % 2 == 0 || i >= paired {
            out.push_str(&escape(part));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// Discord takes at most this many ids in `allowed_mentions.users`.
const MAX_ALLOWED_USERS: usize = 100;

fn is_snowflake(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The roles and users a card notifies for `approvers`: ids Discord would
/// not take are left out.
fn roles_and_users(mentions: &Mentions, approvers: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut roles, mut users) = (Vec::new(), Vec::new());
    for m in mentions.of(approvers) {
        match m {
            Mention::Group(id) if is_snowflake(id) => roles.push(id.to_owned()),
            Mention::Person(id) if is_snowflake(id) && users.len() < MAX_ALLOWED_USERS => {
                users.push(id.to_owned());
            }
            _ => {}
        }
    }
    (roles, users)
}

fn style(s: ActionStyle) -> u8 {
    match s {
        ActionStyle::Primary => 3,
        ActionStyle::Danger => 4,
        ActionStyle::Plain => 2,
    }
}

/// Rows of buttons; each custom id is the command the button stands for. A
/// command too long for a custom id, or a repeated one, gets no button.
pub fn components(actions: &[Action]) -> Value {
    let mut seen = Vec::new();
    let buttons: Vec<Value> = actions
        .iter()
        .filter_map(|a| {
            let custom_id = format!("{CUSTOM_ID_PREFIX}{}", a.command);
            if chars(&custom_id) > MAX_CUSTOM_ID || seen.contains(&custom_id) {
                return None;
            }
            seen.push(custom_id.clone());
            Some(json!({
                "type": 2,
                "style": style(a.style),
                "label": clip(&a.label, MAX_LABEL),
                "custom_id": custom_id,
            }))
        })
        .take(MAX_ROWS * MAX_PER_ROW)
        .collect();
    Value::Array(
        buttons
            .chunks(MAX_PER_ROW)
            .map(|row| json!({ "type": 1, "components": row }))
            .collect(),
    )
}

fn color(state: RequestState) -> u32 {
    match state {
        RequestState::Pending => 0xF1_C4_0F,
        RequestState::Approved | RequestState::Provisioning => 0x34_98_DB,
        RequestState::Active => 0x2E_CC_71,
        RequestState::Completed | RequestState::Expired => 0x95_A5_A6,
        RequestState::Revoked
        | RequestState::Denied
        | RequestState::Cancelled
        | RequestState::ApprovalTimedOut
        | RequestState::Failed => 0xE7_4C_3C,
    }
}

fn instance_line(i: &CardInstance) -> String {
    // Nothing is markup inside a code span; only a backtick could end it.
    card::instance_line(i, |id| id.replace('`', ""), escape)
}

/// The instance lines that fit one field, the rest summarised.
fn instances_value(card: &CardView) -> String {
    let n = card.instances.len();
    let mut out = String::new();
    for (shown, i) in card.instances.iter().enumerate() {
        let line = instance_line(i);
        let rest = format!(
            "\n…and {} more: `show {}` lists them all",
            n - shown,
            card.request
        );
        if chars(&out) + 1 + chars(&line) + chars(&rest) > MAX_FIELD_VALUE {
            out.push_str(&rest);
            return clip(out.trim_start(), MAX_FIELD_VALUE);
        }
        out.push('\n');
        out.push_str(&line);
    }
    clip(out.trim_start(), MAX_FIELD_VALUE)
}

fn field(name: &str, value: String, inline: bool) -> Value {
    let value = if value.trim().is_empty() {
        "—".to_owned()
    } else {
        clip(&value, MAX_FIELD_VALUE)
    };
    json!({ "name": name, "value": value, "inline": inline })
}

fn embed_total(embed: &Value) -> usize {
    let s = |v: &Value| v.as_str().map_or(0, chars);
    s(&embed["title"])
        + s(&embed["description"])
        + s(&embed["footer"]["text"])
        + embed["fields"].as_array().map_or(0, |fs| {
            fs.iter().map(|f| s(&f["name"]) + s(&f["value"])).sum()
        })
}

/// Shortens the longest field values until the embed is within 6,000 characters.
fn fit(embed: &mut Value) {
    while embed_total(embed) > MAX_EMBED_TOTAL {
        let Some(fields) = embed["fields"].as_array_mut() else {
            return;
        };
        let Some(longest) = fields
            .iter_mut()
            .max_by_key(|f| f["value"].as_str().map_or(0, chars))
        else {
            return;
        };
        let value = longest["value"].as_str().unwrap_or_default().to_owned();
        let len = chars(&value);
        if len <= 16 {
            return;
        }
        longest["value"] = json!(clip(&value, len - len.min(len / 4).max(16)));
    }
}

/// The request card. Approvers are notified while the request is pending.
pub fn card_message(card: &CardView, mentions: &Mentions) -> Value {
    let pending = card.state == RequestState::Pending;
    let n = card.instances.len();
    let what = match card.instances.first() {
        Some(i) if n == 1 => format!("`{}`", i.id.replace('`', "")),
        _ => format!("{n} instances"),
    };
    let requester = if is_snowflake(card.requester_id.as_str()) {
        format!("<@{}> ({})", card.requester_id, escape(&card.requester))
    } else {
        escape(&card.requester)
    };
    let ticket = match &card.ticket_url {
        Some(url) if !url.contains(['(', ')', ' ', '<', '>']) => {
            format!("[{}]({url})", escape(&card.ticket))
        }
        _ => escape(&card.ticket),
    };
    let mut fields = vec![
        field("Ticket", ticket, true),
        field("Duration", escape(&card.duration), true),
        field("Requires", escape(&card.required), true),
        field(
            "Approved by",
            if card.approved_by.is_empty() {
                "nobody yet".to_owned()
            } else {
                escape(&card.approved_by.join(", "))
            },
            false,
        ),
    ];
    if let Some(reason) = &card.reason {
        fields.push(field("Reason", escape(reason), false));
    }
    fields.push(field("Instances", instances_value(card), false));
    let mut embed = json!({
        "title": clip(&format!("{} · {}", card.request, card.state.label()), MAX_TITLE),
        "description": clip(
            &format!("{requester} asks for **{}** on {what}", escape(&card.duration)),
            MAX_DESCRIPTION
        ),
        "color": color(card.state),
        "fields": fields,
        "footer": { "text": clip(&card.status, MAX_FOOTER) },
    });
    fit(&mut embed);
    let (roles, users) = if pending {
        roles_and_users(mentions, &card.approvers)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut content = format!("**{}** · {}", card.request, card.state.label());
    if pending && !(roles.is_empty() && users.is_empty()) {
        let pings: Vec<String> = roles
            .iter()
            .map(|r| format!("<@&{r}>"))
            .chain(users.iter().map(|u| format!("<@{u}>")))
            .collect();
        content = format!("{content} · approval needed from {}", pings.join(" "));
    }
    json!({
        "content": clip(&content, MAX_CONTENT),
        "embeds": [embed],
        "components": components(&card.actions),
        "allowed_mentions": { "parse": [], "roles": roles, "users": users },
    })
}

/// A thread reply, direct message or answer: the text (in an embed when it
/// is longer than a message's content may be), and buttons if any. It
/// notifies nobody.
pub fn text_message(text: &str, actions: &[Action]) -> Value {
    let text = &escape_text(text);
    let mut message = if chars(text) <= MAX_CONTENT {
        json!({ "content": text })
    } else {
        json!({
            "content": clip(text.lines().next().unwrap_or_default(), MAX_CONTENT),
            "embeds": [{ "description": clip(text, MAX_DESCRIPTION) }],
        })
    };
    message["components"] = components(actions);
    message["allowed_mentions"] = json!({ "parse": [] });
    message
}

/// One audit line.
pub fn audit_message(line: &str) -> Value {
    json!({
        "content": clip(&escape_text(line), MAX_CONTENT),
        "allowed_mentions": { "parse": [] },
    })
}

/// The name of a card's thread.
pub fn thread_name(card: &CardView) -> String {
    let name = format!("{} · {}", card.request, card.requester);
    clip(&name, MAX_THREAD_NAME)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::values::UserId;

    fn card(instances: usize, reason: &str) -> CardView {
        let mut card = crate::adapters::chat::fixtures::card(instances);
        card.requester_id = UserId::parse("1700000000000000001").unwrap();
        card.reason = Some(reason.into());
        card
    }

    fn mentions() -> Mentions {
        Mentions {
            platform_groups: BTreeMap::from([("approvers".into(), "1600000000000000001".into())]),
            groups: BTreeMap::new(),
        }
    }

    #[test]
    fn a_card_stays_within_discord_limits_however_long() {
        let long = "x".repeat(3000);
        let m = card_message(&card(1000, &long), &mentions());
        let embed = &m["embeds"][0];
        assert!(
            embed_total(embed) <= MAX_EMBED_TOTAL,
            "{}",
            embed_total(embed)
        );
        for f in embed["fields"].as_array().unwrap() {
            assert!(chars(f["value"].as_str().unwrap()) <= MAX_FIELD_VALUE);
        }
        let instances = embed["fields"].as_array().unwrap().last().unwrap()["value"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(instances.contains("more: `show AR-7`"), "{instances}");
        assert!(chars(m["content"].as_str().unwrap()) <= MAX_CONTENT);
    }

    #[test]
    fn only_approvers_are_notified_and_only_while_pending() {
        let m = card_message(&card(1, "@everyone look"), &mentions());
        assert_eq!(m["allowed_mentions"]["parse"], json!([]));
        assert_eq!(
            m["allowed_mentions"]["roles"],
            json!(["1600000000000000001"])
        );
        assert!(m["content"]
            .as_str()
            .unwrap()
            .contains("<@&1600000000000000001>"));
        let reason = &m["embeds"][0]["fields"][4]["value"];
        assert_eq!(reason, "\\@everyone look");
        let mut done = card(1, "r");
        done.state = RequestState::Active;
        done.actions.clear();
        let m = card_message(&done, &mentions());
        assert_eq!(m["allowed_mentions"]["roles"], json!([]));
        // No stale buttons: an empty list removes them.
        assert_eq!(m["components"], json!([]));
    }

    #[test]
    fn buttons_carry_their_command() {
        let c = components(&card(1, "r").actions);
        assert_eq!(c[0]["components"][0]["custom_id"], "passport:approve AR-7");
        assert_eq!(c[0]["components"][1]["style"], 4);
        let many: Vec<Action> = (0..40)
            .map(|i| Action {
                label: "l".repeat(200),
                command: format!("extend AR-{i} 1h"),
                style: ActionStyle::Plain,
            })
            .collect();
        let c = components(&many);
        assert_eq!(c.as_array().unwrap().len(), MAX_ROWS);
        assert!(c
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["components"].as_array().unwrap().len() <= MAX_PER_ROW));
        assert_eq!(
            chars(c[0]["components"][0]["label"].as_str().unwrap()),
            MAX_LABEL
        );
    }

    #[test]
    fn long_texts_move_into_an_embed() {
        let m = text_message(&"line\n".repeat(1000), &[]);
        assert!(chars(m["content"].as_str().unwrap()) <= MAX_CONTENT);
        assert!(chars(m["embeds"][0]["description"].as_str().unwrap()) <= MAX_DESCRIPTION);
        assert_eq!(text_message("short", &[])["content"], "short");
    }

    #[test]
    fn finished_texts_are_escaped_but_for_their_code_spans() {
        let hostile = "@everyone [click](https://evil.example) <@&1> ||x|| **b**\n-# small";
        let text = format!("AR-1 denied by lead: {hostile}. Reply `extend AR-1 1h`.");
        let out = escape_text(&text);
        assert!(out.contains("`extend AR-1 1h`"), "{out}");
        // What Discord would still parse: every escaped character blanked out.
        let mut parsed = String::new();
        let mut chars = out.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                chars.next();
                parsed.push('\0');
            } else {
                parsed.push(c);
            }
        }
        for raw in [
            "@everyone",
            "[click](",
            "<@&1>",
            "||x||",
            "**b**",
            "-# small",
        ] {
            assert!(!parsed.contains(raw), "{raw} left in {out}");
        }
        // Someone's backtick makes a code span (shown literally) or is escaped.
        assert_eq!(escape_text("a ` @here"), "a \\` \\@here");
        assert_eq!(escape_text("`x` y"), "`x` y");
        let m = text_message(&text, &[]);
        assert_eq!(m["content"], json!(out));
        assert_eq!(m["allowed_mentions"], json!({ "parse": [] }));
        assert!(!audit_message(hostile)["content"]
            .as_str()
            .unwrap()
            .contains("[click]("));
    }

    #[test]
    fn markdown_is_shown_as_typed() {
        assert_eq!(escape("**bold** <@&1>"), "\\*\\*bold\\*\\* \\<\\@&1\\>");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
