//! The listener and its HTTP/1 connections, served so that shutdown is graceful and bounded
//! (SPEC §3 "Operations": stop accepting, finish in-flight requests, flush, exit 0).
//!
//! At shutdown the listener first takes the connections the kernel has already completed
//! (their clients' `connect` succeeded, so they are owed an answer), then closes: later
//! clients are refused at connect time. Every answer from then on carries
//! `Connection: close`, so a keep-alive client learns from a response, never from a reset,
//! that it must not send again on that connection. An idle keep-alive connection gets
//! [`IDLE_LINGER`] to bring a request that was already on its way before it is closed.
//! Requests still running when the drain bound has passed are dropped with their
//! connections, and the log says how many.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

/// How long an idle keep-alive connection stays open once shutdown began, for a request its
/// client may have sent just before our `Connection: close` could reach it.
pub const IDLE_LINGER: Duration = Duration::from_secs(2);

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

/// Serves `router` on `listener` until `shutdown` resolves, then drains (see the module
/// documentation): `drain` bounds how long in-flight requests may still run.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) -> Drained {
    let (closing_tx, closing) = watch::channel(false);
    let running = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    let open = |stream: TcpStream, remote: SocketAddr, connections: &mut JoinSet<()>| {
        connections.spawn(connection(
            stream,
            remote,
            router.clone(),
            closing.clone(),
            Arc::clone(&running),
        ));
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => open(stream, remote, &mut connections),
                Err(e) => accept_failed(&e).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Connections the kernel completed before we stopped: their clients are owed an answer.
    while let Some(Ok((stream, remote))) = accept_ready(&listener).await {
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

/// One accepted connection, until its client closes it or shutdown closes it.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    router: Router,
    mut closing: watch::Receiver<bool>,
    running: Arc<AtomicUsize>,
) {
    // Small responses must not wait for Nagle's algorithm.
    let _ = stream.set_nodelay(true);
    let answering = closing.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let router = router.clone();
        let answering = answering.clone();
        let guard = Running::enter(&running);
        async move {
            request.extensions_mut().insert(ConnectInfo(remote));
            let Ok(mut response) = router.oneshot(request).await;
            if *answering.borrow() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            drop(guard);
            Ok::<_, Infallible>(response)
        }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        _ = closing.wait_for(|closing| *closing) => {}
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

fn log_end(ended: Result<(), hyper::Error>) {
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
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
