//! Writes to several tables in one statement on PostgreSQL.
//!
//! A group of changes writes requests, notices, timers and Logbook events:
//! one statement per table was one round trip each, all of them under the
//! Logbook's lock, which every process's groups wait for. [`Writes`] joins
//! them into one statement of data-modifying `WITH` parts, sent in one round
//! trip. The parts run on one snapshot, so none of them sees what another
//! writes (a part deletes only rows that were there before the statement),
//! and constraints are checked at the end of the statement, so a row may
//! refer to a row another part inserts.

use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Encode, PgConnection, Postgres, Type};

use crate::app::ports::StoreError;

/// The parts of one statement and the values they are sent with.
#[derive(Default)]
pub(super) struct Writes {
    parts: Vec<String>,
    args: PgArguments,
    bound: usize,
    /// The part whose returned rows [`Writes::run`] counts.
    counted: Option<usize>,
}

impl Writes {
    /// Sends `value` with the statement, and returns its placeholder cast to
    /// `sql_type` (`$3::bigint[]`).
    pub(super) fn bind<T>(&mut self, value: T, sql_type: &str) -> Result<String, StoreError>
    where
        T: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        Arguments::add(&mut self.args, value)
            .map_err(|e| StoreError::Other(format!("cannot encode a value for PostgreSQL: {e}")))?;
        self.bound += 1;
        Ok(format!("${}::{sql_type}", self.bound))
    }

    /// Adds a data-modifying statement (`INSERT`, `UPDATE`, `DELETE`).
    pub(super) fn push(&mut self, sql: String) {
        self.parts.push(sql);
    }

    /// Adds a statement whose returned rows [`Writes::run`] counts (one
    /// per statement).
    pub(super) fn push_counted(&mut self, sql: String) {
        debug_assert!(self.counted.is_none(), "one counted part per statement");
        self.counted = Some(self.parts.len());
        self.parts.push(sql);
    }

    /// Runs every part in one statement; returns the rows the counted part
    /// returned (0 without one).
    pub(super) async fn run(self, conn: &mut PgConnection) -> Result<u64, sqlx::Error> {
        if self.parts.is_empty() {
            return Ok(0);
        }
        let mut sql = String::from("WITH ");
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("w{i} AS ({part})"));
        }
        match self.counted {
            Some(i) => sql.push_str(&format!(" SELECT COUNT(*) FROM w{i}")),
            None => sql.push_str(" SELECT 0::bigint"),
        }
        let n: i64 = sqlx::query_scalar_with(&sql, self.args)
            .fetch_one(&mut *conn)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
