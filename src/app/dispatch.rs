//! Delivers outbox notices to the chat surfaces.
//!
//! A notice is marked delivered only after the surface accepted it, so a crash
//! in between delivers it again rather than losing it. A lane's deliveries
//! within [`RECORD_WITHIN`] of each other share one commit. Notices of one lane
//! (a request's card and thread, one person's direct messages, the audit
//! channel) go out strictly in order: a lane waits while its oldest notice is
//! being retried. Rate limits are honoured through `Retry-After`. Lanes run
//! side by side, and a lane starts as soon as there is room for it: a new
//! lane never waits for a slow one (a paced channel working through a
//! backlog) to finish the pass. A lane longer than one read goes on with its
//! own next notices for a turn, then makes room for the lanes waiting. One
//! lane at a time calls the store ([`STORE_CALLS`]).
//!
//! A notice the platform keeps refusing is set aside; the set-asides of a
//! pass are reported in the audit channel in one notice, at most once per
//! [`SET_ASIDE_REPORT_EVERY`] (audit notices themselves are not reported:
//! the report would go where they could not).
//!
//! A peer that is down costs bounded work: after a few temporary failures in
//! a row on one surface (whatever the lanes, and counting the answers sent to
//! people outside the outbox), that surface's breaker opens and no lane of it
//! is tried until the backoff has passed; then one lane probes, and only its
//! success lets the others go again. A single stalled channel among working
//! ones never opens it: any success closes it. The breakers are
//! [`PeerHealth`], shared with those answers ([`Dispatcher::peers`]).
//!
//! It also deletes the direct messages that carried Windows passwords when
//! they are due (rows of `password_messages`), then records the deletion with
//! its Logbook event and thread note in one transaction. A message already
//! gone counts as deleted; every failure is retried later, never dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::json;

use crate::domain::notice::{Notice, AUDIT_LANE};
use crate::domain::time::{Span, Timestamp};

use super::effects::Effects;
use super::messages;
use super::peers::{Admission, PeerHealth};
use super::ports::{
    ChatError, ChatSurface, Clock, MessageRef, Miss, Pending, PendingDeletion, Store, StoreError,
};
use super::retry::Backoff;
use crate::domain::values::RequestId;

/// Lanes delivered at the same time.
const CONCURRENT_LANES: usize = 16;
/// Notices of one lane taken per read.
pub const PER_LANE: u32 = 100;
/// Notices taken per read of the whole outbox, all lanes together.
pub const READ_LIMIT: u32 = 2_000;
/// A lane that delivered all it was given reads its own next notices, up to
/// this many in one turn and for this long, then yields its place to the
/// lanes waiting for one.
const LANE_TURN: usize = 1_000;
const LANE_TURN_TIME: Span = Span::from_secs(10);
/// A lane that waited this long for room after the outbox was read is read
/// again before it sends: well inside the time a claim on a shared
/// database lasts (`PgOptions::claim_for`, 2 minutes), so that it never
/// sends on a claim that ran out.
const READ_GOES_STALE: Span = Span::from_secs(10);
/// A lane's deliveries are recorded together, in one commit, once the sends
/// since the last record began this long ago, and whenever the lane stops.
/// With a platform slower than this (any real one) each delivery is recorded
/// before the next notice is sent; with a fast one a commit covers many. A
/// crash resends at most what a lane sent in this window, in order.
const RECORD_WITHIN: std::time::Duration = std::time::Duration::from_millis(20);
/// Lanes that call the store at the same time, at most: recording what they
/// delivered, reading their next notices. A platform's answers take far
/// longer than these calls, so with a real platform lanes seldom wait for a
/// turn; with a fast one, a burst of deliveries takes one of the database's
/// connections, not sixteen, from the requests being handled. With every
/// lane calling PostgreSQL at once, the engine benchmark's changes ran
/// about a third slower, and with two at once still a fifth (BENCHMARKS.md).
const STORE_CALLS: usize = 1;
/// A notice the platform keeps refusing is set aside after this many
/// refusals, however many temporary failures and rate limits came between.
const MAX_REFUSALS: u32 = 5;
/// Set-aside notices are reported in the audit channel at most this often;
/// those set aside in between are counted into the next report.
pub const SET_ASIDE_REPORT_EVERY: Span = Span::from_minutes(5);
/// Password messages deleted per pass.
const DELETIONS_PER_PASS: u32 = 200;

/// A lane: its surface and its name.
type LaneKey = (String, String);

/// Counts a lane that finished into the pass's `report`; a full lane may
/// hold more than was read of it, so the outbox is read again.
fn lane_done(
    report: &mut DeliveryReport,
    unread: &mut bool,
    failed: &mut Option<StoreError>,
    full: bool,
    done: Result<DeliveryReport, StoreError>,
) {
    match done {
        Ok(r) => {
            report.delivered += r.delivered;
            report.retried += r.retried;
            report.dead += r.dead;
            *unread |= full && r.retried == 0;
        }
        Err(e) => {
            if failed.is_none() {
                *failed = Some(e);
            }
        }
    }
}

fn lane_key(p: &Pending) -> LaneKey {
    (p.surface.clone(), p.lane.clone())
}

/// What a read of the outbox found.
enum Lanes {
    /// Lanes that may go now, each with whether it probes its surface, and
    /// when they were read.
    Run(Vec<(Vec<Pending>, bool)>, Timestamp),
    /// None may: the first is due then, if any waits.
    Wait(Option<Timestamp>),
}
pub struct Dispatcher {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    surfaces: HashMap<String, Arc<dyn ChatSurface>>,
    concurrency: usize,
    /// One delivery pass at a time, so no notice is sent twice by overlapping passes.
    gate: tokio::sync::Mutex<()>,
    /// Set-aside notices not yet reported in the audit channel.
    set_aside: std::sync::Mutex<SetAsideTally>,
    /// One breaker per surface, shared with the answers sent outside the outbox.
    breakers: Arc<PeerHealth>,
    /// Turns for the lanes' calls to the store ([`STORE_CALLS`]).
    store_calls: tokio::sync::Semaphore,
    /// Set when the process stops: lanes under way send nothing more and
    /// record what they sent; passes start nothing new ([`Self::finish`]).
    stopping: AtomicBool,
    /// What was sent and the store failed to record. The notices stay
    /// claimed by this process, and the next pass records them before it
    /// reads anything: read again, they would be sent twice.
    unrecorded: std::sync::Mutex<Unrecorded>,
}

/// Sends the store failed to record ([`Dispatcher::unrecorded`]).
#[derive(Default)]
struct Unrecorded {
    /// Notices sent whose delivery is not recorded.
    ids: Vec<i64>,
    /// Cards posted whose place is not saved: request, surface, place.
    /// Saved before their notices are recorded, and before anything is
    /// read: without its place, a card would be posted a second time and
    /// its thread's replies would go to the audit channel.
    places: Vec<(RequestId, String, MessageRef)>,
}

/// Notices set aside since the last report, per surface, and when that
/// report was queued.
#[derive(Default)]
struct SetAsideTally {
    /// Surface → (how many, the last refusal).
    unreported: BTreeMap<String, (usize, String)>,
    last_report: Option<Timestamp>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryReport {
    pub delivered: usize,
    pub retried: usize,
    pub dead: usize,
    /// When the next notice becomes due, if one is waiting for a retry.
    pub next_retry: Option<Timestamp>,
    /// Password messages deleted from the chat.
    pub deleted: usize,
    /// When the next password message is due for deletion (or its retry).
    pub next_deletion: Option<Timestamp>,
}

/// A notice's retries after temporary failures: 1 s, 2 s, 4 s … at most 5 minutes.
const DELIVERY_BACKOFF: Backoff = Backoff::new(Span::from_secs(1), Span::from_minutes(5));
/// A refused deletion's retries: 1 minute, doubling, at most an hour.
const REFUSED_DELETION_BACKOFF: Backoff = Backoff::new(Span::from_minutes(1), Span::from_hours(1));

fn retry_delay(attempts: u32) -> Span {
    DELIVERY_BACKOFF.after(attempts)
}

/// When to try a failed deletion again: as the platform asks after a rate
/// limit, else with backoff; a refusal (which may be fixed, e.g. a missing
/// permission) waits longer.
fn deletion_retry(e: &ChatError, attempts: u32) -> Span {
    match e {
        ChatError::RateLimited { retry_after_ms } => {
            Span::from_millis((*retry_after_ms as i64).max(100))
        }
        ChatError::Transient(_) => retry_delay(attempts),
        ChatError::Permanent(_) => REFUSED_DELETION_BACKOFF.after(attempts),
    }
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
            set_aside: std::sync::Mutex::new(SetAsideTally::default()),
            concurrency: CONCURRENT_LANES,
            breakers: Arc::new(PeerHealth::default()),
            store_calls: tokio::sync::Semaphore::new(STORE_CALLS),
            unrecorded: std::sync::Mutex::new(Unrecorded::default()),
            stopping: AtomicBool::new(false),
        }
    }

    /// Stops delivering, for a process that stops: a lane under way sends
    /// nothing more and records what it sent, and a pass under way starts
    /// nothing new and ends once its lanes have. Then records what earlier
    /// passes sent and could not record. Whatever was not sent stays in the
    /// outbox; nothing that went is lost from the records, so nothing is sent
    /// twice after the next start. A send still waiting for its platform is
    /// waited for: bound this by the shutdown's deadline.
    pub async fn finish(&self) -> Result<usize, StoreError> {
        self.stopping.store(true, Ordering::SeqCst);
        let _pass = self.gate.lock().await;
        self.record_unrecorded().await
    }

    /// Whether [`Self::finish`] has begun.
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The health of each surface's platform as this dispatcher sees it, to
    /// share with whatever else calls the platforms (answers to people), so
    /// that all of them count towards one breaker per platform.
    pub fn peers(&self) -> Arc<PeerHealth> {
        self.breakers.clone()
    }

    /// Delivers one lane at a time, oldest notice first: the console uses this so
    /// its output reads in the order things happened.
    #[must_use]
    pub fn one_lane_at_a_time(mut self) -> Self {
        self.concurrency = 1;
        self
    }

    /// Deletes the password messages due now, then delivers what is due now,
    /// lane by lane, until every lane is empty or waiting.
    pub async fn deliver_due(&self) -> Result<DeliveryReport, StoreError> {
        let _pass = self.gate.lock().await;
        let recorded = self.record_unrecorded().await?;
        let (deleted, next_deletion) = self.delete_due().await?;
        let mut report = self.deliver_outbox().await?;
        report.delivered += recorded;
        if self.report_set_aside().await? {
            // The report goes out in this pass; the lanes it may wait behind
            // are the audit lanes, which this pass already emptied or left waiting.
            let more = self.deliver_outbox().await?;
            report.delivered += more.delivered;
            report.retried += more.retried;
            report.dead += more.dead;
            report.next_retry = more.next_retry;
        }
        report.deleted = deleted;
        report.next_deletion = next_deletion;
        Ok(report)
    }

    /// Records what an earlier pass sent and could not record, places of
    /// cards first; answers how many notices.
    async fn record_unrecorded(&self) -> Result<usize, StoreError> {
        let mut left = std::mem::take(&mut *self.unrecorded());
        let saved = self.save_unrecorded(&mut left).await;
        if saved.is_err() {
            let mut unrecorded = self.unrecorded();
            unrecorded.places.append(&mut left.places);
            unrecorded.ids.append(&mut left.ids);
        }
        saved
    }

    /// [`Self::record_unrecorded`], leaving in `left` what it did not record.
    async fn save_unrecorded(&self, left: &mut Unrecorded) -> Result<usize, StoreError> {
        while let Some((request, surface, at)) = left.places.first() {
            self.store.save_chat_ref(*request, surface, at).await?;
            left.places.remove(0);
        }
        if left.ids.is_empty() {
            return Ok(0);
        }
        self.store
            .mark_delivered(&left.ids, self.clock.now())
            .await?;
        Ok(std::mem::take(&mut left.ids).len())
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, Unrecorded> {
        self.unrecorded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one audit notice per surface saying how many notices were set
    /// aside since the last report and how to see and resend them, unless the
    /// last report is less than [`SET_ASIDE_REPORT_EVERY`] old. Answers
    /// whether it queued one.
    async fn report_set_aside(&self) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let unreported = {
            let mut tally = self.set_aside.lock().unwrap_or_else(|e| e.into_inner());
            let recent = tally
                .last_report
                .is_some_and(|at| now.since(at) < SET_ASIDE_REPORT_EVERY && at <= now);
            if tally.unreported.is_empty() || recent {
                return Ok(false);
            }
            std::mem::take(&mut tally.unreported)
        };
        let mut fx = Effects::default();
        for (surface, (count, refusal)) in &unreported {
            fx.outbox.push((
                surface.clone(),
                Notice::Audit {
                    text: messages::set_aside_report(*count, MAX_REFUSALS, refusal),
                },
            ));
        }
        match self.store.record(fx, now).await {
            Ok(()) => {
                let mut tally = self.set_aside.lock().unwrap_or_else(|e| e.into_inner());
                tally.last_report = Some(now);
                Ok(true)
            }
            Err(e) => {
                // Counted again, so the next pass reports them.
                let mut tally = self.set_aside.lock().unwrap_or_else(|e| e.into_inner());
                for (surface, (count, refusal)) in unreported {
                    let entry = tally.unreported.entry(surface).or_insert((0, refusal));
                    entry.0 += count;
                }
                Err(e)
            }
        }
    }

    /// Deletes every password message due now. Answers how many were deleted
    /// and when the next one is due.
    async fn delete_due(&self) -> Result<(usize, Option<Timestamp>), StoreError> {
        let due = self
            .store
            .due_password_messages(self.clock.now(), DELETIONS_PER_PASS)
            .await?;
        let mut deleted = 0;
        for d in due {
            if self.delete(&d).await? {
                deleted += 1;
            }
        }
        let next = self
            .store
            .due_password_messages(Timestamp::from_millis(i64::MAX), 1)
            .await?
            .first()
            .map(|d| d.due);
        Ok((deleted, next))
    }

    /// Deletes one password message and records it; true when it was deleted.
    async fn delete(&self, d: &PendingDeletion) -> Result<bool, StoreError> {
        let result = match self.surfaces.get(&d.surface) {
            Some(surface) => surface.delete_message(&d.at).await,
            None => Err(ChatError::Transient(format!(
                "chat surface {} not configured",
                d.surface
            ))),
        };
        let now = self.clock.now();
        if let Err(e) = result {
            let again = now.plus(deletion_retry(&e, d.attempts));
            tracing::warn!(request = %d.request, message = d.id, error = %e, retry_at = %again, "password message not deleted yet; will retry");
            self.store.retry_password_message(d.id, again).await?;
            return Ok(false);
        }
        // A request this release cannot read (a newer release's) does not
        // keep the deletion from being recorded.
        let requester = match self.store.get(d.request).await {
            Ok(Some(req)) => req.requester.handle,
            Ok(None) | Err(StoreError::Corrupt(_)) => "the requester".to_owned(),
            Err(e) => return Err(e),
        };
        let after = now.since(d.sent_at).to_nearest_minute();
        let (summary, details) = match &d.whose {
            Ok((username, instance)) => (
                messages::password_message_deleted(username, instance, &requester, after),
                json!({
                    "instance": instance.as_str(),
                    "username": username.as_str(),
                    "surface": d.surface,
                }),
            ),
            Err(unread) => {
                tracing::warn!(request = %d.request, message = d.id, error = %unread, "a password message whose user or instance this Passport cannot read was deleted all the same, and is recorded without them");
                (
                    messages::password_message_deleted_unread(&requester, after),
                    json!({ "surface": d.surface, "unreadable": unread }),
                )
            }
        };
        let mut fx = Effects::default();
        fx.log(
            now,
            "passport",
            Some(d.request),
            "password_message_deleted",
            summary.clone(),
            details,
        );
        fx.notify(Notice::Thread {
            request: d.request,
            text: format!("🧹 {summary}; grant again for a new password"),
            actions: Vec::new(),
        });
        let mut surfaces: Vec<String> = self.surfaces.keys().cloned().collect();
        surfaces.sort();
        fx.route(&surfaces, &d.surface);
        self.store.password_message_deleted(d.id, fx, now).await?;
        tracing::info!(request = %d.request, message = d.id, "password message deleted from the chat");
        Ok(true)
    }

    /// Delivers the outbox lane by lane, up to `concurrency` lanes at a
    /// time, until every lane is empty or waiting. A lane starts as soon as
    /// there is room for it: when a lane ends, or when a commit queues
    /// notices (a new lane need not wait for a slow one, such as a paced
    /// channel with a backlog, to finish).
    async fn deliver_outbox(&self) -> Result<DeliveryReport, StoreError> {
        let mut report = DeliveryReport::default();
        let mut queued = self.store.notices_queued();
        let mut watching = true;
        let mut running = FuturesUnordered::new();
        // Lanes being delivered, and lanes read and admitted that wait for room.
        let mut in_flight: HashSet<LaneKey> = HashSet::new();
        let mut ready: VecDeque<(Vec<Pending>, bool, Timestamp)> = VecDeque::new();
        // Whether the outbox may hold lanes not read yet.
        let mut unread = true;
        // Lanes whose newer notices a read skipped because the lane was
        // under way or admitted: read again once it ends.
        let mut skipped: HashSet<LaneKey> = HashSet::new();
        // A store error ends the pass once the lanes under way have finished
        // (a lane cut short could send a notice without recording it).
        let mut failed: Option<StoreError> = None;
        loop {
            if failed.is_some() || self.stopping() {
                ready.clear();
                unread = false;
                if running.is_empty() {
                    return match failed {
                        Some(e) => Err(e),
                        None => Ok(report),
                    };
                }
            }
            let idle = running.is_empty() && ready.is_empty();
            let room = running.len() < self.concurrency && ready.is_empty();
            if failed.is_none() && (idle || (unread && room)) {
                unread = false;
                // Seen before reading, so a commit during the read is not missed.
                queued.mark_unchanged();
                let mut known = in_flight.clone();
                known.extend(
                    ready
                        .iter()
                        .filter_map(|(lane, _, _)| lane.first().map(lane_key)),
                );
                // The lanes under way keep going while the outbox is read: on
                // a shared database the read may wait for rows one of them
                // holds until it commits.
                let mut skipped_now = HashSet::new();
                // Lanes that ended while the read ran.
                let mut ended = HashSet::new();
                let lanes = {
                    let read = self.runnable_lanes(&known, &mut skipped_now);
                    tokio::pin!(read);
                    loop {
                        tokio::select! {
                            lanes = &mut read => break lanes,
                            Some((key, full, r)) = running.next() => {
                                in_flight.remove(&key);
                                unread |= skipped.remove(&key);
                                ended.insert(key);
                                lane_done(&mut report, &mut unread, &mut failed, full, r);
                            }
                        }
                    }
                };
                // A skipped lane that ended during the read is read again at
                // once; one still under way or admitted, once it ends.
                unread |= skipped_now.iter().any(|key| ended.contains(key));
                skipped.extend(skipped_now.into_iter().filter(|key| !ended.contains(key)));
                match lanes {
                    Ok(Lanes::Run(lanes, read_at)) => ready.extend(
                        lanes
                            .into_iter()
                            .map(|(lane, probe)| (lane, probe, read_at)),
                    ),
                    // Every lane that ran either made progress or now waits
                    // for a retry in the future, so the pass ends here unless
                    // new notices arrived.
                    Ok(Lanes::Wait(until)) if idle => {
                        report.next_retry = until;
                        return Ok(report);
                    }
                    Ok(Lanes::Wait(_)) => {}
                    Err(e) => {
                        failed = Some(e);
                        continue;
                    }
                }
            }
            while running.len() < self.concurrency {
                let Some((lane, probe, read_at)) = ready.pop_front() else {
                    break;
                };
                let Some(key) = lane.first().map(lane_key) else {
                    continue;
                };
                in_flight.insert(key.clone());
                running.push(async move {
                    let (full, done) = match self.deliver_lane(lane, probe, read_at).await {
                        Ok((report, full)) => (full, Ok(report)),
                        Err(e) => (false, Err(e)),
                    };
                    (key, full, done)
                });
            }
            if running.is_empty() {
                // Nothing under way: read again (the pass ends there when
                // nothing may go). Waiting for a commit instead would wait
                // for good when the one that queued the last notices came
                // before the read, which skipped them because their lane
                // was still running then.
                continue;
            }
            tokio::select! {
                Some((key, full, r)) = running.next() => {
                    in_flight.remove(&key);
                    unread |= skipped.remove(&key);
                    lane_done(&mut report, &mut unread, &mut failed, full, r);
                }
                changed = queued.changed(), if watching => {
                    unread |= changed.is_ok();
                    watching = changed.is_ok();
                }
            }
        }
    }

    /// Reads the outbox and answers the lanes, other than `known`, that may
    /// go now (whether each is a probe), in order of their oldest notice; or,
    /// when none may, when the first of them will be due. The `known` lanes
    /// that had notices go into `skipped`.
    async fn runnable_lanes(
        &self,
        known: &HashSet<LaneKey>,
        skipped: &mut HashSet<LaneKey>,
    ) -> Result<Lanes, StoreError> {
        // While every platform's breaker is open, the outbox is not even
        // read: a platform that is down costs a check per pass, not a read
        // of the backlog it leaves behind.
        let now = self.clock.now();
        if let Some(until) = self.breakers.all_waiting(self.surfaces.keys(), now) {
            return Ok(Lanes::Wait(Some(until)));
        }
        // A few notices of each lane per read: a long lane (a paced audit
        // channel with a backlog) neither hides the others nor holds them.
        let pending = self.store.pending_notices(READ_LIMIT, PER_LANE).await?;
        // Lanes in order of their oldest notice.
        let mut lanes: HashMap<LaneKey, Vec<Pending>> = HashMap::new();
        let mut order: Vec<LaneKey> = Vec::new();
        for p in pending {
            let key = lane_key(&p);
            if known.contains(&key) {
                skipped.insert(key);
                continue;
            }
            if !lanes.contains_key(&key) {
                order.push(key.clone());
            }
            lanes.entry(key).or_default().push(p);
        }
        let mut waiting: Option<Timestamp> = None;
        let mut wait_until = |at: Timestamp| {
            waiting = Some(waiting.map_or(at, |w: Timestamp| w.min(at)));
        };
        let mut runnable = Vec::new();
        for lane in order.into_iter().filter_map(|k| lanes.remove(&k)) {
            match lane.first() {
                Some(head) if head.next_attempt_at > now => wait_until(head.next_attempt_at),
                Some(head) => match self.breakers.admit(&head.surface, now) {
                    Admission::Go => runnable.push((lane, false)),
                    Admission::Probe => runnable.push((lane, true)),
                    Admission::Wait(until) => wait_until(until),
                },
                None => {}
            }
        }
        Ok(if runnable.is_empty() {
            Lanes::Wait(waiting)
        } else {
            Lanes::Run(runnable, now)
        })
    }

    /// Delivers a lane's notices in order, `probe` when it is the one lane
    /// trying a surface whose breaker is open. A lane that delivered all it
    /// was given goes on with its own next notices for up to [`LANE_TURN`]
    /// notices and [`LANE_TURN_TIME`], rather than wait for the next read of
    /// the whole outbox. Answers, besides the report, whether the lane may
    /// hold more than it delivered (its last read was full).
    async fn deliver_lane(
        &self,
        mut batch: Vec<Pending>,
        mut probe: bool,
        read_at: Timestamp,
    ) -> Result<(DeliveryReport, bool), StoreError> {
        let mut report = DeliveryReport::default();
        let Some((surface, lane)) = batch.first().map(lane_key) else {
            return Ok((report, false));
        };
        let started = self.clock.now();
        let mut turn = 0;
        // A lane that waited for room since the outbox was read may have
        // lost it meanwhile: on a shared database the claim on it runs out,
        // and another process may have taken the lane and sent its notices.
        // So it reads itself again first, as a lane going on does, which
        // claims it anew, leaves out what went, or finds another process
        // holding it.
        let mut read_again = started.since(read_at) >= READ_GOES_STALE;
        loop {
            if read_again {
                let now = self.clock.now();
                batch = {
                    let _turn = self.store_calls.acquire().await;
                    self.store.lane_notices(&surface, &lane, PER_LANE).await?
                };
                // A head waiting for a retry (a notice put back meanwhile) is
                // left to the next read of the outbox, which knows when it is due.
                if batch.first().is_some_and(|head| head.next_attempt_at > now) {
                    return Ok((report, true));
                }
            }
            if batch.is_empty() {
                return Ok((report, false));
            }
            let full = batch.len() >= PER_LANE as usize;
            let given = batch.len();
            let went = self
                .deliver_batch(std::mem::take(&mut batch), probe, &mut report)
                .await?;
            turn += went;
            if !full
                || went < given
                || turn >= LANE_TURN
                || self.clock.now().since(started) >= LANE_TURN_TIME
                || self.stopping()
            {
                return Ok((report, full));
            }
            read_again = true;
            probe = false;
        }
    }

    /// Delivers one read of a lane in order, into `report`; answers how
    /// many of its notices went (delivered or set aside) before it stopped.
    async fn deliver_batch(
        &self,
        lane: Vec<Pending>,
        probe: bool,
        report: &mut DeliveryReport,
    ) -> Result<usize, StoreError> {
        // Sent and not recorded yet.
        let mut sent = Vec::new();
        let went = self.send_batch(lane, probe, report, &mut sent).await;
        if went.is_err() {
            // Whatever failed, what was sent must not be read and sent again.
            self.unrecorded().ids.append(&mut sent);
        }
        went
    }

    /// [`Self::deliver_batch`], leaving in `sent` what it sent and did not
    /// record when it fails.
    async fn send_batch(
        &self,
        lane: Vec<Pending>,
        probe: bool,
        report: &mut DeliveryReport,
        sent: &mut Vec<i64>,
    ) -> Result<usize, StoreError> {
        let mut went = 0;
        // When the first of the sends not recorded yet began.
        let mut since = tokio::time::Instant::now();
        for (i, p) in lane.into_iter().enumerate() {
            // A breaker that opened while this pass ran stops the lane (the
            // probe's first notice goes regardless); the next pass waits. So
            // does the process stopping.
            if (!(probe && i == 0) && self.breakers.is_open(&p.surface)) || self.stopping() {
                break;
            }
            let Some(surface) = self.surfaces.get(&p.surface) else {
                // A surface that is no longer configured: its notices wait until it is again.
                self.record_delivered(sent, report).await?;
                let next = self.clock.now().plus(Span::from_minutes(10));
                self.store
                    .mark_retry(p.id, next, "chat surface not configured", Miss::Waited)
                    .await?;
                report.retried += 1;
                break;
            };
            if !sent.is_empty() && since.elapsed() >= RECORD_WITHIN {
                self.record_delivered(sent, report).await?;
            }
            if sent.is_empty() {
                since = tokio::time::Instant::now();
            }
            // A store failure ends the pass; the notice waits for the next.
            match self.send(surface.as_ref(), &p).await? {
                Ok(posted) => {
                    self.breakers.record(&p.surface, Ok(()), self.clock.now());
                    metrics::counter!("passport_chat_deliveries_total", "surface" => p.surface.clone(), "outcome" => "delivered").increment(1);
                    sent.push(p.id);
                    went += 1;
                    if let Some((request, at)) = posted {
                        // The card went: if its place cannot be saved now,
                        // the next pass saves it before anything else.
                        if let Err(e) = self.store.save_chat_ref(request, &p.surface, &at).await {
                            self.unrecorded()
                                .places
                                .push((request, p.surface.clone(), at));
                            return Err(e);
                        }
                    }
                }
                Err(e) => {
                    // Recorded first: what went before this notice stays delivered.
                    self.record_delivered(sent, report).await?;
                    let now = self.clock.now();
                    let backoff = now.plus(retry_delay(p.attempts));
                    // How the attempt counts, and when the next one is due. A
                    // rate limit only asked to wait: it counts for nothing.
                    // Only refusals count towards setting the notice aside.
                    let (outcome, miss, next) = match &e {
                        ChatError::RateLimited { retry_after_ms } => (
                            "rate_limited",
                            Miss::Waited,
                            now.plus(Span::from_millis((*retry_after_ms as i64).max(100))),
                        ),
                        ChatError::Transient(_) => ("transient_error", Miss::Failed, backoff),
                        ChatError::Permanent(_) => ("refused", Miss::Refused, backoff),
                    };
                    metrics::counter!("passport_chat_deliveries_total", "surface" => p.surface.clone(), "outcome" => outcome).increment(1);
                    self.breakers.record(&p.surface, Err(&e), now);
                    let dead = miss == Miss::Refused && p.refusals + 1 >= MAX_REFUSALS;
                    if dead {
                        tracing::error!(surface = %p.surface, lane = %p.lane, error = %e, "notice refused repeatedly; set aside");
                        self.store.mark_dead(p.id, now, &e.to_string()).await?;
                        report.dead += 1;
                        if p.lane != AUDIT_LANE {
                            let mut tally =
                                self.set_aside.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = tally
                                .unreported
                                .entry(p.surface.clone())
                                .or_insert((0, String::new()));
                            entry.0 += 1;
                            entry.1 = e.to_string();
                        }
                        went += 1;
                        continue;
                    }
                    tracing::warn!(surface = %p.surface, lane = %p.lane, error = %e, "notice not delivered; will retry");
                    self.store
                        .mark_retry(p.id, next, &e.to_string(), miss)
                        .await?;
                    report.retried += 1;
                    break;
                }
            }
        }
        self.record_delivered(sent, report).await?;
        Ok(went)
    }

    /// Records the deliveries in `sent` in one commit, into `report`.
    async fn record_delivered(
        &self,
        sent: &mut Vec<i64>,
        report: &mut DeliveryReport,
    ) -> Result<(), StoreError> {
        if sent.is_empty() {
            return Ok(());
        }
        let _turn = self.store_calls.acquire().await;
        self.store.mark_delivered(sent, self.clock.now()).await?;
        report.delivered += sent.len();
        sent.clear();
        Ok(())
    }

    /// Sends one notice. The chat platform's answer is the inner result,
    /// with the request and place of a card it posted for the first time,
    /// for the caller to save; an error of the store (a card's place read)
    /// is the outer one, and says nothing about the platform: it must not
    /// trip its breaker.
    async fn send(
        &self,
        surface: &dyn ChatSurface,
        p: &Pending,
    ) -> Result<Result<Option<(RequestId, MessageRef)>, ChatError>, StoreError> {
        let answer = match &p.notice {
            Notice::Card(card) => match self.store.chat_ref(card.request, &p.surface).await? {
                Some(at) => surface.update_card(&at, card).await,
                None => {
                    return Ok(surface
                        .post_card(card)
                        .await
                        .map(|at| Some((card.request, at))))
                }
            },
            Notice::Thread {
                request,
                text,
                actions,
            } => {
                match self.store.chat_ref(*request, &p.surface).await? {
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
            } => surface.direct_message(user, text, actions).await.map(drop),
            Notice::Audit { text } => surface.post_audit(text).await,
        };
        Ok(answer.map(|()| None))
    }
}
