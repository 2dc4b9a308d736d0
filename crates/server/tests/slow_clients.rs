#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Slow and idle clients cannot exhaust a node (SPEC §7), over real TCP to a real server:
//! headers must arrive within `http_header_timeout`, an idle keep-alive connection lives
//! `http_idle_timeout`, and beyond `max_connections` new clients wait instead of being
//! served or refused.

mod support;

use std::time::{Duration, Instant};

use support::{start, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: tessera.test\r\n\r\n";

async fn connect(server: &TestServer) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// One HTTP/1.1 response read off `stream`: its head and body (by `Content-Length`).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        bytes.extend_from_slice(&chunk[..n]);
    }
}

/// How long until the server closes `stream` (the client reads EOF), reading and discarding
/// anything it sends; `None` if it is still open after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut chunk = [0_u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => return started.elapsed(),
                Ok(_) => {}
                Err(e) => panic!("the connection was reset rather than closed: {e}"),
            }
        }
    })
    .await
    .ok()
}

/// Lets this process hold `sockets` more descriptors (client and server ends both live here);
/// the test says so plainly if the machine forbids it, rather than failing obscurely.
fn allow_descriptors(sockets: u64) {
    let wanted = 2 * sockets + 256;
    let soft = rlimit::increase_nofile_limit(wanted).unwrap();
    assert!(
        soft >= wanted,
        "this test needs {wanted} open files, the hard limit allows {soft}"
    );
}

#[tokio::test]
async fn three_hundred_slow_clients_neither_block_a_request_nor_outlive_the_header_timeout() {
    const SLOW: usize = 300;
    allow_descriptors(SLOW as u64);
    let server = start("http_header_timeout = \"1s\"").await;
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let mut stream = connect(&server).await;
        // Most start a request and never finish its headers; some never send a byte.
        if i % 10 != 0 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push((stream, Instant::now()));
    }

    let asked = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_secs(5),
        server.client.get(server.url("/healthz")).send(),
    )
    .await
    .expect("a normal request is answered while slow clients hold connections")
    .unwrap();
    assert_eq!(res.status(), 200);
    assert!(asked.elapsed() < Duration::from_secs(5));

    for (i, (stream, opened)) in slow.iter_mut().enumerate() {
        let waited = opened.elapsed();
        let remaining = Duration::from_secs(10).saturating_sub(waited);
        let closed = closed_within(stream, remaining)
            .await
            .unwrap_or_else(|| panic!("slow connection {i} still open 10 s after it opened"));
        let lived = waited + closed;
        assert!(
            lived >= Duration::from_millis(900),
            "slow connection {i} closed after {lived:?}, before the 1 s header timeout"
        );
    }
    // The node still serves once they are gone.
    let res = server.client.get(server.url("/healthz")).send().await;
    assert_eq!(res.unwrap().status(), 200);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let server = start("http_idle_timeout = \"1s\"").await;
    let mut stream = connect(&server).await;
    // Used more often than the idle timeout, a connection stays open past it.
    for _ in 0..4 {
        stream.write_all(HEALTHZ).await.unwrap();
        let res = read_response(&mut stream).await;
        assert!(res.starts_with("HTTP/1.1 200"), "{res}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed after http_idle_timeout");
    // 500 ms of the idle second had passed before the watch began.
    assert!(
        closed >= Duration::from_millis(400),
        "closed {closed:?} into the watch"
    );
}

/// hyper's own header timer restarts when a response is written, so it would close idle
/// keep-alive connections at the header timeout; the keep-alive wait is the idle timeout's.
#[tokio::test]
async fn the_keep_alive_wait_is_bounded_by_the_idle_timeout_not_the_header_timeout() {
    let server = start("http_header_timeout = \"1s\"\nhttp_idle_timeout = \"3s\"").await;
    let mut stream = connect(&server).await;
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    assert_eq!(
        closed_within(&mut stream, Duration::from_secs(2)).await,
        None,
        "closed while idle for less than http_idle_timeout"
    );
    stream.write_all(HEALTHZ).await.unwrap();
    assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    let answered_again = Instant::now();
    assert!(answered_again - answered >= Duration::from_secs(2));
    let closed = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("closed after http_idle_timeout");
    assert!(
        closed >= Duration::from_millis(2500),
        "closed after {closed:?} idle"
    );

    // A request begun on a keep-alive connection must still finish its headers in time.
    let mut stream = connect(&server).await;
    stream.write_all(HEALTHZ).await.unwrap();
    read_response(&mut stream).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("closed at the header timeout");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2500),
        "headers begun on a kept-alive connection: closed after {closed:?}"
    );
}

#[tokio::test]
async fn beyond_max_connections_a_new_client_waits_until_one_closes() {
    let server = start("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(&server).await;
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }

    // The kernel completes the connection; the node does not take it yet.
    let mut waiting = connect(&server).await;
    waiting.write_all(HEALTHZ).await.unwrap();
    let mut byte = [0_u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(700), waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "a connection beyond max_connections was served (or closed): {early:?}"
    );

    let mut first = held.remove(0);
    first.shutdown().await.unwrap();
    drop(first);
    let res = tokio::time::timeout(Duration::from_secs(5), read_response(&mut waiting))
        .await
        .expect("the waiting client is served once another connection closed");
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
}
