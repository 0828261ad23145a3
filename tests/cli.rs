//! The `passport` binary run as a process: the console end to end, the
//! Logbook commands against a tampered database, configuration checks, and a
//! crash between a commit and its delivery.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/postgres.rs"]
mod postgres;
#[path = "common/process.rs"]
mod process;
use process::{bin, run_input, stdout};

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn passport(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .current_dir(dir)
        .env("PASSPORT_STORE__PATH", dir.join("passport.db"))
        .env_remove("PASSPORT_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run_with_input(dir: &Path, args: &[&str], input: &str) -> Output {
    run_input(passport(dir, args), input)
}

/// Asserts that the run exited with `code` and printed `says`.
fn assert_exit(o: &Output, code: i32, says: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stdout(o));
    assert_stdout_has(o, says);
}

/// Asserts that the run succeeded, showing what it wrote to standard error if not.
fn assert_success(o: &Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn assert_stdout_has(o: &Output, says: &str) {
    assert!(stdout(o).contains(says), "no {says:?} in\n{}", stdout(o));
}

fn sqlite(dir: &Path, sql: &str) -> Output {
    Command::new("sqlite3")
        .arg(dir.join("passport.db"))
        .arg(sql)
        .output()
        .expect("sqlite3 is installed")
}

const ROUND: &str = "\
# a whole round
dev1: /passport request i-0123456789abcdef0 2h ticket#123 disk full
dev1: /passport approve AR-1
lead1: /passport approve AR-1
!advance 1h50m
dev1 in AR-1: extend 1h
dev1: /passport complete AR-1
dev1: /passport frobnicate
";

#[test]
fn console_runs_a_whole_round() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_input(dir.path(), &["console"], ROUND);
    assert_success(&out);
    let text = stdout(&out);
    for expected in [
        "[reply to dev1] request AR-1 received",
        "[card] (to group:approvers) AR-1 · Pending approval",
        "[Approve: approve AR-1 @request] [Deny: deny AR-1 @request]",
        "[reply to dev1] error: you cannot approve your own request AR-1",
        "[reply to lead1] AR-1 approved",
        "[dry-run] AR-1 → i-0123456789abcdef0: Passport-GrantLinux username=pp-dev1-1",
        "[thread AR-1] ✅ approved by lead1",
        "[dm dev1] Access to AR-1 is active until",
        "[audit] AR-1 access ends at",
        "[Extend +1h: extend AR-1 1h]",
        "[reply to dev1] AR-1 extended by 1h",
        "[reply to dev1] AR-1 completed",
        "[dry-run] AR-1 → i-0123456789abcdef0: Passport-RevokeLinux username=pp-dev1-1",
        "[dm dev1] Your access AR-1 has ended",
        "[card updated] AR-1 · Completed",
        "[reply to dev1] error: unknown command \"frobnicate\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !text.contains("[card updated] AR-1 · Pending"),
        "the card never goes back"
    );

    let verify = audit_verify(dir.path(), None);
    assert!(verify.status.success());
    assert!(
        stdout(&verify).starts_with("Logbook intact: 10 events, head "),
        "{}",
        stdout(&verify)
    );

    let show = passport(dir.path(), &["audit", "show", "AR-1"])
        .output()
        .unwrap();
    let show = stdout(&show);
    assert!(
        show.contains("approved: approved by lead1")
            && show.contains("extended: extended by 1h by dev1"),
        "{show}"
    );

    let export = passport(dir.path(), &["audit", "export", "--request", "AR-1"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = stdout(&export)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(lines[0]["action"], "requested");
    assert_eq!(lines[0]["details"]["ticket"], "ticket#123");
    let none = passport(dir.path(), &["audit", "export", "--since", "2999-01-01"])
        .output()
        .unwrap();
    assert!(stdout(&none).is_empty());
}

/// Runs a round, then opens the database with sqlite3 as an attacker would.
fn tampered(sql: &str) -> (tempfile::TempDir, Output) {
    let dir = tempfile::tempdir().unwrap();
    assert!(run_with_input(dir.path(), &["console"], ROUND)
        .status
        .success());
    let edit = sqlite(dir.path(), sql);
    assert_success(&edit);
    let verify = audit_verify(dir.path(), None);
    (dir, verify)
}

#[test]
fn the_logbook_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run_with_input(dir.path(), &["console"], ROUND)
        .status
        .success());
    for sql in [
        "UPDATE logbook SET actor = 'lead2' WHERE seq = 2;",
        "DELETE FROM logbook WHERE seq = 2;",
    ] {
        let out = sqlite(dir.path(), sql);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("append-only"));
    }
}

#[test]
fn audit_verify_names_a_modified_event() {
    let (_dir, verify) = tampered(
        "DROP TRIGGER logbook_refuses_update; UPDATE logbook SET details = replace(details, 'lead1', 'lead2') WHERE seq = 2;",
    );
    assert_exit(&verify, 1, "broken at event 2");
}

#[test]
fn audit_verify_names_a_deleted_event() {
    let (_dir, verify) =
        tampered("DROP TRIGGER logbook_refuses_delete; DELETE FROM logbook WHERE seq = 5;");
    assert_exit(&verify, 1, "broken at event 5: event 5 is missing");
}

#[test]
fn audit_verify_names_reordered_events() {
    // Swap the contents of events 3 and 4, keeping their stored hashes with them.
    let (_dir, verify) = tampered(
        "DROP TRIGGER logbook_refuses_update; \
         UPDATE logbook SET seq = -4 WHERE seq = 4; UPDATE logbook SET seq = 4 WHERE seq = 3; UPDATE logbook SET seq = 3 WHERE seq = -4;",
    );
    assert_exit(&verify, 1, "broken at event 3");
}

#[test]
fn check_config_names_each_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let ok = passport(dir.path(), &["check-config"]).output().unwrap();
    assert!(ok.status.success());
    assert_stdout_has(&ok, "max_duration = \"12h\"");
    let bad = passport(dir.path(), &["check-config"])
        .env("PASSPORT_REQUESTS__MAX_DURATION", "13h")
        .env("PASSPORT_REQUESTS__TICKET_PATTERN", "(")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("requests.max_duration") && err.contains("requests.ticket_pattern"),
        "{err}"
    );
    std::fs::write(
        dir.path().join("passport.toml"),
        "[requests]\nmax_durration = \"2h\"\n",
    )
    .unwrap();
    let typo = passport(dir.path(), &["check-config"]).output().unwrap();
    assert_ne!(typo.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&typo.stderr).contains("max_durration"),
        "{}",
        String::from_utf8_lossy(&typo.stderr)
    );
    let missing = passport(dir.path(), &["check-config", "--config", "nope.toml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nope.toml does not exist"));
}

#[test]
fn check_config_takes_discord_from_the_environment_and_hides_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.Gabcde.very-secret-part";
    let discord = |c: &mut Command| {
        c.env("PASSPORT_PROVISIONER", "dry-run")
            .env("PASSPORT_DISCORD__BOT_TOKEN", token)
            .env("PASSPORT_DISCORD__APPLICATION_ID", "1200000000000000001")
            .env("PASSPORT_DISCORD__GUILD_ID", "1300000000000000001")
            .env("PASSPORT_DISCORD__APPROVALS_CHANNEL", "1500000000000000001")
            .env("PASSPORT_DISCORD__AUDIT_CHANNEL", "1500000000000000002")
            .env("PASSPORT_DISCORD__ROLES__APPROVERS", "1600000000000000001");
    };
    let mut c = passport(dir.path(), &["check-config"]);
    discord(&mut c);
    let ok = c.output().unwrap();
    let out = stdout(&ok);
    assert_success(&ok);
    assert!(
        out.contains("[discord]") && out.contains("mode = \"gateway\""),
        "{out}"
    );
    assert!(out.contains("bot_token = \"[redacted]\""), "{out}");
    assert!(!out.contains(token), "{out}");

    // Without [aws], a chat platform must ask for the dry run in writing.
    let mut pretend = passport(dir.path(), &["check-config"]);
    discord(&mut pretend);
    let pretend = pretend.env_remove("PASSPORT_PROVISIONER").output().unwrap();
    assert_eq!(pretend.status.code(), Some(2));
    let err = String::from_utf8_lossy(&pretend.stderr);
    assert!(
        err.contains("would only pretend to grant access")
            && err.contains("provisioner = \"dry-run\""),
        "{err}"
    );

    let mut both = passport(dir.path(), &["check-config"]);
    discord(&mut both);
    let both = both
        .env("PASSPORT_SLACK__BOT_TOKEN", "xoxb-1-2-abc")
        .env(
            "PASSPORT_SLACK__SIGNING_SECRET",
            "8f742231b10e8888abcd99yyyzzz85a5",
        )
        .env("PASSPORT_SLACK__APPROVALS_CHANNEL", "C0APPROVALS")
        .env("PASSPORT_SLACK__AUDIT_CHANNEL", "C0AUDIT")
        .output()
        .unwrap();
    assert_eq!(both.status.code(), Some(2));
    let err = String::from_utf8_lossy(&both.stderr);
    assert!(err.contains("both are configured"), "{err}");
    assert!(!err.contains(token), "{err}");
}

#[test]
fn migrate_creates_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let out = passport(dir.path(), &["migrate"]).output().unwrap();
    assert!(out.status.success());
    assert!(dir.path().join("passport.db").exists());
    let tables = sqlite(
        dir.path(),
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name;",
    );
    let tables = stdout(&tables);
    for t in ["chat_refs", "logbook", "outbox", "requests", "timers"] {
        assert!(tables.contains(t), "{tables}");
    }
}

/// The process is killed after the request committed but before any notice
/// went out (its output is closed, so every delivery fails). The next start
/// delivers each notice exactly once; the one after delivers nothing again.
#[test]
fn a_kill_between_commit_and_delivery_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = passport(dir.path(), &["console"]).spawn().unwrap();
    drop(first.stdout.take()); // every write to the console now fails
    let mut stdin = first.stdin.take().unwrap();
    stdin
        .write_all(b"dev1: /passport request i-0123456789abcdef0 2h ticket#9 crash\n")
        .unwrap();
    stdin.flush().unwrap();
    let stderr = BufReader::new(first.stderr.take().unwrap());
    let started = Instant::now();
    let mut saw_retry = false;
    for line in stderr.lines() {
        let line = line.unwrap();
        if line.contains("will retry") {
            saw_retry = true;
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no delivery attempt seen"
        );
    }
    assert!(saw_retry);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    drop(stdin);

    let second = run_with_input(dir.path(), &["console"], "");
    let text = stdout(&second);
    assert_eq!(text.matches("[card]").count(), 1, "{text}");
    assert_eq!(
        text.matches("[audit] AR-1 requested by dev1").count(),
        1,
        "{text}"
    );

    let third = run_with_input(dir.path(), &["console"], "");
    assert_eq!(stdout(&third), "", "nothing is delivered twice");
}

/// A checkpoint taken earlier catches what a chain check alone cannot: events
/// deleted from the end.
#[test]
fn audit_verify_checks_against_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run_with_input(dir.path(), &["console"], ROUND)
        .status
        .success());
    let head = sqlite(
        dir.path(),
        "SELECT seq || ':' || lower(hex(hash)) FROM logbook ORDER BY seq DESC LIMIT 1;",
    );
    let checkpoint = stdout(&head).trim().to_owned();
    let ok = passport(
        dir.path(),
        &["audit", "verify", "--checkpoint", &checkpoint],
    )
    .output()
    .unwrap();
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("matches"), "{}", stdout(&ok));
    let bad = passport(dir.path(), &["audit", "verify", "--checkpoint", "3:nothex"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not SEQ:HASH"));
    // Cut the last two events: the chain alone still verifies, the checkpoint does not.
    let cut = sqlite(dir.path(), "DROP TRIGGER logbook_refuses_delete; DELETE FROM logbook WHERE seq > (SELECT MAX(seq) - 2 FROM logbook);");
    assert!(cut.status.success());
    let plain = audit_verify(dir.path(), None);
    assert!(plain.status.success());
    let caught = passport(
        dir.path(),
        &["audit", "verify", "--checkpoint", &checkpoint],
    )
    .output()
    .unwrap();
    assert_exit(&caught, 1, "events were deleted from its end");
}

#[test]
fn ca_init_writes_a_private_key_and_show_prints_its_public_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca/key");
    let key_env = key.to_str().unwrap();
    let init = passport(dir.path(), &["ca", "init", "--key-path", key_env])
        .output()
        .unwrap();
    assert_success(&init);
    let line = stdout(&init).lines().last().unwrap().to_owned();
    assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // A second init never replaces the key.
    let again = passport(dir.path(), &["ca", "init", "--key-path", key_env])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));

    let show = passport(dir.path(), &["ca", "show"])
        .env("PASSPORT_SSH_CA__KEY_PATH", &key)
        .output()
        .unwrap();
    assert_success(&show);
    assert!(stdout(&show).contains(&line), "{}", stdout(&show));
}

#[test]
fn a_ca_key_readable_by_others_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ca-key");
    let init = passport(
        dir.path(),
        &["ca", "init", "--key-path", key.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(init.status.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut child = passport(dir.path(), &["serve"])
        .env("PASSPORT_SSH_CA__KEY_PATH", &key)
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("readable by group or others (mode 0644)"),
        "{err}"
    );
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn ca_rotate_creates_the_next_key_and_prints_the_steps() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    let new = dir.path().join("new");
    let init = passport(
        dir.path(),
        &["ca", "init", "--key-path", old.to_str().unwrap()],
    )
    .output()
    .unwrap();
    let old_line = stdout(&init).lines().last().unwrap().to_owned();
    let out = passport(
        dir.path(),
        &[
            "ca",
            "rotate",
            "--key-path",
            new.to_str().unwrap(),
            "--type",
            "ed25519",
        ],
    )
    .env("PASSPORT_SSH_CA__KEY_PATH", &old)
    .output()
    .unwrap();
    assert_success(&out);
    let text = stdout(&out);
    assert!(new.exists());
    assert!(
        text.contains("next_public_keys = [\"ssh-ed25519 AAAA"),
        "{text}"
    );
    let old_plain = old_line.rsplit_once(' ').unwrap().0;
    assert!(
        text.contains(&format!("previous_public_keys = [\"{old_plain}\"]")),
        "{text}"
    );
}

/// What Kubernetes injects into every pod of a namespace with a Service named
/// `passport` (service links).
const SERVICE_LINKS: [(&str, &str); 8] = [
    ("PASSPORT_SERVICE_HOST", "10.96.0.12"),
    ("PASSPORT_SERVICE_PORT", "8080"),
    ("PASSPORT_SERVICE_PORT_HTTP", "8080"),
    ("PASSPORT_PORT", "tcp://10.96.0.12:8080"),
    ("PASSPORT_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("PASSPORT_PORT_8080_TCP_PROTO", "tcp"),
    ("PASSPORT_PORT_8080_TCP_PORT", "8080"),
    ("PASSPORT_PORT_8080_TCP_ADDR", "10.96.0.12"),
];

#[test]
fn kubernetes_service_link_variables_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let check = passport(dir.path(), &["check-config"])
        .envs(SERVICE_LINKS)
        .output()
        .unwrap();
    assert_success(&check);
    // `serve` with no chat platform reads commands like `console`, then keeps
    // running its timers until stopped: it answers, and is then killed.
    let mut serve = passport(dir.path(), &["serve"]);
    serve.envs(SERVICE_LINKS);
    let mut child = serve.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"dev1: /passport help\n")
        .unwrap();
    let answered = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("[reply to dev1]"));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(answered, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_misspelt_variable_is_named_with_its_correction() {
    let dir = tempfile::tempdir().unwrap();
    let out = passport(dir.path(), &["check-config"])
        .envs(SERVICE_LINKS)
        .env("PASSPORT_SLACK_BOT_TOKEN", "xoxb-1-2-abc")
        .env("PASSPORT_SERVICE_HOSTNAME", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PASSPORT_SLACK_BOT_TOKEN")
            && err.contains("did you mean PASSPORT_SLACK__BOT_TOKEN?"),
        "{err}"
    );
    assert!(err.contains("PASSPORT_SERVICE_HOSTNAME"), "{err}");
    assert!(!err.contains("xoxb-1-2-abc"), "{err}");
}

#[test]
fn passport_config_names_the_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(
        etc.join("passport.toml"),
        "[requests]\nmax_duration = \"4h\"\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("other.toml"),
        "[requests]\nmax_duration = \"3h\"\n",
    )
    .unwrap();
    let from_env = passport(dir.path(), &["check-config"])
        .env("PASSPORT_CONFIG", etc.join("passport.toml"))
        .output()
        .unwrap();
    assert_success(&from_env);
    let out = stdout(&from_env);
    assert!(out.contains("max_duration = \"4h\""), "{out}");
    assert!(out.contains("etc/passport.toml"), "{out}");

    // --config on the command line wins over the variable.
    let flag = passport(dir.path(), &["check-config", "--config", "etc/other.toml"])
        .env("PASSPORT_CONFIG", etc.join("passport.toml"))
        .output()
        .unwrap();
    assert_stdout_has(&flag, "max_duration = \"3h\"");

    let missing = passport(dir.path(), &["check-config"])
        .env("PASSPORT_CONFIG", "nope.toml")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("nope.toml does not exist"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}

/// `passport backup` copies the database consistently while `serve` writes to
/// it, and verifies the copy; an auditor with only the copy and a
/// configuration without chat secrets verifies it too; `passport restore`
/// refuses while `serve` has the database open, and otherwise puts the copy
/// in place and keeps the old file.
#[test]
fn backup_copies_a_database_serve_is_writing_and_restore_puts_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let unlimited = [
        ("PASSPORT_REQUESTS__MAX_PENDING_PER_REQUESTER", "0"),
        ("PASSPORT_REQUESTS__COMMANDS_PER_MINUTE", "0"),
    ];
    let mut serve = passport(dir.path(), &["serve"])
        .envs(unlimited)
        .spawn()
        .unwrap();
    let mut stdin = serve.stdin.take().unwrap();
    let mut lines = BufReader::new(serve.stdout.take().unwrap()).lines();
    // The database exists once the first answer is out.
    stdin
        .write_all(b"dev1: /passport request i-0123456789abcdef0 1h ticket#1 first\n")
        .unwrap();
    assert!(lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("[reply to dev1]")));
    let reader = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let writer = std::thread::spawn(move || {
        for n in 2..400 {
            let line = format!(
                "dev{}: /passport request i-0123456789abcdef0 1h ticket#{n} load\nlead1: /passport approve AR-{n}\n",
                n % 7
            );
            if stdin.write_all(line.as_bytes()).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        stdin
    });
    let copy = dir.path().join("copy.db");
    let out = passport(dir.path(), &["backup", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_stdout_has(&out, "the copy's Logbook is intact");
    // A second backup never overwrites the first.
    let again = passport(dir.path(), &["backup", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    // While serve has the database open, restore refuses and changes nothing.
    let refused = passport(dir.path(), &["restore", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop `passport serve`"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let stdin = writer.join().unwrap();
    drop(stdin);
    serve.kill().unwrap();
    serve.wait().unwrap();
    reader.join().unwrap();

    // The auditor: the copy, and a configuration whose chat section has no secrets.
    let audit = dir.path().join("audit");
    std::fs::create_dir(&audit).unwrap();
    std::fs::write(
        audit.join("passport.toml"),
        "[slack]\nmode = \"http\"\napprovals_channel = \"#access\"\naudit_channel = \"#audit\"\n",
    )
    .unwrap();
    let verified = passport(&audit, &["audit", "verify"])
        .env("PASSPORT_STORE__PATH", &copy)
        .output()
        .unwrap();
    assert!(
        verified.status.success() && stdout(&verified).contains("Logbook intact"),
        "{}{}",
        stdout(&verified),
        String::from_utf8_lossy(&verified.stderr)
    );

    let restored = passport(dir.path(), &["restore", copy.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        restored.status.success(),
        "{}{}",
        stdout(&restored),
        String::from_utf8_lossy(&restored.stderr)
    );
    let kept = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("passport.db.before-restore-")
        });
    assert!(kept, "the replaced database is kept");
    let verified = audit_verify(dir.path(), None);
    assert!(verified.status.success(), "{}", stdout(&verified));
}

/// `[log] format = "json"`: every line on standard error is one JSON object
/// with the level, the message and the event's fields as keys.
#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = passport(dir.path(), &["serve"]);
    serve
        .env("PASSPORT_LOG__FORMAT", "json")
        .env("PASSPORT_LOG__LEVEL", "debug");
    let mut child = serve.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"dev1: /passport request i-0123456789abcdef0 1h ticket#1 x\nlead1: /passport approve AR-1\n")
        .unwrap();
    let answered = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("AR-1") && line.contains("lead1"));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(answered);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "serve logged nothing at debug");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
}

/// `passport outbox list` shows notices set aside with why, and `outbox
/// retry` puts them back in line for the running serve.
#[test]
fn outbox_list_and_retry_handle_set_aside_notices() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_with_input(
        dir.path(),
        &["console"],
        "dev1: /passport request i-0123456789abcdef0 1h ticket#1 x\n",
    );
    assert!(out.status.success());
    let empty = passport(dir.path(), &["outbox", "list"]).output().unwrap();
    assert_stdout_has(&empty, "no notice is set aside");
    let set_aside = sqlite(
        dir.path(),
        "UPDATE outbox SET delivered_at = NULL, dead_at = 1, attempts = 5, refusals = 5, last_error = 'channel_not_found' WHERE id = 1;",
    );
    assert!(set_aside.status.success());
    let listed = passport(dir.path(), &["outbox", "list"]).output().unwrap();
    let text = stdout(&listed);
    assert!(
        text.starts_with("1\t")
            && text.contains("after 5 attempt(s), 5 refused: channel_not_found"),
        "{text}"
    );
    let refused = passport(dir.path(), &["outbox", "retry"]).output().unwrap();
    assert!(!refused.status.success());
    let retried = passport(dir.path(), &["outbox", "retry", "1"])
        .output()
        .unwrap();
    assert_stdout_has(&retried, "1 notice(s) put back in line");
    let left = sqlite(
        dir.path(),
        "SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL;",
    );
    assert_eq!(stdout(&left).trim(), "0");
}

/// `serve` stops within its grace period whatever is queued: Slack's Web API
/// accepts connections and never answers, thousands of notices wait, and a
/// client trickles a request's head. What was not delivered stays in the
/// outbox for the next start.
#[test]
fn sigterm_stops_serve_within_the_grace_period_with_slack_stalled_and_a_backlog() {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let dir = tempfile::tempdir().unwrap();
    let migrated = passport(dir.path(), &["migrate"]).output().unwrap();
    assert_success(&migrated);
    // 2,000 audit lines and 1,000 direct messages to 1,000 people.
    let queued = sqlite(
        dir.path(),
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) \
         INSERT INTO outbox (surface, lane, request, notice, created_at, next_attempt_at) \
         SELECT 'slack', \
                CASE WHEN i <= 2000 THEN 'audit' ELSE 'user:U0P' || i END, NULL, \
                CASE WHEN i <= 2000 THEN json_object('type', 'audit', 'text', 'line ' || i) \
                     ELSE json_object('type', 'direct', 'user', 'U0P' || i, 'request', NULL, \
                                      'text', 'hello', 'actions', json_array()) END, \
                0, 0 FROM n;",
    );
    assert!(queued.status.success(), "{}", stdout(&queued));
    // Slack's Web API: accepts, reads, never answers.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}/api", stalled.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in stalled.incoming().flatten() {
            let mut reader = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            });
            held.push(s);
        }
    });
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = passport(dir.path(), &["serve"])
        .env("PASSPORT_PROVISIONER", "dry-run")
        .env("PASSPORT_SLACK__BOT_TOKEN", "xoxb-1-2-abc")
        .env(
            "PASSPORT_SLACK__SIGNING_SECRET",
            "8f742231b10e8888abcd99yyyzzz85a5",
        )
        .env("PASSPORT_SLACK__APPROVALS_CHANNEL", "C0APPROVALS")
        .env("PASSPORT_SLACK__AUDIT_CHANNEL", "C0AUDIT")
        .env("PASSPORT_SLACK__API_URL", &api)
        .env("PASSPORT_SLACK__USERGROUPS__APPROVERS", "S0APPROVERS")
        .env("PASSPORT_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("PASSPORT_SLACK__TEAM_ID", "T0TEAM")
        .env("PASSPORT_SLACK__APP_ID", "A0PASSPORT")
        .env("PASSPORT_HTTP__SHUTDOWN_GRACE", "2s")
        .env("PASSPORT_HTTP__HEADER_TIMEOUT", "120s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Up and delivering (into the stall), with a slow client connected.
    let started = Instant::now();
    let mut slow = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("serve never listened: {e}"),
        }
    };
    slow.write_all(b"POST /slack/commands HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if signalled.elapsed() > Duration::from_secs(2 + 5) {
            child.kill().unwrap();
            panic!("serve did not stop within the grace period (2s) and a margin");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let pending = sqlite(
        dir.path(),
        "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND dead_at IS NULL;",
    );
    assert_eq!(stdout(&pending).trim(), "3000", "nothing was lost");
}

/// A secret read from the configuration file or from a variable loses the one
/// line ending a secret file adds; anything else in it is refused naming the
/// setting, and no output ever shows it.
#[test]
fn secrets_from_the_file_or_a_variable_lose_one_line_ending_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let token = "xoxb-1-2-very-secret-token";
    let signing = "8f742231b10e8888verysecret85a5";
    let slack = |c: &mut Command| {
        c.env("PASSPORT_PROVISIONER", "dry-run")
            .env("PASSPORT_SLACK__APPROVALS_CHANNEL", "C0APPROVALS")
            .env("PASSPORT_SLACK__AUDIT_CHANNEL", "C0AUDIT")
            .env("PASSPORT_SLACK__USERGROUPS__APPROVERS", "S0APPROVERS");
    };
    let check = |file: &str, vars: &[(&str, String)]| {
        std::fs::write(dir.path().join("passport.toml"), file).unwrap();
        let mut c = passport(dir.path(), &["check-config"]);
        slack(&mut c);
        for (k, v) in vars {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        for secret in ["very-secret", "verysecret"] {
            assert!(!text.contains(secret), "a secret was shown: {text}");
        }
        (out.status.code(), text)
    };

    // From the file, with the line ending a secret file leaves.
    let (code, text) = check(
        &format!("[slack]\nbot_token = \"{token}\\n\"\nsigning_secret = \"{signing}\\r\\n\"\n"),
        &[],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("bot_token = \"[redacted]\""), "{text}");
    // From variables, likewise.
    let (code, text) = check(
        "",
        &[
            ("PASSPORT_SLACK__BOT_TOKEN", format!("{token}\r\n")),
            ("PASSPORT_SLACK__SIGNING_SECRET", format!("{signing}\n")),
        ],
    );
    assert_eq!(code, Some(0), "{text}");

    // Anything else is refused, naming the setting and what is wrong.
    let (code, text) = check(
        &format!("[slack]\nbot_token = \"xoxb-1-2-very\\u0007secret\"\nsigning_secret = \"{signing}\\n\\n\"\n"),
        &[],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("slack.bot_token: contains a control character"),
        "{text}"
    );
    assert!(
        text.contains("slack.signing_secret: contains a line break"),
        "{text}"
    );
    let (code, text) = check(
        "",
        &[
            ("PASSPORT_SLACK__BOT_TOKEN", "xoxb-1-2-very secret".into()),
            (
                "PASSPORT_SLACK__SIGNING_SECRET",
                "8f742231b10e8888\u{7}verysecret85a5".into(),
            ),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("slack.bot_token: contains a space"), "{text}");
    assert!(
        text.contains("slack.signing_secret: contains a control character"),
        "{text}"
    );
}

/// Slack, as `serve` reads it from the environment, answering nowhere: these
/// starts must stop before they talk to anyone.
fn slack_env(c: &mut Command) -> &mut Command {
    c.env("PASSPORT_SLACK__BOT_TOKEN", "xoxb-1-2-abc")
        .env(
            "PASSPORT_SLACK__SIGNING_SECRET",
            "8f742231b10e8888abcd99yyyzzz85a5",
        )
        .env("PASSPORT_SLACK__APPROVALS_CHANNEL", "C0APPROVALS")
        .env("PASSPORT_SLACK__AUDIT_CHANNEL", "C0AUDIT")
        .env("PASSPORT_SLACK__API_URL", "http://127.0.0.1:9/api")
        .env("PASSPORT_SLACK__USERGROUPS__APPROVERS", "S0APPROVERS")
        .env("PASSPORT_HTTP__LISTEN", "127.0.0.1:0")
}

/// Runs `passport <args>` with `env`, closing stdin at once, and gives up on
/// it after a minute.
fn refused_start(dir: &Path, args: &[&str], env: impl FnOnce(&mut Command)) -> (i32, String) {
    let mut c = passport(dir, args);
    env(&mut c);
    let mut child = c.spawn().unwrap();
    drop(child.stdin.take());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("passport {args:?} did not stop: it should refuse to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn serve_with_a_chat_platform_and_neither_aws_nor_the_dry_run_refuses_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = refused_start(dir.path(), &["serve"], |c| {
        slack_env(c).env_remove("PASSPORT_PROVISIONER");
    });
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("would only pretend to grant access")
            && out.contains("add [aws]")
            && out.contains("provisioner = \"dry-run\""),
        "{out}"
    );
    assert!(!dir.path().join("passport.db").exists(), "nothing started");
}

#[test]
fn console_and_serve_with_aws_and_no_approver_groups_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let aws = |c: &mut Command| {
        c.env("PASSPORT_AWS__REGION", "eu-west-1")
            .env("PASSPORT_AWS__ENDPOINT_URL", "http://127.0.0.1:9")
            .env_remove("PASSPORT_PROVISIONER");
    };
    // No [groups] at all: never the built-in demo approvers.
    let (code, out) = refused_start(dir.path(), &["console"], |c| aws(c));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("groups: [aws] provisions real users")
            && out.contains("add a [groups] section"),
        "{out}"
    );
    assert!(!out.contains("lead1>"), "no demo approvers: {out}");
    let (code, out) = refused_start(dir.path(), &["serve"], |c| {
        aws(c);
        slack_env(c).env_remove("PASSPORT_SLACK__USERGROUPS__APPROVERS");
    });
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("groups: [aws] provisions real users"), "{out}");

    // Admins configured but no approvers: the default rule's group is named.
    let (code, out) = refused_start(dir.path(), &["console"], |c| {
        aws(c);
        c.env("PASSPORT_GROUPS__ADMINS", "[\"boss\"]");
    });
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("policy.default.approvers: group \"approvers\" is not defined"),
        "{out}"
    );
    assert!(!dir.path().join("passport.db").exists(), "nothing started");
}

// ---------------------------------------------------------------------------
// A keyed Logbook and the checkpoint file

const KEY: &str = "0123456789abcdef0123456789abcdef-first";
const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210-second";

/// `passport ARGS` in `dir` with `[audit] key` set to `key`, when given.
fn keyed(dir: &Path, args: &[&str], key: Option<&str>) -> Command {
    let mut c = passport(dir, args);
    if let Some(key) = key {
        c.env("PASSPORT_AUDIT__KEY", key);
    }
    c
}

/// `passport audit verify` in `dir`, with `[audit] key` set to `key` when given.
fn audit_verify(dir: &Path, key: Option<&str>) -> Output {
    keyed(dir, &["audit", "verify"], key).output().unwrap()
}

/// A console round on a fresh database, with the Logbook keyed by `key` when given.
fn round(key: Option<&str>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = run_input(keyed(dir.path(), &["console"], key), ROUND);
    assert_success(&out);
    dir
}

/// Someone with write access to the database file but no key: changes the
/// actor of event `seq`, then recomputes the plain SHA-256 chain over every
/// event, so that each stored hash matches its event again. With
/// `drop_switch`, also removes the switch to a key and renumbers the events
/// after it, to pass the Logbook off as a plain hash chain.
fn rewrite_and_rehash(dir: &Path, seq: u64, actor: &str, drop_switch: bool) {
    let conn = rusqlite::Connection::open(dir.join("passport.db")).unwrap();
    conn.execute_batch("DROP TRIGGER logbook_refuses_update; DROP TRIGGER logbook_refuses_delete;")
        .unwrap();
    conn.execute(
        "UPDATE logbook SET actor = ?1 WHERE seq = ?2",
        rusqlite::params![actor, seq as i64],
    )
    .unwrap();
    if drop_switch {
        let switch: i64 = conn
            .query_row(
                "SELECT seq FROM logbook WHERE action = 'logbook_keyed'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute_batch(&format!(
            "DELETE FROM logbook WHERE seq = {switch};
             UPDATE logbook SET seq = -seq WHERE seq > {switch};
             UPDATE logbook SET seq = -seq - 1 WHERE seq < 0;"
        ))
        .unwrap();
    }
    passport::adapters::sqlite::rehash_plainly(&conn).unwrap();
}

#[test]
fn audit_verify_names_the_mode_of_the_logbook() {
    let plain = round(None);
    let out = audit_verify(plain.path(), None);
    assert_exit(&out, 0, "mode: plain hash chain (SHA-256)");

    let dir = round(Some(KEY));
    let out = audit_verify(dir.path(), Some(KEY));
    assert!(out.status.success(), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Logbook intact: 11 events, head "),
        "{text}"
    );
    // The first start with the key recorded the switch as the first event.
    assert!(
        text.contains("mode: keyed (HMAC-SHA256) since event 1, key id "),
        "{text}"
    );
    assert!(!text.contains(KEY), "the key is never shown");
    let export = passport(dir.path(), &["audit", "export"]).output().unwrap();
    let first = stdout(&export).lines().next().unwrap().to_owned();
    assert!(first.contains("\"action\":\"logbook_keyed\""), "{first}");
    assert!(!stdout(&export).contains(KEY));
    let shown = keyed(dir.path(), &["check-config"], Some(KEY))
        .output()
        .unwrap();
    assert!(shown.status.success());
    assert!(!stdout(&shown).contains(KEY), "{}", stdout(&shown));
    assert!(stdout(&shown).contains("key = \"[redacted]\""));
}

#[test]
fn a_rewritten_and_rehashed_logbook_is_caught_only_when_keyed() {
    // Plain: by construction, recomputing the chain hides the rewrite.
    let plain = round(None);
    rewrite_and_rehash(plain.path(), 3, "lead2", false);
    let out = audit_verify(plain.path(), None);
    assert!(out.status.success(), "{}", stdout(&out));

    // Keyed: the attacker cannot compute the keyed links.
    let dir = round(Some(KEY));
    rewrite_and_rehash(dir.path(), 3, "lead2", false);
    let out = audit_verify(dir.path(), Some(KEY));
    assert_exit(&out, 1, "Logbook broken at event 2: event 2 does not match");

    // Nor can the Logbook be passed off as a plain chain: the key's holder
    // expects keyed events.
    let dir = round(Some(KEY));
    rewrite_and_rehash(dir.path(), 3, "lead2", true);
    let out = audit_verify(dir.path(), Some(KEY));
    assert_exit(&out, 1, "the Logbook is a plain hash chain");
}

#[test]
fn audit_verify_without_the_key_checks_the_plain_part_and_says_what_it_could_not() {
    let dir = round(Some(KEY));
    let out = audit_verify(dir.path(), None);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Logbook NOT fully verified: events 2-11 (key id "),
        "{text}"
    );
    assert!(text.contains("PASSPORT_AUDIT__KEY"), "{text}");
    assert!(
        text.contains("mode: keyed (HMAC-SHA256) since event 1"),
        "{text}"
    );
    // A break in what can be checked is still found.
    let cut = sqlite(
        dir.path(),
        "DROP TRIGGER logbook_refuses_delete; DELETE FROM logbook WHERE seq = 5;",
    );
    assert!(cut.status.success());
    let out = audit_verify(dir.path(), None);
    assert_exit(&out, 1, "event 5 is missing");
}

#[test]
fn a_keyed_logbook_refuses_to_start_without_its_key_or_with_another() {
    let dir = round(Some(KEY));
    let line = "dev1: /passport list\n";
    let without = run_input(keyed(dir.path(), &["console"], None), line);
    assert_eq!(without.status.code(), Some(2));
    let err = String::from_utf8_lossy(&without.stderr).into_owned();
    assert!(err.contains("the Logbook is keyed with key id "), "{err}");
    assert!(err.contains("no key is set"), "{err}");
    assert!(err.contains("PASSPORT_AUDIT__KEY"), "{err}");

    let other = run_input(keyed(dir.path(), &["console"], Some(OTHER_KEY)), line);
    assert_eq!(other.status.code(), Some(2));
    let err = String::from_utf8_lossy(&other.stderr).into_owned();
    assert!(err.contains("the key set has id "), "{err}");
    assert!(err.contains("previous_keys"), "{err}");
    assert!(!err.contains(KEY) && !err.contains(OTHER_KEY));

    // A rotation: the new key, with the old one among the previous keys.
    let previous = format!("[\"{KEY}\"]");
    let mut rotate = keyed(dir.path(), &["console"], Some(OTHER_KEY));
    rotate.env("PASSPORT_AUDIT__PREVIOUS_KEYS", &previous);
    let rotated = run_input(rotate, ROUND);
    assert_success(&rotated);
    let mut verify = keyed(dir.path(), &["audit", "verify"], Some(OTHER_KEY));
    verify.env("PASSPORT_AUDIT__PREVIOUS_KEYS", &previous);
    let out = verify.output().unwrap();
    assert_exit(&out, 0, "; rotated at event 12 to key id ");
    // With the new key alone, the events of the old one go unchecked.
    let out = audit_verify(dir.path(), Some(OTHER_KEY));
    assert_exit(&out, 3, "events 2-12 (key id ");
}

/// Writes checkpoint lines for events `seqs` of the database in `dir`, as the
/// checkpoint job does.
fn checkpoint_file(dir: &Path, seqs: &[u64]) -> std::path::PathBuf {
    let mut text = String::new();
    for seq in seqs {
        let hash = sqlite(
            dir,
            &format!("SELECT lower(hex(hash)) FROM logbook WHERE seq = {seq};"),
        );
        text.push_str(&format!(
            "2026-12-01T10:00:00Z {seq} {}\n",
            stdout(&hash).trim()
        ));
    }
    let path = dir.join("checkpoints.log");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn audit_verify_checks_every_line_of_a_checkpoint_file() {
    let dir = round(None);
    let file = checkpoint_file(dir.path(), &[4, 10]);
    let file = file.to_str().unwrap();
    let ok = passport(dir.path(), &["audit", "verify", "--checkpoints-from", file])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(
        stdout(&ok)
            .contains("all 2 checkpoints match (the latest: event 10 at 2026-12-01T10:00:00Z)"),
        "{}",
        stdout(&ok)
    );

    // A rewrite with the chain recomputed: the chain alone verifies, the file does not.
    rewrite_and_rehash(dir.path(), 3, "lead2", false);
    assert!(audit_verify(dir.path(), None).status.success());
    let caught = passport(dir.path(), &["audit", "verify", "--checkpoints-from", file])
        .output()
        .unwrap();
    assert_exit(
        &caught,
        1,
        "line 1: checkpoint 4 of 2026-12-01T10:00:00Z: does not match",
    );

    // A truncation: the last events deleted.
    let dir = round(None);
    let file = checkpoint_file(dir.path(), &[4, 10]);
    let file = file.to_str().unwrap();
    let cut = sqlite(
        dir.path(),
        "DROP TRIGGER logbook_refuses_delete; DELETE FROM logbook WHERE seq > 8;",
    );
    assert!(cut.status.success());
    let caught = passport(dir.path(), &["audit", "verify", "--checkpoints-from", file])
        .output()
        .unwrap();
    assert_exit(
        &caught,
        1,
        "line 2: checkpoint 10 of 2026-12-01T10:00:00Z: missing: the Logbook ends at event 8",
    );

    // A line that is not a checkpoint is named.
    std::fs::write(dir.path().join("bad.log"), "# comment\n\n42 nothing\n").unwrap();
    let bad = passport(
        dir.path(),
        &["audit", "verify", "--checkpoints-from", "bad.log"],
    )
    .output()
    .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad.log line 3: is not TIME SEQ HASH"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// A fresh database on the throwaway PostgreSQL server, its address carrying
/// a password (the test server trusts loopback, so any password connects).
fn pg_url() -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = runtime.block_on(postgres::fresh_database());
    url.replacen("postgres@", "postgres:hunter2-Secret@", 1)
}

/// `passport` in `dir` on the PostgreSQL database `url`: no SQLite path.
fn passport_pg(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = passport(dir, args);
    c.env_remove("PASSPORT_STORE__PATH")
        .env("PASSPORT_STORE__URL", url);
    c
}

#[test]
fn console_audit_and_outbox_run_on_postgres_and_never_show_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url();

    let migrate = passport_pg(dir.path(), &url, &["migrate"])
        .output()
        .unwrap();
    assert_success(&migrate);
    assert_stdout_has(&migrate, "postgres://postgres:[redacted]@127.0.0.1:");

    let out = run_input(passport_pg(dir.path(), &url, &["console"]), ROUND);
    assert_success(&out);
    let text = stdout(&out);
    for expected in [
        "[reply to lead1] AR-1 approved",
        "[dry-run] AR-1 → i-0123456789abcdef0: Passport-GrantLinux username=pp-dev1-1",
        "[reply to dev1] AR-1 completed",
        "[dry-run] AR-1 → i-0123456789abcdef0: Passport-RevokeLinux username=pp-dev1-1",
        "[card updated] AR-1 · Completed",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(
        !dir.path().join("passport.db").exists(),
        "no SQLite file is made"
    );

    let verify = passport_pg(dir.path(), &url, &["audit", "verify"])
        .output()
        .unwrap();
    assert_exit(&verify, 0, "Logbook intact: 10 events, head ");
    let export = passport_pg(dir.path(), &url, &["audit", "export", "--request", "AR-1"])
        .output()
        .unwrap();
    assert_eq!(stdout(&export).lines().count(), 10);
    let outbox = passport_pg(dir.path(), &url, &["outbox", "list"])
        .output()
        .unwrap();
    assert_exit(&outbox, 0, "no notice is set aside");

    let config = passport_pg(dir.path(), &url, &["check-config"])
        .output()
        .unwrap();
    assert_exit(
        &config,
        0,
        "url = \"postgres://postgres:[redacted]@127.0.0.1:",
    );
    for run in [&migrate, &out, &verify, &config] {
        let all = format!("{}{}", stdout(run), String::from_utf8_lossy(&run.stderr));
        assert!(!all.contains("hunter2"), "the password was shown:\n{all}");
    }
}

#[test]
fn file_commands_on_postgres_refuse_and_name_what_to_use_instead() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url();
    let backup = dir.path().join("copy.db");
    for (args, instead) in [
        (vec!["backup", backup.to_str().unwrap()], "pg_dump"),
        (vec!["restore", backup.to_str().unwrap()], "pg_restore"),
    ] {
        let out = passport_pg(dir.path(), &url, &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains("[store] url names a PostgreSQL database"),
            "{err}"
        );
        assert!(err.contains(instead), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    assert!(!backup.exists());
}

#[test]
fn a_path_and_a_url_together_are_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let out = passport(dir.path(), &["check-config"])
        .env(
            "PASSPORT_STORE__URL",
            "postgres://passport:hunter2@db.invalid/passport",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store.path, store.url: both are set"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A migration of a newer Passport, as sqlx records it: a table of its own and
/// its row in `_sqlx_migrations`. The number is past any this Passport has.
const NEWER: i64 = 9_000;

/// This Passport's newest migration among `known`, read as Passport reads
/// its migrations (`sqlx::migrate!` on `migrations` or `migrations/postgres`).
fn newest_migration(known: sqlx::migrate::Migrator) -> i64 {
    known
        .iter()
        .map(|m| m.version)
        .max()
        .expect("no migrations")
}

/// The newer migration in SQLite's SQL (`checksum` a literal blob).
fn newer_migration_sqlite() -> String {
    format!(
        "CREATE TABLE from_a_newer_release (x INTEGER); \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({NEWER}, 'from a newer release', 1, X'00', 1);"
    )
}

/// The same in PostgreSQL's.
fn newer_migration_postgres() -> String {
    format!(
        "CREATE TABLE from_a_newer_release (x BIGINT); \
         INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({NEWER}, 'from a newer release', TRUE, decode('00', 'hex'), 1);"
    )
}

/// What a newer migration that older releases cannot run on adds.
fn breaks_older() -> String {
    format!("UPDATE passport_schema SET compatible_from = {NEWER};")
}

fn pg_execute(url: &str, sql: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    });
}

/// This Passport on a database a newer one has migrated: it runs when the
/// newer migrations say older releases can, warning, and applies nothing; it
/// refuses to start, naming the migrations and what to run, when they say
/// it cannot. `run` runs `passport` with the arguments on the database,
/// `apply` runs SQL on it, `last` is this Passport's newest migration.
fn an_older_release_on_a_newer_database(
    run: &dyn Fn(&[&str]) -> Output,
    apply: &dyn Fn(&str),
    newer: &str,
    last: i64,
) {
    assert_success(&run(&["migrate"]));
    apply(newer);

    let migrated = run(&["migrate"]);
    assert_success(&migrated);
    let warned = String::from_utf8_lossy(&migrated.stderr).into_owned();
    assert!(
        warned.contains(&format!(
            "migrations from a newer Passport (up to {NEWER}; this one knows up to {last})"
        )),
        "{warned}"
    );
    let round = run(&["console"]);
    assert_success(&round);
    assert_stdout_has(&round, "AR-1");
    let verified = run(&["audit", "verify"]);
    assert_success(&verified);

    apply(&breaks_older());
    for args in [&["migrate"][..], &["console"], &["serve"]] {
        let refused = run(args);
        let err = String::from_utf8_lossy(&refused.stderr).into_owned();
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "the database is at migration {NEWER}, applied by a newer Passport, and this Passport knows migrations up to {last}: releases older than migration {NEWER} cannot run on it: run a Passport with migration {NEWER} or later"
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }
    let doctor = run(&["doctor"]);
    assert_eq!(doctor.status.code(), Some(1), "{}", stdout(&doctor));
    assert_stdout_has(
        &doctor,
        &format!("releases older than migration {NEWER} cannot run on it: run a Passport with migration {NEWER} or later"),
    );
    // Not taken for a connection problem.
    assert!(
        !stdout(&doctor).contains("cannot be opened"),
        "{}",
        stdout(&doctor)
    );
}

#[test]
fn an_older_release_runs_on_a_newer_sqlite_database_only_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        if args == ["console"] {
            run_with_input(dir.path(), args, ROUND)
        } else {
            passport(dir.path(), args).output().unwrap()
        }
    };
    let apply = |sql: &str| assert!(sqlite(dir.path(), sql).status.success(), "{sql}");
    an_older_release_on_a_newer_database(
        &run,
        &apply,
        &newer_migration_sqlite(),
        newest_migration(sqlx::migrate!("./migrations")),
    );
}

#[test]
fn an_older_release_runs_on_a_newer_postgres_database_only_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg_url();
    let run = |args: &[&str]| {
        let command = passport_pg(dir.path(), &url, args);
        if args == ["console"] {
            run_input(command, ROUND)
        } else {
            let mut command = command;
            command.output().unwrap()
        }
    };
    let apply = |sql: &str| pg_execute(&url, sql);
    an_older_release_on_a_newer_database(
        &run,
        &apply,
        &newer_migration_postgres(),
        newest_migration(sqlx::migrate!("./migrations/postgres")),
    );
}
