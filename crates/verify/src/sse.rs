//! Server-Sent Events framing, as the WHATWG HTML standard §9.2.6 "Interpreting an event
//! stream" defines it.
//!
//! Written here rather than taken from a crate because the follower needs the comment lines
//! (the heartbeat and the end-of-catch-up marker of `GET /v1/revocations`), which the parsers
//! we looked at drop.

/// What one blank-line-terminated block, or one comment line, of the stream says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    /// A dispatched event. `id` is the stream's last event ID at dispatch (it persists
    /// across events that carry none, as the standard says).
    Event {
        id: String,
        event: String,
        data: String,
    },
    /// A line starting with `:`, without the colon and one leading space.
    Comment(String),
}

/// A line longer than this ends the stream as broken rather than growing without bound.
const MAX_LINE_BYTES: usize = 64 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Parser {
    /// Bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The previous chunk ended on a CR: an LF opening the next belongs to it.
    after_cr: bool,
    /// Nothing decoded yet, so a leading byte-order mark is still to be skipped.
    at_start: bool,
    event: String,
    data: String,
    /// Whether any `data` field was seen for the event being built.
    has_data: bool,
    last_id: String,
}

/// The stream broke the framing's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LineTooLong;

impl Parser {
    pub(crate) fn new() -> Self {
        Self {
            at_start: true,
            ..Self::default()
        }
    }

    /// Feeds the next chunk of bytes, appending what it completes to `out`.
    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        out: &mut Vec<Item>,
    ) -> Result<(), LineTooLong> {
        if self.at_start && !chunk.is_empty() {
            // The BOM may itself be split across chunks; it is three bytes.
            let bom = [0xEF_u8, 0xBB, 0xBF];
            let seen = self.line.len();
            let wanted = bom.len().saturating_sub(seen).min(chunk.len());
            let candidate: Vec<u8> = self.line.iter().chain(&chunk[..wanted]).copied().collect();
            if bom.starts_with(&candidate) {
                if candidate.len() == bom.len() {
                    self.line.clear();
                    self.at_start = false;
                } else {
                    self.line = candidate;
                }
                chunk = &chunk[wanted..];
                if self.at_start {
                    return Ok(());
                }
            } else {
                self.at_start = false;
            }
        }
        for &byte in chunk {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\r' | b'\n' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line, out);
                }
                _ => {
                    if self.line.len() >= MAX_LINE_BYTES {
                        return Err(LineTooLong);
                    }
                    self.line.push(byte);
                }
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Item>) {
        let line = String::from_utf8_lossy(line);
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            out.push(Item::Comment(
                comment.strip_prefix(' ').unwrap_or(comment).to_owned(),
            ));
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (&*line, ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_id),
            // `retry` sets the reconnection delay of a browser's `EventSource`; the follower
            // keeps its own backoff. Unknown fields are ignored, as the standard says.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Item>) {
        let event = std::mem::take(&mut self.event);
        if !self.has_data {
            self.data.clear();
            return;
        }
        self.has_data = false;
        out.push(Item::Event {
            id: self.last_id.clone(),
            event: if event.is_empty() {
                "message".to_owned()
            } else {
                event
            },
            data: std::mem::take(&mut self.data),
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn parse_in_chunks(input: &[u8], size: usize) -> Vec<Item> {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(size) {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    fn event(id: &str, event: &str, data: &str) -> Item {
        Item::Event {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn events_comments_and_every_line_ending_whatever_the_chunking() {
        let input = "\u{feff}: heartbeat\r\nid: 7\nevent: session_revoked\rdata: {\"a\":1}\r\n\r\n\
                     data:x\ndata: y\n\n: caught-up\n\nid\ndata\n\n"
            .as_bytes();
        let expected = vec![
            Item::Comment("heartbeat".into()),
            event("7", "session_revoked", "{\"a\":1}"),
            event("7", "message", "x\ny"),
            Item::Comment("caught-up".into()),
            event("", "message", ""),
        ];
        for size in 1..=input.len() {
            assert_eq!(parse_in_chunks(input, size), expected, "chunks of {size}");
        }
    }

    #[test]
    fn a_block_without_data_dispatches_nothing_and_an_unfinished_one_waits() {
        assert_eq!(parse_in_chunks(b"id: 3\nevent: x\n\ndata: 1", 4), vec![]);
        assert_eq!(
            parse_in_chunks(b"id: 3\nevent: x\n\ndata: 1\n\n", 4),
            vec![event("3", "message", "1")],
            "the id persists, the event type does not"
        );
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        let chunk = vec![b'a'; MAX_LINE_BYTES + 1];
        assert_eq!(parser.feed(&chunk, &mut out), Err(LineTooLong));
    }
}
