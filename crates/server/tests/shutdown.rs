#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Draining connections at shutdown (SPEC §3 "Operations"), over real loopback HTTP: a request
//! in flight is answered (saying `Connection: close`), one still running at the bound is
//! dropped with its connection and counted, and nothing is accepted afterwards.

use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use tessera_server::connections::{self, Drained};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A router with a request that takes `slow` and one that never finishes; `entered` hears
/// when either has started.
fn app(slow: Duration, entered: tokio::sync::mpsc::UnboundedSender<()>) -> Router {
    let started = entered.clone();
    Router::new()
        .route(
            "/slow",
            get(move || async move {
                let _ = started.send(());
                tokio::time::sleep(slow).await;
                "done"
            }),
        )
        .route(
            "/stuck",
            get(move || async move {
                let _ = entered.send(());
                std::future::pending::<()>().await;
                "never"
            }),
        )
}

struct Running {
    base: String,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<Drained>,
    entered: tokio::sync::mpsc::UnboundedReceiver<()>,
}

async fn start(slow: Duration, drain: Duration) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, entered) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(connections::serve(
        listener,
        app(slow, tx),
        async {
            let _ = stopped.await;
        },
        drain,
        connections::Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        },
    ));
    Running {
        base,
        stop,
        served,
        entered,
    }
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_with_connection_close() {
    let mut server = start(Duration::from_millis(500), Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let request = tokio::spawn(client.get(format!("{}/slow", server.base)).send());
    server.entered.recv().await.unwrap();
    server.stop.send(()).unwrap();

    let res = request
        .await
        .unwrap()
        .expect("the request in flight got an answer");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["connection"], "close");
    assert_eq!(res.text().await.unwrap(), "done");
    let drained = tokio::time::timeout(Duration::from_secs(30), server.served)
        .await
        .expect("serve returned once its request was answered")
        .unwrap();
    assert_eq!(
        drained,
        Drained {
            open_at_shutdown: 1,
            dropped_requests: 0,
            dropped_connections: 0
        }
    );
}

#[tokio::test]
async fn a_request_still_running_at_the_drain_bound_is_dropped_and_counted() {
    let drain = Duration::from_millis(300);
    let mut server = start(Duration::ZERO, drain).await;
    let client = reqwest::Client::new();
    let request = tokio::spawn(client.get(format!("{}/stuck", server.base)).send());
    server.entered.recv().await.unwrap();
    let signalled = Instant::now();
    server.stop.send(()).unwrap();

    let drained = tokio::time::timeout(Duration::from_secs(30), server.served)
        .await
        .expect("serve returned at the bound")
        .unwrap();
    assert!(signalled.elapsed() >= drain, "not before the bound");
    assert_eq!(
        drained,
        Drained {
            open_at_shutdown: 1,
            dropped_requests: 1,
            dropped_connections: 1
        }
    );
    let outcome = tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .expect("the client learnt that its connection was closed")
        .unwrap();
    assert!(outcome.is_err(), "a dropped request gets no answer");
}

#[tokio::test]
async fn connections_are_refused_once_shutdown_began() {
    let server = start(Duration::ZERO, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{}/slow", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(client); // no keep-alive connection left open
    server.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server.served)
        .await
        .expect("serve returned")
        .unwrap();

    let err = reqwest::Client::new()
        .get(format!("{}/slow", server.base))
        .send()
        .await
        .expect_err("nothing listens any more");
    assert!(err.is_connect(), "refused at connect time: {err}");
}
