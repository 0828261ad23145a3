//! Delivers outbox notices to the chat surfaces.
//!
//! A notice is marked delivered only after the surface accepted it, so a crash
//! in between delivers it again rather than losing it. Notices of one lane
//! (a request's card and thread, one person's direct messages, the audit
//! channel) go out strictly in order: a lane waits while its oldest notice is
//! being retried. Rate limits are honoured through `Retry-After`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::domain::notice::Notice;
use crate::domain::time::{Span, Timestamp};

use super::ports::{ChatError, ChatSurface, Clock, Pending, Store, StoreError};

/// Lanes delivered at the same time.
const CONCURRENT_LANES: usize = 16;
/// Notices of one lane taken per pass.
const PER_LANE: u32 = 20;
/// A notice the platform keeps refusing is set aside after this many attempts.
const MAX_PERMANENT_ATTEMPTS: u32 = 5;

pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    surfaces: HashMap<String, Arc<dyn ChatSurface>>,
    concurrency: usize,
    /// One delivery pass at a time, so no notice is sent twice by overlapping passes.
    gate: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    /// When the next notice becomes due, if one is waiting for a retry.
    pub next_retry: Option<Timestamp>,
}

fn retry_delay(attempts: u32) -> Span {
    // 1 s, 2 s, 4 s … capped at 5 minutes.
    Span::from_secs((1i64 << attempts.min(9)).min(300))
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        surfaces: Vec<Arc<dyn ChatSurface>>,
    ) -> Self {
        Self {
            store,
            clock,
            surfaces: surfaces
                .into_iter()
                .map(|s| (s.name().to_owned(), s))
                .collect(),
            gate: tokio::sync::Mutex::new(()),
            concurrency: CONCURRENT_LANES,
        }
    }

    /// Delivers one lane at a time, oldest notice first: the console uses this so
    /// its output reads in the order things happened.
    #[must_use]
    pub fn one_lane_at_a_time(mut self) -> Self {
        self.concurrency = 1;
        self
    }

    /// Delivers what is due now, lane by lane, until every lane is empty or waiting.
    pub async fn deliver_due(&self) -> Result<DeliveryReport, StoreError> {
        let _pass = self.gate.lock().await;
        let mut report = DeliveryReport::default();
        loop {
            // A few notices of each lane per pass: a long lane (a paced audit
            // channel with a backlog) neither hides the others nor holds the
            // pass for long.
            let pending = self.store.pending_notices(2000, PER_LANE).await?;
            if pending.is_empty() {
                return Ok(report);
            }
            let now = self.clock.now();
            // Lanes in order of their oldest notice.
            let mut lanes: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
            let mut order: Vec<(String, String)> = Vec::new();
            for p in pending {
                let key = (p.surface.clone(), p.lane.clone());
                if !lanes.contains_key(&key) {
                    order.push(key.clone());
                }
                lanes.entry(key).or_default().push(p);
            }
            let lanes: Vec<Vec<Pending>> =
                order.into_iter().filter_map(|k| lanes.remove(&k)).collect();
            let mut waiting: Option<Timestamp> = None;
            let mut runnable = Vec::new();
            for lane in lanes {
                match lane.first() {
                    Some(head) if head.next_attempt_at > now => {
                        waiting = Some(waiting.map_or(head.next_attempt_at, |w: Timestamp| {
                            w.min(head.next_attempt_at)
                        }));
                    }
                    Some(_) => runnable.push(lane),
                    None => {}
                }
            }
            if runnable.is_empty() {
                report.next_retry = waiting;
                return Ok(report);
            }
            let results: Vec<Result<DeliveryReport, StoreError>> = stream::iter(runnable)
                .map(|lane| self.deliver_lane(lane))
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            // Every lane that ran either made progress or now waits for a retry in
            // the future, so the next pass ends unless new notices arrived.
            for r in results {
                let r = r?;
                report.delivered += r.delivered;
                report.retried += r.retried;
                report.dead += r.dead;
            }
        }
    }

    async fn deliver_lane(&self, lane: Vec<Pending>) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        for p in lane {
            let Some(surface) = self.surfaces.get(&p.surface) else {
                // A surface that is no longer configured: its notices wait until it is again.
                let next = self.clock.now().plus(Span::from_minutes(10));
                self.store
                    .mark_retry(p.id, next, "chat surface not configured")
                    .await?;
                report.retried += 1;
                break;
            };
            match self.send(surface.as_ref(), &p).await {
                Ok(()) => {
                    self.store.mark_delivered(p.id, self.clock.now()).await?;
                    report.delivered += 1;
                }
                Err(e) => {
                    let now = self.clock.now();
                    let (next, dead) = match &e {
                        ChatError::RateLimited { retry_after_ms } => (
                            now.plus(Span::from_millis((*retry_after_ms as i64).max(100))),
                            false,
                        ),
                        ChatError::Transient(_) => (now.plus(retry_delay(p.attempts)), false),
                        ChatError::Permanent(_) => (
                            now.plus(retry_delay(p.attempts)),
                            p.attempts + 1 >= MAX_PERMANENT_ATTEMPTS,
                        ),
                    };
                    if dead {
                        tracing::error!(surface = %p.surface, lane = %p.lane, error = %e, "notice refused repeatedly; set aside");
                        self.store.mark_dead(p.id, now, &e.to_string()).await?;
                        report.dead += 1;
                        continue;
                    }
                    tracing::warn!(surface = %p.surface, lane = %p.lane, error = %e, "notice not delivered; will retry");
                    self.store.mark_retry(p.id, next, &e.to_string()).await?;
                    report.retried += 1;
                    break;
                }
            }
        }
        Ok(report)
    }

    async fn send(&self, surface: &dyn ChatSurface, p: &Pending) -> Result<(), ChatError> {
        let store_err = |e: StoreError| ChatError::Transient(e.to_string());
        match &p.notice {
            Notice::Card(card) => match self
                .store
                .chat_ref(card.request, &p.surface)
                .await
                .map_err(store_err)?
            {
                Some(at) => surface.update_card(&at, card).await,
                None => {
                    let at = surface.post_card(card).await?;
                    self.store
                        .save_chat_ref(card.request, &p.surface, &at)
                        .await
                        .map_err(store_err)
                }
            },
            Notice::Thread {
                request,
                text,
                actions,
            } => {
                match self
                    .store
                    .chat_ref(*request, &p.surface)
                    .await
                    .map_err(store_err)?
                {
                    Some(at) => surface.reply_in_thread(&at, text, actions).await,
                    // The card is always queued before its thread, in the same lane; without
                    // it (a card set aside as undeliverable) the reply goes to the audit channel.
                    None => surface.post_audit(&format!("{request}: {text}")).await,
                }
            }
            Notice::Direct {
                user,
                text,
                actions,
                ..
            } => surface.direct_message(user, text, actions).await,
            Notice::Audit { text } => surface.post_audit(text).await,
        }
    }
}
