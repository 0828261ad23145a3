//! The console chat surface: prints every card, thread reply, direct message
//! and audit line as plain text. Also a null surface that accepts everything.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::app::ports::{ChatError, ChatSurface, MessageRef};
use crate::domain::notice::{Action, CardView};
use crate::domain::values::UserId;

/// Where console output goes: standard output, or a buffer in tests.
pub type Output = Arc<Mutex<dyn Write + Send>>;

pub fn stdout_output() -> Output {
    Arc::new(Mutex::new(std::io::stdout()))
}

pub struct ConsoleSurface {
    out: Output,
    /// Numbers direct messages, so that one can be named when it is deleted.
    next_dm: AtomicU64,
}

impl ConsoleSurface {
    pub fn new(out: Output) -> Self {
        Self {
            out,
            next_dm: AtomicU64::new(1),
        }
    }

    fn print(&self, text: &str) -> Result<(), ChatError> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        writeln!(out, "{text}")
            .and_then(|_| out.flush())
            .map_err(|e| ChatError::Transient(e.to_string()))
    }
}

pub fn render_actions(actions: &[Action]) -> String {
    if actions.is_empty() {
        return String::new();
    }
    let buttons: Vec<String> = actions
        .iter()
        .map(|a| format!("[{}: {}]", a.label, a.command))
        .collect();
    format!("\n    {}", buttons.join(" "))
}

/// The card as indented plain text.
pub fn render_card(card: &CardView) -> String {
    let instances: Vec<String> = card
        .instances
        .iter()
        .take(10)
        .map(|i| {
            let mut s = i.id.clone();
            let mut extra = vec![i.platform.clone()];
            if let Some(n) = &i.name {
                extra.insert(0, n.clone());
            }
            if let Some(e) = &i.env {
                extra.push(format!("env={e}"));
            }
            s.push_str(&format!(" ({})", extra.join(", ")));
            s
        })
        .collect();
    let more = card.instances.len().saturating_sub(10);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    let ticket = match &card.ticket_url {
        Some(url) => format!("{} <{url}>", card.ticket),
        None => card.ticket.clone(),
    };
    let reason = card
        .reason
        .as_ref()
        .map(|r| format!(" · {r}"))
        .unwrap_or_default();
    let channel = card
        .channel
        .as_ref()
        .map(|c| format!(" in {c}"))
        .unwrap_or_default();
    format!(
        "{} · {} · {} asks for {} on {}{more} · {ticket}{reason}{channel}\n    requires {} · {}{}",
        card.request,
        card.state.label(),
        card.requester,
        card.duration,
        instances.join(", "),
        card.required,
        card.status,
        render_actions(&card.actions)
    )
}

#[async_trait]
impl ChatSurface for ConsoleSurface {
    fn name(&self) -> &str {
        "console"
    }

    async fn post_card(&self, card: &CardView) -> Result<MessageRef, ChatError> {
        let mention = if card.approvers.is_empty() {
            String::new()
        } else {
            format!(" (to {})", card.approvers.join(", "))
        };
        self.print(&format!("[card]{mention} {}", render_card(card)))?;
        // The console has no message ids; the request id lets thread replies say whose they are.
        Ok(MessageRef {
            channel: "console".into(),
            message: card.request.to_string(),
        })
    }

    async fn update_card(&self, _at: &MessageRef, card: &CardView) -> Result<(), ChatError> {
        self.print(&format!("[card updated] {}", render_card(card)))
    }

    async fn reply_in_thread(
        &self,
        at: &MessageRef,
        text: &str,
        actions: &[Action],
    ) -> Result<(), ChatError> {
        self.print(&format!(
            "[thread {}] {}{}",
            at.message,
            indent(text),
            render_actions(actions)
        ))
    }

    async fn direct_message(
        &self,
        user: &UserId,
        text: &str,
        actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        self.print(&format!(
            "[dm {user}] {}{}",
            indent(text),
            render_actions(actions)
        ))?;
        Ok(MessageRef {
            channel: format!("dm {user}"),
            message: self.next_dm.fetch_add(1, Ordering::Relaxed).to_string(),
        })
    }

    async fn post_audit(&self, line: &str) -> Result<(), ChatError> {
        self.print(&format!("[audit] {line}"))
    }

    async fn delete_message(&self, at: &MessageRef) -> Result<(), ChatError> {
        // Printed text cannot be taken back; the line says it would be.
        self.print(&format!(
            "[deleted] message {} of {}",
            at.message, at.channel
        ))
    }
}

fn indent(text: &str) -> String {
    text.replace('\n', "\n    ")
}

/// Accepts everything and shows nothing: for benchmarks and tests.
#[derive(Default)]
pub struct NullSurface {
    next: AtomicU64,
}

#[async_trait]
impl ChatSurface for NullSurface {
    fn name(&self) -> &str {
        "null"
    }

    async fn post_card(&self, _card: &CardView) -> Result<MessageRef, ChatError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(MessageRef {
            channel: "null".into(),
            message: n.to_string(),
        })
    }

    async fn update_card(&self, _at: &MessageRef, _card: &CardView) -> Result<(), ChatError> {
        Ok(())
    }

    async fn reply_in_thread(
        &self,
        _at: &MessageRef,
        _text: &str,
        _actions: &[Action],
    ) -> Result<(), ChatError> {
        Ok(())
    }

    async fn direct_message(
        &self,
        _user: &UserId,
        _text: &str,
        _actions: &[Action],
    ) -> Result<MessageRef, ChatError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(MessageRef {
            channel: "null-dm".into(),
            message: n.to_string(),
        })
    }

    async fn post_audit(&self, _line: &str) -> Result<(), ChatError> {
        Ok(())
    }

    async fn delete_message(&self, _at: &MessageRef) -> Result<(), ChatError> {
        Ok(())
    }
}
