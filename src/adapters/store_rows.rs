//! What the SQLite and PostgreSQL stores decide the same way about what they
//! read and write: request ids and bodies as stored, and the Logbook's key
//! (how the next event is linked, and when a configured key is adopted).
//! Each store keeps only its SQL.

use crate::app::effects::{Timer, TimerKind};
use crate::app::ports::{MessageRef, Pending, PendingDeletion, StoreError};
use crate::domain::logbook::{
    key_switch_details, switched_key, ChainKeys, KeyAdoption, KeyId, Linking, LogEvent, NewEvent,
    KEY_SWITCH,
};
use crate::domain::notice::Notice;
use crate::domain::request::AccessRequest;
use crate::domain::signin::{
    ChatIdentity, LoginAttempt, LoginId, LoginState, SecretHash, TokenRecord,
};
use crate::domain::time::Timestamp;
use crate::domain::values::{InstanceId, Person, RequestId, UserId, Username};

pub(crate) fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The request id stored as `n`.
pub(crate) fn to_id(n: i64) -> Result<RequestId, StoreError> {
    u64::try_from(n)
        .ok()
        .and_then(RequestId::new)
        .ok_or_else(|| StoreError::Corrupt(format!("bad request id {n}")))
}

/// How request `id` is stored.
pub(crate) fn id_of(id: RequestId) -> i64 {
    id.number() as i64
}

/// A request from its stored body.
pub(crate) fn decode_request(body: &str) -> Result<AccessRequest, StoreError> {
    serde_json::from_str(body).map_err(corrupt)
}

/// Whether `key` is new to `seen`, which then holds it: what this module
/// logs once a process (the rows it cannot read, a few at most).
fn first_time<T: PartialEq>(seen: &std::sync::Mutex<Vec<T>>, key: T) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&key) {
        return false;
    }
    seen.push(key);
    true
}

/// A request among many read, or None when this release cannot read its
/// body (a newer release's value during a rolling upgrade, or a damaged row):
/// logged once a process for each such request, and left out, so that one
/// such request fails neither a person's list nor reconciliation of all
/// the others. A change to it still fails, saying why.
pub(crate) fn listed_request(body: &str) -> Option<AccessRequest> {
    static WARNED: std::sync::Mutex<Vec<Option<String>>> = std::sync::Mutex::new(Vec::new());
    let error = match decode_request(body) {
        Ok(req) => return Some(req),
        Err(e) => e,
    };
    let id = stored_id(body);
    if first_time(&WARNED, id.clone()) {
        tracing::warn!(
            request = id.as_deref().unwrap_or("(none readable)"),
            error = %error,
            "a stored request cannot be read by this Passport, so reads of many requests leave it out: a newer Passport on this database reads it; if none runs here, the row is damaged"
        );
    }
    None
}

/// The id a stored request body gives itself (`"AR-7"`), as written, even
/// when the rest cannot be read: what a warning about it names.
fn stored_id(body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        id: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Named>(body).ok()?.id? {
        serde_json::Value::String(id) => Some(id),
        other => Some(other.to_string()),
    }
}

/// The top-level fields of a stored request body that this release does not
/// know, as they are stored: a newer release's, written while both run on one
/// database (a rolling upgrade). A change carries them over unchanged
/// ([`encode_request`]), so that an older replica's change does not erase
/// what the newer one keeps there.
#[derive(Debug, Default, Clone)]
pub(crate) struct Unknown(Vec<(String, Box<serde_json::value::RawValue>)>);

/// A request to change, from its stored body, with the fields this release
/// does not know.
pub(crate) fn decode_for_change(body: &str) -> Result<(AccessRequest, Unknown), StoreError> {
    Ok((decode_request(body)?, unknown_fields(body)?))
}

/// How a request is stored: its fields, then `unknown` as they were read.
pub(crate) fn encode_request(req: &AccessRequest, unknown: &Unknown) -> Result<String, StoreError> {
    let mut body = serde_json::to_string(req).map_err(corrupt)?;
    if unknown.0.is_empty() || !body.ends_with('}') {
        return Ok(body);
    }
    body.pop();
    for (name, value) in &unknown.0 {
        body.push(',');
        body.push_str(&serde_json::to_string(name).map_err(corrupt)?);
        body.push(':');
        body.push_str(value.get());
    }
    body.push('}');
    Ok(body)
}

/// The fields of `body`'s top level that [`AccessRequest`] does not have.
fn unknown_fields(body: &str) -> Result<Unknown, StoreError> {
    struct Collect;
    impl<'de> serde::de::Visitor<'de> for Collect {
        type Value = Unknown;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a request as a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unknown, A::Error> {
            let known = request_fields();
            let mut unknown = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                let value: Box<serde_json::value::RawValue> = map.next_value()?;
                if !known.contains(&name.as_str()) {
                    unknown.push((name, value));
                }
            }
            Ok(Unknown(unknown))
        }
    }
    use serde::Deserializer as _;
    serde_json::Deserializer::from_str(body)
        .deserialize_map(Collect)
        .map_err(corrupt)
}

/// The names of [`AccessRequest`]'s fields, as its derived `Deserialize`
/// reads them.
fn request_fields() -> &'static [&'static str] {
    static FIELDS: std::sync::LazyLock<&'static [&'static str]> =
        std::sync::LazyLock::new(field_names::<AccessRequest>);
    &FIELDS
}

/// The field names a derived `Deserialize` of a struct asks for: a
/// deserializer that reads nothing but the names it is handed.
fn field_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: serde::de::Visitor<'de>>(
            self,
            _: V,
        ) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: serde::de::Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("only the names are read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

/// The SQL condition, the same on both stores, that holds for the stored
/// timer kinds this release acts on ([`TimerKind::encode`]). A kind a newer
/// release added waits for it, during a rolling upgrade, rather than fail
/// the read of every due timer or fill its limit.
macro_rules! known_timer_kinds {
    () => {
        "(kind IN ('approval_timeout', 'expiry', 'provision', 'refresh', 'remove', 'end_sessions') \
         OR kind LIKE 'warning:%')"
    };
}
pub(crate) use known_timer_kinds;

/// A due timer from a row selected as `id, request, kind, due_at,
/// attempts`, or None (logged once a process) when its kind cannot be read:
/// a damaged row, since [`known_timer_kinds`] leaves out the kinds this
/// release does not know. Timers of other kinds still run, the same
/// request's too: holding its expiry back could keep access open.
pub(crate) fn due_timer(row: &impl Columns) -> Result<Option<Timer>, StoreError> {
    static WARNED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());
    let id = row.int(0)?;
    let kind = row.text(2)?;
    let Some(decoded) = TimerKind::decode(&kind) else {
        if first_time(&WARNED, id) {
            tracing::warn!(
                timer = id,
                kind,
                "a due timer's kind cannot be read, so it is left where it is; the other timers run"
            );
        }
        return Ok(None);
    };
    Ok(Some(Timer {
        id,
        request: to_id(row.int(1)?)?,
        kind: decoded,
        due: Timestamp::from_millis(row.int(3)?),
        attempts: u32::try_from(row.int(4)?).unwrap_or(u32::MAX),
    }))
}

/// A stored notice this release cannot read (a newer release's kind during
/// a rolling upgrade, or a damaged row): it stays in the outbox, and so do
/// the notices after it in its lane, until a release that reads it delivers
/// them in order ([`readable`]).
pub(crate) struct Unreadable {
    pub id: i64,
    pub surface: String,
    pub lane: String,
    pub error: String,
}

/// A notice from a row selected as `id, surface, lane, notice, attempts,
/// next_attempt_at, refusals`, or why this release cannot read it.
pub(crate) fn pending_notice(
    row: &impl Columns,
) -> Result<Result<Pending, Unreadable>, StoreError> {
    let (id, surface, lane) = (row.int(0)?, row.text(1)?, row.text(2)?);
    Ok(match serde_json::from_str::<Notice>(&row.text(3)?) {
        Ok(notice) => Ok(Pending {
            id,
            surface,
            lane,
            notice,
            attempts: u32::try_from(row.int(4)?).unwrap_or(u32::MAX),
            refusals: u32::try_from(row.int(6)?).unwrap_or(u32::MAX),
            next_attempt_at: Timestamp::from_millis(row.int(5)?),
        }),
        Err(e) => Err(Unreadable {
            id,
            surface,
            lane,
            error: e.to_string(),
        }),
    })
}

/// The notices read, in the order read (ids ascending), without those this
/// release cannot read and every later one of their lanes, which wait so
/// that a lane is never delivered out of order. One unreadable notice holds
/// up its lane only, never the whole outbox. Each is logged once a process.
pub(crate) fn readable(read: Vec<Result<Pending, Unreadable>>) -> Vec<Pending> {
    static WARNED: std::sync::Mutex<Vec<i64>> = std::sync::Mutex::new(Vec::new());
    let mut held: Vec<(String, String)> = Vec::new();
    let mut out = Vec::with_capacity(read.len());
    for notice in read {
        match notice {
            Ok(p) => {
                if !held.iter().any(|(s, l)| *s == p.surface && *l == p.lane) {
                    out.push(p);
                }
            }
            Err(u) => {
                if first_time(&WARNED, u.id) {
                    tracing::warn!(
                        notice = u.id,
                        surface = %u.surface,
                        lane = %u.lane,
                        error = %u.error,
                        "a notice in the outbox cannot be read by this Passport, so it and the notices after it in its lane wait: a newer Passport on this database delivers them; if none runs here, the row (this id) is damaged"
                    );
                }
                held.push((u.surface, u.lane));
            }
        }
    }
    out
}

/// What to do about a keyed Logbook whose key this process does not hold.
pub(crate) const KEY_HELP: &str = "set [audit] key (or PASSPORT_AUDIT__KEY) to the key the Logbook was keyed with; to rotate to a new key, set the new one as key and keep the old one in [audit] previous_keys";

/// The Logbook's last switch to a key: its sequence number, and the key its
/// details name (none when they name none, which verification reports).
pub(crate) type LastSwitch = (u64, Option<KeyId>);

/// The last switch to a key, from the sequence number and details of the
/// Logbook's last `logbook_keyed` event.
pub(crate) fn key_switch(seq: i64, details: &str) -> LastSwitch {
    (seq as u64, switched_key(details))
}

/// How the next event is linked: as the Logbook's last switch says, with the
/// key it names, which `keys` must hold. A Logbook once keyed is never again
/// extended with plain links.
pub(crate) fn next_linking<'k>(
    last: Option<&LastSwitch>,
    keys: &'k ChainKeys,
) -> Result<Linking<'k>, StoreError> {
    match last {
        None => Ok(Linking::Plain),
        Some((seq, Some(id))) => keys.find(id).map(Linking::Keyed).ok_or_else(|| {
            let held = match &keys.current {
                None => "no key is set".to_owned(),
                Some(k) => format!("the key set has id {}", k.id()),
            };
            StoreError::LogbookKey(format!(
                "the Logbook is keyed with key id {id} since event {seq}, and {held}: {KEY_HELP}"
            ))
        }),
        Some((seq, None)) => Err(StoreError::Corrupt(format!(
            "Logbook event {seq} switches to a key but names none: run `passport audit verify`"
        ))),
    }
}

/// Refuses `events` that hold a switch to a key: only [`adoption`] writes one.
pub(crate) fn refuse_key_switches(events: &[NewEvent]) -> Result<(), StoreError> {
    match events.iter().find(|e| e.action == KEY_SWITCH) {
        Some(e) => Err(StoreError::Other(format!(
            "a {} event is recorded only by the switch to a key",
            e.action
        ))),
        None => Ok(()),
    }
}

/// What adopting the configured key comes to.
pub(crate) enum Adoption<'k> {
    /// Nothing to write.
    Settled(KeyAdoption),
    /// Append `event`, linked with `linking`, then report [`Switch::done`].
    Switch(Switch<'k>),
}

/// A switch to the configured key, to be appended by the store.
pub(crate) struct Switch<'k> {
    pub event: NewEvent,
    pub linking: Linking<'k>,
    key: KeyId,
    from: Option<KeyId>,
}

impl Switch<'_> {
    /// The adoption, once the switch is event `seq`.
    pub(crate) fn done(self, seq: u64) -> KeyAdoption {
        KeyAdoption::Switched {
            key: self.key,
            from: self.from,
            seq,
        }
    }
}

/// Whether the Logbook, whose last switch to a key is `last`, must switch to
/// the configured key, and how that switch is linked: a keyed Logbook moves
/// to another key only when a previous key signs the move.
pub(crate) fn adoption<'k>(
    last: Option<&LastSwitch>,
    keys: &'k ChainKeys,
    now: Timestamp,
) -> Result<Adoption<'k>, StoreError> {
    let Some(current) = &keys.current else {
        // A keyed Logbook needs its key, or a previous one, to be linked at all.
        next_linking(last, keys)?;
        return match last {
            None => Ok(Adoption::Settled(KeyAdoption::Plain)),
            Some((since, Some(id))) => Err(StoreError::LogbookKey(format!(
                "the Logbook is keyed with key id {id} since event {since}, and no key is set: {KEY_HELP}"
            ))),
            Some(_) => Err(StoreError::Corrupt(
                "the Logbook's last key switch names no key".into(),
            )),
        };
    };
    let (from, linking) = match last {
        Some((since, Some(id))) if id == current.id() => {
            return Ok(Adoption::Settled(KeyAdoption::Kept {
                key: id.clone(),
                since: *since,
            }))
        }
        None => (None, Linking::Plain),
        Some((_, from)) => {
            let linking = next_linking(last, keys)?;
            (from.clone(), linking)
        }
    };
    Ok(Adoption::Switch(Switch {
        event: NewEvent {
            at: now,
            actor: "passport".into(),
            request: None,
            action: KEY_SWITCH.into(),
            details: key_switch_details(current.id(), from.as_ref()),
        },
        linking,
        key: current.id().clone(),
        from,
    }))
}

/// A row as both stores read it, column by column: each store says how its
/// driver reads a column, and what a row means is decoded once, here.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn maybe_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn maybe_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    /// A yes/no column (an integer on SQLite, a boolean on PostgreSQL).
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
    fn maybe_flag(&self, i: usize) -> Result<Option<bool>, StoreError>;
}

/// The Logbook's columns as [`log_event`] reads them, from a row's first column on.
pub(crate) const LOG_EVENT_COLUMNS: &str = "seq, at, actor, request, action, details";

/// The event in a row selected with [`LOG_EVENT_COLUMNS`] first.
pub(crate) fn log_event(row: &impl Columns) -> Result<LogEvent, StoreError> {
    Ok(LogEvent {
        seq: row.int(0)? as u64,
        at: Timestamp::from_millis(row.int(1)?),
        actor: row.text(2)?,
        request: row.maybe_text(3)?,
        action: row.text(4)?,
        details: row.text(5)?,
    })
}

/// A password message's columns as [`pending_deletion`] reads them.
pub(crate) const DELETION_COLUMNS: &str =
    "id, request, surface, channel, message, sent_at, due_at, attempts, username, instance";

/// The password message to delete in a row of [`DELETION_COLUMNS`]. Where it
/// is must be read; whose password it carried may fail to read, and the
/// deletion still goes ahead ([`PendingDeletion::whose`]).
pub(crate) fn pending_deletion(row: &impl Columns) -> Result<PendingDeletion, StoreError> {
    let (username, instance) = (row.text(8)?, row.text(9)?);
    let whose = serde_json::from_value::<Username>(username.into())
        .map_err(|e| format!("stored user name: {e}"))
        .and_then(|user| {
            InstanceId::parse(&instance)
                .map(|instance| (user, instance))
                .map_err(|e| format!("stored instance: {e}"))
        });
    Ok(PendingDeletion {
        id: row.int(0)?,
        request: to_id(row.int(1)?)?,
        surface: row.text(2)?,
        at: MessageRef {
            channel: row.text(3)?,
            message: row.text(4)?,
        },
        sent_at: Timestamp::from_millis(row.int(5)?),
        due: Timestamp::from_millis(row.int(6)?),
        whose,
        attempts: u32::try_from(row.int(7)?).unwrap_or(u32::MAX),
    })
}

fn identity(id: String, handle: String, surface: String) -> Result<ChatIdentity, StoreError> {
    Ok(ChatIdentity {
        person: Person {
            id: UserId::parse(&id)
                .map_err(|e| StoreError::Corrupt(format!("stored user id: {e}")))?,
            handle,
        },
        surface,
    })
}

/// A sign-in attempt's columns as [`login_of`] reads them.
pub(crate) const LOGIN_COLUMNS: &str = "id, host, client, address, started_at, expires_at, state, \
     claimed_by, claimed_handle, claimed_surface, secret_hash";

/// The attempt and its poll secret's hash in a row of [`LOGIN_COLUMNS`].
pub(crate) fn login_of(row: &impl Columns) -> Result<(LoginAttempt, SecretHash), StoreError> {
    let id = row.text(0)?;
    let state = row.text(6)?;
    let claimed_by = match row.maybe_text(7)? {
        Some(user) => Some(identity(
            user,
            row.maybe_text(8)?.unwrap_or_default(),
            row.maybe_text(9)?.unwrap_or_default(),
        )?),
        None => None,
    };
    Ok((
        LoginAttempt {
            id: LoginId::parse(&id)
                .ok_or_else(|| StoreError::Corrupt(format!("bad login id {id:?}")))?,
            host: row.text(1)?,
            client: row.text(2)?,
            address: row.text(3)?,
            started_at: Timestamp::from_millis(row.int(4)?),
            expires_at: Timestamp::from_millis(row.int(5)?),
            state: LoginState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("bad login state {state:?}")))?,
            claimed_by,
        },
        SecretHash::from_stored(row.text(10)?),
    ))
}

/// An API token's columns as [`token_of`] reads them.
pub(crate) const TOKEN_COLUMNS: &str =
    "id, user_id, handle, surface, issued_at, expires_at, revoked_at, refusal_recorded";

/// The token in a row of [`TOKEN_COLUMNS`].
pub(crate) fn token_of(row: &impl Columns) -> Result<TokenRecord, StoreError> {
    Ok(TokenRecord {
        id: row.int(0)?,
        owner: identity(row.text(1)?, row.text(2)?, row.text(3)?)?,
        issued_at: Timestamp::from_millis(row.int(4)?),
        expires_at: Timestamp::from_millis(row.int(5)?),
        revoked_at: row.maybe_int(6)?.map(Timestamp::from_millis),
        refusal_recorded: row.flag(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind this release writes is one [`known_timer_kinds`] reads.
    #[test]
    fn the_known_timer_kinds_are_every_kind_this_release_writes() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE timers (kind TEXT)")
            .unwrap();
        let kinds = TimerKind::EACH;
        for kind in kinds {
            conn.execute("INSERT INTO timers (kind) VALUES (?1)", [kind.encode()])
                .unwrap();
        }
        conn.execute(
            "INSERT INTO timers (kind) VALUES ('from_a_newer_release')",
            [],
        )
        .unwrap();
        let read: i64 = conn
            .query_row(
                concat!("SELECT COUNT(*) FROM timers WHERE ", known_timer_kinds!()),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(read, kinds.len() as i64);
        // A row's kind as the stores read it: a damaged one is passed over.
        let kind_of = |kind: &str| {
            conn.query_row("SELECT 1, 7, ?1, 0, 0", [kind], |row| Ok(due_timer(row)))
                .unwrap()
                .unwrap()
                .map(|timer| timer.kind)
        };
        assert_eq!(kind_of("expiry"), Some(TimerKind::Expiry));
        assert_eq!(kind_of("warning:x"), None);
    }

    #[test]
    fn a_request_that_cannot_be_read_is_left_out_of_lists() {
        assert!(listed_request(r#"{"id":7,"state":"from_a_newer_release"}"#).is_none());
        assert!(listed_request("not json").is_none());
        // Each is logged once, by the id it is stored under.
        let newer = r#"{"id":"AR-7","state":"from_a_newer_release"}"#;
        assert_eq!(stored_id(newer).as_deref(), Some("AR-7"));
        assert_eq!(stored_id(r#"{"id":7}"#).as_deref(), Some("7"));
        assert_eq!(stored_id("not json"), None);
    }

    #[test]
    fn the_request_fields_are_read_from_its_derived_deserialize() {
        let fields = request_fields();
        for name in [
            "id",
            "state",
            "grants",
            "pending_extension",
            "extensions_asked",
        ] {
            assert!(fields.contains(&name), "{name} in {fields:?}");
        }
    }

    #[test]
    fn fields_a_request_does_not_have_are_kept_as_stored() {
        let body =
            r#"{"id":1,"from_a_newer_release":{"n":[1, 2]},"state":"pending","also":"t\"x"}"#;
        let Unknown(unknown) = unknown_fields(body).unwrap();
        let unknown: Vec<(&str, &str)> = unknown
            .iter()
            .map(|(name, value)| (name.as_str(), value.get()))
            .collect();
        assert_eq!(
            unknown,
            [
                ("from_a_newer_release", r#"{"n":[1, 2]}"#),
                ("also", r#""t\"x""#)
            ]
        );
        assert!(unknown_fields(r#"{"id":1,"state":"pending"}"#)
            .unwrap()
            .0
            .is_empty());
        assert!(unknown_fields("[1]").is_err());
    }
}
