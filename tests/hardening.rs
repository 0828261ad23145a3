//! Nothing can hang the service: slow HTTP clients are cut off without
//! touching other requests, connections beyond the cap wait, a stalled or
//! failing Slack costs bounded work and delays only what belongs to it.
//! The real application on port 0 with a fresh SQLite file, raw TCP clients
//! on loopback, and the fake Slack Web API; deadlines are short and real, and
//! every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fake_slack;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use common::chat_app::{clock_at_now, fresh_db, quiet_config, slack_options};
use fake_slack::FakeSlack;
use passport::adapters::clock::ManualClock;
use passport::adapters::slack::SlackConfig;
use passport::app::engine::Actor;
use passport::config::Config;
use passport::domain::time::Span;
use passport::domain::values::{Person, UserId};
use passport::http::ServerLimits;
use passport::startup;

const DEV: &str = "U0DEV1";

/// Longest any step of these tests waits for something that must happen.
const BOUND: Duration = Duration::from_secs(15);

fn config(db: &Path, fake: &FakeSlack) -> Config {
    let mut c = quiet_config(db);
    c.groups = BTreeMap::from([("approvers".into(), vec!["U0LEAD1".into()])]);
    c.slack = Some(SlackConfig {
        usergroups: BTreeMap::from([("sre-leads".into(), "S0SRELEADS".into())]),
        ..fake.passport_settings()
    });
    c
}

struct Server {
    addr: SocketAddr,
    clock: ManualClock,
    app: startup::App,
    fake: FakeSlack,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

async fn spawn(limits: ServerLimits, edit: impl FnOnce(&mut Config)) -> Server {
    startup::install_crypto_provider();
    let fake = FakeSlack::start().await;
    fake.add_user(DEV, "dev1");
    let (dir, db) = fresh_db();
    let mut config = config(&db, &fake);
    edit(&mut config);
    let settings = config.validate().unwrap();
    let slack = settings.slack.clone().unwrap();
    let clock = clock_at_now();
    let built = startup::slack_app(&settings, &slack, slack_options(&clock, &settings))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let router = built.router;
    let served = tokio::spawn(passport::http::server::serve(
        listener,
        router,
        limits,
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        clock,
        app: built.app,
        fake,
        stop: Some(stop),
        served,
        _dir: dir,
    }
}

/// The status line's code of one `GET path` on a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    timeout(BOUND, s.read_to_string(&mut answer))
        .await
        .expect("an answer within the bound")
        .unwrap();
    status_of(&answer)
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// One `GET /healthz` on an open keep-alive connection; its status.
async fn get_on(s: &mut TcpStream) -> u16 {
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = timeout(BOUND, s.read(&mut buf))
        .await
        .expect("an answer within the bound")
        .unwrap();
    status_of(&String::from_utf8_lossy(&buf[..n]))
}

/// Whether the server closed `s` (end of stream or a reset), reading and
/// discarding whatever it answered first.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

fn short_limits() -> ServerLimits {
    ServerLimits {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(2),
    }
}

/// Sends `bytes` one at a time, `every` apart, until the peer stops taking them.
async fn trickle(mut w: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    for b in bytes.iter().cycle() {
        if w.write_all(&[*b]).await.is_err() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

#[tokio::test]
async fn a_client_sending_headers_byte_by_byte_is_cut_off_and_others_are_served() {
    let server = spawn(short_limits(), |_| {}).await;
    let slow = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, write) = slow.into_split();
    let head =
        b"POST /slack/commands HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaa".to_vec();
    let trickling = tokio::spawn(trickle(write, head, Duration::from_millis(100)));
    // Others are answered while it trickles.
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/healthz").await, 200);
    }
    let mut buf = [0u8; 64];
    let cut = timeout(BOUND, read.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "the slow client is disconnected without an answer: {cut:?}"
    );
    trickling.abort();
    assert_eq!(get(server.addr, "/healthz").await, 200);
}

#[tokio::test]
async fn a_client_sending_its_body_byte_by_byte_is_answered_408_and_cut_off() {
    let server = spawn(short_limits(), |_| {}).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(
        b"POST /slack/commands HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 4000\r\n\r\n",
    )
    .await
    .unwrap();
    let (mut read, write) = slow.into_split();
    let trickling = tokio::spawn(trickle(
        write,
        b"text=".to_vec(),
        Duration::from_millis(100),
    ));
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/healthz").await, 200);
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = timeout(BOUND, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the slow body's connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer}");
    trickling.abort();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let server = spawn(
        ServerLimits {
            idle_timeout: Duration::from_secs(1),
            ..short_limits()
        },
        |_| {},
    )
    .await;
    let mut kept = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_on(&mut kept).await, 200);
    assert!(
        timeout(BOUND, closed(&mut kept)).await.unwrap(),
        "the kept-alive connection is closed once idle"
    );
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        timeout(BOUND, closed(&mut silent)).await.unwrap(),
        "a connection that never sends a byte is closed"
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_while_the_open_ones_are_served() {
    let server = spawn(
        ServerLimits {
            max_connections: 2,
            ..short_limits()
        },
        |_| {},
    )
    .await;
    let mut a = TcpStream::connect(server.addr).await.unwrap();
    let mut b = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(get_on(&mut a).await, 200);
    assert_eq!(get_on(&mut b).await, 200);
    // The third connects (the kernel's backlog) but is not served yet.
    let mut c = TcpStream::connect(server.addr).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    assert!(
        timeout(Duration::from_millis(500), c.read(&mut buf))
            .await
            .is_err(),
        "no answer beyond the cap"
    );
    // The open ones go on.
    assert_eq!(get_on(&mut a).await, 200);
    assert_eq!(get_on(&mut b).await, 200);
    // One closes: the waiting one is served.
    drop(b);
    let n = timeout(BOUND, c.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..n])), 200);
}

#[tokio::test]
async fn shutdown_ends_within_the_grace_period_with_slow_clients_connected() {
    let mut server = spawn(
        ServerLimits {
            header_timeout: Duration::from_secs(120),
            body_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(1),
            max_connections: 64,
        },
        |_| {},
    )
    .await;
    let slow = TcpStream::connect(server.addr).await.unwrap();
    let (_read, write) = slow.into_split();
    let trickling = tokio::spawn(trickle(
        write,
        b"POST /slack/commands HTTP/1.1\r\nhost: x\r\n".to_vec(),
        Duration::from_millis(100),
    ));
    let mut body = TcpStream::connect(server.addr).await.unwrap();
    body.write_all(b"POST /slack/commands HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nab")
        .await
        .unwrap();
    assert_eq!(get(server.addr, "/healthz").await, 200);
    let _ = server.stop.take().unwrap().send(());
    let ended = timeout(Duration::from_secs(10), &mut server.served).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the server stops within the grace period (1 s) and a margin"
    );
    trickling.abort();
    let _ = &server.app;
    let _ = &server.fake;
}

impl Server {
    /// How many cards Slack took in the approvals channel.
    fn cards_posted(&self) -> usize {
        let posts = self.fake.posts_in("C0APPROVALS");
        posts.into_iter().filter(|c| c.ok()).count()
    }

    /// Person `n` asks for access to a fresh instance: a card and an audit line.
    async fn request(&self, n: usize) {
        let actor = Actor {
            person: Person {
                handle: format!("dev{n}"),
                id: UserId::parse(&format!("U0DEV{n}")).unwrap(),
            },
            surface: "slack".into(),
        };
        let line = format!("request i-0{n:016x} 1h ticket#{n} disk full");
        let reply = self.app.engine.handle_line(&actor, &line, None).await;
        assert!(reply.ok, "{}", reply.text);
    }

    /// One delivery pass, which must end within the bound.
    async fn deliver(&self) -> passport::app::dispatch::DeliveryReport {
        timeout(BOUND, self.app.dispatcher.deliver_due())
            .await
            .expect("a delivery pass ends")
            .unwrap()
    }

    /// Calls that deliver notices: posts and opening direct messages.
    fn delivery_calls(&self) -> usize {
        self.fake
            .calls()
            .iter()
            .filter(|c| c.method == "chat.postMessage" || c.method == "conversations.open")
            .count()
    }
}

fn quick_calls(c: &mut Config) {
    c.slack.as_mut().unwrap().call_timeout = "300ms".into();
}

#[tokio::test]
async fn a_stalled_channel_delays_only_its_own_lane() {
    let server = spawn(short_limits(), quick_calls).await;
    server.fake.stall_channel("C0AUDIT");
    for n in 1..=4 {
        server.request(n).await;
    }
    let report = server.deliver().await;
    let cards = server.cards_posted();
    assert_eq!(
        cards, 4,
        "every card went out while the audit channel stalled"
    );
    assert!(report.retried >= 1, "{report:?}");
    // Later passes go on delivering other lanes; the stalled one waits its turn.
    server.request(5).await;
    server.clock.advance(Span::from_secs(2));
    server.deliver().await;
    let cards = server.cards_posted();
    assert_eq!(cards, 5);
}

#[tokio::test]
async fn a_slack_outage_costs_a_bounded_number_of_calls_and_loses_nothing() {
    let server = spawn(short_limits(), quick_calls).await;
    server.fake.set_down(true);
    for n in 1..=40 {
        server.request(n).await;
    }
    server.fake.clear();
    // Two minutes of outage, a pass every second.
    for _ in 0..120 {
        server.deliver().await;
        server.clock.advance(Span::from_secs(1));
    }
    let calls = server.delivery_calls();
    // 41 lanes (40 cards and the audit channel): trying each notice on its own
    // backoff would cost hundreds of calls. The breaker allows the lanes in
    // flight when it opens (16 at most) and one probe per backoff interval
    // (1, 2, 4 … 60 s: under 10 in two minutes).
    assert!(calls <= 16 + 10, "{calls} calls during the outage");
    server.fake.set_down(false);
    for _ in 0..10 {
        server.clock.advance(Span::from_secs(61));
        server.deliver().await;
    }
    let cards = server.cards_posted();
    assert_eq!(cards, 40, "every card went out once Slack was back");
}
