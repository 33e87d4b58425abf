//! Reassembly of y-partykit's chunked client messages (`y-pk-batch#`).
//!
//! The provider sends any message over 1,000,000 bytes as: a text frame
//! `y-pk-batch#{"id":..,"type":"start","size":<bytes>,"count":<chunks>}`, then `count` binary
//! frames that are consecutive slices of the message, then the same marker with `"type":"end"`.
//! A [`Reassembler`] per connection joins the slices and hands the whole message on only when
//! the end marker agrees with the start marker and with what arrived. A batch larger than the
//! limit, or one that contradicts its markers, is an error: the caller closes that connection
//! (with [`BatchError::close_code`]). Only clients chunk; servers send whole frames.

use bytes::{Bytes, BytesMut};
use partyline::Message;
use serde::Deserialize;

/// The prefix of batch marker text frames.
pub const MARKER_PREFIX: &str = "y-pk-batch";

/// Close code for a batch that contradicts its markers (RFC 6455 protocol error).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code for a batch over the size limit (RFC 6455 message too big).
pub const TOO_BIG: u16 = 1009;

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The announced (or arriving) size is over the limit.
    #[error("batch of {size} bytes is over the limit of {max}")]
    TooLarge {
        /// Bytes announced or received.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A marker is not `y-pk-batch#{...}` with an id, a type, a size and a count.
    #[error("malformed batch marker: {0}")]
    BadMarker(String),
    /// The frames do not match the markers.
    #[error("inconsistent batch: {0}")]
    Inconsistent(String),
}

impl BatchError {
    /// The close code for the connection that sent this batch.
    pub fn close_code(&self) -> u16 {
        match self {
            BatchError::TooLarge { .. } => TOO_BIG,
            BatchError::BadMarker(_) | BatchError::Inconsistent(_) => PROTOCOL_ERROR,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Start,
    End,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Marker {
    id: String,
    #[serde(rename = "type")]
    kind: Kind,
    size: u64,
    count: u64,
}

fn parse_marker(text: &str) -> Result<Marker, BatchError> {
    let bad = |why: &str| BatchError::BadMarker(format!("{why} in {:?}", truncate(text, 120)));
    let (sentinel, json) = text.split_once('#').ok_or_else(|| bad("no '#'"))?;
    if sentinel != MARKER_PREFIX {
        return Err(bad("unknown prefix"));
    }
    serde_json::from_str(json).map_err(|e| bad(&e.to_string()))
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A batch in progress.
#[derive(Debug)]
struct Pending {
    start: Marker,
    chunks: Vec<Bytes>,
    bytes: u64,
}

/// Joins one connection's chunked messages; holds at most one batch of at most `max` bytes.
#[derive(Debug)]
pub struct Reassembler {
    max: usize,
    pending: Option<Pending>,
}

impl Reassembler {
    /// A reassembler for batches of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Reassembler { max: max_bytes, pending: None }
    }

    /// Bytes held for a batch in progress.
    pub fn pending_bytes(&self) -> u64 {
        self.pending.as_ref().map_or(0, |p| p.bytes)
    }

    /// Takes one frame from the client. Returns a whole binary message when there is one (a
    /// plain binary frame, or a batch that just ended), `None` when the frame was absorbed (a
    /// start marker, a chunk, or text that is not a marker, which the protocol ignores).
    pub fn push(&mut self, frame: Message) -> Result<Option<Bytes>, BatchError> {
        match frame {
            Message::Binary(data) => self.binary(data),
            Message::Text(text) if text.starts_with(MARKER_PREFIX) => {
                let marker = parse_marker(&text).inspect_err(|_| self.pending = None)?;
                match marker.kind {
                    Kind::Start => self.start(marker).map(|()| None),
                    Kind::End => self.end(marker).map(Some),
                }
            }
            Message::Text(_) if self.pending.is_some() => {
                self.pending = None;
                Err(BatchError::Inconsistent("a text frame inside a batch".into()))
            }
            Message::Text(_) => Ok(None),
        }
    }

    fn start(&mut self, marker: Marker) -> Result<(), BatchError> {
        if self.pending.take().is_some() {
            return Err(BatchError::Inconsistent("a batch started before the previous one ended".into()));
        }
        if marker.size > self.max as u64 {
            return Err(BatchError::TooLarge { size: marker.size, max: self.max });
        }
        if marker.count == 0 || marker.count > marker.size {
            return Err(BatchError::Inconsistent(format!(
                "{} chunks cannot carry {} bytes",
                marker.count, marker.size
            )));
        }
        let chunks = Vec::with_capacity(marker.count.min(64) as usize);
        self.pending = Some(Pending { start: marker, chunks, bytes: 0 });
        Ok(())
    }

    fn binary(&mut self, data: Bytes) -> Result<Option<Bytes>, BatchError> {
        let Some(p) = self.pending.as_mut() else { return Ok(Some(data)) };
        let bytes = p.bytes + data.len() as u64;
        let fault = if p.chunks.len() as u64 >= p.start.count {
            Some(format!("more than the {} chunks announced", p.start.count))
        } else if bytes > p.start.size {
            Some(format!("more than the {} bytes announced", p.start.size))
        } else {
            None
        };
        if let Some(why) = fault {
            self.pending = None;
            return Err(BatchError::Inconsistent(why));
        }
        p.bytes = bytes;
        p.chunks.push(data);
        Ok(None)
    }

    fn end(&mut self, end: Marker) -> Result<Bytes, BatchError> {
        let p = self.pending.take().ok_or_else(|| BatchError::Inconsistent("an end marker without a start".into()))?;
        let start = &p.start;
        let mismatch = if end.id != start.id {
            Some(format!("end id {:?} does not match start id {:?}", end.id, start.id))
        } else if end.count != start.count || end.size != start.size {
            Some(format!(
                "end says {} chunks / {} bytes, start said {} / {}",
                end.count, end.size, start.count, start.size
            ))
        } else if p.chunks.len() as u64 != start.count || p.bytes != start.size {
            Some(format!(
                "{} chunks / {} bytes arrived, {} / {} announced",
                p.chunks.len(),
                p.bytes,
                start.count,
                start.size
            ))
        } else {
            None
        };
        if let Some(why) = mismatch {
            return Err(BatchError::Inconsistent(why));
        }
        if p.chunks.len() == 1 {
            return Ok(p.chunks.into_iter().next().expect("one chunk"));
        }
        let mut whole = BytesMut::with_capacity(p.bytes as usize);
        for c in p.chunks {
            whole.extend_from_slice(&c);
        }
        Ok(whole.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(id: &str, kind: &str, size: u64, count: u64) -> Message {
        Message::from(format!(r#"y-pk-batch#{{"id":"{id}","type":"{kind}","size":{size},"count":{count}}}"#))
    }

    fn bin(len: usize, fill: u8) -> Message {
        Message::from(vec![fill; len])
    }

    /// Sends `data` the way y-partykit's provider does (`chunk` bytes per slice).
    fn chunked(r: &mut Reassembler, data: &[u8], chunk: usize) -> Result<Option<Bytes>, BatchError> {
        let count = data.len().div_ceil(chunk) as u64;
        assert_eq!(r.push(marker("bc", "start", data.len() as u64, count))?, None);
        for c in data.chunks(chunk) {
            assert_eq!(r.push(Message::from(c.to_vec()))?, None);
        }
        r.push(marker("bc", "end", data.len() as u64, count))
    }

    #[test]
    fn plain_frames_pass_and_text_is_ignored() {
        let mut r = Reassembler::new(100);
        assert_eq!(r.push(bin(3, 7)).unwrap(), Some(Bytes::from(vec![7; 3])));
        assert_eq!(r.push(Message::from("hello")).unwrap(), None);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn a_chunked_message_is_reassembled_in_order() {
        let data: Vec<u8> = (0..2_000_021u32).map(|i| (i % 251) as u8).collect();
        let mut r = Reassembler::new(16 << 20);
        let whole = chunked(&mut r, &data, 1_000_000).unwrap().expect("a whole message");
        assert_eq!(whole.len(), 2_000_021);
        assert_eq!(&whole[..], &data[..]);
        // The reassembler is ready for the next batch and plain frames.
        assert_eq!(chunked(&mut r, &data[..10], 4).unwrap().unwrap(), &data[..10]);
        assert_eq!(r.push(bin(1, 1)).unwrap(), Some(Bytes::from_static(&[1])));
    }

    #[test]
    fn the_exact_provider_marker_parses() {
        let mut r = Reassembler::new(3_000_000);
        let start = Message::from(r#"y-pk-batch#{"id":"bc","type":"start","size":2000021,"count":3}"#);
        assert_eq!(r.push(start).unwrap(), None);
        r.push(bin(1_000_000, 1)).unwrap();
        r.push(bin(1_000_000, 2)).unwrap();
        r.push(bin(21, 3)).unwrap();
        assert_eq!(r.pending_bytes(), 2_000_021);
        let end = Message::from(r#"y-pk-batch#{"id":"bc","type":"end","size":2000021,"count":3}"#);
        assert_eq!(r.push(end).unwrap().unwrap().len(), 2_000_021);
    }

    #[test]
    fn over_the_limit_is_too_big() {
        let mut r = Reassembler::new(1000);
        let err = r.push(marker("a", "start", 1001, 2)).unwrap_err();
        assert_eq!(err, BatchError::TooLarge { size: 1001, max: 1000 });
        assert_eq!(err.close_code(), TOO_BIG);
        assert_eq!(r.pending_bytes(), 0);
    }

    #[test]
    fn malformed_and_inconsistent_batches() {
        let cases: Vec<(&str, Vec<Message>)> = vec![
            ("end without start", vec![marker("a", "end", 4, 1)]),
            ("not json", vec![Message::from("y-pk-batch#{oops")]),
            ("no hash", vec![Message::from("y-pk-batch")]),
            ("bad prefix", vec![Message::from(r#"y-pk-batchx#{"id":"a","type":"start","size":1,"count":1}"#)]),
            ("bad type", vec![Message::from(r#"y-pk-batch#{"id":"a","type":"middle","size":1,"count":1}"#)]),
            ("fractional size", vec![Message::from(r#"y-pk-batch#{"id":"a","type":"start","size":1.5,"count":1}"#)]),
            ("negative count", vec![Message::from(r#"y-pk-batch#{"id":"a","type":"start","size":4,"count":-1}"#)]),
            ("zero chunks", vec![marker("a", "start", 4, 0)]),
            ("more chunks than bytes", vec![marker("a", "start", 2, 3)]),
            ("two starts", vec![marker("a", "start", 4, 1), marker("b", "start", 4, 1)]),
            ("too many chunks", vec![marker("a", "start", 4, 1), bin(2, 0), bin(2, 0)]),
            ("too many bytes", vec![marker("a", "start", 4, 2), bin(3, 0), bin(3, 0)]),
            ("text inside", vec![marker("a", "start", 4, 2), bin(2, 0), Message::from("hi")]),
            ("id mismatch", vec![marker("a", "start", 4, 1), bin(4, 0), marker("b", "end", 4, 1)]),
            ("count mismatch", vec![marker("a", "start", 4, 2), bin(2, 0), bin(2, 0), marker("a", "end", 4, 1)]),
            ("size mismatch", vec![marker("a", "start", 4, 1), bin(4, 0), marker("a", "end", 5, 1)]),
            ("short", vec![marker("a", "start", 4, 2), bin(2, 0), marker("a", "end", 4, 2)]),
            ("missing bytes", vec![marker("a", "start", 6, 2), bin(2, 0), bin(2, 0), marker("a", "end", 6, 2)]),
        ];
        for (name, frames) in cases {
            let mut r = Reassembler::new(100);
            let n = frames.len();
            let mut err = None;
            for (i, f) in frames.into_iter().enumerate() {
                match r.push(f) {
                    Ok(out) => assert!(i + 1 < n, "{name}: the last frame must fail, got {out:?}"),
                    Err(e) => {
                        assert_eq!(i + 1, n, "{name}: failed early: {e}");
                        err = Some(e);
                    }
                }
            }
            let err = err.unwrap_or_else(|| panic!("{name}: no error"));
            assert_eq!(err.close_code(), PROTOCOL_ERROR, "{name}: {err}");
            assert_eq!(r.pending_bytes(), 0, "{name}: a failed batch is dropped");
        }
    }
}
