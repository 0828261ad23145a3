//! Renders Passport's notices as Slack messages (Block Kit), within Slack's
//! limits: message text ≤ 4,000 characters, section text ≤ 3,000, ≤ 50 blocks.
//!
//! Everything that comes from people (reasons, tickets, names) is escaped, so
//! a reason like `<!channel>` is shown, not acted on.

use slack_morphism::prelude::*;

use crate::adapters::chat::card;
use crate::adapters::chat::mentions::{Mention, Mentions};
use crate::domain::notice::{Action, ActionStyle, CardView};
use crate::domain::request::RequestState;

pub const MAX_TEXT: usize = 4000;
pub const MAX_SECTION: usize = 3000;
pub const MAX_BLOCKS: usize = 50;
pub const MAX_FIELD: usize = 2000;
pub const MAX_BUTTON_VALUE: usize = 2000;
pub const MAX_BUTTON_LABEL: usize = 75;
/// Instances listed on a card before the rest are summarised.
pub const CARD_INSTANCES: usize = 15;
/// Sections a long text may take; the rest is cut with a note.
const TEXT_SECTIONS: usize = 40;

/// Escapes the three characters Slack treats as markup.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Cuts `text` to at most `max` characters, ending in `…` when cut, and never
/// in the middle of an escape such as `&amp;`.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    if let Some(amp) = cut.rfind('&') {
        if !cut[amp..].contains(';') {
            cut.truncate(amp);
        }
    }
    cut.push('…');
    cut
}

/// How approvers are mentioned on Slack: user groups by `<!subteam^…>`,
/// people by `<@…>`.
pub fn mention_text(mentions: &Mentions, approvers: &[String]) -> String {
    let written: Vec<String> = mentions
        .of(approvers)
        .into_iter()
        .map(|m| match m {
            Mention::Group(id) => format!("<!subteam^{}>", escape(id)),
            Mention::Person(id) => format!("<@{}>", escape(id)),
        })
        .collect();
    written.join(" ")
}

fn section(text: String) -> SlackBlock {
    SlackSectionBlock::new()
        .with_text(SlackBlockMarkDownText::new(clip(&text, MAX_SECTION)).into())
        .into()
}

fn context(text: String) -> SlackBlock {
    SlackContextBlock::new(vec![SlackContextBlockElement::MarkDown(
        SlackBlockMarkDownText::new(clip(&text, MAX_FIELD)),
    )])
    .into()
}

fn buttons(actions: &[Action]) -> Option<SlackBlock> {
    if actions.is_empty() {
        return None;
    }
    let elements = actions
        .iter()
        .take(25)
        .enumerate()
        .filter(|(_, a)| a.command.chars().count() <= MAX_BUTTON_VALUE)
        .map(|(i, a)| {
            let mut b = SlackBlockButtonElement::new(SlackBlockPlainTextOnly::from(clip(
                &a.label,
                MAX_BUTTON_LABEL,
            )))
            .with_action_id(format!("passport:{i}").into())
            // The value is the exact command the click stands for.
            .with_value(a.command.clone());
            match a.style {
                ActionStyle::Primary => b = b.with_style(SlackBlockButtonStyle::Primary),
                ActionStyle::Danger => b = b.with_style(SlackBlockButtonStyle::Danger),
                ActionStyle::Plain => {}
            }
            SlackActionBlockElement::Button(b)
        })
        .collect();
    Some(SlackActionsBlock::new(elements).into())
}

fn instance_line(i: &crate::domain::notice::CardInstance) -> String {
    card::instance_line(i, escape, escape)
}

fn ticket(card: &CardView) -> String {
    match &card.ticket_url {
        Some(url) if !url.contains(['|', '<', '>', ' ']) => {
            format!("<{}|{}>", url.replace('&', "&amp;"), escape(&card.ticket))
        }
        _ => escape(&card.ticket),
    }
}

fn state_emoji(state: RequestState) -> &'static str {
    match state {
        RequestState::Pending => ":hourglass_flowing_sand:",
        RequestState::Approved | RequestState::Provisioning => ":gear:",
        RequestState::Active => ":large_green_circle:",
        RequestState::Completed | RequestState::Expired => ":white_check_mark:",
        RequestState::Revoked
        | RequestState::Denied
        | RequestState::Cancelled
        | RequestState::ApprovalTimedOut
        | RequestState::Failed => ":no_entry_sign:",
    }
}

/// The request card. `mention` (approvers to notify) is shown while the request is pending.
pub fn card_content(card: &CardView, mention: &str) -> SlackMessageContent {
    let requester = format!(
        "<@{}> ({})",
        escape(card.requester_id.as_str()),
        escape(&card.requester)
    );
    let n = card.instances.len();
    let what = match card.instances.first() {
        Some(i) if n == 1 => format!("`{}`", escape(&i.id)),
        _ => format!("{n} instances"),
    };
    let mut blocks = vec![section(format!(
        "{} *{} · {}*\n{requester} asks for *{}* on {what}",
        state_emoji(card.state),
        card.request,
        card.state.label(),
        escape(&card.duration),
    ))];

    let mut fields = vec![
        format!("*Ticket*\n{}", ticket(card)),
        format!("*Duration*\n{}", escape(&card.duration)),
        format!("*Requires*\n{}", escape(&card.required)),
        format!(
            "*Approved by*\n{}",
            if card.approved_by.is_empty() {
                "nobody yet".to_owned()
            } else {
                escape(&card.approved_by.join(", "))
            }
        ),
    ];
    if let Some(reason) = &card.reason {
        fields.push(format!("*Reason*\n{}", escape(reason)));
    }
    blocks.push(
        SlackSectionBlock::new()
            .with_fields(
                fields
                    .into_iter()
                    .map(|f| SlackBlockMarkDownText::new(clip(&f, MAX_FIELD)).into())
                    .collect(),
            )
            .into(),
    );

    let mut lines: Vec<String> = card
        .instances
        .iter()
        .take(CARD_INSTANCES)
        .map(instance_line)
        .collect();
    if n > CARD_INSTANCES {
        lines.push(format!(
            "…and {} more: `show {}` lists them all",
            n - CARD_INSTANCES,
            card.request
        ));
    }
    blocks.push(section(format!("*Instances*\n{}", lines.join("\n"))));
    blocks.push(context(escape(&card.status)));
    let pending = card.state == RequestState::Pending;
    if pending && !mention.is_empty() {
        blocks.push(context(format!("Approvers: {mention}")));
    }
    blocks.extend(buttons(&card.actions));

    let first = card
        .instances
        .first()
        .map(|i| match &i.name {
            Some(name) => format!("{} ({})", i.id, name),
            None => i.id.clone(),
        })
        .unwrap_or_default();
    let more = if n > 1 {
        format!(" and {} more", n - 1)
    } else {
        String::new()
    };
    let ping = if pending && !mention.is_empty() {
        format!(" · {mention}")
    } else {
        String::new()
    };
    let text = format!(
        "{} · {} · {} asks for {} on {}{more} · {}{ping}",
        card.request,
        card.state.label(),
        escape(&card.requester),
        escape(&card.duration),
        escape(&first),
        escape(&card.ticket),
    );
    SlackMessageContent::new()
        .with_text(clip(&text, MAX_TEXT))
        .with_blocks(blocks)
}

/// Splits escaped text into sections of at most [`MAX_SECTION`] characters, at line breaks where possible.
fn text_sections(escaped: &str) -> Vec<SlackBlock> {
    let mut chunks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in escaped.split('\n') {
        let line_len = line.chars().count();
        if !current.is_empty() && current.chars().count() + 1 + line_len > MAX_SECTION {
            chunks.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        while current.chars().count() > MAX_SECTION {
            let head: String = current.chars().take(MAX_SECTION).collect();
            let tail: String = current.chars().skip(MAX_SECTION).collect();
            chunks.push(head);
            current = tail;
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    let total = chunks.len();
    let mut blocks: Vec<SlackBlock> = chunks
        .into_iter()
        .take(TEXT_SECTIONS)
        .map(|c| {
            SlackSectionBlock::new()
                .with_text(SlackBlockMarkDownText::new(c).into())
                .into()
        })
        .collect();
    if total > TEXT_SECTIONS {
        blocks.push(context(format!(
            "…{} more parts were cut to fit one Slack message",
            total - TEXT_SECTIONS
        )));
    }
    blocks
}

/// A thread reply, direct message or answer: the text, and buttons if any.
pub fn text_content(text: &str, actions: &[Action]) -> SlackMessageContent {
    let escaped = escape(text);
    let content = SlackMessageContent::new().with_text(clip(&escaped, MAX_TEXT));
    if actions.is_empty() && escaped.chars().count() <= MAX_TEXT {
        return content;
    }
    let mut blocks = text_sections(&escaped);
    blocks.extend(buttons(actions));
    blocks.truncate(MAX_BLOCKS);
    content.with_blocks(blocks)
}

/// One audit line: plain text, no blocks.
pub fn audit_content(line: &str) -> SlackMessageContent {
    SlackMessageContent::new().with_text(clip(&escape(line), MAX_TEXT))
}

/// The `callback_id` of the request form.
pub const REQUEST_FORM: &str = "passport_request";

fn input(
    block: &str,
    label: &str,
    placeholder: &str,
    initial: Option<&str>,
    optional: bool,
    multiline: bool,
) -> SlackBlock {
    let mut element = SlackBlockPlainTextInputElement::new()
        .with_action_id("value".into())
        .with_placeholder(SlackBlockPlainTextOnly::from(placeholder))
        .with_multiline(multiline);
    if let Some(v) = initial {
        element = element.with_initial_value(v.to_owned());
    }
    SlackInputBlock::new(
        SlackBlockPlainTextOnly::from(label),
        SlackInputBlockElement::PlainTextInput(element),
    )
    .with_block_id(block.into())
    .with_optional(optional)
    .into()
}

/// The form `/passport request` opens: instances, duration, ticket, reason.
/// `channel` (where the command was typed) comes back with the submission.
pub fn request_form(default_duration: &str, channel: Option<&str>) -> SlackView {
    let mut view = SlackModalView::new(
        SlackBlockPlainTextOnly::from("Request access"),
        vec![
            input(
                "instances",
                "Instances",
                "i-0123456789abcdef0 i-0fedcba9876543210",
                None,
                false,
                false,
            ),
            input(
                "duration",
                "Duration",
                "30m, 2h or 1h30m",
                Some(default_duration),
                true,
                false,
            ),
            input(
                "ticket",
                "Ticket",
                "ticket#123, INC-123 or CHG0012345",
                None,
                false,
                false,
            ),
            input("reason", "Reason", "what you need to do", None, true, true),
        ],
    )
    .with_submit(SlackBlockPlainTextOnly::from("Request"))
    .with_close(SlackBlockPlainTextOnly::from("Cancel"))
    .with_callback_id(REQUEST_FORM.into());
    if let Some(c) = channel {
        view = view.with_private_metadata(c.to_owned());
    }
    SlackView::Modal(view)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    use crate::adapters::chat::fixtures::card;

    fn json(content: &SlackMessageContent) -> serde_json::Value {
        serde_json::to_value(content).unwrap()
    }

    #[test]
    fn buttons_carry_the_command_text() {
        let v = json(&card_content(&card(1), ""));
        let blocks = v["blocks"].as_array().unwrap();
        let actions = blocks.iter().find(|b| b["type"] == "actions").unwrap();
        assert_eq!(actions["elements"][0]["value"], "approve AR-7");
        assert_eq!(actions["elements"][0]["style"], "primary");
        assert_eq!(actions["elements"][1]["value"], "deny AR-7");
        assert_ne!(
            actions["elements"][0]["action_id"],
            actions["elements"][1]["action_id"]
        );
    }

    #[test]
    fn people_text_is_escaped_and_the_ticket_is_a_link() {
        let text = json(&card_content(&card(1), "")).to_string();
        assert!(text.contains("&lt;!channel&gt; disk &amp; more"), "{text}");
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(
            text.contains("<https://t.example.com/browse/123?a=1&amp;b=2|ticket#123>"),
            "{text}"
        );
    }

    #[test]
    fn approvers_are_mentioned_while_pending() {
        let mentions = Mentions {
            platform_groups: BTreeMap::from([("approvers".into(), "S0APPROVERS".into())]),
            groups: BTreeMap::new(),
        };
        let m = mention_text(&mentions, &card(1).approvers);
        assert_eq!(m, "<!subteam^S0APPROVERS> <@U0LEAD>");
        let v = json(&card_content(&card(1), &m));
        assert!(v["text"]
            .as_str()
            .unwrap()
            .contains("<!subteam^S0APPROVERS>"));
        let mut done = card(1);
        done.state = RequestState::Active;
        done.actions.clear();
        let v = json(&card_content(&done, &m));
        assert!(!v.to_string().contains("subteam"));
        assert!(!v.to_string().contains("\"actions\""));
    }

    #[test]
    fn a_thousand_instances_fit_within_the_limits() {
        let v = json(&card_content(&card(1000), ""));
        assert_within_limits(&v);
        assert!(v.to_string().contains("…and 985 more"));
    }

    #[test]
    fn long_text_is_split_into_sections_within_the_limits() {
        let long = "x".repeat(50) + "\n";
        let text = long.repeat(5000);
        assert_within_limits(&json(&text_content(&text, &[])));
    }

    /// Within Slack's limits on blocks, the fallback text and each section.
    fn assert_within_limits(v: &serde_json::Value) {
        let blocks = v["blocks"].as_array().unwrap();
        assert!(blocks.len() <= MAX_BLOCKS);
        assert!(v["text"].as_str().unwrap().chars().count() <= MAX_TEXT);
        for b in blocks {
            if let Some(t) = b["text"]["text"].as_str() {
                assert!(t.chars().count() <= MAX_SECTION);
            }
        }
    }

    #[test]
    fn clipping_never_cuts_an_escape() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("ab&amp;cd", 5), "ab…");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
