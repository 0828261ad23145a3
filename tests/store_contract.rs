//! The `Store` contract: one suite, written once against `&dyn Store`, run
//! against `SqliteStore` (a real file in a temporary directory) and
//! `PgStore` (a real PostgreSQL server, a fresh database per test, see
//! `common/postgres.rs`). Then what only several processes sharing one
//! PostgreSQL database can do: two stores (two pools, as two replicas
//! would have) appending to one Logbook, racing on one request, and
//! claiming the outbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/postgres.rs"]
mod postgres;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use passport::adapters::clock::ManualClock;
use passport::adapters::postgres::{PgOptions, PgStore};
use passport::adapters::sqlite::{Durability, SqliteStore};
use passport::app::effects::{Effects, Signed, TimerKind};
use passport::app::ports::{
    Clock, IssuedToken, MessageRef, Miss, PasswordMessage, RequestFilter, Slot, Store, StoreError,
    Verification,
};
use passport::domain::command::ListFilter;
use passport::domain::logbook::{ChainKey, ChainKeys, KeyAdoption, NewEvent, KEY_SWITCH};
use passport::domain::notice::Notice;
use passport::domain::policy::Requirement;
use passport::domain::request::{
    AccessRequest, GrantState, InstanceInfo, NewRequest, Platform, RefusalKind, RequestState,
};
use passport::domain::signin::{
    ApiToken, ChatIdentity, LoginAttempt, LoginId, LoginState, LogoutScope, SecretHash,
};
use passport::domain::time::{Span, Timestamp};
use passport::domain::values::{
    DurationLimits, GrantDuration, InstanceId, Person, RequestId, SshPublicKey, Ticket,
    TicketRules, UserId, Username,
};

const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sqlite,
    Postgres,
}

/// A store of either kind, which the test can close and open again on the
/// same database, with other Logbook keys.
enum Handle {
    Sqlite(SqliteStore),
    Pg(PgStore),
}

impl Handle {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Handle::Sqlite(s) => Arc::new(s.clone()),
            Handle::Pg(s) => Arc::new(s.clone()),
        }
    }

    async fn adopt(&self, now: Timestamp) -> Result<KeyAdoption, StoreError> {
        match self {
            Handle::Sqlite(s) => s.adopt_logbook_key(now).await,
            Handle::Pg(s) => s.adopt_logbook_key(now).await,
        }
    }

    async fn close(&self) {
        match self {
            Handle::Sqlite(s) => s.close().await,
            Handle::Pg(s) => s.close().await,
        }
    }
}

/// One database under test, its store and the clock outbox claims run by.
struct Subject {
    kind: Kind,
    _dir: Option<tempfile::TempDir>,
    path: Option<PathBuf>,
    url: Option<String>,
    clock: Arc<ManualClock>,
    handle: Handle,
    store: Arc<dyn Store>,
}

impl Subject {
    async fn new(kind: Kind) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let (dir, path, url) = match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("passport.db");
                (Some(dir), Some(path), None)
            }
            Kind::Postgres => (None, None, Some(postgres::fresh_database().await)),
        };
        let handle = open(kind, &path, &url, &clock, ChainKeys::none()).await;
        let store = handle.store();
        Self {
            kind,
            _dir: dir,
            path,
            url,
            clock,
            handle,
            store,
        }
    }

    /// Another store on the same database (for PostgreSQL, another pool: a
    /// second replica), with `keys`.
    async fn another(&self, keys: ChainKeys) -> Handle {
        open(self.kind, &self.path, &self.url, &self.clock, keys).await
    }

    /// Closes the store and opens it again with `keys`.
    async fn reopen(&mut self, keys: ChainKeys) {
        self.handle.close().await;
        self.handle = open(self.kind, &self.path, &self.url, &self.clock, keys).await;
        self.store = self.handle.store();
    }
}

async fn open(
    kind: Kind,
    path: &Option<PathBuf>,
    url: &Option<String>,
    clock: &Arc<ManualClock>,
    keys: ChainKeys,
) -> Handle {
    match kind {
        Kind::Sqlite => Handle::Sqlite(
            SqliteStore::open_with_keys(path.as_ref().unwrap(), Durability::Normal, keys)
                .await
                .unwrap(),
        ),
        Kind::Postgres => {
            let mut options = PgOptions::new(clock.clone() as Arc<dyn Clock>);
            options.keys = keys;
            options.max_connections = 8;
            Handle::Pg(
                PgStore::connect(url.as_ref().unwrap(), options)
                    .await
                    .unwrap(),
            )
        }
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap()
}

fn at(minutes: i64) -> Timestamp {
    T0.plus(Span::from_minutes(minutes))
}

/// Pending requests are counted for any requester the chat platform names,
/// whatever characters the name holds: quotes and backslashes neither end
/// the name early nor reach the statement, and one requester's count is
/// never another's.
async fn pending_counts_hold_for_requesters_named_with_quotes(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let names = [
        "o'brien",
        r"x\');DELETE-FROM-requests;--",
        "dëv✓'\\",
        "O'BRIEN",
    ];
    for (n, who) in names.iter().enumerate() {
        for _ in 0..=n {
            create(store, who, at(0)).await;
        }
    }
    // Each alone, then all at once (so that they share a group where the
    // store groups changes that arrive together).
    for (n, who) in names.iter().enumerate() {
        let name = who.to_string();
        let counted = store
            .create(
                &uid(who),
                10,
                Box::new(move |slot: Slot| {
                    assert_eq!(slot.pending, n as u64 + 1, "{name}");
                    creation(&name, at(1))(slot)
                }),
            )
            .await;
        assert!(matches!(counted, Ok(Ok(_))), "{who}: {counted:?}");
    }
    let together = names.iter().enumerate().map(|(n, who)| {
        let name = who.to_string();
        let who = uid(who);
        async move {
            store
                .create(
                    &who,
                    10,
                    Box::new(move |slot: Slot| {
                        assert_eq!(slot.pending, n as u64 + 2, "{name}");
                        creation(&name, at(2))(slot)
                    }),
                )
                .await
        }
    });
    for counted in futures::future::join_all(together).await {
        assert!(matches!(counted, Ok(Ok(_))), "{counted:?}");
    }
    for (n, who) in names.iter().enumerate() {
        assert_eq!(
            store.pending_count(&uid(who), 100).await.unwrap(),
            n as u64 + 3,
            "{who}"
        );
    }
}

impl Subject {
    /// Runs `sqlite` or `postgres`, as this database speaks, outside the store.
    async fn execute(&self, sqlite: &str, postgres: &str) {
        match &self.handle {
            Handle::Sqlite(_) => rusqlite::Connection::open(self.path.as_ref().unwrap())
                .unwrap()
                .execute_batch(sqlite)
                .unwrap(),
            Handle::Pg(pg) => {
                sqlx::raw_sql(postgres).execute(pg.pool()).await.unwrap();
            }
        }
    }

    /// A number `query` answers.
    async fn number(&self, query: &str) -> i64 {
        match &self.handle {
            Handle::Sqlite(_) => rusqlite::Connection::open(self.path.as_ref().unwrap())
                .unwrap()
                .query_row(query, [], |r| r.get(0))
                .unwrap(),
            Handle::Pg(pg) => sqlx::query_scalar(query)
                .fetch_one(pg.pool())
                .await
                .unwrap(),
        }
    }

    /// Request `id`'s body as stored.
    async fn stored_body(&self, id: RequestId) -> serde_json::Value {
        let body: String = match &self.handle {
            Handle::Sqlite(_) => rusqlite::Connection::open(self.path.as_ref().unwrap())
                .unwrap()
                .query_row(
                    "SELECT body FROM requests WHERE id = ?1",
                    [id.number() as i64],
                    |r| r.get(0),
                )
                .unwrap(),
            Handle::Pg(pg) => sqlx::query_scalar("SELECT body FROM requests WHERE id = $1")
                .bind(id.number() as i64)
                .fetch_one(pg.pool())
                .await
                .unwrap(),
        };
        serde_json::from_str(&body).unwrap()
    }
}

/// Fields of a request's stored body that this release does not know (a
/// newer release's, while both run on one database in a rolling upgrade)
/// survive this release's changes to it, as they were; the fields it knows
/// take the change.
async fn fields_a_newer_release_stored_survive_a_change(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let alone = create(store, "dev1", at(0)).await;
    let grouped = create(store, "dev2", at(0)).await;
    let plain = create(store, "dev3", at(0)).await;
    s.execute(
        "UPDATE requests SET body = json_set(body, '$.from_a_newer_release', \
         json('{\"n\":[7,\"x\\\"y\"]}')) WHERE id IN (1, 2)",
        "UPDATE requests SET body = (body::jsonb || \
         '{\"from_a_newer_release\":{\"n\":[7,\"x\\\"y\"]}}')::text WHERE id IN (1, 2)",
    )
    .await;
    let kept = serde_json::json!({"n": [7, "x\"y"]});
    assert_eq!(s.stored_body(alone).await["from_a_newer_release"], kept);

    // One alone; two at once, so that they can share a group.
    store
        .update(alone, None, cancel("dev1", at(1)))
        .await
        .unwrap()
        .unwrap();
    let (a, b) = tokio::join!(
        store.update(grouped, None, cancel("dev2", at(2))),
        store.update(plain, None, cancel("dev3", at(2))),
    );
    a.unwrap().unwrap();
    b.unwrap().unwrap();
    for id in [alone, grouped] {
        let body = s.stored_body(id).await;
        assert_eq!(body["from_a_newer_release"], kept, "{body}");
        assert_eq!(body["state"], "cancelled", "{body}");
        let read = store.get(id).await.unwrap().unwrap();
        assert_eq!(read.state, RequestState::Cancelled);
    }
    let body = s.stored_body(plain).await;
    assert!(body.get("from_a_newer_release").is_none(), "{body}");
    assert_eq!(body["state"], "cancelled", "{body}");
}

/// A request whose body this release cannot read (a newer release's value,
/// or a damaged row) is left out of reads of many requests, which go on with
/// the others; a change to it fails, naming what is wrong.
async fn a_request_that_cannot_be_read_is_left_out_of_lists(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let unreadable = create(store, "dev1", at(0)).await;
    let readable = create(store, "dev1", at(1)).await;
    let newer = format!(
        "UPDATE requests SET body = replace(body, '\"state\":\"pending\"', \
         '\"state\":\"from_a_newer_release\"') WHERE id = {}",
        unreadable.number()
    );
    s.execute(&newer, &newer).await;
    let ids = |read: Vec<AccessRequest>| read.iter().map(|r| r.id).collect::<Vec<_>>();
    let mine = store
        .list(ListFilter::Mine, &uid("dev1"), 10)
        .await
        .unwrap();
    assert_eq!(ids(mine), [readable]);
    let filter = RequestFilter {
        changed_since: None,
        holding_users: false,
    };
    let pending = store
        .requests_in(&[RequestState::Pending], filter, 10)
        .await
        .unwrap();
    assert_eq!(ids(pending), [readable]);
    let change = store.update(unreadable, None, cancel("dev1", at(2))).await;
    assert!(
        matches!(change, Err(StoreError::Corrupt(ref e)) if e.contains("from_a_newer_release")),
        "{change:?}"
    );
}

/// Whatever text a change holds (quotes, backslashes, what reads as SQL,
/// escapes, dollar quotes, other scripts, line breaks) is stored as given in
/// every place it is written, and never reaches a statement as SQL.
async fn text_of_any_kind_is_stored_as_given(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let texts = [
        "o'brien",
        r"x\');DELETE FROM requests;--",
        r"E'\x00' $$ $q$ \\' '' \n",
        "dëv✓ 日本 \u{1F512}\ttab\nnewline\r",
        "'; COMMIT; DROP TABLE logbook; --",
    ];
    let mut made = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        let text = text.to_string();
        let now = at(n as i64);
        let who = format!("dev{n}");
        let requester = uid(&who);
        let build: passport::app::ports::Creation = Box::new(move |slot: Slot| {
            let (mut req, mut fx) = creation(&who, now)(slot)?;
            req.requester.handle = text.clone();
            let id = req.id;
            fx.events.push(NewEvent {
                actor: text.clone(),
                ..event(now, Some(id), &text)
            });
            fx.outbox
                .push(("console".into(), Notice::thread(id, text.clone())));
            Ok((req, fx))
        });
        let (req, _) = store.create(&requester, 0, build).await.unwrap().unwrap();
        made.push(req.id);
    }
    for (n, (id, text)) in made.iter().zip(texts).enumerate() {
        let said = text.to_string();
        let change: passport::app::ports::Mutation = Box::new(move |req: &mut AccessRequest| {
            let mut fx = cancel(&format!("dev{n}"), at(10))(req)?;
            fx.outbox.push((
                "console".into(),
                Notice::thread(req.id, format!("bye {said}")),
            ));
            fx.signed = Some(signed_with(&said));
            Ok(fx)
        });
        store.update(*id, None, change).await.unwrap().unwrap();
        let req = store.get(*id).await.unwrap().unwrap();
        assert_eq!(req.requester.handle, text);
        let events = store.audit_events(Some(*id), None).await.unwrap();
        assert!(
            events.iter().any(|e| e.actor == text && e.action == text),
            "{text}: {events:?}"
        );
        let summary = serde_json::json!({ "summary": text }).to_string();
        assert!(events.iter().any(|e| e.details == summary), "{text}");
    }
    let notices: Vec<Notice> = store
        .pending_notices(100, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.notice)
        .collect();
    for (id, text) in made.iter().zip(texts) {
        assert!(
            notices.contains(&Notice::thread(*id, text.into())),
            "{text}"
        );
        assert!(
            notices.contains(&Notice::thread(*id, format!("bye {text}"))),
            "{text}"
        );
    }
    assert_eq!(
        intact_events(&store.verify_logbook().await.unwrap()),
        3 * texts.len() as u64
    );
    // Each key holding such text was kept: the same signed request is refused again.
    for (id, text) in made.iter().zip(texts) {
        let said = text.to_string();
        let again: passport::app::ports::Mutation = Box::new(move |_req: &mut AccessRequest| {
            Ok(Effects {
                signed: Some(signed_with(&said)),
                ..Effects::default()
            })
        });
        assert!(
            matches!(
                store.update(*id, None, again).await,
                Err(StoreError::Replayed)
            ),
            "{text}"
        );
    }
}

/// A signed slash command whose replay key holds `text`.
fn signed_with(text: &str) -> Signed {
    Signed {
        key: format!("slack:command:{text}"),
        until: at(60),
    }
}

fn event(now: Timestamp, request: Option<RequestId>, action: &str) -> NewEvent {
    NewEvent {
        at: now,
        actor: "dev1".into(),
        request: request.map(|r| r.to_string()),
        action: action.into(),
        details: serde_json::json!({ "summary": action }),
    }
}

/// A request of `who` built in the slot the store gives, with a Logbook
/// event, a notice in its thread and an approval timeout.
fn creation(who: &str, now: Timestamp) -> passport::app::ports::Creation {
    let who = who.to_owned();
    Box::new(move |Slot { id, .. }| {
        let req = AccessRequest::new(NewRequest {
            id,
            requester: Person {
                id: uid(&who),
                handle: who.clone(),
            },
            origin: "test".into(),
            instances: vec![InstanceInfo::assumed(
                InstanceId::parse("i-0123456789abcdef0").unwrap(),
                Platform::Linux,
            )],
            duration: GrantDuration::within(Span::from_hours(1), &DurationLimits::default())
                .unwrap(),
            ticket: Ticket::parse("INC-1", &TicketRules::default()).unwrap(),
            reason: None,
            requirement: Requirement {
                rules: Vec::new(),
                max_duration: Span::from_hours(12),
                sudo: false,
                port_forwarding: false,
                remote_port_forwarding: false,
                channel: None,
                extension_approval_over: None,
            },
            approval_window: Span::from_hours(1),
            now,
        });
        let mut fx = Effects::default();
        fx.events.push(event(now, Some(id), "requested"));
        fx.outbox
            .push(("console".into(), Notice::thread(id, "requested".into())));
        fx.schedule(TimerKind::ApprovalTimeout, now.plus(Span::from_hours(1)));
        Ok((req, fx))
    })
}

async fn create(store: &dyn Store, who: &str, now: Timestamp) -> RequestId {
    store
        .create(&uid(who), 0, creation(who, now))
        .await
        .unwrap()
        .unwrap()
        .0
        .id
}

/// The requester cancels: one event and one notice.
fn cancel(who: &str, now: Timestamp) -> passport::app::ports::Mutation {
    let who = who.to_owned();
    Box::new(move |req: &mut AccessRequest| {
        req.cancel(&uid(&who), &who, now)?;
        let mut fx = Effects::default();
        fx.events.push(event(now, Some(req.id), "cancelled"));
        fx.outbox
            .push(("console".into(), Notice::thread(req.id, "cancelled".into())));
        fx.cancel_all = true;
        Ok(fx)
    })
}

fn audit(text: &str) -> Notice {
    Notice::Audit { text: text.into() }
}

/// The counts of the undelivered notice `id` and when it is due next:
/// `(attempts, refusals, next_attempt_at)`.
async fn notice_counts(store: &dyn Store, id: i64) -> (u32, u32, Timestamp) {
    let pending = store.pending_notices(10, 5).await.unwrap();
    let p = pending.iter().find(|p| p.id == id).unwrap();
    (p.attempts, p.refusals, p.next_attempt_at)
}

fn direct(user: &str, text: &str) -> Notice {
    Notice::direct(uid(user), None, text.into())
}

/// The texts of audit and direct-message notices read, in order.
fn texts(read: &[passport::app::ports::Pending]) -> Vec<&str> {
    read.iter()
        .map(|p| match &p.notice {
            Notice::Audit { text } | Notice::Direct { text, .. } => text.as_str(),
            other => panic!("{other:?}"),
        })
        .collect()
}

/// Effects of no request: `events` events and these notices on `console`.
fn housekeeping(now: Timestamp, events: usize, notices: Vec<Notice>) -> Effects {
    let mut fx = Effects::default();
    for i in 0..events {
        fx.events.push(event(now, None, &format!("job_{i}")));
    }
    for n in notices {
        fx.outbox.push(("console".into(), n));
    }
    fx
}

fn intact_events(v: &Verification) -> u64 {
    match v {
        Verification::Intact { events, .. } => *events,
        Verification::Broken(brk) => panic!("the Logbook is broken: {brk}"),
    }
}

// ---------------------------------------------------------------------------
// The contract, for both stores

async fn creating_and_changing_a_request(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let first = create(store, "dev1", at(0)).await;
    assert_eq!(first.number(), 1);
    // The slot counts the requester's pending requests up to the cap.
    let (second, _) = store
        .create(
            &uid("dev1"),
            5,
            Box::new(move |slot: Slot| {
                assert_eq!(slot.pending, 1);
                creation("dev1", at(1))(slot)
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.id.number(), 2);
    assert_eq!(store.pending_count(&uid("dev1"), 10).await.unwrap(), 2);
    assert_eq!(store.pending_count(&uid("dev1"), 1).await.unwrap(), 1);

    let got = store.get(first).await.unwrap().unwrap();
    assert_eq!(got.state, RequestState::Pending);
    let (changed, _) = store
        .update(first, None, cancel("dev1", at(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.state, RequestState::Cancelled);
    assert_eq!(
        store.get(first).await.unwrap().unwrap().state,
        RequestState::Cancelled
    );
    assert!(!store
        .has_timer(first, TimerKind::ApprovalTimeout)
        .await
        .unwrap());
    assert!(store
        .has_timer(second.id, TimerKind::ApprovalTimeout)
        .await
        .unwrap());
    assert_eq!(
        store.audit_events(Some(first), None).await.unwrap().len(),
        2
    );
    assert_eq!(
        store.audit_events(None, Some(at(1))).await.unwrap().len(),
        2,
        "AR-2's request and AR-1's cancellation"
    );

    let mine = store
        .list(ListFilter::Mine, &uid("dev1"), 10)
        .await
        .unwrap();
    assert_eq!(
        mine.iter().map(|r| r.id.number()).collect::<Vec<_>>(),
        [2, 1]
    );
    let pending = store
        .list(ListFilter::Pending, &uid("dev2"), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    let cancelled = store
        .requests_in(&[RequestState::Cancelled], Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(cancelled.len(), 1);
    let gauges = store.gauges(at(3)).await.unwrap();
    assert!(gauges.requests.contains(&("pending".to_owned(), 1)));
    assert_eq!(gauges.outbox_pending, 3);
    store.ping().await.unwrap();
    store.ping_writer().await.unwrap();
}

async fn a_refused_change_writes_nothing(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    store
        .update(id, None, cancel("dev1", at(1)))
        .await
        .unwrap()
        .unwrap();
    let before = (
        store.outbox_counts().await.unwrap(),
        store.logbook_head().await.unwrap(),
    );
    // Cancelled already: the domain refuses, and nothing is written.
    let refused = store.update(id, None, cancel("dev1", at(2))).await.unwrap();
    assert!(
        matches!(refused, Err(RefusalKind::WrongState(_))),
        "{refused:?}"
    );
    assert_eq!(
        (
            store.outbox_counts().await.unwrap(),
            store.logbook_head().await.unwrap()
        ),
        before
    );
    // A refused creation takes no number.
    let refused = store
        .create(
            &uid("dev2"),
            0,
            Box::new(|_| Err(RefusalKind::NotAllowed("no".into()))),
        )
        .await
        .unwrap();
    assert!(refused.is_err());
    assert_eq!(create(store, "dev2", at(3)).await.number(), 2);
    let missing = RequestId::new(99).unwrap();
    assert!(matches!(
        store.update(missing, None, cancel("dev1", at(4))).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_change_that_fails_part_way_writes_nothing(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    let before = (
        store.outbox_counts().await.unwrap(),
        store.logbook_head().await.unwrap(),
    );
    // The request changes, a notice and a timer are queued, then appending
    // the events fails (a key switch is the store's own): all of it goes.
    let failed = store
        .update(
            id,
            None,
            Box::new(move |req: &mut AccessRequest| {
                req.cancel(&uid("dev1"), "dev1", at(1))?;
                let mut fx = Effects::default();
                fx.outbox
                    .push(("console".into(), Notice::thread(req.id, "x".into())));
                fx.schedule(TimerKind::Expiry, at(90));
                fx.events.push(event(at(1), Some(req.id), "cancelled"));
                fx.events.push(event(at(1), None, KEY_SWITCH));
                Ok(fx)
            }),
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    assert!(!store.has_timer(id, TimerKind::Expiry).await.unwrap());
    assert_eq!(
        (
            store.outbox_counts().await.unwrap(),
            store.logbook_head().await.unwrap()
        ),
        before
    );
    // Timers belong to a request: recording one elsewhere fails whole.
    let mut fx = housekeeping(at(2), 1, vec![audit("x")]);
    fx.schedule(TimerKind::Expiry, at(3));
    assert!(store.record(fx, at(2)).await.is_err());
    assert_eq!(
        (
            store.outbox_counts().await.unwrap(),
            store.logbook_head().await.unwrap()
        ),
        before
    );
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 1);
}

/// Changes that arrive at once share transactions (both stores commit in
/// groups), yet each is written or fails alone: a refusal, a replayed signed
/// request and a change that fails part way take nothing of their
/// neighbours' with them, and leave the timer that fired them to fire again.
async fn changes_arriving_together_commit_or_fail_each_alone(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(create(store, &format!("dev{i}"), at(0)).await);
    }
    // The approval timeout of a request whose change will fail.
    let fired_at = ids[3];
    let timer = store
        .due_timers(at(60), 100)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.request == fired_at)
        .unwrap();
    let signed = Signed {
        key: "slack:trigger:T-together".into(),
        until: at(10),
    };
    let broken = |who: String| -> passport::app::ports::Mutation {
        Box::new(move |req: &mut AccessRequest| {
            req.cancel(&uid(&who), &who, at(1))?;
            let mut fx = Effects::default();
            fx.events.push(event(at(1), Some(req.id), "cancelled"));
            fx.events.push(event(at(1), None, KEY_SWITCH));
            Ok(fx)
        })
    };
    let mut work: Vec<futures::future::BoxFuture<'_, &'static str>> = Vec::new();
    for i in 0..20 {
        let who = format!("new{i}");
        work.push(Box::pin(async move {
            let created = store.create(&uid(&who), 0, creation(&who, at(1))).await;
            assert!(matches!(created, Ok(Ok(_))), "{created:?}");
            "created"
        }));
    }
    for (i, &id) in ids.iter().enumerate() {
        let who = format!("dev{i}");
        work.push(Box::pin(async move {
            match i % 4 {
                // Cancelled by the requester: written.
                0 | 1 => {
                    let done = store.update(id, None, cancel(&who, at(1))).await;
                    assert!(matches!(done, Ok(Ok(_))), "{done:?}");
                    "cancelled"
                }
                // Cancelled by someone else: refused.
                2 => {
                    let done = store.update(id, None, cancel("intruder", at(1))).await;
                    assert!(matches!(done, Ok(Err(_))), "{done:?}");
                    "refused"
                }
                // Fails part way (a key switch is the store's own).
                _ => {
                    let fired = (id == fired_at).then_some(timer.id);
                    assert!(store.update(id, fired, broken(who)).await.is_err());
                    "failed"
                }
            }
        }));
    }
    for _ in 0..5 {
        let fx = Effects {
            signed: Some(signed.clone()),
            ..housekeeping(at(1), 1, vec![audit("once")])
        };
        work.push(Box::pin(async move {
            match store.record(fx, at(1)).await {
                Ok(()) => "recorded",
                Err(StoreError::Replayed) => "replayed",
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut seen = std::collections::BTreeMap::new();
    for outcome in futures::future::join_all(work).await {
        *seen.entry(outcome).or_insert(0) += 1;
    }
    assert_eq!(
        seen,
        [
            ("cancelled", 10),
            ("created", 20),
            ("failed", 5),
            ("recorded", 1),
            ("refused", 5),
            ("replayed", 4)
        ]
        .into_iter()
        .collect()
    );
    for (i, &id) in ids.iter().enumerate() {
        let state = store.get(id).await.unwrap().unwrap().state;
        let cancelled = i % 4 < 2;
        assert_eq!(
            state == RequestState::Cancelled,
            cancelled,
            "{id}: {state:?}"
        );
    }
    // The timer that fired a failed change is there to fire again.
    assert!(store
        .due_timers(at(60), 100)
        .await
        .unwrap()
        .iter()
        .any(|t| t.id == timer.id));
    // 20 + 20 requested, 10 cancelled, 1 recorded; every link checks.
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 51);
    assert_eq!(
        store.outbox_counts().await.unwrap().pending,
        20 + 20 + 10 + 1
    );
}

/// Timers of a kind this release does not know (a newer release's, during a
/// rolling upgrade) wait for it, and a damaged one is passed over: neither
/// fails the read nor takes the place of a timer due after it, so expiries
/// and removals go on.
async fn timers_this_release_cannot_act_on_do_not_hold_up_the_others(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    let early = T0.as_millis();
    let unknown = format!(
        "INSERT INTO timers (request, kind, due_at) VALUES \
         ({n}, 'from_a_newer_release', {early}), ({n}, 'from_a_newer_release', {early}), \
         ({n}, 'warning:damaged', {early})",
        n = id.number()
    );
    s.execute(&unknown, &unknown).await;
    let due = store.due_timers(at(60), 2).await.unwrap();
    let kinds: Vec<TimerKind> = due.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, [TimerKind::ApprovalTimeout]);
    assert_eq!(due[0].request, id);
    // They stay where they are.
    let left =
        "SELECT COUNT(*) FROM timers WHERE kind IN ('from_a_newer_release', 'warning:damaged')";
    assert_eq!(s.number(left).await, 3);
}

async fn timers_come_due_move_and_act_once(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    assert!(store.due_timers(at(59), 10).await.unwrap().is_empty());
    let due = store.due_timers(at(60), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let timer = due[0].clone();
    assert_eq!(
        (timer.request, timer.kind, timer.attempts),
        (id, TimerKind::ApprovalTimeout, 0)
    );
    store.reschedule_timer(timer.id, at(70)).await.unwrap();
    assert!(store.due_timers(at(69), 10).await.unwrap().is_empty());
    let moved = store.due_timers(at(70), 10).await.unwrap();
    assert_eq!((moved[0].id, moved[0].attempts), (timer.id, 1));

    // Firing: the timer goes with the change, even a refused one.
    let refused = store
        .update(
            id,
            Some(timer.id),
            Box::new(|_req: &mut AccessRequest| Err(RefusalKind::WrongState("no".into()))),
        )
        .await
        .unwrap();
    assert!(refused.is_err());
    assert!(store.due_timers(at(100), 10).await.unwrap().is_empty());
    // A timer that is gone is stale: the change is refused.
    let stale = store
        .update(id, Some(timer.id), cancel("dev1", at(71)))
        .await
        .unwrap();
    assert!(
        matches!(stale, Err(RefusalKind::AlreadyDone(_))),
        "{stale:?}"
    );
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        RequestState::Pending
    );

    // Ids are never given out twice.
    let second = create(store, "dev1", at(1)).await;
    let next = store.due_timers(at(100), 10).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].request, second);
    assert!(next[0].id > timer.id);
    store.delete_timer(next[0].id).await.unwrap();
    assert!(store.due_timers(at(100), 10).await.unwrap().is_empty());
}

async fn the_outbox_delivers_retries_sets_aside_and_prunes(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let mut queued = store.notices_queued();
    queued.mark_unchanged();
    store
        .record(
            housekeeping(
                at(0),
                0,
                vec![
                    audit("a1"),
                    audit("a2"),
                    direct("dev1", "d1"),
                    direct("dev2", "e1"),
                ],
            ),
            at(0),
        )
        .await
        .unwrap();
    assert!(
        queued.has_changed().unwrap(),
        "a commit that queued notices"
    );
    let counts = store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.dead), (4, 0, 0));

    // One of each lane, oldest first.
    let first = store.pending_notices(10, 1).await.unwrap();
    let lanes: Vec<&str> = first.iter().map(|p| p.lane.as_str()).collect();
    assert_eq!(first.len(), 3, "{lanes:?}");
    assert!(first.windows(2).all(|w| w[0].id < w[1].id));
    assert!(matches!(&first[0].notice, Notice::Audit { text } if text == "a1"));
    assert_eq!(store.pending_notices(2, 5).await.unwrap().len(), 2);

    store.mark_delivered(&[first[0].id], at(1)).await.unwrap();
    store
        .mark_retry(first[1].id, at(5), "internal_error", Miss::Failed)
        .await
        .unwrap();
    // Set aside after a temporary failure: two attempts, one refusal.
    store
        .mark_retry(first[2].id, at(1), "HTTP 503", Miss::Failed)
        .await
        .unwrap();
    store
        .mark_dead(first[2].id, at(1), "channel_not_found")
        .await
        .unwrap();
    let counts = store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.dead), (2, 1, 1));
    assert_eq!(store.pending_notices(10, 5).await.unwrap().len(), 2);
    // A temporary failure counts as an attempt, not as a refusal.
    assert_eq!(notice_counts(store, first[1].id).await, (1, 0, at(5)));
    // A rate limit only asked to wait: the attempt does not count.
    store
        .mark_retry(first[1].id, at(6), "rate limited", Miss::Waited)
        .await
        .unwrap();
    assert_eq!(notice_counts(store, first[1].id).await, (1, 0, at(6)));
    // A refusal counts as both.
    store
        .mark_retry(first[1].id, at(7), "not_in_channel", Miss::Refused)
        .await
        .unwrap();
    assert_eq!(notice_counts(store, first[1].id).await, (2, 1, at(7)));

    let aside = store.set_aside(10).await.unwrap();
    assert_eq!(aside.len(), 1);
    assert_eq!(
        (
            aside[0].id,
            aside[0].attempts,
            aside[0].refusals,
            aside[0].last_error.as_str()
        ),
        (first[2].id, 2, 1, "channel_not_found")
    );
    assert_eq!(
        store
            .revive(Some(vec![first[2].id, 999]), at(2))
            .await
            .unwrap(),
        1
    );
    assert!(store.set_aside(10).await.unwrap().is_empty());
    assert_eq!(notice_counts(store, first[2].id).await, (0, 0, at(2)));
    store.mark_dead(first[2].id, at(3), "again").await.unwrap();
    assert_eq!(store.revive(None, at(4)).await.unwrap(), 1);
    assert_eq!(notice_counts(store, first[2].id).await, (0, 0, at(4)));

    // Pruning takes delivered notices only, older than asked, at most `limit`.
    assert_eq!(store.prune_delivered(at(1), 10).await.unwrap(), 0);
    assert_eq!(store.prune_delivered(at(2), 10).await.unwrap(), 1);
    let counts = store.outbox_counts().await.unwrap();
    assert_eq!((counts.pending, counts.delivered, counts.dead), (3, 0, 0));
}

/// A lane holding more notices than a read answers neither hides the lanes
/// queued behind it nor takes more than its share of the read.
async fn a_long_lane_neither_hides_nor_crowds_out_the_others(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let mut notices: Vec<Notice> = (0..3_000).map(|n| audit(&format!("a{n}"))).collect();
    notices.push(direct("dev1", "d1"));
    notices.push(direct("dev2", "d2"));
    store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let read = store.pending_notices(2000, 100).await.unwrap();
    assert!(read.windows(2).all(|w| w[0].id < w[1].id));
    let audit_lane = read[0].lane.clone();
    assert_eq!(read.iter().filter(|p| p.lane == audit_lane).count(), 100);
    let others: Vec<&Notice> = read
        .iter()
        .filter(|p| p.lane != audit_lane)
        .map(|p| &p.notice)
        .collect();
    assert_eq!(others.len(), 2, "{others:?}");
}

/// A lane that delivered what it read (recorded in one call) goes on with
/// its own next notices, oldest first, whatever the other lanes hold.
async fn a_lane_reads_its_own_next_notices(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let notices = vec![
        audit("a1"),
        audit("a2"),
        direct("dev1", "d1"),
        audit("a3"),
        audit("a4"),
        audit("a5"),
    ];
    store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let first = store.pending_notices(10, 2).await.unwrap();
    assert_eq!(first.len(), 3);
    let lane = first[0].lane.clone();
    // A lane's deliveries recorded together, in one commit.
    let delivered: Vec<i64> = first
        .iter()
        .filter(|p| p.lane == lane)
        .map(|p| p.id)
        .collect();
    assert_eq!(delivered.len(), 2);
    store.mark_delivered(&delivered, at(1)).await.unwrap();
    assert_eq!(store.outbox_counts().await.unwrap().delivered, 2);
    let next = store.lane_notices("console", &lane, 2).await.unwrap();
    assert_eq!(texts(&next), ["a3", "a4"]);
    assert!(next
        .iter()
        .all(|p| p.lane == lane && p.surface == "console"));
    assert!(store
        .lane_notices("console", "no such lane", 5)
        .await
        .unwrap()
        .is_empty());
}

/// A notice this release cannot read (a newer release's kind, or a damaged
/// row) holds up its own lane, in order, and no other: the other lanes are
/// read as before, and once it is gone its lane goes on.
async fn an_unreadable_notice_holds_up_its_lane_only(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let notices = vec![audit("a1"), audit("a2"), direct("dev1", "d1"), audit("a3")];
    store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    s.execute(
        "UPDATE outbox SET notice = '{\"from_a_newer_release\":{}}' \
         WHERE id = (SELECT MIN(id) FROM outbox)",
        "UPDATE outbox SET notice = '{\"from_a_newer_release\":{}}' \
         WHERE id = (SELECT MIN(id) FROM outbox)",
    )
    .await;
    let read = store.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&read), ["d1"]);
    let again = store.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&again), ["d1"], "read again, the same");
    let audit_lane = audit("a1").lane();
    assert!(store
        .lane_notices("console", &audit_lane, 5)
        .await
        .unwrap()
        .is_empty());
    // Delivered by a release that reads it: the lane goes on, in order.
    s.execute(
        "UPDATE outbox SET delivered_at = 1 WHERE id = (SELECT MIN(id) FROM outbox)",
        "UPDATE outbox SET delivered_at = 1 WHERE id = (SELECT MIN(id) FROM outbox)",
    )
    .await;
    let read = store.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&read), ["a2", "d1", "a3"]);
    assert_eq!(read[0].lane, audit_lane);
    let next = store.lane_notices("console", &audit_lane, 5).await.unwrap();
    assert_eq!(texts(&next), ["a2", "a3"]);
}

async fn notices_this_release_cannot_read_take_no_room_in_a_read(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let notices = vec![
        audit("a1"),
        direct("dev1", "d1"),
        direct("dev2", "d2"),
        audit("a2"),
    ];
    store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    // The first two, of two lanes, are a newer release's.
    let damage = "UPDATE outbox SET notice = '{\"from_a_newer_release\":{}}' \
                  WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT 2)";
    s.execute(damage, damage).await;
    let read = store.pending_notices(1, 10).await.unwrap();
    assert_eq!(
        texts(&read),
        ["d2"],
        "room for one, taken by one it can deliver"
    );
    let again = store.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&again), ["d2"]);
    // Delivered by a release that reads it: its lane is read again.
    let delivered = "UPDATE outbox SET delivered_at = 1 WHERE id = (SELECT MIN(id) FROM outbox)";
    s.execute(delivered, delivered).await;
    let after = store.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&after), ["d2", "a2"]);
}

async fn leases_are_taken_renewed_refused_and_taken_over(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let ttl = Span::from_secs(30);
    assert!(store.try_lease("scheduler", "a", at(0), ttl).await.unwrap());
    assert!(!store.try_lease("scheduler", "b", at(0), ttl).await.unwrap());
    // Renewed by its holder.
    assert!(store
        .try_lease("scheduler", "a", at(0).plus(Span::from_secs(20)), ttl)
        .await
        .unwrap());
    assert!(!store
        .try_lease("scheduler", "b", at(0).plus(Span::from_secs(40)), ttl)
        .await
        .unwrap());
    assert_eq!(
        store.lease_holder("scheduler").await.unwrap().as_deref(),
        Some("a")
    );
    // Expired: anyone takes it.
    assert!(store
        .try_lease("scheduler", "b", at(0).plus(Span::from_secs(51)), ttl)
        .await
        .unwrap());
    // Taken over from a holder known dead, before it expires; not from
    // someone who is not holding it.
    assert!(!store
        .take_over_lease("scheduler", "a", "c", at(1), ttl)
        .await
        .unwrap());
    assert!(store
        .take_over_lease("scheduler", "b", "c", at(1), ttl)
        .await
        .unwrap());
    store.release_lease("scheduler", "b").await.unwrap();
    assert_eq!(
        store.lease_holder("scheduler").await.unwrap().as_deref(),
        Some("c")
    );
    store.release_lease("scheduler", "c").await.unwrap();
    assert_eq!(store.lease_holder("scheduler").await.unwrap(), None);

    assert_eq!(
        store.job_next_run("digest", "0 9 * * *").await.unwrap(),
        None
    );
    store
        .set_job_next_run("digest", "0 9 * * *", at(60))
        .await
        .unwrap();
    assert_eq!(
        store.job_next_run("digest", "0 9 * * *").await.unwrap(),
        Some(at(60))
    );
    assert_eq!(
        store.job_next_run("digest", "0 8 * * *").await.unwrap(),
        None
    );
}

async fn a_delivery_key_is_refused_for_a_day_then_forgotten_by_pruning(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let t0 = Timestamp::from_millis(1_000_000_000);
    assert!(store.first_delivery("slack:event:E1", t0).await.unwrap());
    let later = t0.plus(Span::from_hours(23));
    assert!(!store.first_delivery("slack:event:E1", later).await.unwrap());
    // A day on it counts as new, whether or not the job has pruned it.
    let next_day = t0.plus(Span::from_hours(25));
    assert!(store
        .first_delivery("slack:event:E1", next_day)
        .await
        .unwrap());
    assert_eq!(store.prune_signed(next_day, 100).await.unwrap(), 0);
    let after = next_day.plus(Span::from_hours(24)).plus(Span::from_secs(1));
    assert_eq!(store.prune_signed(after, 100).await.unwrap(), 1);
}

async fn a_signed_key_is_refused_until_pruned(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let until = Timestamp::from_millis(1_000_000_000);
    assert!(store.first_signed("slack:trigger:T1", until).await.unwrap());
    let again = until.plus(Span::from_minutes(10));
    assert!(!store.first_signed("slack:trigger:T1", again).await.unwrap());
    assert_eq!(
        store
            .prune_signed(until.plus(Span::from_secs(1)), 100)
            .await
            .unwrap(),
        1
    );
    assert!(store.first_signed("slack:trigger:T1", again).await.unwrap());
}

/// `creation(who, at(1))`, with `amend` applied to its effects.
fn amended(
    who: &str,
    amend: impl FnOnce(&mut Effects) + Send + 'static,
) -> passport::app::ports::Creation {
    let inner = creation(who, at(1));
    Box::new(move |slot| {
        let (req, mut fx) = inner(slot)?;
        amend(&mut fx);
        Ok((req, fx))
    })
}

/// Creations arriving together, among them one whose signed request was
/// seen before and one whose events would switch the Logbook's key: those
/// two fail and write nothing, and every other creation is written whole
/// (on a shared store, one that ran after a failed one may be asked to try
/// again instead), never half.
async fn creations_failing_among_others_write_nothing(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    assert!(store
        .first_signed("slack:trigger:T-seen", at(10))
        .await
        .unwrap());
    let mut work: Vec<futures::future::BoxFuture<'_, (&'static str, Option<RequestId>)>> =
        Vec::new();
    for i in 0..10 {
        let who = format!("new{i}");
        let build = match i {
            3 => amended(&who, |fx| {
                fx.signed = Some(Signed {
                    key: "slack:trigger:T-seen".into(),
                    until: at(10),
                });
            }),
            6 => amended(&who, |fx| fx.events.push(event(at(1), None, KEY_SWITCH))),
            _ => creation(&who, at(1)),
        };
        work.push(Box::pin(async move {
            match store.create(&uid(&who), 0, build).await {
                Ok(Ok((req, _))) => ("created", Some(req.id)),
                Err(StoreError::Replayed) => ("replayed", None),
                Err(StoreError::Busy) => ("busy", None),
                Err(_) if i == 6 => ("refused", None),
                other => panic!("{who}: {other:?}"),
            }
        }));
    }
    let outcomes = futures::future::join_all(work).await;
    let created: Vec<RequestId> = outcomes.iter().filter_map(|(_, id)| *id).collect();
    let count = |what: &str| outcomes.iter().filter(|(o, _)| *o == what).count();
    assert_eq!(
        (count("replayed"), count("refused")),
        (1, 1),
        "{outcomes:?}"
    );
    if matches!(kind, Kind::Sqlite) {
        assert_eq!(created.len(), 8, "{outcomes:?}");
    }
    for id in &created {
        assert!(store.get(*id).await.unwrap().is_some());
    }
    // One event and one notice for each creation written, nothing else.
    assert_eq!(
        intact_events(&store.verify_logbook().await.unwrap()),
        created.len() as u64
    );
    assert_eq!(
        store.outbox_counts().await.unwrap().pending,
        created.len() as u64
    );
}

/// A change asked for by a signed chat request records the request's replay
/// key in its own transaction: the same key again fails the whole change, and
/// nothing of it is written.
async fn a_change_from_a_signed_request_seen_before_writes_nothing(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let now = Timestamp::from_millis(1_000_000_000);
    let signed = Signed {
        key: "slack:trigger:T7".into(),
        until: now.plus(Span::from_minutes(10)),
    };
    let change = || {
        let mut fx = Effects {
            signed: Some(signed.clone()),
            ..Effects::default()
        };
        fx.log(
            now,
            "U1",
            None,
            "noted",
            "noted".into(),
            serde_json::json!({}),
        );
        fx
    };
    store.record(change(), now).await.unwrap();
    let head = store.logbook_head().await.unwrap();
    assert!(matches!(
        store.record(change(), now).await,
        Err(StoreError::Replayed)
    ));
    assert_eq!(
        store.logbook_head().await.unwrap(),
        head,
        "the replay wrote an event"
    );
    assert!(
        !store.first_signed(&signed.key, signed.until).await.unwrap(),
        "the key was recorded with the first change"
    );
}

async fn chat_refs_find_cards_and_their_threads(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    assert_eq!(store.chat_ref(id, "slack").await.unwrap(), None);
    let card = MessageRef {
        channel: "C1".into(),
        message: "111.222".into(),
    };
    store.save_chat_ref(id, "slack", &card).await.unwrap();
    assert_eq!(
        store.chat_ref(id, "slack").await.unwrap(),
        Some(card.clone())
    );
    // Saving again replaces.
    let moved = MessageRef {
        channel: "C2".into(),
        message: "333.444".into(),
    };
    store.save_chat_ref(id, "slack", &moved).await.unwrap();
    assert_eq!(store.chat_ref(id, "slack").await.unwrap(), Some(moved));
    assert_eq!(
        store
            .request_for_message("slack", Some("C2"), "333.444")
            .await
            .unwrap(),
        Some(id)
    );
    assert_eq!(
        store
            .request_for_message("slack", None, "333.444")
            .await
            .unwrap(),
        Some(id)
    );
    assert_eq!(
        store
            .request_for_message("slack", Some("C1"), "333.444")
            .await
            .unwrap(),
        None
    );
}

async fn the_logbook_chains_verifies_and_takes_a_key(kind: Kind) {
    let mut s = Subject::new(kind).await;
    let id = create(s.store.as_ref(), "dev1", at(0)).await;
    s.store
        .record(housekeeping(at(1), 3, Vec::new()), at(1))
        .await
        .unwrap();
    let v = s.store.verify_logbook().await.unwrap();
    assert_eq!(intact_events(&v), 4);
    let (seq, head) = s.store.logbook_head().await.unwrap().unwrap();
    assert_eq!(seq, 4);
    assert!(matches!(&v, Verification::Intact { head: h, .. } if *h == head));
    assert_eq!(
        s.store.logbook_hash_at(4).await.unwrap().as_deref(),
        Some(head.as_str())
    );
    assert_eq!(s.store.logbook_hash_at(5).await.unwrap(), None);
    assert_eq!(s.handle.adopt(at(2)).await.unwrap(), KeyAdoption::Plain);

    // The first key: its switch is recorded, and events after it are keyed.
    let key = ChainKey::new(b"0123456789abcdef0123456789abcdef");
    let keys = ChainKeys {
        current: Some(key.clone()),
        previous: Vec::new(),
    };
    s.reopen(keys.clone()).await;
    let adopted = s.handle.adopt(at(3)).await.unwrap();
    assert_eq!(
        adopted,
        KeyAdoption::Switched {
            key: key.id().clone(),
            from: None,
            seq: 5
        }
    );
    assert_eq!(
        s.handle.adopt(at(3)).await.unwrap(),
        KeyAdoption::Kept {
            key: key.id().clone(),
            since: 5
        }
    );
    s.store
        .update(id, None, cancel("dev1", at(4)))
        .await
        .unwrap()
        .unwrap();
    match s.store.verify_logbook().await.unwrap() {
        Verification::Intact { events, keying, .. } => {
            assert_eq!(events, 6);
            assert_eq!(keying.switches.len(), 1);
            assert!(keying.unchecked.is_empty(), "{keying:?}");
        }
        Verification::Broken(brk) => panic!("{brk}"),
    }
    // Without the key nothing more is appended, and what is keyed goes unchecked.
    s.reopen(ChainKeys::none()).await;
    let refused = s
        .store
        .record(housekeeping(at(5), 1, Vec::new()), at(5))
        .await;
    assert!(
        matches!(refused, Err(StoreError::LogbookKey(_))),
        "{refused:?}"
    );
    match s.store.verify_logbook().await.unwrap() {
        Verification::Intact { events, keying, .. } => {
            assert_eq!(events, 6);
            assert_eq!(keying.unchecked.len(), 1);
            assert_eq!(
                (keying.unchecked[0].first, keying.unchecked[0].last),
                (6, 6)
            );
        }
        Verification::Broken(brk) => panic!("{brk}"),
    }
    assert!(matches!(
        s.handle.adopt(at(6)).await,
        Err(StoreError::LogbookKey(_))
    ));
}

async fn ssh_keys_are_set_replaced_and_removed_with_their_event(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let key = SshPublicKey::parse(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkVm1fN7nG8kqzZ1d8dQkPZ5QF1sW7bqkUu1YpJt0dx alice@laptop",
    )
    .unwrap();
    assert_eq!(store.ssh_key(&uid("dev1")).await.unwrap(), None);
    store
        .set_ssh_key(
            &uid("dev1"),
            Some(&key),
            housekeeping(at(0), 1, Vec::new()),
            at(0),
        )
        .await
        .unwrap();
    assert_eq!(
        store.ssh_key(&uid("dev1")).await.unwrap(),
        Some(key.clone())
    );
    store
        .set_ssh_key(
            &uid("dev1"),
            Some(&key),
            housekeeping(at(1), 1, Vec::new()),
            at(1),
        )
        .await
        .unwrap();
    store
        .set_ssh_key(
            &uid("dev1"),
            None,
            housekeeping(at(2), 1, Vec::new()),
            at(2),
        )
        .await
        .unwrap();
    assert_eq!(store.ssh_key(&uid("dev1")).await.unwrap(), None);
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 3);
}

fn hash(text: &str) -> SecretHash {
    SecretHash::from_stored(format!("{text:0>64}"))
}

async fn sign_ins_and_tokens_change_once(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let login = LoginAttempt {
        id: LoginId::from_bytes([7; 16]),
        host: "laptop".into(),
        client: "passport/1".into(),
        address: "127.0.0.1".into(),
        started_at: at(0),
        expires_at: at(5),
        state: LoginState::Pending,
        claimed_by: None,
    };
    store
        .login_start(
            &login,
            &hash("c0de"),
            &hash("5ec7"),
            housekeeping(at(0), 1, Vec::new()),
            at(0),
        )
        .await
        .unwrap();
    assert_eq!(
        store.login_by_code(&hash("c0de")).await.unwrap(),
        Some(login.clone())
    );
    let (found, secret) = store.login_by_id(&login.id).await.unwrap().unwrap();
    assert_eq!(
        (found, secret.as_str()),
        (login.clone(), hash("5ec7").as_str())
    );

    let owner = ChatIdentity {
        person: Person {
            id: uid("dev1"),
            handle: "dev1".into(),
        },
        surface: "slack".into(),
    };
    let mut confirmed = login.clone();
    confirmed.state = LoginState::Confirmed;
    confirmed.claimed_by = Some(owner.clone());
    assert!(store
        .login_save(
            &confirmed,
            LoginState::Pending,
            housekeeping(at(1), 1, Vec::new()),
            at(1)
        )
        .await
        .unwrap());
    // The same change again finds the state moved on: nothing is written.
    assert!(!store
        .login_save(
            &confirmed,
            LoginState::Pending,
            housekeeping(at(1), 1, Vec::new()),
            at(1)
        )
        .await
        .unwrap());

    let token = ApiToken::from_bytes([9; 32]);
    let issued = IssuedToken {
        login: login.id.clone(),
        hash: token.hash(),
        owner: owner.clone(),
        expires_at: at(600),
    };
    let id = store
        .login_collect(
            &issued,
            Box::new(|id| housekeeping(at(2), usize::from(id > 0), Vec::new())),
            at(2),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .login_collect(&issued, Box::new(|_| Effects::default()), at(2))
            .await
            .unwrap(),
        None,
        "collected once"
    );
    let record = store.token(&token.hash()).await.unwrap().unwrap();
    assert_eq!(
        (record.id, record.owner.clone(), record.revoked_at),
        (id, owner, None)
    );
    assert!(!record.refusal_recorded);

    store
        .token_refused(id, housekeeping(at(3), 1, Vec::new()), at(3))
        .await
        .unwrap();
    store
        .token_refused(id, housekeeping(at(3), 1, Vec::new()), at(3))
        .await
        .unwrap();
    assert!(
        store
            .token(&token.hash())
            .await
            .unwrap()
            .unwrap()
            .refusal_recorded
    );

    let n = store
        .revoke_tokens(
            &LogoutScope::User(uid("dev1")),
            Box::new(|n| housekeeping(at(4), n as usize, Vec::new())),
            at(4),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        store
            .token(&token.hash())
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(at(4))
    );
    assert_eq!(
        store
            .revoke_tokens(
                &LogoutScope::Token(id),
                Box::new(|_| Effects::default()),
                at(5)
            )
            .await
            .unwrap(),
        0
    );
    // start, save, collect, one refusal, one revocation.
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 5);
}

async fn password_messages_wait_retry_and_go_once(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    let message = PasswordMessage {
        request: id,
        instance: InstanceId::parse("i-0123456789abcdef0").unwrap(),
        username: serde_json::from_value::<Username>(serde_json::json!("pp-dev1-1")).unwrap(),
        surface: "slack".into(),
        at: MessageRef {
            channel: "D1".into(),
            message: "1.2".into(),
        },
        sent_at: at(1),
        due: at(11),
    };
    store.save_password_message(&message).await.unwrap();
    assert!(store
        .due_password_messages(at(10), 10)
        .await
        .unwrap()
        .is_empty());
    let due = store.due_password_messages(at(11), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let read = &due[0];
    assert_eq!(
        (
            read.request,
            read.surface.as_str(),
            &read.at,
            read.sent_at,
            read.due,
            &read.whose,
            read.attempts
        ),
        (
            message.request,
            "slack",
            &message.at,
            message.sent_at,
            message.due,
            &Ok((message.username.clone(), message.instance.clone())),
            0
        )
    );
    store
        .retry_password_message(due[0].id, at(12))
        .await
        .unwrap();
    let again = store.due_password_messages(at(12), 10).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    let fx = housekeeping(at(12), 1, vec![audit("deleted")]);
    store
        .password_message_deleted(again[0].id, fx.clone(), at(12))
        .await
        .unwrap();
    // Recorded once, however many passes get there.
    store
        .password_message_deleted(again[0].id, fx, at(12))
        .await
        .unwrap();
    assert!(store
        .due_password_messages(at(99), 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 2);
}

async fn a_password_message_this_release_cannot_read_fully_is_still_deleted(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    for (n, due) in [(1, 11), (2, 12)] {
        let message = PasswordMessage {
            request: id,
            instance: InstanceId::parse("i-0123456789abcdef0").unwrap(),
            username: serde_json::from_value::<Username>(serde_json::json!(format!("pp-dev1-{n}")))
                .unwrap(),
            surface: "slack".into(),
            at: MessageRef {
                channel: "D1".into(),
                message: format!("{n}.0"),
            },
            sent_at: at(1),
            due: at(due),
        };
        store.save_password_message(&message).await.unwrap();
    }
    // The earlier one names an instance this release cannot read (a newer
    // release's form, or a damaged row).
    let damage = "UPDATE password_messages SET instance = 'vm/from-a-newer-release' \
                  WHERE message = '1.0'";
    s.execute(damage, damage).await;
    let due = store.due_password_messages(at(12), 10).await.unwrap();
    let read: Vec<(&str, bool)> = due
        .iter()
        .map(|d| (d.at.message.as_str(), d.whose.is_ok()))
        .collect();
    assert_eq!(read, [("1.0", false), ("2.0", true)]);
    let unread = due[0].whose.as_ref().unwrap_err();
    assert!(unread.contains("stored instance"), "{unread}");
    assert_eq!((due[0].request, due[0].due), (id, at(11)));
    // The next due time is read past it too.
    let next = store
        .due_password_messages(Timestamp::from_millis(i64::MAX), 1)
        .await
        .unwrap();
    assert_eq!(next[0].due, at(11));
}

async fn reconciliation_finds_requests_holding_users_and_unverified_removals(kind: Kind) {
    let s = Subject::new(kind).await;
    let store = s.store.as_ref();
    let (holding, ended) = (
        create(store, "dev1", at(0)).await,
        create(store, "dev1", at(1)).await,
    );
    // Set by hand: the states reconciliation looks for.
    let set = |state: RequestState,
               grant: GrantState,
               verified: bool|
     -> passport::app::ports::Mutation {
        Box::new(move |req: &mut AccessRequest| {
            req.state = state;
            req.grants[0].state = grant;
            req.removal_verified = verified;
            Ok(Effects::default())
        })
    };
    store
        .update(
            holding,
            None,
            set(RequestState::Active, GrantState::Active, false),
        )
        .await
        .unwrap()
        .unwrap();
    store
        .update(
            ended,
            None,
            set(RequestState::Completed, GrantState::Removed, false),
        )
        .await
        .unwrap()
        .unwrap();
    let filter = RequestFilter {
        changed_since: None,
        holding_users: true,
    };
    let found = store
        .requests_in(&[RequestState::Active, RequestState::Completed], filter, 10)
        .await
        .unwrap();
    assert_eq!(found.iter().map(|r| r.id).collect::<Vec<_>>(), [holding]);
    let unverified = store.ended_unverified(at(0), 10).await.unwrap();
    assert_eq!(unverified.iter().map(|r| r.id).collect::<Vec<_>>(), [ended]);
    store
        .update(
            ended,
            None,
            set(RequestState::Completed, GrantState::Removed, true),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(store.ended_unverified(at(0), 10).await.unwrap().is_empty());
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Sqlite).await
                }
            )*
        }
        mod postgresql {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Kind::Postgres).await
                }
            )*
        }
    };
}

contract!(
    creating_and_changing_a_request,
    pending_counts_hold_for_requesters_named_with_quotes,
    text_of_any_kind_is_stored_as_given,
    fields_a_newer_release_stored_survive_a_change,
    a_request_that_cannot_be_read_is_left_out_of_lists,
    a_refused_change_writes_nothing,
    a_change_that_fails_part_way_writes_nothing,
    changes_arriving_together_commit_or_fail_each_alone,
    creations_failing_among_others_write_nothing,
    timers_come_due_move_and_act_once,
    timers_this_release_cannot_act_on_do_not_hold_up_the_others,
    the_outbox_delivers_retries_sets_aside_and_prunes,
    a_lane_reads_its_own_next_notices,
    an_unreadable_notice_holds_up_its_lane_only,
    notices_this_release_cannot_read_take_no_room_in_a_read,
    a_long_lane_neither_hides_nor_crowds_out_the_others,
    leases_are_taken_renewed_refused_and_taken_over,
    a_delivery_key_is_refused_for_a_day_then_forgotten_by_pruning,
    a_signed_key_is_refused_until_pruned,
    a_change_from_a_signed_request_seen_before_writes_nothing,
    chat_refs_find_cards_and_their_threads,
    the_logbook_chains_verifies_and_takes_a_key,
    ssh_keys_are_set_replaced_and_removed_with_their_event,
    sign_ins_and_tokens_change_once,
    password_messages_wait_retry_and_go_once,
    a_password_message_this_release_cannot_read_fully_is_still_deleted,
    reconciliation_finds_requests_holding_users_and_unverified_removals,
);

// ---------------------------------------------------------------------------
// Several processes on one PostgreSQL database

/// Replicas starting at once on a new database take turns with its
/// migrations: each sees all of a migration or none, and every one opens.
#[tokio::test]
async fn replicas_starting_at_once_migrate_a_new_database_once() {
    let url = postgres::fresh_database().await;
    let clock = Arc::new(ManualClock::new(T0));
    let starting = (0..4).map(|_| {
        let url = url.clone();
        let clock = clock.clone();
        async move {
            let mut options = PgOptions::new(clock as Arc<dyn Clock>);
            options.max_connections = 2;
            PgStore::connect(&url, options).await
        }
    });
    for (n, opened) in futures::future::join_all(starting)
        .await
        .into_iter()
        .enumerate()
    {
        match opened {
            Ok(store) => store.close().await,
            Err(e) => panic!("replica {n} did not open: {e}"),
        }
    }
}

/// A replica running while a newer release raises `compatible_from` past
/// it (a release older ones cannot run beside, rolled out without stopping
/// them) neither renews nor takes the scheduler lease, so a release that
/// can run here takes it over within the lease's time, and its readiness
/// check says to replace it.
#[tokio::test]
async fn a_replica_a_newer_release_outdated_gives_up_the_lease() {
    let s = Subject::new(Kind::Postgres).await;
    let store = s.store.as_ref();
    let ttl = Span::from_secs(30);
    assert!(store
        .try_lease("scheduler", "old", at(0), ttl)
        .await
        .unwrap());
    store.ping_writer().await.unwrap();

    let raise = "UPDATE passport_schema SET compatible_from = 9000";
    s.execute(raise, raise).await;
    let later = at(0).plus(Span::from_secs(10));
    assert!(!store
        .try_lease("scheduler", "old", later, ttl)
        .await
        .unwrap());
    assert!(!store.try_lease("another", "old", later, ttl).await.unwrap());
    let ready = store.ping_writer().await;
    assert!(
        matches!(ready, Err(StoreError::Schema(ref e)) if e.contains("releases older than migration 9000 cannot run beside")),
        "{ready:?}"
    );

    let lower = "UPDATE passport_schema SET compatible_from = 1";
    s.execute(lower, lower).await;
    assert!(store
        .try_lease("scheduler", "old", later, ttl)
        .await
        .unwrap());
    store.ping_writer().await.unwrap();
}

/// A replica that reads a notice it cannot read leaves that lane unclaimed,
/// so a replica that can (a newer release, during a rolling upgrade) takes
/// the lane at once, in order, instead of when the older replica is gone.
#[tokio::test]
async fn a_lane_a_replica_cannot_read_is_left_to_the_others() {
    let s = Subject::new(Kind::Postgres).await;
    let older = s.store.as_ref();
    let notices = vec![audit("a1"), audit("a2"), direct("dev1", "d1")];
    older
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let damage = "UPDATE outbox SET notice = '{\"from_a_newer_release\":{}}' \
                  WHERE id = (SELECT MIN(id) FROM outbox)";
    s.execute(damage, damage).await;
    let read = older.pending_notices(10, 10).await.unwrap();
    assert_eq!(read.len(), 1, "{read:?}");
    assert!(matches!(read[0].notice, Notice::Direct { .. }));

    // The replica that reads it: here, the same notice made readable again.
    let readable = format!(
        "UPDATE outbox SET notice = '{}' WHERE id = (SELECT MIN(id) FROM outbox)",
        serde_json::to_string(&audit("a1")).unwrap()
    );
    s.execute(&readable, &readable).await;
    let newer = s.another(ChainKeys::none()).await.store();
    let taken = newer.pending_notices(10, 10).await.unwrap();
    assert_eq!(texts(&taken), ["a1", "a2"]);
}

/// Nor does it write anything more that the Logbook records: a creation, a
/// change or a record fails, saying to replace it, without waiting for its
/// readiness check to take it out of the load balancer.
#[tokio::test]
async fn a_replica_a_newer_release_outdated_writes_nothing_more() {
    let s = Subject::new(Kind::Postgres).await;
    let store = s.store.as_ref();
    let id = create(store, "dev1", at(0)).await;
    let raise = "UPDATE passport_schema SET compatible_from = 9000";
    s.execute(raise, raise).await;

    let outdated = |what: &str, e: StoreError| {
        assert!(
            matches!(e, StoreError::Schema(ref m) if m.contains("replace this replica")),
            "{what}: {e:?}"
        );
    };
    outdated(
        "creation",
        store
            .create(&uid("dev2"), 0, creation("dev2", at(1)))
            .await
            .unwrap_err(),
    );
    outdated(
        "change",
        store
            .update(id, None, cancel("dev1", at(1)))
            .await
            .unwrap_err(),
    );
    outdated(
        "record",
        store
            .record(housekeeping(at(1), 1, Vec::new()), at(1))
            .await
            .unwrap_err(),
    );
    assert_eq!(s.number("SELECT COUNT(*) FROM requests").await, 1);
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        RequestState::Pending
    );
    assert_eq!(intact_events(&store.verify_logbook().await.unwrap()), 1);

    // Once a release that may write here sets it back, writes go on.
    let lower = "UPDATE passport_schema SET compatible_from = 1";
    s.execute(lower, lower).await;
    assert!(store
        .update(id, None, cancel("dev1", at(2)))
        .await
        .unwrap()
        .is_ok());
}

/// Two replicas appending at once, each with its own pool, make one chain:
/// every event numbered once, none missing, every link verified.
#[tokio::test]
async fn replicas_appending_at_once_make_one_chain() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let mut writers = Vec::new();
    for i in 0..40 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            other.clone()
        };
        writers.push(tokio::spawn(async move {
            if i % 4 == 1 {
                create(store.as_ref(), &format!("dev{i}"), at(i)).await;
            } else {
                store
                    .record(housekeeping(at(i), 3, vec![audit("x")]), at(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // 30 records of 3 events, 10 creations of 1.
    let v = other.verify_logbook().await.unwrap();
    assert_eq!(intact_events(&v), 100);
    let seqs: Vec<u64> = s
        .store
        .audit_events(None, None)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    // Request numbers were not raced either.
    let requests = s
        .store
        .requests_in(&[RequestState::Pending], Default::default(), 100)
        .await
        .unwrap();
    let mut ids: Vec<u64> = requests.iter().map(|r| r.id.number()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
}

/// Two replicas changing one request at the same moment: one transition,
/// and the other sees it and is refused as the domain refuses.
#[tokio::test]
async fn replicas_racing_on_a_request_make_one_transition() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    for n in 0..10 {
        let id = create(s.store.as_ref(), "dev1", at(n)).await;
        let (a, b) = tokio::join!(
            s.store.update(id, None, cancel("dev1", at(n))),
            other.update(id, None, cancel("dev1", at(n))),
        );
        let outcomes = [a.unwrap(), b.unwrap()];
        assert_eq!(
            outcomes.iter().filter(|o| o.is_ok()).count(),
            1,
            "{outcomes:?}"
        );
        assert!(outcomes
            .iter()
            .any(|o| matches!(o, Err(RefusalKind::WrongState(_)))));
        // The request's event and one cancellation.
        assert_eq!(s.store.audit_events(Some(id), None).await.unwrap().len(), 2);
    }
    let version: i64 = sqlx::query_scalar("SELECT version FROM requests WHERE id = 1")
        .fetch_one(match &s.handle {
            Handle::Pg(pg) => pg.pool(),
            Handle::Sqlite(_) => unreachable!(),
        })
        .await
        .unwrap();
    assert_eq!(version, 1);
    assert_eq!(intact_events(&s.store.verify_logbook().await.unwrap()), 20);
}

/// Two replicas reading the outbox at once never get the same notice, nor
/// two notices of one lane.
#[tokio::test]
async fn replicas_never_get_the_same_notice() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let mut notices = Vec::new();
    for lane in 0..30 {
        for n in 0..3 {
            notices.push(direct(&format!("dev{lane}"), &format!("{n}")));
        }
    }
    s.store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let mut delivered = HashSet::new();
    while s.store.outbox_counts().await.unwrap().pending > 0 {
        let (a, b) = tokio::join!(
            s.store.pending_notices(2000, 2),
            other.pending_notices(2000, 2)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let ids_a: HashSet<i64> = a.iter().map(|p| p.id).collect();
        let ids_b: HashSet<i64> = b.iter().map(|p| p.id).collect();
        assert!(ids_a.is_disjoint(&ids_b));
        let lanes_a: HashSet<&str> = a.iter().map(|p| p.lane.as_str()).collect();
        let lanes_b: HashSet<&str> = b.iter().map(|p| p.lane.as_str()).collect();
        assert!(lanes_a.is_disjoint(&lanes_b), "a lane is one replica's");
        assert!(!a.is_empty() || !b.is_empty());
        // Each replica delivers what it read; its lanes stay its own meanwhile.
        for p in &a {
            assert!(delivered.insert(p.id), "notice {} handed out again", p.id);
            s.store.mark_delivered(&[p.id], at(1)).await.unwrap();
        }
        for p in &b {
            assert!(delivered.insert(p.id), "notice {} handed out again", p.id);
            other.mark_delivered(&[p.id], at(1)).await.unwrap();
        }
    }
    assert_eq!(delivered.len(), 90);
    assert_eq!(s.store.outbox_counts().await.unwrap().delivered, 90);
}

/// A replica goes on with its lane's next notices only where no other
/// replica holds the lane, and what it takes is its own.
#[tokio::test]
async fn a_lane_goes_on_only_where_no_other_replica_holds_it() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let notices = vec![audit("a1"), audit("a2"), audit("a3")];
    s.store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let mine = s.store.pending_notices(10, 1).await.unwrap();
    assert_eq!(mine.len(), 1);
    let lane = mine[0].lane.clone();
    // Held by the first replica: the other takes none of it.
    assert!(other
        .lane_notices("console", &lane, 5)
        .await
        .unwrap()
        .is_empty());
    s.store.mark_delivered(&[mine[0].id], at(1)).await.unwrap();
    let next = s.store.lane_notices("console", &lane, 1).await.unwrap();
    assert_eq!(next.len(), 1);
    assert!(next[0].id > mine[0].id);
    // Now claimed again: neither way of reading hands it to the other.
    assert!(other.pending_notices(10, 5).await.unwrap().is_empty());
    assert!(other
        .lane_notices("console", &lane, 5)
        .await
        .unwrap()
        .is_empty());
}

/// A replica that dies holding a lane leaves it to another once its claim
/// runs out; until then the lane is left alone, later notices included.
#[tokio::test]
async fn a_claim_that_runs_out_is_handed_out_again() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await;
    s.store
        .record(
            housekeeping(
                at(0),
                0,
                vec![audit("a1"), audit("a2"), direct("dev1", "d1")],
            ),
            at(0),
        )
        .await
        .unwrap();
    // The first replica reads one notice of each lane, and dies.
    let claimed = s.store.pending_notices(10, 1).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let survivor = other.store();
    assert!(survivor.pending_notices(10, 5).await.unwrap().is_empty());
    s.clock.advance(Span::from_secs(119));
    assert!(survivor.pending_notices(10, 5).await.unwrap().is_empty());
    // The claims (two minutes) run out.
    s.clock.advance(Span::from_secs(1));
    let taken = survivor.pending_notices(10, 5).await.unwrap();
    assert_eq!(taken.len(), 3);
    assert_eq!(taken[0].id, claimed[0].id);
    // Now the survivor's: the first replica, back, gets none of them.
    assert!(s.store.pending_notices(10, 5).await.unwrap().is_empty());
    // A delivery keeps the lane's claim alive; a retry lets it go.
    s.clock.advance(Span::from_secs(100));
    survivor
        .mark_delivered(&[taken[0].id], at(3))
        .await
        .unwrap();
    s.clock.advance(Span::from_secs(100));
    // The direct lane's claim ran out; the audit lane's was extended.
    let left = s.store.pending_notices(10, 5).await.unwrap();
    assert_eq!(
        left.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![taken[2].id]
    );
    survivor
        .mark_retry(taken[1].id, at(10), "rate limited", Miss::Waited)
        .await
        .unwrap();
    let after_retry = s.store.pending_notices(10, 5).await.unwrap();
    assert_eq!(
        after_retry.iter().map(|p| p.id).collect::<Vec<_>>(),
        vec![taken[1].id, taken[2].id]
    );
}

/// A delivery extends its lane's claims only once a tenth of their time has
/// passed, not with every notice (which rewrote every claimed row of the
/// lane each time); a lane that keeps delivering still keeps its claims.
#[tokio::test]
async fn a_lane_extends_its_claims_only_once_they_are_a_tenth_spent() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let Handle::Pg(pg) = &s.handle else {
        unreachable!()
    };
    let notices = (0..40).map(|n| audit(&format!("a{n}"))).collect();
    s.store
        .record(housekeeping(at(0), 0, notices), at(0))
        .await
        .unwrap();
    let claims = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT DISTINCT claimed_until FROM outbox \
             WHERE claimed_by IS NOT NULL AND delivered_at IS NULL ORDER BY 1",
        )
        .fetch_all(pg.pool())
        .await
        .unwrap()
    };
    let mine = s.store.pending_notices(100, 40).await.unwrap();
    assert_eq!(mine.len(), 40);
    let claimed = claims().await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    // Within the first tenth of two minutes: the claims stay as they were.
    s.clock.advance(Span::from_secs(11));
    s.store.mark_delivered(&[mine[0].id], at(1)).await.unwrap();
    assert_eq!(claims().await, claimed);
    // Past it: extended, for two minutes from now.
    s.clock.advance(Span::from_secs(2));
    s.store.mark_delivered(&[mine[1].id], at(1)).await.unwrap();
    assert_eq!(claims().await, vec![claimed[0] + 13_000]);
    // A notice every 11 s, far past the first claim's two minutes: the lane
    // stays this replica's throughout.
    for p in &mine[2..] {
        s.clock.advance(Span::from_secs(11));
        assert!(other.pending_notices(100, 40).await.unwrap().is_empty());
        s.store.mark_delivered(&[p.id], at(2)).await.unwrap();
    }
    assert_eq!(s.store.outbox_counts().await.unwrap().delivered, 40);
}

/// The process delivering hears at once of notices another process queued,
/// so their lanes start without waiting for its next regular read.
#[tokio::test]
async fn notices_queued_by_another_replica_are_heard() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let mut queued = s.store.notices_queued();
    queued.mark_unchanged();
    // Nothing queued: nothing heard.
    other
        .record(housekeeping(at(0), 1, Vec::new()), at(0))
        .await
        .unwrap();
    other
        .record(housekeeping(at(0), 0, vec![audit("from the other")]), at(0))
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), queued.changed())
        .await
        .expect("the notification arrives")
        .unwrap();
    let pending = s.store.pending_notices(10, 5).await.unwrap();
    assert_eq!(pending.len(), 1);
    // Closing the store closes the counter.
    match &s.handle {
        Handle::Pg(pg) => pg.close().await,
        Handle::Sqlite(_) => unreachable!(),
    }
    assert!(queued.changed().await.is_err());
}

/// Requests sent at once to two replicas cannot pass the per-person cap
/// together: each creation counts the pending ones in its own transaction,
/// after the creations before it committed.
#[tokio::test]
async fn replicas_creating_at_once_keep_the_pending_cap() {
    let s = Subject::new(Kind::Postgres).await;
    let other = s.another(ChainKeys::none()).await.store();
    let mut creations = Vec::new();
    for i in 0..12 {
        let store = if i % 2 == 0 {
            s.store.clone()
        } else {
            other.clone()
        };
        creations.push(tokio::spawn(async move {
            let capped: passport::app::ports::Creation = Box::new(|slot: Slot| {
                if slot.pending >= 3 {
                    return Err(RefusalKind::NotAllowed("3 pending already".into()));
                }
                creation("dev1", at(0))(slot)
            });
            store.create(&uid("dev1"), 3, capped).await.unwrap().is_ok()
        }));
    }
    let mut created = 0;
    for c in creations {
        created += usize::from(c.await.unwrap());
    }
    assert_eq!(created, 3);
    assert_eq!(s.store.pending_count(&uid("dev1"), 10).await.unwrap(), 3);
}

/// The Logbook refuses edits, and an edit made anyway (by someone who can
/// switch the refusal off) is named by verification.
#[tokio::test]
async fn an_edited_logbook_event_is_named_by_verification() {
    let s = Subject::new(Kind::Postgres).await;
    s.store
        .record(housekeeping(at(0), 5, Vec::new()), at(0))
        .await
        .unwrap();
    let Handle::Pg(pg) = &s.handle else {
        unreachable!()
    };
    for refused in [
        "UPDATE logbook SET actor = 'mallory' WHERE seq = 3",
        "DELETE FROM logbook WHERE seq = 5",
        "TRUNCATE logbook",
    ] {
        let e = sqlx::query(refused).execute(pg.pool()).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{refused}: {e}");
    }
    sqlx::raw_sql(
        "ALTER TABLE logbook DISABLE TRIGGER logbook_refuses_update; \
         UPDATE logbook SET actor = 'mallory' WHERE seq = 3",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    match s.store.verify_logbook().await.unwrap() {
        Verification::Broken(brk) => assert_eq!(brk.seq(), 3, "{brk}"),
        intact => panic!("an edited Logbook verified: {intact:?}"),
    }
    sqlx::raw_sql(
        "ALTER TABLE logbook DISABLE TRIGGER logbook_refuses_delete; \
         UPDATE logbook SET actor = 'dev1' WHERE seq = 3; DELETE FROM logbook WHERE seq = 2",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    match s.store.verify_logbook().await.unwrap() {
        Verification::Broken(brk) => assert_eq!(brk.seq(), 2, "{brk}"),
        intact => panic!("a Logbook with a gap verified: {intact:?}"),
    }
}

/// `audit export --since` and `audit show AR-n` read a long Logbook through
/// its indexes on PostgreSQL, as they do on SQLite: the plans for a recent
/// time and for one request use `logbook_by_time` and `logbook_by_request`
/// and never read the whole table.
#[tokio::test]
async fn audit_reads_use_the_logbook_indexes_on_postgres() {
    let s = Subject::new(Kind::Postgres).await;
    let Handle::Pg(pg) = &s.handle else {
        unreachable!()
    };
    // 50,000 events a minute apart over 100 requests (written directly: the
    // plan depends on the table's size, not on the chain).
    sqlx::raw_sql(
        "INSERT INTO logbook (seq, at, actor, request, action, details, hash) \
         SELECT n, n::bigint * 60000, 'dev1', 'AR-' || (n % 100 + 1), 'created', '{}', '\\x00' \
         FROM generate_series(1, 50000) AS n; \
         ANALYZE logbook",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    let plan = |by_request: bool, since: bool| {
        let query = passport::adapters::postgres::audit_query(by_request, since);
        async move {
            let rows: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {query}"))
                .bind(by_request.then_some("AR-7"))
                .bind(since.then_some(49_000i64 * 60_000))
                .fetch_all(pg.pool())
                .await
                .unwrap();
            rows.join("\n")
        }
    };
    let since = plan(false, true).await;
    assert!(since.contains("logbook_by_time"), "{since}");
    assert!(!since.contains("Seq Scan"), "{since}");
    let by_request = plan(true, false).await;
    assert!(by_request.contains("logbook_by_request"), "{by_request}");
    assert!(!by_request.contains("Seq Scan"), "{by_request}");
}
