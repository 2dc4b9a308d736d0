//! A small SMTP server for tests: it speaks enough of RFC 5321 (EHLO/HELO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT) for a real client to deliver to it, and keeps every message it is given.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One delivered message: the envelope recipients and the raw text after DATA.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub to: Vec<String>,
    pub raw: String,
}

impl Delivered {
    pub fn subject(&self) -> String {
        self.raw
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_owned()
    }

    /// Every body part, with its transfer encoding undone.
    pub fn decoded(&self) -> String {
        let mut out = String::new();
        for part in self.raw.split("\r\n--") {
            let Some((head, body)) = part.split_once("\r\n\r\n") else {
                continue;
            };
            let head = head.to_ascii_lowercase();
            if head.contains("content-transfer-encoding: base64") {
                let joined: String = body.lines().take_while(|l| !l.starts_with("--")).collect();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(joined.trim())
                    .unwrap_or_default();
                out.push_str(&String::from_utf8_lossy(&bytes));
            } else if head.contains("content-transfer-encoding: quoted-printable") {
                out.push_str(&decode_quoted_printable(body));
            } else {
                out.push_str(body);
            }
            out.push('\n');
        }
        out
    }

    /// The first link in the message that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> String {
        let text = self.decoded();
        let start = text
            .find(prefix)
            .unwrap_or_else(|| panic!("no link {prefix} in {text}"));
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || ":/?=&._-%".contains(*c))
            .collect()
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let joined = text.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An SMTP server on a loopback port, collecting messages until dropped.
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<Delivered>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback port nobody listens on now (bound, then released), for a server that is down.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::start_on(0).await
    }

    /// On `port` (0: any free one).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&messages);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let kept = Arc::clone(&kept);
                tokio::spawn(async move {
                    let _ = converse(stream, kept).await;
                });
            }
        });
        Self {
            port,
            messages,
            task,
        }
    }

    /// `smtp_url` for a Tessera that sends here, in the clear.
    pub fn url(&self) -> String {
        plain_url(self.port)
    }

    pub fn messages(&self) -> Vec<Delivered> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until a message to `to` whose subject contains `subject` has arrived beyond the
    /// first `skip` such messages, and returns it.
    pub async fn wait_for(&self, to: &str, subject: &str, skip: usize) -> Delivered {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Delivered> = self
                .messages()
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t == to) && m.subject().contains(subject))
                .collect();
            if let Some(message) = found.get(skip) {
                return message.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no mail `{subject}` #{skip} for {to}; have {:?}",
                self.messages()
                    .iter()
                    .map(Delivered::subject)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many messages to `to` have arrived.
    pub fn count_to(&self, to: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .count()
    }
}

pub fn plain_url(port: u16) -> String {
    format!("smtp://127.0.0.1:{port}?tls=none")
}

async fn converse(stream: TcpStream, kept: Arc<Mutex<Vec<Delivered>>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write.write_all(b"220 sink.test ESMTP\r\n").await?;
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        let reply: &[u8] = if command.starts_with("EHLO") {
            b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
        } else if command.starts_with("HELO") {
            b"250 sink.test\r\n"
        } else if command.starts_with("MAIL FROM") {
            to.clear();
            b"250 OK\r\n"
        } else if command.starts_with("RCPT TO") {
            let address = line
                .trim_end()
                .split_once(':')
                .map(|(_, a)| a.trim().trim_start_matches('<'))
                .and_then(|a| a.split('>').next())
                .unwrap_or_default()
                .to_owned();
            to.push(address);
            b"250 OK\r\n"
        } else if command == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut raw = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                raw.push_str(
                    line.strip_prefix('.')
                        .filter(|_| line.starts_with(".."))
                        .unwrap_or(&line),
                );
            }
            kept.lock().unwrap().push(Delivered {
                to: std::mem::take(&mut to),
                raw,
            });
            b"250 queued\r\n"
        } else if command == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else if command == "RSET" || command == "NOOP" {
            b"250 OK\r\n"
        } else {
            b"502 not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
}
