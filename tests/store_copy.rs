//! `passport store copy`: a SQLite deployment moved to PostgreSQL, run as
//! processes against a real SQLite file and a throwaway PostgreSQL server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/process.rs"]
mod process;
use process::{bin, run_input, stdout};

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const KEY: &str = "0123456789abcdef0123456789abcdef-first";

/// `passport ARGS` in `dir` on the SQLite file `dir/passport.db`, with the
/// Logbook's key.
fn passport(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env("PASSPORT_STORE__PATH", dir.join("passport.db"))
        .env("PASSPORT_AUDIT__KEY", KEY)
        .env_remove("PASSPORT_LOG")
        .env_remove("PASSPORT_STORE__URL")
        .env_remove("PASSPORT_STORE_COPY_TO")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `passport ARGS` in `dir` on the PostgreSQL database `url`.
fn passport_pg(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = passport(dir, args);
    c.env_remove("PASSPORT_STORE__PATH")
        .env("PASSPORT_STORE__URL", url);
    c
}

fn all(o: &Output) -> String {
    format!("{}{}", stdout(o), String::from_utf8_lossy(&o.stderr))
}

fn assert_has(o: &Output, says: &str) {
    assert!(all(o).contains(says), "no {says:?} in\n{}", all(o));
}

/// A fresh database on the throwaway server, its address carrying a password
/// (the server trusts loopback, so any password connects).
fn pg_url() -> String {
    block_on(postgres::fresh_database()).replacen("postgres@", "postgres:hunter2-Secret@", 1)
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One number `sql` answers on the database `url`.
fn pg_number(url: &str, sql: &str) -> i64 {
    block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        n
    })
}

fn sqlite_number(dir: &Path, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("passport.db")).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// A SQLite deployment with a keyed Logbook: AR-1 active and extended, AR-2
/// approved and expired, AR-3 pending, and one notice set aside.
fn sqlite_deployment() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run_input(
        passport(dir.path(), &["console"]),
        "\
dev1: /passport request i-0123456789abcdef0 2h ticket#1 disk full
lead1: /passport approve AR-1
dev1 in AR-1: extend 1h
dev2: /passport request i-0123456789abcdef0 1h ticket#2 logs
lead1: /passport approve AR-2
!advance 1h30m
dev3: /passport request i-0123456789abcdef0 1h ticket#3 later
",
    );
    assert!(out.status.success(), "{}", all(&out));
    let text = stdout(&out);
    assert!(
        text.contains("[dm dev2] Your access AR-2 has ended"),
        "{text}"
    );
    assert!(text.contains("request AR-3 received"), "{text}");
    let conn = rusqlite::Connection::open(dir.path().join("passport.db")).unwrap();
    conn.execute_batch(
        "UPDATE outbox SET delivered_at = NULL, dead_at = 1, attempts = 7, \
         refusals = 5, last_error = 'channel_not_found' WHERE id = 2",
    )
    .unwrap();
    dir
}

#[test]
fn a_copied_deployment_verifies_and_carries_on_on_postgres() {
    let dir = sqlite_deployment();
    let url = pg_url();
    let events = sqlite_number(dir.path(), "SELECT COUNT(*) FROM logbook");
    let timers = sqlite_number(dir.path(), "SELECT COUNT(*) FROM timers");
    let highest_timer = sqlite_number(
        dir.path(),
        "SELECT seq FROM sqlite_sequence WHERE name = 'timers'",
    );
    let highest_notice = sqlite_number(dir.path(), "SELECT MAX(id) FROM outbox");
    assert!(timers > 0);

    let copy = passport(dir.path(), &["store", "copy", "--to", &url])
        .output()
        .unwrap();
    assert!(copy.status.success(), "{}", all(&copy));
    for says in [
        "the SQLite Logbook is intact",
        "copied ",
        "postgres://postgres:[redacted]@127.0.0.1:",
        &format!("the PostgreSQL Logbook is intact: {events} events, head "),
        "mode: keyed (HMAC-SHA256)",
        "leases are not copied",
        "next: set [store] url",
    ] {
        assert_has(&copy, says);
    }
    let logbook_rows = stdout(&copy)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("logbook ")
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap();
    assert_eq!(logbook_rows, format!("{events} row(s)"));

    // The same chain, head and all, under the same key.
    let verify = passport_pg(dir.path(), &url, &["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", all(&verify));
    assert_has(&verify, &format!("Logbook intact: {events} events"));
    let head = |o: &Output| {
        stdout(o)
            .lines()
            .find_map(|l| l.split_once(", head ").map(|(_, h)| h.to_owned()))
            .unwrap()
    };
    let sqlite_verify = passport(dir.path(), &["audit", "verify"]).output().unwrap();
    assert_eq!(head(&verify), head(&sqlite_verify));

    // The notice set aside is still set aside, with why.
    let outbox = passport_pg(dir.path(), &url, &["outbox", "list"])
        .output()
        .unwrap();
    assert!(stdout(&outbox).starts_with("2\t"), "{}", all(&outbox));
    assert_has(&outbox, "after 7 attempt(s), 5 refused: channel_not_found");
    assert_has(&outbox, "\tqueued ");
    assert_eq!(pg_number(&url, "SELECT COUNT(*) FROM timers"), timers);

    // The deployment carries on: the copied requests are there, the pending
    // one can be approved, the next request is AR-4, and AR-1's expiry timer
    // fires when its time comes.
    let out = run_input(
        passport_pg(dir.path(), &url, &["console"]),
        "\
dev1: /passport show AR-1
lead1: /passport approve AR-3
dev4: /passport request i-0123456789abcdef0 1h ticket#4 next
!advance 4h
",
    );
    assert!(out.status.success(), "{}", all(&out));
    let text = stdout(&out);
    for expected in [
        "[reply to dev1] AR-1 · Active · requested by dev1 for 2h",
        "[reply to lead1] AR-3 approved",
        "[reply to dev4] request AR-4 received",
        "[dm dev1] Your access AR-1 has ended",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    // New rows are numbered past every number SQLite gave.
    assert!(
        pg_number(&url, "SELECT last_value FROM timers_id_seq") > highest_timer,
        "a timer id was given twice"
    );
    assert!(
        pg_number(&url, "SELECT MIN(id) FROM outbox WHERE request = 4") > highest_notice,
        "a notice id was given twice"
    );
    let verify = passport_pg(dir.path(), &url, &["audit", "verify"])
        .output()
        .unwrap();
    assert_eq!(verify.status.code(), Some(0), "{}", all(&verify));

    for run in [&copy, &verify, &out, &outbox] {
        assert!(
            !all(run).contains("hunter2"),
            "the password was shown:\n{}",
            all(run)
        );
    }
}

#[test]
fn a_database_with_passport_data_is_refused_and_left_as_it_was() {
    let dir = sqlite_deployment();
    let url = pg_url();
    let other = tempfile::tempdir().unwrap();
    let used = run_input(
        passport_pg(other.path(), &url, &["console"]),
        "dev9: /passport request i-0123456789abcdef0 1h ticket#9 already here\n",
    );
    assert!(used.status.success(), "{}", all(&used));
    let before = pg_number(&url, "SELECT COUNT(*) FROM logbook");

    // The address from the variable, as the help advises.
    let copy = passport(dir.path(), &["store", "copy"])
        .env("PASSPORT_STORE_COPY_TO", &url)
        .output()
        .unwrap();
    assert_eq!(copy.status.code(), Some(2), "{}", all(&copy));
    assert_has(
        &copy,
        "nothing was copied to postgres://postgres:[redacted]@",
    );
    assert_has(
        &copy,
        "already holds Passport data (table requests has rows)",
    );
    assert_has(&copy, "create a new, empty database");
    assert!(!all(&copy).contains("hunter2"), "{}", all(&copy));
    assert_eq!(pg_number(&url, "SELECT COUNT(*) FROM logbook"), before);
    assert_eq!(pg_number(&url, "SELECT COUNT(*) FROM requests"), 1);
}

#[test]
fn a_tampered_sqlite_logbook_is_refused_before_anything_is_written() {
    let dir = sqlite_deployment();
    let conn = rusqlite::Connection::open(dir.path().join("passport.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER logbook_refuses_update; \
         UPDATE logbook SET actor = 'mallory' WHERE seq = 3;",
    )
    .unwrap();
    drop(conn);
    let url = pg_url();
    let copy = passport(dir.path(), &["store", "copy", "--to", &url])
        .output()
        .unwrap();
    assert_eq!(copy.status.code(), Some(1), "{}", all(&copy));
    assert_has(&copy, "the SQLite Logbook is broken at event 3");
    assert_has(&copy, "nothing was copied");
    // Not even migrated: the database was never opened.
    assert_eq!(
        pg_number(
            &url,
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0
    );
}

#[test]
fn a_running_serve_or_a_postgresql_source_is_refused() {
    let dir = sqlite_deployment();
    let url = pg_url();
    let mut serve = passport(dir.path(), &["serve"]).spawn().unwrap();
    let mut stdin = serve.stdin.take().unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    // Once it answers, its scheduler has run and holds the lease.
    stdin
        .write_all(b"dev5: /passport request i-0123456789abcdef0 1h ticket#5 busy\n")
        .unwrap();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("[reply to dev5]")));
    let copy = passport(dir.path(), &["store", "copy", "--to", &url])
        .output()
        .unwrap();
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!(copy.status.code(), Some(2), "{}", all(&copy));
    assert_has(&copy, "holds the scheduler lease");
    assert_has(&copy, "stop `passport serve` first");
    assert_eq!(pg_number(&url, "SELECT COUNT(*) FROM requests"), 0);

    // The source must be SQLite.
    let copy = passport_pg(dir.path(), &url, &["store", "copy", "--to", &url])
        .output()
        .unwrap();
    assert_eq!(copy.status.code(), Some(2), "{}", all(&copy));
    assert_has(
        &copy,
        "moves a SQLite database, and [store] url names a PostgreSQL database",
    );
    assert!(!all(&copy).contains("hunter2"), "{}", all(&copy));
}
