//! The outbox on PostgreSQL, shared by several processes: each process
//! claims the lanes it reads, so no two deliver the same notice, and a
//! lane's notices still go out in order.
//!
//! A claim is per lane: a lane holding a notice claimed by another process
//! until later than now is left alone entirely (delivering its later
//! notices meanwhile would overtake the claimed one). Reading claims the
//! notices read, for [`super::PgOptions::claim_for`] from the store's clock;
//! a delivery or set-aside extends the claims left on its lane once a tenth
//! of their time has passed ([`Held`]); a retry ends them (the lane waits
//! anyway). A lane that delivered all it read
//! goes on by claiming its next notices ([`claim_lane`]), unless another
//! process took it meanwhile. A process that dies leaves its claims
//! to run out, and the next reader takes the lane over. Claiming is
//! serialised by an advisory lock ([`CLAIM_LOCK`]), so two readers never
//! both see a lane as free. A notice this release cannot read, and the rest
//! of its lane, is left unclaimed for a process that reads it.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::{PgConnection, Row};

use crate::app::ports::{Pending, StoreError};
use crate::domain::time::{Span, Timestamp};

use crate::adapters::store_rows::{pending_notice, readable};

/// The advisory lock held while claiming lanes ("passport" + 2).
pub(super) const CLAIM_LOCK: i64 = super::logbook::LOGBOOK_LOCK + 2;

/// The notices this process found it cannot read (a newer release's kind
/// during a rolling upgrade, a damaged row): [`claim`] passes over them and
/// the rest of their lanes, so that they do not fill its limit, read after
/// read, ahead of the lanes it can deliver. One that another process
/// delivers stops counting, and is forgotten once the list has doubled
/// since it was last pruned ([`Unread::to_prune`]), so that a long rolling
/// upgrade does not grow it without bound.
#[derive(Default)]
pub(super) struct Unread(Mutex<UnreadIds>);

#[derive(Default)]
struct UnreadIds {
    ids: std::collections::BTreeSet<i64>,
    /// How many were left by the last pruning.
    pruned_to: usize,
}

/// Notices past which [`Unread`] is pruned, at the least.
const UNREAD_BEFORE_PRUNING: usize = 1_000;

impl Unread {
    fn lock(&self) -> std::sync::MutexGuard<'_, UnreadIds> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ids, ascending.
    pub(super) fn ids(&self) -> Vec<i64> {
        self.lock().ids.iter().copied().collect()
    }

    pub(super) fn add(&self, ids: &[i64]) {
        self.lock().ids.extend(ids);
    }

    /// The ids to look up before the next claim, when the list has grown
    /// to twice what the last pruning left (and past
    /// [`UNREAD_BEFORE_PRUNING`]); [`Unread::keep`] takes the answer.
    pub(super) fn to_prune(&self) -> Option<Vec<i64>> {
        let known = self.lock();
        (known.ids.len() > UNREAD_BEFORE_PRUNING.max(2 * known.pruned_to))
            .then(|| known.ids.iter().copied().collect())
    }

    /// Keeps of the ids only those `still` names (still in the outbox).
    pub(super) fn keep(&self, still: &[i64]) {
        let still: std::collections::HashSet<&i64> = still.iter().collect();
        let mut known = self.lock();
        known.ids.retain(|id| still.contains(id));
        known.pruned_to = known.ids.len();
    }
}

/// Those of `ids` still waiting in the outbox (neither delivered nor set
/// aside): what [`Unread`] keeps when pruned.
pub(super) async fn still_waiting(
    pool: &sqlx::PgPool,
    ids: &[i64],
) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM outbox WHERE id = ANY($1) AND delivered_at IS NULL AND dead_at IS NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Claims and answers the undelivered notices of the lanes no other process
/// holds, oldest first: at most `per_lane` of each lane and `limit` in all,
/// passing over the notices `unread` names and the rest of their lanes.
/// Lanes this process holds already are answered (and their claims
/// extended) like free ones. A notice whose delivery is recorded while the
/// claim waits for its row is left out: the update checks the row again as
/// that record left it. Answers too the ids of notices claimed that this
/// release cannot read (left unclaimed again).
pub(super) async fn claim(
    conn: &mut PgConnection,
    holder: &str,
    now: Timestamp,
    until: Timestamp,
    (limit, per_lane): (u32, u32),
    unread: &[i64],
) -> Result<Claimed, StoreError> {
    // Both parts are MATERIALIZED, so each runs once whatever the planner
    // believes of the table: with statistics taken while the outbox was
    // nearly empty, it re-ran the ranking for every undelivered row (a
    // quadratic claim that took a core for seconds under a burst). The
    // update then finds its few rows by primary key.
    let sql = format!(
        "WITH held AS MATERIALIZED ( \
             SELECT DISTINCT surface, lane FROM outbox \
             WHERE claimed_by IS NOT NULL AND claimed_by <> $1 AND claimed_until > $2 \
               AND delivered_at IS NULL AND dead_at IS NULL), \
         unread AS MATERIALIZED ( \
             SELECT id, surface, lane FROM outbox \
             WHERE id = ANY($6) AND delivered_at IS NULL AND dead_at IS NULL), \
         picked AS MATERIALIZED ( \
             SELECT id FROM ( \
                 SELECT o.id, ROW_NUMBER() OVER (PARTITION BY o.surface, o.lane ORDER BY o.id) AS n \
                 FROM outbox o \
                 WHERE o.delivered_at IS NULL AND o.dead_at IS NULL \
                   AND NOT EXISTS (SELECT 1 FROM held h WHERE h.surface = o.surface AND h.lane = o.lane) \
                   AND NOT EXISTS (SELECT 1 FROM unread u \
                       WHERE u.surface = o.surface AND u.lane = o.lane AND u.id <= o.id) \
             ) AS ranked WHERE n <= $4 ORDER BY id LIMIT $5) \
         {CLAIM_PICKED}"
    );
    let query = sqlx::query(&sql)
        .bind(holder)
        .bind(now.as_millis())
        .bind(until.as_millis())
        .bind(i64::from(per_lane))
        .bind(i64::from(limit))
        .bind(unread);
    claimed(conn, query).await
}

/// Claims and answers the oldest undelivered notices of one lane, at most
/// `limit`, unless another process holds the lane: the lane's holder going
/// on with its next notices once it delivered all it was given. Under the
/// same lock as [`claim`], so the two never both see the lane as free.
pub(super) async fn claim_lane(
    conn: &mut PgConnection,
    holder: &str,
    now: Timestamp,
    until: Timestamp,
    (surface, lane): (&str, &str),
    limit: u32,
) -> Result<Claimed, StoreError> {
    // `outbox_claimed` answers whether another holds the lane, `outbox_lane`
    // finds its next notices.
    let sql = format!(
        "WITH picked AS MATERIALIZED ( \
             SELECT id FROM outbox \
             WHERE surface = $4 AND lane = $5 AND delivered_at IS NULL AND dead_at IS NULL \
               AND NOT EXISTS (SELECT 1 FROM outbox h \
                   WHERE h.surface = $4 AND h.lane = $5 AND h.claimed_by IS NOT NULL \
                     AND h.claimed_by <> $1 AND h.claimed_until > $2 \
                     AND h.delivered_at IS NULL AND h.dead_at IS NULL) \
             ORDER BY id LIMIT $6) \
         {CLAIM_PICKED}"
    );
    let query = sqlx::query(&sql)
        .bind(holder)
        .bind(now.as_millis())
        .bind(until.as_millis())
        .bind(surface)
        .bind(lane)
        .bind(i64::from(limit));
    claimed(conn, query).await
}

/// The end of a claim: claims the rows of `picked` for `$1` until `$3`,
/// unless their delivery was recorded while the claim waited for them.
///
/// The rows are found by primary key whatever the planner's statistics say.
/// Joined to `picked` instead, with statistics of a nearly empty outbox the
/// planner scanned the whole index of undelivered notices and compared
/// each with every picked id: 40 million comparisons, nearly ten seconds,
/// to claim 2,000 notices out of 20,000 waiting. The undelivered condition
/// is written so that it matches no partial index, leaving the primary key
/// the only index that can serve the statement.
const CLAIM_PICKED: &str = "UPDATE outbox SET claimed_by = $1, claimed_until = $3 \
     WHERE id = ANY(ARRAY(SELECT id FROM picked)) \
       AND COALESCE(delivered_at, dead_at) IS NULL \
     RETURNING id, surface, lane, notice, attempts, next_attempt_at, refusals";

/// A claim statement that takes this long has most likely been planned with
/// statistics of a nearly empty outbox ([`Statistics`]).
const SLOW_CLAIM: std::time::Duration = std::time::Duration::from_millis(50);
/// This process takes the outbox's statistics at most this often.
const STATISTICS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Takes the outbox's planner statistics again when a claim is slow.
///
/// The outbox is a queue: most of the time nearly every notice in it has
/// been delivered, and statistics taken then (by autovacuum, after the
/// burst of updates that delivered them) say that almost no row is
/// undelivered. Every claim reads through the partial indexes of
/// undelivered notices, and with those statistics the planner believes
/// them all empty, so it cannot tell which serves a statement best: a
/// lane's claim may then read every undelivered notice to find its lane's
/// few (tens of milliseconds each with 100,000 waiting). Statistics taken while the backlog is there
/// give each claim the right index. Autovacuum alone takes them too late:
/// it waits a minute or more between runs, and for a share of the table to
/// change. A claim slow for another reason (a backlog a full read must
/// rank, rows a delivery holds) costs at most one needless `ANALYZE` a
/// minute.
#[derive(Default)]
pub(super) struct Statistics(Mutex<Option<std::time::Instant>>);

impl Statistics {
    /// After a claim statement that took `took`: starts `ANALYZE outbox` on
    /// a task of its own if it took [`SLOW_CLAIM`] or more, unless this
    /// process started it in the last [`STATISTICS_EVERY`]. The claim does
    /// not wait for it: on a large outbox it reads many pages, and the
    /// dispatcher's lanes would wait behind it. A failure is logged: claims
    /// work without it, only slower. (A role that does not own the table is
    /// not refused: the server skips the table with a warning.)
    pub(super) fn after_claim(&self, took: std::time::Duration, pool: &sqlx::PgPool) {
        if took < SLOW_CLAIM {
            return;
        }
        {
            let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < STATISTICS_EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match sqlx::query("ANALYZE outbox").execute(&pool).await {
                Ok(_) => tracing::info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    claim_ms = took.as_millis() as u64,
                    "outbox claim was slow; its planner statistics were taken again"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "outbox claim was slow, but its planner statistics could not be taken \
                     again; claims may stay slow until autovacuum analyzes the outbox"
                ),
            }
        });
    }
}

/// What a claim took.
pub(super) struct Claimed {
    /// The notices to deliver, oldest first.
    pub(super) pending: Vec<Pending>,
    /// How long the claim's statement took.
    pub(super) took: std::time::Duration,
    /// Notices claimed that this release cannot read, left unclaimed again.
    pub(super) unread: Vec<i64>,
}

/// Runs a claim under [`CLAIM_LOCK`] and answers what it claimed.
async fn claimed(
    conn: &mut PgConnection,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Claimed, StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLAIM_LOCK)
        .execute(&mut *conn)
        .await?;
    let started = std::time::Instant::now();
    let rows = query.fetch_all(&mut *conn).await?;
    let took = started.elapsed();
    let mut out = rows
        .iter()
        .map(pending_notice)
        .collect::<Result<Vec<_>, StoreError>>()?;
    // RETURNING keeps no order.
    out.sort_by_key(|p| match p {
        Ok(p) => p.id,
        Err(u) => u.id,
    });
    let unread = out
        .iter()
        .filter_map(|p| p.as_ref().err().map(|u| u.id))
        .collect();
    let out = readable(out);
    if out.len() < rows.len() {
        // What this release cannot read, and the rest of its lane, is left
        // unclaimed for a release that reads it (a newer replica during a
        // rolling upgrade): a claim renewed by every read here would keep
        // it from them until this replica is gone.
        let kept: std::collections::HashSet<i64> = out.iter().map(|p| p.id).collect();
        let mut left = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get(0)?;
            if !kept.contains(&id) {
                left.push(id);
            }
        }
        sqlx::query("UPDATE outbox SET claimed_by = NULL, claimed_until = NULL WHERE id = ANY($1)")
            .bind(&left)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Claimed {
        pending: out,
        took,
        unread,
    })
}

/// Until when this process's claim on each notice it holds lasts, as it
/// last set it, so that a delivery extends its lane's claims only once a
/// tenth of their time has passed. Extending them on every delivery rewrote
/// every claimed row of the lane each time: with a lane of 1,000 claimed
/// notices, about half a million row versions to deliver them, which took
/// most of the database server's time under load.
#[derive(Default)]
pub(super) struct Held(Mutex<HashMap<i64, Timestamp>>);

/// Entries past which [`Held`] forgets the claims that have run out (of
/// notices another process took over, or released by a retry).
const HELD_BEFORE_PRUNING: usize = 50_000;

impl Held {
    /// Notes that this process claimed `ids` until `until`.
    pub(super) fn claimed(
        &self,
        ids: impl IntoIterator<Item = i64>,
        until: Timestamp,
        now: Timestamp,
    ) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        held.extend(ids.into_iter().map(|id| (id, until)));
        if held.len() > HELD_BEFORE_PRUNING {
            held.retain(|_, until| *until > now);
        }
    }

    /// Forgets `ids`, notices that end, and answers until when the last
    /// one's claim lasted, if this process knew it.
    pub(super) fn forget(&self, ids: &[i64]) -> Option<Timestamp> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let last = ids.last().and_then(|id| held.get(id).copied());
        for id in ids {
            held.remove(id);
        }
        last
    }

    /// Forgets `ids`, notices of one lane that end while the lane goes on,
    /// and answers how that moves the claims left on the lane: kept when the
    /// last one's claim has more than nine tenths of `claim_for` left,
    /// extended until `now + claim_for` otherwise (also when this process
    /// does not know it).
    pub(super) fn ended(&self, ids: &[i64], now: Timestamp, claim_for: Span) -> LaneClaims {
        let fresh = claim_for.as_millis() - claim_for.as_millis() / 10;
        match self.forget(ids) {
            Some(until) if until.as_millis() - now.as_millis() > fresh => LaneClaims::Keep,
            _ => LaneClaims::Extend(now.plus(claim_for)),
        }
    }
}

/// How a notice's end moves the claims its holder keeps on the notice's lane.
#[derive(Clone, Copy)]
pub(super) enum LaneClaims {
    /// The lane goes on, and its claims have most of their time left.
    Keep,
    /// The lane goes on: its other claims last until then.
    Extend(Timestamp),
    /// The lane stops for now: its claims end.
    Release,
}

/// Moves `holder`'s claims on the lane of notice `id` as `claims` says, and
/// answers the notices whose claims it extended.
pub(super) async fn after(
    conn: &mut PgConnection,
    id: i64,
    holder: &str,
    claims: LaneClaims,
) -> Result<Vec<i64>, StoreError> {
    let (claimed_by, until) = match claims {
        LaneClaims::Keep => return Ok(Vec::new()),
        LaneClaims::Extend(until) => (Some(holder), Some(until.as_millis())),
        LaneClaims::Release => (None, None),
    };
    // Rows a claim has locked meanwhile are skipped, not waited for: the
    // claim locks a lane's rows in an order of its own, and waiting here
    // while it waits for this transaction's first row would deadlock. A
    // skipped row loses nothing: the claim that holds it claims it for its
    // own process, and no other process claims a lane this one holds.
    let rows = sqlx::query(
        "UPDATE outbox SET claimed_by = $3, claimed_until = $4 \
         WHERE id IN ( \
             SELECT o.id FROM outbox o, (SELECT surface, lane FROM outbox WHERE id = $1) AS this \
             WHERE o.surface = this.surface AND o.lane = this.lane AND o.claimed_by = $2 \
               AND o.delivered_at IS NULL AND o.dead_at IS NULL \
             FOR UPDATE OF o SKIP LOCKED) \
         RETURNING id",
    )
    .bind(id)
    .bind(holder)
    .bind(claimed_by)
    .bind(until)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| row.try_get(0).map_err(StoreError::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_notices_are_pruned_when_their_list_has_doubled() {
        let unread = Unread::default();
        let first: Vec<i64> = (1..=UNREAD_BEFORE_PRUNING as i64).collect();
        unread.add(&first);
        unread.add(&first[..10]);
        assert_eq!(unread.ids().len(), UNREAD_BEFORE_PRUNING, "each once");
        assert!(unread.to_prune().is_none());
        unread.add(&[5_000]);
        let asked = unread.to_prune().expect("past the least");
        assert_eq!(asked.len(), UNREAD_BEFORE_PRUNING + 1);
        // Another release delivered all but 700 of them.
        let still: Vec<i64> = (1..=700).collect();
        unread.keep(&still);
        assert_eq!(unread.ids(), still);
        // Not again until it has doubled, and past the least.
        unread.add(&(10_000..10_400).collect::<Vec<_>>());
        assert!(unread.to_prune().is_none(), "1,100 of 1,400");
        unread.add(&(20_000..20_301).collect::<Vec<_>>());
        assert!(unread.to_prune().is_some(), "1,401 past 1,400");
    }
}
