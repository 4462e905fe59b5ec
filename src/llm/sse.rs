//! A small incremental Server-Sent Events parser: feed it body chunks as they arrive, get back
//! the `data` of each complete event.
//!
//! Lines may be split anywhere across chunks (even inside a UTF-8 sequence or between `\r` and
//! `\n`); lines end with `\n`, `\r\n` or `\r`; comments (`:`) and `event`/`id`/`retry` fields are
//! ignored because Chat Completions streams carry everything in `data`.

/// Incremental SSE parser over raw body bytes.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// `data` lines of the current event so far.
    data: Vec<String>,
    /// The previous chunk ended in `\r`, so a leading `\n` belongs to that line ending.
    after_cr: bool,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes a chunk and returns the data of every event it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in chunk {
            let after_cr = std::mem::replace(&mut self.after_cr, false);
            match b {
                b'\n' if after_cr => {}
                b'\n' => self.end_line(&mut events),
                b'\r' => {
                    self.after_cr = true;
                    self.end_line(&mut events);
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    /// Ends the stream: an event whose `data` lines were complete but that lacked the closing
    /// blank line is still returned, because some servers omit it before closing. A partial
    /// last line is dropped: it was cut off.
    pub fn finish(&mut self) -> Option<String> {
        self.line.clear();
        self.take_event()
    }

    fn end_line(&mut self, events: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            events.extend(self.take_event());
            return;
        }
        let line = String::from_utf8_lossy(&line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        // An empty field name is a comment (`: keep-alive`).
        if field == "data" {
            self.data.push(value.to_owned());
        }
    }

    fn take_event(&mut self) -> Option<String> {
        if self.data.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.data).join("\n"))
    }
}
