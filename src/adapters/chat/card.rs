//! What a card says the same way on every platform, written with the
//! platform's own escaping.

use crate::domain::notice::CardInstance;

/// One instance of a card: `• `id` name · platform · env …`, where `code`
/// makes the id safe inside a code span and `text` escapes the rest.
pub fn instance_line(
    i: &CardInstance,
    code: impl Fn(&str) -> String,
    text: impl Fn(&str) -> String,
) -> String {
    let mut parts = Vec::new();
    if let Some(n) = &i.name {
        parts.push(text(n));
    }
    parts.push(text(&i.platform));
    if let Some(e) = &i.env {
        parts.push(format!("env {}", text(e)));
    }
    format!("• `{}` {}", code(&i.id), parts.join(" · "))
}
