//! Which Passport releases can run on a database: the check made before the
//! migrations are applied, on SQLite and PostgreSQL alike.
//!
//! Two replicas rolled one at a time, or a rollback after an upgrade, put a
//! Passport on a database that a newer Passport has already migrated. Each
//! migration from the one that created `passport_schema` on says whether
//! older releases can go on running on the schema it leaves (its first line,
//! [`MARKER`]). One they cannot raises `passport_schema.compatible_from` to
//! its own version. A release whose newest migration is at least that
//! version runs on the newer schema, applying nothing; any other is refused
//! with what to deploy instead.

use sqlx::migrate::{Migrate, Migrator};

use crate::app::ports::StoreError;

/// The first line of every migration after the one creating `passport_schema`:
/// `-- compatibility: older releases can run on this schema` or
/// `-- compatibility: older releases cannot run on this schema`.
#[cfg(test)]
const MARKER: &str = "-- compatibility: older releases ";

/// What to do with a database, from the migrations it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The database has no migration this Passport does not know: apply the
    /// missing ones (if any).
    Migrate,
    /// The database has migrations up to `newest` from a newer Passport, which
    /// says this one can run on them: apply nothing, tolerate the unknown.
    RunOnNewer { newest: i64, known: i64 },
}

/// The newest of `known`'s migrations: the one a database must not be past
/// unless it allows this release.
pub(crate) fn newest(known: &Migrator) -> i64 {
    known.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Decides from the versions `applied` and `passport_schema.compatible_from`
/// (None when not read: the database lacks some of this Passport's migrations)
/// whether this Passport, which knows `known`'s migrations, may run here.
pub(crate) fn plan(
    known: &Migrator,
    applied: &[i64],
    compatible_from: Option<i64>,
) -> Result<Plan, StoreError> {
    let knows = |v: i64| known.iter().any(|m| m.version == v);
    let last_known = newest(known);
    let Some(newest) = applied.iter().copied().filter(|v| !knows(*v)).max() else {
        return Ok(Plan::Migrate);
    };
    let refuse = |why: String| {
        StoreError::Schema(format!(
            "the database is at migration {newest}, applied by a newer Passport, and this Passport knows migrations up to {last_known}: {why}"
        ))
    };
    if let Some(missing) = known
        .iter()
        .map(|m| m.version)
        .find(|v| !applied.contains(v))
    {
        return Err(refuse(format!(
            "it lacks this Passport's migration {missing}, so it was not migrated by a later release of this one; check that [store] names Passport's database"
        )));
    }
    match compatible_from {
        Some(from) if from <= last_known => Ok(Plan::RunOnNewer {
            newest,
            known: last_known,
        }),
        Some(from) => Err(refuse(format!(
            "releases older than migration {from} cannot run on it: run a Passport with migration {from} or later (the release that migrated it, or a newer one), or, to go back to this release, restore the database from before the upgrade"
        ))),
        None => Err(refuse(
            "it does not say which releases can run on it (passport_schema has no row): run the Passport that migrated it".into(),
        )),
    }
}

/// Applies `known` to the database behind `conn` (SQLite or PostgreSQL), as
/// [`plan`] allows. sqlx's migration lock (an advisory lock on PostgreSQL,
/// nothing on SQLite, which one process writes) is held from the check to
/// the last migration, so a replica starting while another migrates sees
/// all of that migration or none.
pub(crate) async fn migrate<C, DB>(conn: &mut C, known: Migrator) -> Result<(), StoreError>
where
    C: Migrate + Send,
    DB: sqlx::Database,
    for<'c> &'c mut C: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let failed =
        |e: sqlx::migrate::MigrateError| StoreError::Other(format!("migrations failed: {e}"));
    conn.lock().await.map_err(failed)?;
    let ran = async {
        conn.ensure_migrations_table().await.map_err(failed)?;
        let applied: Vec<i64> = conn
            .list_applied_migrations()
            .await
            .map_err(failed)?
            .iter()
            .map(|m| m.version)
            .collect();
        // `passport_schema` is one of this Passport's migrations: it is there
        // once all of them are, and only then does a newer database need it.
        let compatible_from = if known.iter().all(|m| applied.contains(&m.version)) {
            sqlx::query_scalar("SELECT compatible_from FROM passport_schema")
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| StoreError::Other(format!("cannot read passport_schema: {e}")))?
        } else {
            None
        };
        let mut known = known;
        if let Plan::RunOnNewer { newest, known: last } = plan(&known, &applied, compatible_from)? {
            tracing::warn!(
                newest,
                known = last,
                "the database has migrations from a newer Passport (up to {newest}; this one knows up to {last}), which say older releases can run on it: running without applying any; upgrade this replica when you can"
            );
            // sqlx still checks that every known one is applied as written.
            known.set_ignore_missing(true);
        }
        known.set_locking(false);
        known.run_direct(&mut *conn).await.map_err(failed)
    }
    .await;
    // What went wrong first is what the caller hears.
    let unlocked = conn.unlock().await;
    ran?;
    unlocked.map_err(failed)
}

/// How a migration says older releases fare on the schema it leaves.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compatibility {
    /// Older releases can run on it: it only adds what they neither read nor
    /// must write.
    Kept,
    /// Older releases cannot run on it: it raises `compatible_from` to its
    /// version.
    Broken,
}

/// Checks one migration's declaration against its text; `Err` says what is
/// wrong. Every migration with a version above `first` (the one creating
/// `passport_schema`) must declare; the unit suite checks them all.
#[cfg(test)]
fn check_declaration(version: i64, sql: &str) -> Result<Compatibility, String> {
    let Some(said) = sql.lines().next().and_then(|l| l.strip_prefix(MARKER)) else {
        return Err(format!(
            "migration {version} does not start with `{MARKER}can run on this schema` or `{MARKER}cannot run on this schema`"
        ));
    };
    let raise = format!("UPDATE passport_schema SET compatible_from = {version};");
    let code: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or("").to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join("\n");
    match said.trim() {
        "can run on this schema" => {
            let breaking = [
                "DROP ",
                "RENAME",
                "ALTER COLUMN",
                "PASSPORT_SCHEMA",
                "DELETE ",
                "UPDATE ",
            ];
            if let Some(word) = breaking.iter().find(|w| code.contains(*w)) {
                return Err(format!(
                    "migration {version} says older releases can run on it, but it has `{}`: an older release may read or write what it changes. Declare it `cannot run on this schema` and end it with `{raise}`, or split it: add now, remove in a later release",
                    word.trim()
                ));
            }
            if let Some(line) = code
                .lines()
                .find(|l| l.contains("ADD COLUMN") && l.contains("NOT NULL") && !l.contains("DEFAULT"))
            {
                return Err(format!(
                    "migration {version} says older releases can run on it, but adds a NOT NULL column without a default (`{}`), which an older release's inserts would fail on",
                    line.trim()
                ));
            }
            Ok(Compatibility::Kept)
        }
        "cannot run on this schema" => {
            if !sql.contains(&raise) {
                return Err(format!(
                    "migration {version} says older releases cannot run on it, but does not raise the floor: end it with `{raise}`"
                ));
            }
            Ok(Compatibility::Broken)
        }
        other => Err(format!(
            "migration {version}: `{MARKER}{other}` is neither `can run on this schema` nor `cannot run on this schema`"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sqlx::migrate::{Migration, MigrationType};

    use super::*;

    /// The migration that creates `passport_schema`, per store: every later
    /// one must declare.
    const FIRST_SQLITE: i64 = 19;
    const FIRST_POSTGRES: i64 = 6;

    fn migration(version: i64) -> Migration {
        Migration::new(
            version,
            Cow::Borrowed("m"),
            MigrationType::Simple,
            Cow::Borrowed(""),
            false,
        )
    }

    fn known(versions: &[i64]) -> Migrator {
        Migrator {
            migrations: Cow::Owned(versions.iter().map(|v| migration(*v)).collect()),
            ..Migrator::DEFAULT
        }
    }

    #[test]
    fn every_migration_since_the_floor_declares_and_says_true() {
        for (store, migrator, first) in [
            ("SQLite", sqlx::migrate!("./migrations"), FIRST_SQLITE),
            (
                "PostgreSQL",
                sqlx::migrate!("./migrations/postgres"),
                FIRST_POSTGRES,
            ),
        ] {
            let creates = migrator.iter().find(|m| m.version == first).unwrap();
            assert!(
                creates.sql.contains("CREATE TABLE passport_schema"),
                "{store}: migration {first} creates passport_schema"
            );
            assert!(
                creates.sql.contains(&format!("VALUES (1, {first})")),
                "{store}: migration {first} starts the floor at itself"
            );
            for m in migrator.iter().filter(|m| m.version > first) {
                if let Err(e) = check_declaration(m.version, &m.sql) {
                    panic!("{store}: {e}");
                }
            }
        }
    }

    #[test]
    fn declarations_are_held_to_what_the_migration_does() {
        let can = "-- compatibility: older releases can run on this schema\n";
        let cannot = "-- compatibility: older releases cannot run on this schema\n";
        assert_eq!(
            check_declaration(20, &format!("{can}CREATE TABLE x (a INTEGER);")),
            Ok(Compatibility::Kept)
        );
        assert_eq!(
            check_declaration(
                20,
                &format!("{can}-- we never DROP anything\nALTER TABLE x ADD COLUMN b TEXT NOT NULL DEFAULT '';")
            ),
            Ok(Compatibility::Kept)
        );
        for breaking in [
            "DROP INDEX x_by_a;",
            "ALTER TABLE x DROP COLUMN a;",
            "ALTER TABLE x RENAME TO y;",
            "ALTER TABLE x ALTER COLUMN a SET NOT NULL;",
            "ALTER TABLE x ADD COLUMN b TEXT NOT NULL;",
            "UPDATE passport_schema SET compatible_from = 20;",
            "delete from x;",
        ] {
            let e = check_declaration(20, &format!("{can}{breaking}")).unwrap_err();
            assert!(e.contains("says older releases can run on it"), "{e}");
        }
        let e = check_declaration(20, &format!("{cannot}DROP TABLE x;")).unwrap_err();
        assert!(
            e.contains("end it with `UPDATE passport_schema SET compatible_from = 20;`"),
            "{e}"
        );
        assert_eq!(
            check_declaration(
                20,
                &format!("{cannot}DROP TABLE x;\nUPDATE passport_schema SET compatible_from = 20;")
            ),
            Ok(Compatibility::Broken)
        );
        let e = check_declaration(20, "CREATE TABLE x (a INTEGER);").unwrap_err();
        assert!(e.contains("does not start with"), "{e}");
        let e = check_declaration(20, "-- compatibility: older releases may run\n").unwrap_err();
        assert!(e.contains("is neither"), "{e}");
    }

    #[test]
    fn a_database_this_release_knows_all_of_is_migrated() {
        let this = known(&[1, 2, 3]);
        assert_eq!(plan(&this, &[], None).unwrap(), Plan::Migrate);
        assert_eq!(plan(&this, &[1, 2], Some(2)).unwrap(), Plan::Migrate);
        assert_eq!(plan(&this, &[1, 2, 3], Some(3)).unwrap(), Plan::Migrate);
    }

    #[test]
    fn a_newer_database_is_run_on_only_when_it_allows_this_release() {
        let this = known(&[1, 2, 3]);
        assert_eq!(
            plan(&this, &[1, 2, 3, 4, 5], Some(3)).unwrap(),
            Plan::RunOnNewer {
                newest: 5,
                known: 3
            }
        );
        let e = plan(&this, &[1, 2, 3, 4, 5], Some(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the database is at migration 5, applied by a newer Passport, and this Passport knows migrations up to 3"),
            "{e}"
        );
        assert!(
            e.contains("releases older than migration 5 cannot run on it: run a Passport with migration 5 or later"),
            "{e}"
        );
        let e = plan(&this, &[1, 2, 3, 4], None).unwrap_err().to_string();
        assert!(e.contains("passport_schema has no row"), "{e}");
        let e = plan(&this, &[1, 3, 4], Some(1)).unwrap_err().to_string();
        assert!(e.contains("it lacks this Passport's migration 2"), "{e}");
    }
}
