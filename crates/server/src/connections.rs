//! The listener and its HTTP/1 connections, served so that shutdown is graceful and bounded
//! (SPEC §3 "Operations": stop accepting, finish in-flight requests, flush, exit 0).
//!
//! At shutdown the listener first takes the connections the kernel has already completed
//! (their clients' `connect` succeeded, so they are owed an answer), as far as the
//! connection bound allows, then closes: later clients are refused at connect time. Every answer from then on carries
//! `Connection: close`, so a keep-alive client learns from a response, never from a reset,
//! that it must not send again on that connection. An idle keep-alive connection gets
//! [`IDLE_LINGER`] to bring a request that was already on its way before it is closed.
//! Requests still running when the drain bound has passed are dropped with their
//! connections, and the log says how many.
//!
//! Slow and idle clients cannot exhaust the node (SPEC §7): a connection must send a
//! request's headers within the header timeout of opening, or of the first byte after a
//! response; a keep-alive connection with nothing to do is closed after the idle timeout;
//! and beyond the connection bound the listener stops accepting, so new clients wait in the
//! kernel's backlog rather than costing a file descriptor each. The two timeouts are kept
//! here rather than by hyper: hyper's `header_read_timeout` restarts as soon as a response
//! has been written, so it would also bound the keep-alive wait, closing every idle
//! connection at the (shorter) header timeout.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Service, ServiceExt as _};

/// What a connection serves: the whole API ([`crate::app`]), or `/metrics`.
pub trait App:
    Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// How long an idle keep-alive connection stays open once shutdown began, for a request its
/// client may have sent just before our `Connection: close` could reach it.
pub const IDLE_LINGER: Duration = Duration::from_secs(2);

/// What one client may hold of the node (SPEC §2 `http_header_timeout`, `http_idle_timeout`,
/// `max_connections`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the connection's opening, or from the first byte of a request after a response,
    /// until that request's headers are complete; a connection past it is closed unanswered.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may stay open with nothing to do.
    pub idle_timeout: Duration,
    /// Open connections beyond which the listener stops accepting: later clients wait in the
    /// backlog until one closes. Keep it below the open-files limit ([`descriptor_bound`]),
    /// or `accept` fails instead.
    pub max_connections: usize,
}

/// Descriptors kept for everything but client connections when no more is known: the
/// listeners, database and Redis connections, webhook and mail deliveries, the runtime.
pub const RESERVED_DESCRIPTORS: usize = 128;

/// `wanted` connections, or fewer if the process may not open `wanted + reserved` files. The
/// soft limit is first raised towards the hard one (as Go's runtime does at start), since the
/// soft default of 1024 is a historical accident rather than an administrator's choice; only
/// what the hard limit still forbids lowers the bound, with a warning.
pub fn descriptor_bound(wanted: usize, reserved: usize) -> usize {
    let needed = u64::try_from(wanted.saturating_add(reserved)).unwrap_or(u64::MAX);
    let Some(soft) = open_files_limit(needed) else {
        return wanted;
    };
    let allowed = usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved)
        .max(1);
    if allowed < wanted {
        tracing::warn!(
            max_connections = wanted,
            open_files_limit = soft,
            bound = allowed,
            "the open-files limit is too low for max_connections: accepting at most {allowed} \
             connections at once (raise `ulimit -n` or LimitNOFILE to allow more)"
        );
    }
    wanted.min(allowed)
}

/// The soft open-files limit after trying to raise it to `needed`; `None` where the system
/// has no such limit.
fn open_files_limit(needed: u64) -> Option<u64> {
    #[cfg(unix)]
    {
        match rlimit::increase_nofile_limit(needed) {
            Ok(soft) => Some(soft),
            Err(e) => {
                tracing::debug!(error = %e, "cannot raise the open-files limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE)
                    .ok()
                    .map(|(soft, _)| soft)
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = needed;
        None
    }
}

/// How the connections ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Connections open when shutdown began (including those taken from the backlog).
    pub open_at_shutdown: usize,
    /// Requests still running at the bound, dropped with their connections.
    pub dropped_requests: usize,
    /// Connections closed at the bound.
    pub dropped_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module
/// documentation): `drain` bounds how long in-flight requests may still run.
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
    limits: Limits,
) -> Drained {
    let bound = limits.max_connections.max(1);
    let (closing_tx, closing) = watch::channel(false);
    let running = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    let open = |stream: TcpStream, remote: SocketAddr, connections: &mut JoinSet<()>| {
        connections.spawn(connection(
            stream,
            remote,
            app.clone(),
            closing.clone(),
            Arc::clone(&running),
            limits,
        ));
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            // At the bound the backlog holds new clients until a connection closes (and is
            // reaped by the next branch).
            accepted = listener.accept(), if connections.len() < bound => match accepted {
                Ok((stream, remote)) => open(stream, remote, &mut connections),
                Err(e) => accept_failed(&e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Connections the kernel completed before we stopped: their clients are owed an answer,
    // as far as the bound allows (beyond it, closing the listener refuses them). Connections
    // that have ended leave room first.
    while connections.try_join_next().is_some() {}
    while connections.len() < bound {
        let Some(Ok((stream, remote))) = accept_ready(&listener).await else {
            break;
        };
        open(stream, remote, &mut connections);
    }
    drop(listener);
    closing_tx.send_replace(true);
    let mut drained = Drained {
        open_at_shutdown: connections.len(),
        ..Drained::default()
    };
    tracing::info!(
        connections = drained.open_at_shutdown,
        "stopped accepting connections; finishing requests in flight"
    );
    let finished = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !finished {
        drained.dropped_requests = running.load(Ordering::SeqCst);
        drained.dropped_connections = connections.len();
        tracing::warn!(
            requests = drained.dropped_requests,
            connections = drained.dropped_connections,
            ?drain,
            "requests still running at the shutdown bound are dropped"
        );
        connections.shutdown().await;
    }
    drained
}

/// One accepted connection, until its client closes it, a timeout does, or shutdown does.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: impl App,
    closing: watch::Receiver<bool>,
    running: Arc<AtomicUsize>,
    limits: Limits,
) {
    // Small responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let stream = Watched {
        stream,
        activity: Arc::clone(&activity),
    };
    let answering = closing.clone();
    let busy = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let app = app.clone();
        let answering = answering.clone();
        let guard = Running::enter(&running);
        let answer = Answering::enter(&busy);
        async move {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(remote));
            let Ok(mut response) = app.oneshot(request).await;
            if *answering.borrow() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
            drop(answer);
            Ok::<_, Infallible>(response)
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let (tell, told) = oneshot::channel();
    tokio::spawn(watch_over(activity, closing, limits, tell));
    let expired = tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        // A watcher that is gone (the runtime is shutting down) closes the connection too.
        why = told => why.ok().flatten(),
    };
    match expired {
        None => {}
        // Nothing is owed to a client that has not finished asking: dropping closes.
        Some(Expired::Headers) => {
            tracing::debug!(%remote, "closed: request headers not complete in time");
            return;
        }
        Some(Expired::Idle) => {
            tracing::debug!(%remote, "closed: idle keep-alive connection");
            conn.as_mut().graceful_shutdown();
            if let Ok(ended) = tokio::time::timeout(IDLE_LINGER, conn.as_mut()).await {
                log_end(ended);
            }
            return;
        }
    }
    // Busy connections close after their answer (it says `Connection: close`); an idle one
    // gets a moment for a request already on its way.
    tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        () = tokio::time::sleep(IDLE_LINGER) => {}
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}

/// Tells the connection when shutdown begins (`None`) or its [`Phase`] has lasted too long,
/// from a task of its own: a connection that waited on these itself would look at the
/// shutdown signal, the phase and the clock each time it is woken, once or more per request.
/// Ends when the connection does.
async fn watch_over(
    activity: Arc<Activity>,
    mut closing: watch::Receiver<bool>,
    limits: Limits,
    mut tell: oneshot::Sender<Option<Expired>>,
) {
    let why = tokio::select! {
        () = tell.closed() => return,
        _ = closing.wait_for(|closing| *closing) => None,
        expired = activity.expired(limits) => Some(expired),
    };
    let _ = tell.send(why);
}

fn log_end(ended: Result<(), hyper::Error>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Where a connection is between requests, which decides the timeout that applies.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request's headers since the connection opened or the request's first
    /// byte arrived: the header timeout.
    Headers(Instant),
    /// Answering this many requests: no timeout (the drain bound applies at shutdown).
    Busy(usize),
    /// Keep-alive with nothing to do since the last answer: the idle timeout.
    Idle(Instant),
}

/// Which timeout closed a connection.
enum Expired {
    Headers,
    Idle,
}

/// A connection's [`Phase`], moved by its reads ([`Watched`]) and its requests
/// ([`Answering`]), and watched by [`Activity::expired`].
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Headers(Instant::now())),
        }
    }

    /// The lock is never held across an await, and a panic while holding it leaves a valid
    /// phase, so a poisoned lock is used as it is.
    fn update<T>(&self, change: impl FnOnce(&mut Phase) -> T) -> T {
        change(&mut self.phase.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Bytes arrived: on an idle connection, they begin a request whose headers are now due.
    fn received(&self) {
        self.update(|phase| {
            if let Phase::Idle(_) = *phase {
                *phase = Phase::Headers(Instant::now());
            }
        });
    }

    /// Resolves once the connection has spent longer than its limit in its phase.
    ///
    /// It never sleeps longer than the shorter of the two timeouts: a phase that begins while
    /// it sleeps (headers begun, or a request answered) is due no earlier than that, so it
    /// wakes in time without being told of each request, which would cost every keep-alive
    /// request a wake-up and a new timer.
    async fn expired(&self, limits: Limits) -> Expired {
        let longest_sleep = limits.header_timeout.min(limits.idle_timeout);
        let sleep = tokio::time::sleep(longest_sleep);
        tokio::pin!(sleep);
        loop {
            let now = Instant::now();
            let latest = now + longest_sleep;
            let (deadline, expiry) = match self.update(|phase| *phase) {
                Phase::Headers(since) => (since + limits.header_timeout, Some(Expired::Headers)),
                Phase::Idle(since) => (since + limits.idle_timeout, Some(Expired::Idle)),
                // Look again later: a request's end only moves the deadline later.
                Phase::Busy(_) => (latest, None),
            };
            if let Some(expiry) = expiry {
                if deadline <= now {
                    return expiry;
                }
            }
            sleep.as_mut().reset(deadline.min(latest));
            sleep.as_mut().await;
        }
    }
}

/// Holds a connection in [`Phase::Busy`] while one of its requests is answered.
struct Answering(Arc<Activity>);

impl Answering {
    fn enter(activity: &Arc<Activity>) -> Self {
        activity.update(|phase| {
            *phase = match *phase {
                Phase::Busy(n) => Phase::Busy(n + 1),
                Phase::Headers(_) | Phase::Idle(_) => Phase::Busy(1),
            };
        });
        Self(Arc::clone(activity))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.update(|phase| {
            *phase = match *phase {
                Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
                _ => Phase::Idle(Instant::now()),
            };
        });
    }
}

/// The client's stream, telling the connection's [`Activity`] when bytes arrive.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.received();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts a request from the moment the service is called until its answer is ready or the
/// request is dropped.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection the kernel has ready, without waiting for one.
async fn accept_ready(listener: &TcpListener) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
    std::future::poll_fn(|cx| match listener.poll_accept(cx) {
        Poll::Ready(accepted) => Poll::Ready(Some(accepted)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// A failed `accept` is about one connection (it went away) or about the process (out of
/// file descriptors); in the second case, wait a little rather than spin.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %error, "cannot accept connections");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
