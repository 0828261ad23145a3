//! The accept loop and each connection's deadlines: nobody holds the server
//! by being slow.
//!
//! - At most `max_connections` connections are open; beyond that new ones wait
//!   in the listen backlog until one closes, and those already open go on.
//! - A request's head must arrive within `header_timeout` of its first byte,
//!   or the connection is dropped (slowloris).
//! - A request's body must arrive within `body_timeout` of its head: reading it
//!   then fails with [`BodyTimedOut`] (the handlers answer 408) and the
//!   connection closes.
//! - A connection with no request in flight is closed after `idle_timeout`
//!   (a kept-alive connection, or one that never sends a byte, or a client
//!   that never reads its answer).
//! - On shutdown the listener closes, connections finish the request they are
//!   in and close, and whatever is still open after `shutdown_grace` is dropped.
//!
//! Each connection watches its own phase (idle, reading a head, busy) rather
//! than relying on hyper's header timer, which also runs while a kept-alive
//! connection is idle and so cannot tell the two apart.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// The server's limits, from `[http]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// A request body that did not arrive within `body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

/// Serves `router` on `listener` within `limits` until `shutdown` completes,
/// then drains for at most `limits.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    let mut at_cap_logged = false;
    loop {
        // A slot first: beyond the cap, new connections wait in the backlog.
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => {
                at_cap_logged = false;
                p
            }
            Err(_) => {
                if !at_cap_logged {
                    tracing::warn!(
                        max = limits.max_connections,
                        "HTTP connections at http.max_connections; new ones wait until one closes"
                    );
                    at_cap_logged = true;
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin; a reset before accept is nothing.
                    if !matches!(e.kind(), std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset) {
                        tracing::warn!(error = %e, "cannot accept an HTTP connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let (router, stopping) = (router.clone(), stopping.clone());
        connections.spawn(async move {
            connection(stream, peer, router, limits, stopping).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "HTTP connections still open after the shutdown grace period were closed"
        );
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection until it closes, breaks a deadline, or shutdown
/// closes it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    mut stopping: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let busy = activity.begin();
            // The API records the address a sign-in starts from.
            req.extensions_mut().insert(ConnectInfo(peer));
            let req = req.map(|b| Body::new(Deadline::new(b, limits.body_timeout)));
            let router = router.clone();
            async move {
                let res = router.oneshot(req).await;
                drop(busy);
                res
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = *stopping.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            phase = activity.expired(&limits) => {
                // Idle or stuck in a head: no request is in flight, so dropping
                // the connection loses nothing.
                tracing::debug!(%peer, ?phase, "HTTP connection closed: deadline passed");
                return;
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in flight and no byte of the next one yet.
    Idle,
    /// The first bytes of a request have arrived, the head is not complete.
    Head,
    /// A request is being answered (its body is bounded by [`Deadline`]).
    Busy,
}

struct Activity {
    state: Mutex<(Phase, Instant)>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new((Phase::Idle, Instant::now())),
            changed: Notify::new(),
        }
    }

    fn set(&self, phase: Phase) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = (phase, Instant::now());
        self.changed.notify_waiters();
    }

    fn read_some(&self) {
        let starts_head = {
            let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.0 == Phase::Idle
        };
        if starts_head {
            self.set(Phase::Head);
        }
    }

    fn begin(self: &Arc<Self>) -> BusyGuard {
        self.set(Phase::Busy);
        BusyGuard(self.clone())
    }

    /// Resolves once the current phase outlasts its limit, with that phase.
    async fn expired(&self, limits: &ServerLimits) -> Phase {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (phase, since) = *self.state.lock().unwrap_or_else(|e| e.into_inner());
            let limit = match phase {
                Phase::Idle => Some(limits.idle_timeout),
                Phase::Head => Some(limits.header_timeout),
                Phase::Busy => None,
            };
            match limit {
                Some(limit) => {
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep_until(since + limit) => {
                            let now = *self.state.lock().unwrap_or_else(|e| e.into_inner());
                            if now == (phase, since) {
                                return phase;
                            }
                        }
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// Marks the connection idle again when the answer is ready.
struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.set(Phase::Idle);
    }
}

/// The TCP stream, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
struct Deadline {
    inner: Incoming,
    /// None for a body that is already complete (no timer needed).
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    fn new(inner: Incoming, within: Duration) -> Self {
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(within)));
        Self { inner, deadline }
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let late = this
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if late {
            Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (an error reading a request body) is [`BodyTimedOut`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyTimedOut>() {
            return true;
        }
        next = e.source();
    }
    false
}
