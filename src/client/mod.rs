//! The `passport` client: the half of the binary that runs on an engineer's
//! machine. It signs in through chat, asks for and manages access over
//! `/api/v1`, and connects to instances over AWS Session Manager with the
//! system `ssh`/`scp` and AWS's `session-manager-plugin`. It needs no
//! database and no server configuration.
//!
//! - `store`: the client directory and its private files;
//! - `api`: the HTTP client of `/api/v1`;
//! - `choose`: which request and instance a command means;
//! - `ssh`: keys, certificates, ssh options and `ssh-config` blocks;
//! - `ssm`: scoped credentials, StartSession and the plugin's contract.
//!
//! **Invariant:** the client never writes the token, credentials or private
//! keys readable by others (files are created 0600 in 0700 directories), and
//! never prints or logs them.

pub mod api;
pub mod choose;
pub mod ssh;
pub mod ssm;
pub mod store;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};
use secrecy::SecretString;

use self::api::{parse_server, Api, ApiError};
use self::choose::{Choice, Purpose};
use self::ssh::{Identity, Target};
use self::ssm::{SessionError, SessionRequest};
use self::store::{ClientDir, Session};
use crate::api::{
    CertificateRequest, Extend, InstanceView, LoginPoll, LoginStart, LoginStatus, NewRequest,
    RequestView,
};
use crate::app::retry::{retry, Backoff, RetryPolicy, Verdict};
use crate::domain::time::Span;
use crate::domain::time::Timestamp;
use crate::domain::values::RequestId;

pub const CLIENT_VERSION: &str = concat!("passport/", env!("CARGO_PKG_VERSION"));

/// The client directory: `dir` when given, else the platform's default.
pub fn client_dir(dir: Option<PathBuf>) -> anyhow::Result<ClientDir> {
    match dir {
        Some(dir) => Ok(ClientDir::new(dir)),
        None => store::default_dir()
            .map(ClientDir::new)
            .map_err(anyhow::Error::msg),
    }
}

/// Text from the server, without control characters that could move the
/// terminal's cursor or change its title.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn signed_in(dir: &ClientDir) -> anyhow::Result<(Session, Api)> {
    let session = dir
        .load_session()
        .with_context(|| format!("cannot read {}", dir.session_path().display()))?
        .ok_or_else(|| {
            anyhow!("you are not signed in: run `passport login https://passport.example.com` with your Passport's address")
        })?;
    let api = Api::new(&session.server, Some(session.token.clone()))?;
    Ok((session, api))
}

fn host_name() -> String {
    let from_env = std::env::var("COMPUTERNAME").ok();
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_command = || {
        std::process::Command::new("hostname")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    from_env
        .or(from_proc)
        .or_else(from_command)
        .map(|h| clean(h.trim()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

// ---------------------------------------------------------------------------
// Signing in

/// `passport login URL`.
pub async fn login(dir: &ClientDir, server: &str) -> anyhow::Result<i32> {
    let server = parse_server(server).map_err(anyhow::Error::msg)?;
    let api = Api::new(&server, None)?;
    let started = api
        .login_start(&LoginStart {
            host: host_name(),
            client: CLIENT_VERSION.to_owned(),
        })
        .await?;
    let code = clean(&started.code);
    println!("Your sign-in code: {code}");
    println!(
        "Type `/passport login {code}` in Slack or Discord, then Confirm on the message Passport sends you (the code works until {}).",
        clean(&started.expires_at)
    );
    println!("Waiting for your confirmation…");
    let interval = Duration::from_secs(started.poll_interval_seconds.clamp(1, 30));
    // The server says when the code ends; a minute more covers clock skew.
    let deadline = Timestamp::parse_rfc3339(&started.expires_at)
        .map(|t| t.as_millis() + 60_000)
        .unwrap_or(now_ms() + 6 * 60_000);
    let poll = LoginPoll {
        login_id: started.login_id.clone(),
        poll_secret: started.poll_secret.clone(),
    };
    // An unreachable server is asked again, up to 5 calls in all, waiting the
    // interval, doubled per failure, at most 30 s; anything else it says stands.
    let unreachable = RetryPolicy {
        backoff: Backoff::new(
            Span::from_secs(i64::try_from(interval.as_secs()).unwrap_or(30)),
            Span::from_secs(30),
        ),
        attempts: Some(5),
        jitter: true,
    };
    loop {
        tokio::time::sleep(interval).await;
        let status = retry(
            "asking whether the sign-in was confirmed",
            unreachable,
            || api.login_poll(&poll),
            |e| match e {
                ApiError::Unreachable { .. } => Verdict::Backoff,
                _ => Verdict::Stop,
            },
        )
        .await;
        match status {
            Ok(LoginStatus::Pending { .. }) => {}
            Ok(LoginStatus::Confirmed {
                token,
                expires_at,
                user,
            }) => {
                let session = Session {
                    server: server.clone(),
                    token: SecretString::from(token),
                    expires_at: expires_at.clone(),
                    user: user.clone(),
                };
                dir.save_session(&session).with_context(|| {
                    format!("cannot save the sign-in in {}", dir.root().display())
                })?;
                println!(
                    "Signed in to {server} as {} ({}) until {}.",
                    clean(&user.handle),
                    clean(&user.surface),
                    clean(&expires_at)
                );
                return Ok(0);
            }
            Err(ApiError::Gone(message)) => bail!(
                "the sign-in did not complete: {}: run `passport login {server}` for a new code",
                clean(&message)
            ),
            Err(e) => return Err(e.into()),
        }
        if now_ms() > deadline {
            bail!("the code {code} was not confirmed in time: run `passport login {server}` for a new one");
        }
    }
}

/// `passport logout`: ends the token on the server and deletes it here (also
/// when the server cannot be reached).
pub async fn logout(dir: &ClientDir) -> anyhow::Result<i32> {
    let Some(session) = dir.load_session().ok().flatten() else {
        dir.forget_session()
            .with_context(|| format!("cannot delete files in {}", dir.root().display()))?;
        println!("You were not signed in.");
        return Ok(0);
    };
    let outcome = match Api::new(&session.server, Some(session.token.clone())) {
        Ok(api) => api.logout().await,
        Err(e) => Err(e),
    };
    dir.forget_session()
        .with_context(|| format!("cannot delete {}", dir.session_path().display()))?;
    match outcome {
        Ok(()) | Err(ApiError::SignedOut { .. }) => {
            println!("Signed out of {}.", session.server);
            Ok(0)
        }
        Err(e) => {
            println!(
                "Deleted the sign-in on this machine, but could not tell the server ({e}). The token stays valid there until {} unless you type `/passport logout` in chat.",
                clean(&session.expires_at)
            );
            Ok(1)
        }
    }
}

/// `passport whoami`.
pub async fn whoami(dir: &ClientDir) -> anyhow::Result<i32> {
    let (session, api) = signed_in(dir)?;
    let me = api.me().await?;
    println!(
        "{} ({} user {}) at {}, signed in until {}",
        clean(&me.handle),
        clean(&me.surface),
        clean(&me.id),
        session.server,
        clean(&me.token_expires_at)
    );
    Ok(0)
}

// ---------------------------------------------------------------------------
// Requests

/// Splits `i-… [i-…] [2h] TICKET reason words…` into the API's fields, as the
/// chat grammar reads them; the server checks every field.
pub fn new_request(words: &[String]) -> Result<NewRequest, String> {
    let n = words
        .iter()
        .take_while(|w| w.starts_with("i-") || w.starts_with(','))
        .count();
    if n == 0 {
        return Err(
            "start with the instances: `passport request i-0123456789abcdef0 2h ticket#123 reason`"
                .to_owned(),
        );
    }
    let instances: Vec<String> = words[..n]
        .iter()
        .flat_map(|w| w.split(','))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut rest = words[n..].iter();
    let mut next = rest.next();
    let duration = match next {
        Some(w) if Span::parse(w).is_some() => {
            let d = w.clone();
            next = rest.next();
            d
        }
        _ => String::new(),
    };
    let ticket = next.cloned().ok_or(
        "a ticket is required: `passport request i-0123456789abcdef0 2h ticket#123 reason`",
    )?;
    let reason = rest.cloned().collect::<Vec<_>>().join(" ");
    Ok(NewRequest {
        instances,
        duration,
        ticket,
        reason: (!reason.is_empty()).then_some(reason),
    })
}

fn print_request(r: &RequestView) {
    if let Some(message) = &r.message {
        println!("{}", clean(message));
    }
    println!(
        "{}  {}{}  as {}",
        clean(&r.id),
        clean(&r.state),
        r.expires_at
            .as_deref()
            .map(|e| format!(" until {}", clean(e)))
            .unwrap_or_default(),
        clean(&r.username)
    );
    for i in &r.instances {
        println!(
            "    {}  {}  {}",
            clean(&choose::instance_label(i)),
            clean(&i.platform),
            clean(&i.status)
        );
    }
    println!(
        "    {} for {}{}",
        clean(&r.ticket),
        clean(&r.duration),
        r.reason
            .as_deref()
            .map(|x| format!(": {}", clean(x)))
            .unwrap_or_default()
    );
    let mut allows = Vec::new();
    if r.allows.ssh {
        allows.push("ssh");
    }
    if r.allows.port_forwarding {
        allows.push("port forwarding");
    }
    if r.allows.remote_port_forwarding {
        allows.push("forwarding to other hosts");
    }
    if !allows.is_empty() {
        println!("    allows {}", allows.join(", "));
    }
}

/// `passport request …`.
pub async fn request(dir: &ClientDir, words: &[String]) -> anyhow::Result<i32> {
    let new = new_request(words).map_err(anyhow::Error::msg)?;
    let (_, api) = signed_in(dir)?;
    let view = api.create(&new).await?;
    print_request(&view);
    Ok(0)
}

fn parse_request_id(text: &str) -> anyhow::Result<RequestId> {
    RequestId::parse(text).map_err(|e| anyhow!("{e}"))
}

/// `passport list`: the person's requests, newest first as the server sends
/// them. Files of requests that ended are deleted here.
pub async fn list(dir: &ClientDir) -> anyhow::Result<i32> {
    let (_, api) = signed_in(dir)?;
    let all = api.requests().await?.requests;
    prune(dir, &all);
    if all.is_empty() {
        println!("You have no requests. Ask with `passport request i-… 1h TICKET reason`.");
    }
    for r in &all {
        let instances: Vec<String> = r.instances.iter().map(choose::instance_label).collect();
        println!(
            "{:<8} {:<12} {:<22} {}",
            clean(&r.id),
            clean(&r.state),
            clean(r.expires_at.as_deref().unwrap_or("-")),
            clean(&instances.join(", "))
        );
    }
    Ok(0)
}

fn prune(dir: &ClientDir, all: &[RequestView]) {
    let keep: Vec<RequestId> = all
        .iter()
        .filter(|r| choose::is_active(r))
        .filter_map(|r| RequestId::parse(&r.id).ok())
        .collect();
    let _ = dir.forget_requests_except(&keep);
}

/// Asks on the terminal, or explains the choices when there is none.
fn ask<T: Clone>(question: &str, choices: &[(T, String)], how: &str) -> anyhow::Result<T> {
    let listed: Vec<String> = choices.iter().map(|(_, l)| clean(l)).collect();
    if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
        bail!("{question} {}: {how}", listed.join("; "));
    }
    let mut err = std::io::stderr();
    writeln!(err, "{question}")?;
    for (n, label) in listed.iter().enumerate() {
        writeln!(err, "  {}) {label}", n + 1)?;
    }
    write!(err, "number: ")?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    line.trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|n| choices.get(n))
        .map(|(v, _)| v.clone())
        .ok_or_else(|| anyhow!("no choice made: {how}"))
}

/// The request a command means, fetched.
async fn resolve_request(
    api: &Api,
    named: Option<RequestId>,
    instance: Option<&str>,
    how: &str,
) -> anyhow::Result<RequestView> {
    if let Some(id) = named {
        return Ok(api.request(id).await?);
    }
    let all = api.requests().await?.requests;
    let id = match choose::request(&all, None, instance).map_err(anyhow::Error::msg)? {
        Choice::One(id) => id,
        Choice::Ask { question, choices } => ask(&question, &choices, how)?,
    };
    all.into_iter()
        .find(|r| r.id == id.to_string())
        .ok_or_else(|| anyhow!("{id} is not among your requests"))
}

/// The one request a bare `show`/`extend`/`complete`/`cancel` means.
async fn implied_request(
    api: &Api,
    typed: Option<&str>,
    states: &[&str],
    command: &str,
) -> anyhow::Result<RequestId> {
    if let Some(text) = typed {
        return parse_request_id(text);
    }
    let all = api.requests().await?.requests;
    let fitting: Vec<&RequestView> = all
        .iter()
        .filter(|r| states.contains(&r.state.as_str()))
        .collect();
    match fitting.as_slice() {
        [one] => parse_request_id(&one.id),
        [] => bail!(
            "you have no {} request: name one, e.g. `passport {command} AR-12` (`passport list` shows them)",
            states.join(" or ")
        ),
        several => bail!(
            "you have several {} requests ({}): name one, e.g. `passport {command} {}`",
            states.join(" or "),
            several.iter().map(|r| clean(&r.id)).collect::<Vec<_>>().join(", "),
            clean(&several[0].id)
        ),
    }
}

/// `passport show [AR-n]`.
pub async fn show(dir: &ClientDir, typed: Option<&str>) -> anyhow::Result<i32> {
    let (_, api) = signed_in(dir)?;
    let id = implied_request(&api, typed, &["active"], "show").await?;
    print_request(&api.request(id).await?);
    Ok(0)
}

/// `passport extend [AR-n] DURATION`.
pub async fn extend(dir: &ClientDir, args: &[String]) -> anyhow::Result<i32> {
    let (typed, duration) = match args {
        [d] => (None, d),
        [id, d] => (Some(id.as_str()), d),
        _ => bail!("use `passport extend [AR-n] 1h`"),
    };
    let (_, api) = signed_in(dir)?;
    let id = implied_request(&api, typed, &["active"], "extend").await?;
    let view = api
        .extend(
            id,
            &Extend {
                duration: duration.clone(),
            },
        )
        .await?;
    print_request(&view);
    Ok(0)
}

/// `passport complete [AR-n]` and `passport cancel [AR-n]`.
pub async fn finish(dir: &ClientDir, typed: Option<&str>, action: &str) -> anyhow::Result<i32> {
    let (_, api) = signed_in(dir)?;
    let states: &[&str] = if action == "cancel" {
        &["pending", "approved"]
    } else {
        &["active"]
    };
    let id = implied_request(&api, typed, states, action).await?;
    let view = api.act(id, action).await?;
    let _ = dir.forget_request(id);
    print_request(&view);
    Ok(0)
}

// ---------------------------------------------------------------------------
// Connecting

/// `[AR-n] [rest…]`: the request id when the first word is one.
fn split_request(words: &[String]) -> anyhow::Result<(Option<RequestId>, &[String])> {
    match words.first() {
        Some(first) if first.to_ascii_uppercase().starts_with("AR-") => {
            Ok((Some(parse_request_id(first)?), &words[1..]))
        }
        _ => Ok((None, words)),
    }
}

async fn pick_instance(
    view: &RequestView,
    typed: Option<&str>,
    purpose: Purpose,
    how: &str,
) -> anyhow::Result<InstanceView> {
    match choose::instance(view, typed, purpose).map_err(anyhow::Error::msg)? {
        Choice::One(i) => Ok(i),
        Choice::Ask { question, choices } => ask(&question, &choices, how),
    }
}

fn secs(rfc3339: Option<&str>) -> Option<u64> {
    rfc3339
        .and_then(Timestamp::parse_rfc3339)
        .and_then(|t| u64::try_from(t.as_millis() / 1000).ok())
}

/// Whether a certificate refusal means the server has no SSH CA: the server
/// answers 403 saying "this Passport has no SSH certificate authority".
fn means_no_ca(e: &ApiError) -> bool {
    match e {
        ApiError::Refused { status, message } => {
            matches!(status, 403 | 501)
                && message
                    .to_ascii_lowercase()
                    .contains("no ssh certificate authority")
        }
        _ => false,
    }
}

/// The request's key and a certificate that covers the access, or the
/// person's own key when the server has no SSH CA.
async fn identity(api: &Api, dir: &ClientDir, view: &RequestView) -> anyhow::Result<Identity> {
    let id = parse_request_id(&view.id)?;
    let rdir = dir
        .ensure_request_dir(id)
        .with_context(|| format!("cannot create {}", dir.request_dir(id).display()))?;
    let public = ssh::ensure_key(&rdir, id).map_err(anyhow::Error::msg)?;
    let key = rdir.join(ssh::KEY_FILE);
    let certificate = rdir.join(ssh::CERT_FILE);
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    if ssh::cached_certificate_fits(
        &rdir,
        &public,
        &view.username,
        now,
        secs(view.expires_at.as_deref()),
    ) {
        return Ok(Identity::Certificate { key, certificate });
    }
    match api
        .certificate(id, &CertificateRequest { public_key: public })
        .await
    {
        Ok(issued) => {
            ssh::save_certificate(&rdir, &issued.certificate).map_err(anyhow::Error::msg)?;
            Ok(Identity::Certificate { key, certificate })
        }
        Err(e) if means_no_ca(&e) => {
            eprintln!("passport: this Passport server has no SSH CA, so ssh uses your own key (the one registered with `/passport key set`)");
            Ok(Identity::OwnKey)
        }
        Err(e) => Err(e.into()),
    }
}

/// The identity for ssh, and the request's scoped credentials fetched at the
/// same time and saved for `passport proxy`: the server's STS call then
/// overlaps the certificate instead of following it, and a refusal stops
/// here with its own words rather than as a closed ssh connection.
async fn prepare(
    api: &Api,
    dir: &ClientDir,
    view: &RequestView,
    instance: &str,
) -> anyhow::Result<Identity> {
    let id = parse_request_id(&view.id)?;
    let rdir = dir
        .ensure_request_dir(id)
        .with_context(|| format!("cannot create {}", dir.request_dir(id).display()))?;
    let (identity, credentials) = tokio::join!(
        identity(api, dir, view),
        ssm::credentials(api, &rdir, id, instance)
    );
    credentials?;
    identity
}

fn target(
    dir: &ClientDir,
    view: &RequestView,
    instance: &str,
    identity: Identity,
) -> anyhow::Result<Target> {
    let exe = std::env::current_exe().context("cannot find this passport executable")?;
    Ok(Target {
        exe,
        client_dir: absolute(dir.root()),
        known_hosts: absolute(&dir.known_hosts()),
        request: parse_request_id(&view.id)?,
        instance: instance.to_owned(),
        user: view.username.clone(),
        identity,
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Runs `program` with `args` in place of this process where the platform
/// allows it; answers its exit code otherwise.
fn exec(program: &str, args: &[String]) -> anyhow::Result<i32> {
    let mut command = std::process::Command::new(program);
    command.args(args);
    let missing = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow!(
            "the OpenSSH client ({program}) is not installed or not on your PATH: install OpenSSH"
        ),
        _ => anyhow!("cannot run {program}: {e}"),
    };
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        Err(missing(command.exec()))
    }
    #[cfg(not(unix))]
    {
        let status = command.status().map_err(missing)?;
        Ok(status.code().unwrap_or(1))
    }
}

/// `passport ssh [AR-n] [INSTANCE] [-- ssh args]`.
pub async fn ssh_command(
    dir: &ClientDir,
    words: &[String],
    extra: &[String],
) -> anyhow::Result<i32> {
    let (named, rest) = split_request(words)?;
    let typed = match rest {
        [] => None,
        [one] => Some(one.as_str()),
        _ => bail!("use `passport ssh [AR-n] [INSTANCE] [-- ssh arguments]`"),
    };
    ssm::find_plugin()?;
    let (_, api) = signed_in(dir)?;
    let how = "name it, e.g. `passport ssh AR-12 i-0123456789abcdef0`";
    let view = resolve_request(&api, named, typed, how).await?;
    let instance = pick_instance(&view, typed, Purpose::Ssh, how).await?;
    let identity = prepare(&api, dir, &view, &instance.id).await?;
    let t = target(dir, &view, &instance.id, identity)?;
    exec("ssh", &ssh::ssh_args(&t, extra))
}

/// Splits `[user@]HOST:path`; `None` for a local path.
fn remote_part(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('-') {
        return None;
    }
    let (host, path) = arg.split_once(':')?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    // `C:\…` on Windows, and `./a:b`, are local.
    if host.is_empty()
        || host.contains('/')
        || host.contains('\\')
        || (cfg!(windows) && host.len() == 1)
    {
        return None;
    }
    Some((host, path))
}

/// `passport scp [AR-n] [scp options] SRC… DST`: `INSTANCE:path` names a
/// file on an instance (its id or Name tag).
pub async fn scp_command(dir: &ClientDir, words: &[String]) -> anyhow::Result<i32> {
    let (named, rest) = split_request(words)?;
    let hosts: Vec<&str> = rest
        .iter()
        .filter_map(|a| remote_part(a))
        .map(|(h, _)| h)
        .collect();
    let Some(first) = hosts.first().copied() else {
        bail!("name a file on an instance as INSTANCE:path, e.g. `passport scp notes.txt i-0123456789abcdef0:/tmp/`");
    };
    ssm::find_plugin()?;
    let (_, api) = signed_in(dir)?;
    let how = "name it, e.g. `passport scp AR-12 FILE i-0123456789abcdef0:/tmp/`";
    let view = resolve_request(&api, named, Some(first), how).await?;
    let mut ids = Vec::new();
    let mut args = Vec::new();
    for arg in rest {
        match remote_part(arg) {
            Some((host, path)) => {
                let instance = pick_instance(&view, Some(host), Purpose::Ssh, how).await?;
                args.push(format!("{}@{}:{path}", view.username, instance.id));
                if !ids.contains(&instance.id) {
                    ids.push(instance.id);
                }
            }
            None => args.push(arg.clone()),
        }
    }
    let identity = prepare(&api, dir, &view, &ids[0]).await?;
    let t = target(dir, &view, &ids[0], identity)?;
    // Several instances share one command line: their host keys are then
    // kept under their ids, which are their host names here anyway.
    let mut all = ssh::option_args(&ssh::options(&t, ids.len() == 1));
    all.extend(args);
    exec("scp", &all)
}

/// Opens a Session Manager session for `request` and runs the plugin.
async fn open_session(
    api: &Api,
    dir: &ClientDir,
    request: RequestId,
    session: &SessionRequest,
) -> Result<i32, SessionError> {
    // Found before StartSession, so a missing plugin never leaves a session
    // open; its version is asked meanwhile.
    let plugin = ssm::find_plugin()?;
    let version = {
        let plugin = plugin.clone();
        std::thread::spawn(move || ssm::plugin_version(&plugin))
    };
    let rdir = dir
        .ensure_request_dir(request)
        .map_err(|e| SessionError::Local(format!("cannot create the request's directory: {e}")))?;
    let creds = ssm::credentials(api, &rdir, request, &session.target).await?;
    let endpoint = ssm::endpoint(&creds.region).await?;
    let response = ssm::start_session(&creds, &endpoint, session).await?;
    let version = version
        .join()
        .map_err(|_| SessionError::Local("cannot ask the plugin its version".to_owned()))??;
    let call = ssm::plugin_call(&version, &response, &creds, session, &endpoint);
    ssm::run_plugin(&plugin, &call)
}

/// `passport proxy`: what ssh's `ProxyCommand` runs. Its stdin and stdout
/// are ssh's connection, so it writes nothing to stdout itself.
pub async fn proxy(dir: &ClientDir, request: &str, host: &str, port: u16) -> anyhow::Result<i32> {
    let request = parse_request_id(request)?;
    let instance = crate::domain::values::InstanceId::parse(host).map_err(|e| anyhow!("{e}"))?;
    let (_, api) = signed_in(dir)?;
    let session = ssm::ssh_session(instance.as_str(), port, request);
    Ok(open_session(&api, dir, request, &session).await?)
}

/// `LOCAL:REMOTE`, or one port for both.
fn ports(text: &str) -> anyhow::Result<(u16, u16)> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("{p:?} is not a port: use LOCAL:REMOTE, e.g. 8080:80"))
    };
    match text.split_once(':') {
        Some((l, r)) => Ok((port(l)?, port(r)?)),
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

/// `passport forward [AR-n] INSTANCE LOCAL:REMOTE [--remote-host HOST]`.
pub async fn forward(
    dir: &ClientDir,
    words: &[String],
    remote_host: Option<&str>,
) -> anyhow::Result<i32> {
    let (named, rest) = split_request(words)?;
    let [typed, spec] = rest else {
        bail!("use `passport forward [AR-n] INSTANCE LOCAL:REMOTE [--remote-host HOST]`, e.g. `passport forward i-0123456789abcdef0 8080:80`");
    };
    let (local, remote) = ports(spec)?;
    ssm::find_plugin()?;
    let (_, api) = signed_in(dir)?;
    let how = "name it, e.g. `passport forward AR-12 i-0123456789abcdef0 8080:80`";
    let view = resolve_request(&api, named, Some(typed), how).await?;
    let instance = pick_instance(&view, Some(typed), Purpose::Forward, how).await?;
    if remote_host.is_some() && !view.allows.remote_port_forwarding {
        bail!("{} does not allow forwarding to other hosts: its rules must allow it (`passport show {}`)", view.id, view.id);
    }
    if remote_host.is_none() && !view.allows.port_forwarding {
        bail!(
            "{} does not allow port forwarding: its rules must allow it (`passport show {}`)",
            view.id,
            view.id
        );
    }
    let request = parse_request_id(&view.id)?;
    let session = ssm::forwarding_session(&instance.id, local, remote, remote_host, request);
    eprintln!(
        "Forwarding localhost:{local} to {}:{remote}{} ({request}); press Ctrl-C to stop.",
        instance.id,
        remote_host.map(|h| format!(" → {h}")).unwrap_or_default()
    );
    Ok(open_session(&api, dir, request, &session).await?)
}

/// `passport rdp [AR-n] [INSTANCE]`.
pub async fn rdp(dir: &ClientDir, words: &[String]) -> anyhow::Result<i32> {
    let (named, rest) = split_request(words)?;
    let typed = match rest {
        [] => None,
        [one] => Some(one.as_str()),
        _ => bail!("use `passport rdp [AR-n] [INSTANCE]`"),
    };
    ssm::find_plugin()?;
    let (_, api) = signed_in(dir)?;
    let how = "name it, e.g. `passport rdp AR-12 i-0123456789abcdef0`";
    let view = resolve_request(&api, named, typed, how).await?;
    let instance = pick_instance(&view, typed, Purpose::Rdp, how).await?;
    let request = parse_request_id(&view.id)?;
    // A free port now; the plugin binds it a moment later.
    let local = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("cannot find a free local port")?;
    let session = ssm::forwarding_session(&instance.id, local, 3389, None, request);
    eprintln!(
        "Connect your RDP client to localhost:{local} as {}. The password arrives as a direct message from Passport. Press Ctrl-C here to stop.",
        clean(&view.username)
    );
    Ok(open_session(&api, dir, request, &session).await?)
}

/// `passport ssh-config`: a `Host` block per instance of every active request.
pub async fn ssh_config(dir: &ClientDir) -> anyhow::Result<i32> {
    let (session, api) = signed_in(dir)?;
    let all = api.requests().await?.requests;
    prune(dir, &all);
    let active: Vec<&RequestView> = all.iter().filter(|r| choose::is_active(r)).collect();
    let mut out = format!(
        "# Passport: ssh configuration for your active requests at {}.\n\
         # Save it and include it at the top of ~/.ssh/config:\n\
         #     passport ssh-config > ~/.ssh/passport.conf\n\
         #     Include passport.conf\n\
         # Then `ssh i-….passport`, scp, sftp, rsync -e ssh and editors' remote modes work.\n\
         # Run it again after each new request or extension: certificates end with the access.\n",
        session.server
    );
    if active.is_empty() {
        out.push_str("# You have no active request.\n");
    }
    let count = |id: &str| {
        active
            .iter()
            .filter(|r| r.instances.iter().any(|i| i.id == id))
            .count()
    };
    for view in &active {
        let linux: Vec<&InstanceView> = view
            .instances
            .iter()
            .filter(|i| i.platform != "windows" && i.status == "granted")
            .collect();
        if linux.is_empty() {
            continue;
        }
        let identity = identity(&api, dir, view).await?;
        for i in linux {
            let mut aliases = Vec::new();
            if count(&i.id) == 1 {
                aliases.push(format!("{}.passport", i.id));
            }
            aliases.push(format!(
                "{}.{}.passport",
                i.id,
                view.id.to_ascii_lowercase()
            ));
            let t = target(dir, view, &i.id, identity.clone())?;
            let comment = format!(
                "{} {}{}",
                clean(&view.id),
                clean(&choose::instance_label(i)),
                view.expires_at
                    .as_deref()
                    .map(|e| format!(", until {}", clean(e)))
                    .unwrap_or_default()
            );
            out.push('\n');
            out.push_str(&ssh::host_block(&t, &aliases, &comment));
        }
    }
    print!("{out}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn a_request_line_splits_as_in_chat() {
        let r = new_request(&words(
            "i-0123456789abcdef0,i-0fedcba9876543210 2h ticket#123 disk is full",
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.instances, ["i-0123456789abcdef0", "i-0fedcba9876543210"]);
        assert_eq!(r.duration, "2h");
        assert_eq!(r.ticket, "ticket#123");
        assert_eq!(r.reason.as_deref(), Some("disk is full"));
        let r = new_request(&words("i-0123456789abcdef0 T-9")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.duration.as_str(), r.ticket.as_str(), r.reason),
            ("", "T-9", None)
        );
        assert!(new_request(&words("2h T-1")).is_err());
        assert!(new_request(&words("i-0123456789abcdef0 2h")).is_err());
    }

    #[test]
    fn remote_paths_are_instance_colon_path() {
        assert_eq!(
            remote_part("i-0123456789abcdef0:/tmp/x"),
            Some(("i-0123456789abcdef0", "/tmp/x"))
        );
        assert_eq!(remote_part("bob@web-1:"), Some(("web-1", "")));
        assert_eq!(remote_part("./a:b"), None);
        assert_eq!(remote_part("notes.txt"), None);
        assert_eq!(remote_part("-P"), None);
    }

    #[test]
    fn ports_are_local_colon_remote_or_one_for_both() {
        assert_eq!(ports("8080:80").ok(), Some((8080, 80)));
        assert_eq!(ports("5432").ok(), Some((5432, 5432)));
        assert!(ports("0:80").is_err());
        assert!(ports("http").is_err());
    }

    #[test]
    fn control_characters_from_the_server_are_dropped() {
        assert_eq!(clean("ok\x1b]0;title\x07 done\n"), "ok]0;title done\n");
    }
}
