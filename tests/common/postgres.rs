//! A throwaway PostgreSQL server for tests: `initdb` into a temporary
//! directory, `postgres` on a free loopback port with its socket in that
//! directory, one server per test binary and a fresh database per test.
//!
//! The server's binaries are found through `PASSPORT_PG_BIN` (the folder
//! holding `initdb` and `postgres`), else the newest `/usr/lib/postgresql/*/bin`,
//! else `PATH`. PostgreSQL refuses to run as root, so as root it runs as the
//! `postgres` system user (else `nobody`), with the directory given to it.
//!
//! [`durable_server`] is one that keeps its data as a managed database does
//! (fsync, full page writes and synchronous commit on, PostgreSQL's
//! defaults), for benchmarks: what a commit costs there is part of the figure.
//! It starts as a database that has run for a while, with write-ahead log
//! segments to reuse ([`PgServer::warm_up`]).
//!
//! A shell watches the server: it holds the read end of a pipe whose write
//! end only this process holds, and when this process exits (however it
//! exits, the pipe closing is what it waits for), it stops the server and
//! removes the directory. A server that outlived its tests would otherwise
//! be left behind by every test binary, whose statics are never dropped.
//! Through the same pipe a test may stop and start again a server of its
//! own ([`dedicated`]), on the same port and data: PostgreSQL restarted
//! under a running Passport.

// Each test binary that includes this file uses only part of it.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};

/// The server shared by the tests of this binary.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    /// The watching shell; its standard input closes with this process.
    watcher: Mutex<Option<Child>>,
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut child) = watcher {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

static SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
// The durable server is for the benchmarks, which include this file too.
static DURABLE_SERVER: OnceLock<Result<PgServer, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// How a server keeps its data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keeping {
    /// Nothing survives a crash of the machine: fast tests.
    Throwaway,
    /// Every commit is on disk before it is answered, as on a managed database.
    Durable,
}

/// The server of this test binary, started on first use.
pub fn server() -> &'static PgServer {
    match SERVER.get_or_init(|| start(Keeping::Throwaway)) {
        Ok(server) => server,
        Err(e) => panic!("cannot start a PostgreSQL server for the tests: {e}"),
    }
}

/// A server with PostgreSQL's durable defaults (fsync, full_page_writes and
/// synchronous_commit on), started on first use: for benchmarks.
pub fn durable_server() -> &'static PgServer {
    match DURABLE_SERVER.get_or_init(|| start(Keeping::Durable)) {
        Ok(server) => server,
        Err(e) => panic!("cannot start a PostgreSQL server: {e}"),
    }
}

/// The address of a new, empty database on the shared server.
pub async fn fresh_database() -> String {
    server().fresh_database().await
}

/// A server of the calling test's own, which it may stop and start again
/// ([`PgServer::stop`], [`PgServer::start_again`]); stopped and removed when
/// dropped.
pub fn dedicated() -> PgServer {
    start(Keeping::Throwaway)
        .unwrap_or_else(|e| panic!("cannot start a PostgreSQL server for the test: {e}"))
}

fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("PASSPORT_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
            return Ok(dir);
        }
        return Err(format!(
            "PASSPORT_PG_BIN={} holds no initdb and postgres",
            dir.display()
        ));
    }
    // The newest installed major version.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
        .ok_or_else(|| {
            "no PostgreSQL server binaries: install PostgreSQL (apt-get install postgresql) \
             or set PASSPORT_PG_BIN to the folder holding initdb and postgres"
                .to_owned()
        })
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Who the server runs as: nobody in particular unless this process is
/// root, then an unprivileged user (uid, gid), to whom `dir` is given.
fn run_as(dir: &Path) -> Result<Option<(String, String)>, String> {
    if output(Command::new("id").arg("-u"))? != "0" {
        return Ok(None);
    }
    let user = if output(Command::new("id").args(["-u", "postgres"])).is_ok() {
        "postgres"
    } else {
        "nobody"
    };
    let uid = output(Command::new("id").args(["-u", user]))?;
    let gid = output(Command::new("id").args(["-g", user]))?;
    output(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(dir),
    )?;
    Ok(Some((uid, gid)))
}

/// `program` from `bin`, as `user` when one is given.
fn command(bin: &Path, program: &str, user: &Option<(String, String)>) -> Command {
    match user {
        None => Command::new(bin.join(program)),
        Some((uid, gid)) => {
            let mut cmd = Command::new("setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg(bin.join(program));
            cmd
        }
    }
}

fn free_port() -> Result<u16, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn start(keeping: Keeping) -> Result<PgServer, String> {
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("passport-pg-")
        .tempdir()
        .map_err(|e| format!("no temporary directory: {e}"))?
        // Removed by the watching shell once the server has stopped.
        .keep();
    let user = run_as(&dir)?;
    let data = dir.join("data");
    output(
        command(&bin, "initdb", &user)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .current_dir(&dir),
    )?;
    let port = free_port()?;
    let mut server = command(&bin, "postgres", &user);
    server
        .arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
        ]);
    match keeping {
        // Nothing here must survive a crash of the machine.
        Keeping::Throwaway => {
            server.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        // Keeps the log segments `warm_up` leaves for reuse.
        Keeping::Durable => {
            server.args(["-c", &format!("min_wal_size={}MB", WARM_SEGMENTS * 16)]);
        }
    }
    let program = server.get_program().to_owned();
    let args: Vec<_> = server.get_args().map(|a| a.to_owned()).collect();
    // `stop` stops the server as `pg_ctl stop -m fast` would (SIGINT: open
    // transactions roll back, connections are cut), `start` starts it again;
    // the end of input stops it for good and removes its directory.
    let script = r#"
        run() { "$@" >>"$PG_DIR/server.log" 2>&1 & pid=$!; }
        run "$@"
        while read -r line; do
            case "$line" in
                stop) kill -INT "$pid" 2>/dev/null; wait "$pid" ;;
                start) run "$@" ;;
            esac
        done
        kill -INT "$pid" 2>/dev/null
        wait "$pid"
        rm -rf "$PG_DIR"
    "#;
    let watcher = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(program)
        .args(args)
        .env("PG_DIR", &dir)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let server = PgServer {
        port,
        dir,
        watcher: Mutex::new(Some(watcher)),
    };
    server.until_listening(true)?;
    if keeping == Keeping::Durable {
        server.warm_up(&bin, &user)?;
    }
    Ok(server)
}

/// How many write-ahead log segments (16 MiB each) a durable server has ready
/// for reuse before a benchmark writes: more than a benchmark's run fills.
const WARM_SEGMENTS: u32 = 48;

impl PgServer {
    /// Tells the watching shell `line`.
    fn tell(&self, line: &str) {
        use std::io::Write;
        let mut watcher = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        let stdin = watcher.as_mut().and_then(|w| w.stdin.as_mut());
        let stdin = stdin.unwrap_or_else(|| panic!("the server's watcher is gone"));
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("cannot tell the server's watcher {line:?}: {e}"));
    }

    /// Waits (30 s at most) until the port takes connections, or refuses
    /// them and the server has removed its pid file.
    fn until_listening(&self, listening: bool) -> Result<(), String> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            if up == listening && (listening || !pid_file.exists()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let what = if listening { "listen" } else { "stop" };
                return Err(format!(
                    "postgres did not {what} on port {} within 30 s: {}",
                    self.port,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (a fast shutdown) and returns once it has stopped.
    pub fn stop(&self) {
        self.tell("stop");
        self.until_listening(false)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts the stopped server again, on the same port and data, and
    /// returns once it listens.
    pub fn start_again(&self) {
        self.tell("start");
        self.until_listening(true).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Leaves the server as a database that has run for a while: with
    /// [`WARM_SEGMENTS`] write-ahead log segments to reuse. A new cluster has
    /// none, so the commit that first writes into each new segment (every 2 s
    /// at 2,000 acknowledgements a second) waits while the server fills its
    /// 16 MiB with zeros and syncs it, holding every lock its transaction
    /// holds. A server past its first checkpoints renames old segments
    /// instead, as this leaves it: segments filled, then a checkpoint that
    /// keeps them (`min_wal_size`) for reuse.
    fn warm_up(&self, bin: &Path, user: &Option<(String, String)>) -> Result<(), String> {
        let mut sql = String::from("CREATE TABLE IF NOT EXISTS wal_warm_up (x int);\n");
        for _ in 0..WARM_SEGMENTS {
            sql.push_str("INSERT INTO wal_warm_up VALUES (1);\nSELECT pg_switch_wal();\n");
        }
        sql.push_str("CHECKPOINT;\nDROP TABLE wal_warm_up;\n");
        // Statement by statement, each its own transaction.
        let script = self.dir.join("warm_up.sql");
        std::fs::write(&script, sql).map_err(|e| format!("cannot write {script:?}: {e}"))?;
        // The server may still be starting when it first listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.psql(bin, user, &script) {
                Err(e) if e.contains("starting up") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                done => return done.map_err(|e| format!("cannot warm up the server: {e}")),
            }
        }
    }

    /// Runs the SQL file `script` with `psql` on the `postgres` database.
    fn psql(
        &self,
        bin: &Path,
        user: &Option<(String, String)>,
        script: &Path,
    ) -> Result<(), String> {
        let mut psql = command(bin, "psql", user);
        psql.arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(script)
            .current_dir(&self.dir);
        output(&mut psql).map(drop)
    }

    /// The server's log so far, for failures.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a new, empty database and answers its address.
    pub async fn fresh_database(&self) -> String {
        let name = format!(
            "passport_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        // The server may still be starting when it first listens.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut admin = loop {
            match PgConnection::connect(&self.url("postgres")).await {
                Ok(conn) => break conn,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot connect to the test server: {e}\n{}", self.log()),
            }
        };
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = admin.close().await;
        self.url(&name)
    }
}
