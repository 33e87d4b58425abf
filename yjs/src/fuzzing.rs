//! The check behind the `yjs_batch` fuzz target in `fuzz/`, kept in the library so the regular
//! test suite replays the fuzz corpus and every crash found (`tests/tests/fuzz_corpus.rs`). It
//! panics when a property fails.

use bytes::Bytes;
use partyline::Message;

use crate::batch::{BatchError, Reassembler, MARKER_PREFIX, PROTOCOL_ERROR, TOO_BIG};

/// At most this many frames per input, so one input stays quick.
const MAX_FRAMES: usize = 512;

/// Batch ids the generated markers use (one holds the marker's own `#`).
const IDS: [&str; 3] = ["a", "bc", "x#y"];

/// Reads the fuzz input byte by byte; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }

    /// A size or count: mostly small, sometimes at the edges of `u64`.
    fn number(&mut self) -> u64 {
        match self.byte() {
            b @ 0..=250 => u64::from(b),
            251 => u64::MAX,
            252 => u64::MAX - 1,
            253 => 1 << 53,
            254 => u64::from(u32::MAX) + 1,
            _ => {
                let mut le = [0; 8];
                let raw = self.take(8);
                le[..raw.len()].copy_from_slice(raw);
                u64::from_le_bytes(le)
            }
        }
    }
}

/// A batch marker as the model understands it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    id: String,
    start: bool,
    size: u64,
    count: u64,
}

/// One frame and what the model knows about it.
#[derive(Debug)]
enum Frame {
    Binary(Vec<u8>),
    /// Text that is not a marker.
    Text(String),
    /// A marker text and its meaning (`None`: malformed).
    Marker(String, Option<Marker>),
    /// Text starting with the marker prefix whose meaning the model does not know.
    Unknown(String),
}

/// What one frame does, per the protocol.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Absorbed,
    Whole(Vec<u8>),
    /// The connection closes with this code.
    Close(u16),
}

/// The protocol in its plainest form: one open batch with its bytes in a vector.
struct Model {
    max: u64,
    open: Option<(Marker, Vec<u8>, u64)>,
}

impl Model {
    fn frame(&mut self, frame: &Frame) -> Outcome {
        use Outcome::{Absorbed, Close, Whole};
        match frame {
            Frame::Binary(data) => match self.open.as_mut() {
                None => Whole(data.clone()),
                Some((m, bytes, chunks)) => {
                    if *chunks == m.count || bytes.len() as u64 + data.len() as u64 > m.size {
                        self.open = None;
                        return Close(PROTOCOL_ERROR);
                    }
                    bytes.extend_from_slice(data);
                    *chunks += 1;
                    Absorbed
                }
            },
            Frame::Text(_) if self.open.take().is_some() => Close(PROTOCOL_ERROR),
            Frame::Text(_) => Absorbed,
            // (`batch` stops asking the model after an unknown marker.)
            Frame::Marker(_, None) | Frame::Unknown(_) => {
                self.open = None;
                Close(PROTOCOL_ERROR)
            }
            Frame::Marker(_, Some(m)) if m.start => {
                if self.open.take().is_some() {
                    Close(PROTOCOL_ERROR)
                } else if m.size > self.max {
                    Close(TOO_BIG)
                } else if m.count == 0 || m.count > m.size {
                    Close(PROTOCOL_ERROR)
                } else {
                    self.open = Some((m.clone(), Vec::new(), 0));
                    Absorbed
                }
            }
            Frame::Marker(_, Some(end)) => match self.open.take() {
                Some((start, bytes, chunks))
                    if end.id == start.id
                        && (end.size, end.count) == (start.size, start.count)
                        && (bytes.len() as u64, chunks) == (start.size, start.count) =>
                {
                    Whole(bytes)
                }
                _ => Close(PROTOCOL_ERROR),
            },
        }
    }
}

fn marker_text(m: &Marker) -> String {
    let kind = if m.start { "start" } else { "end" };
    format!(r#"{MARKER_PREFIX}#{{"id":"{}","type":"{kind}","size":{},"count":{}}}"#, m.id, m.size, m.count)
}

fn marker(input: &mut Input, start: bool) -> Marker {
    let id = IDS[usize::from(input.byte()) % IDS.len()].to_string();
    Marker { id, start, size: input.number(), count: input.number() }
}

/// A marker written in one of the ways JSON allows (field order, spaces, extra fields), or
/// broken in one of the ways a client could break it (missing id, wrong types, bad prefix).
fn variant_marker(input: &mut Input) -> Frame {
    let (flags, form) = (input.byte(), input.byte());
    let mut m = marker(input, true);
    let mut valid = true;
    let kind = match flags & 3 {
        0 => "start",
        1 => {
            m.start = false;
            "end"
        }
        2 => "middle",
        _ => "Start",
    };
    valid &= flags & 3 < 2;
    let mut number = |n: u64, form: u8| match form % 6 {
        0 | 1 => n.to_string(),
        2 => {
            valid = false;
            format!("-{}", n.max(1))
        }
        3 => {
            valid = false;
            format!("{n}.5")
        }
        4 => {
            valid = false;
            format!("\"{n}\"")
        }
        _ => {
            valid = false;
            "18446744073709551616".to_string()
        }
    };
    let size = number(m.size, form);
    let count = number(m.count, form >> 3);
    let mut fields = vec![format!(r#""type":"{kind}""#), format!(r#""size":{size}"#), format!(r#""count":{count}"#)];
    match flags >> 2 & 3 {
        0 | 1 => fields.insert(0, format!(r#""id":"{}""#, m.id)),
        2 => valid = false,
        _ => {
            fields.insert(0, r#""id":7"#.to_string());
            valid = false;
        }
    }
    if flags & 16 != 0 {
        fields.push(r#""extra":[1,{"a":null},"}"]"#.to_string());
    }
    if flags & 32 != 0 {
        fields.reverse();
    }
    let sep = if flags & 64 != 0 { ", " } else { "," };
    let json = format!("{{{}}}", fields.join(sep));
    let text = match form >> 6 {
        0 | 1 => format!("{MARKER_PREFIX}#{json}"),
        2 => format!("{MARKER_PREFIX}{json}"),
        _ => format!("{MARKER_PREFIX}x#{json}"),
    };
    valid &= form >> 6 < 2;
    Frame::Marker(text, valid.then_some(m))
}

/// Turns fuzz input into frames: plain binary and text, well-formed markers with plausible and
/// implausible sizes, markers written differently or broken, whole batches the way y-partykit's
/// provider sends them, and raw text after the marker prefix.
fn frames(data: &[u8]) -> (usize, Vec<Frame>) {
    let mut input = Input(data);
    let max = usize::from(input.byte());
    let mut out = Vec::new();
    while !input.0.is_empty() && out.len() < MAX_FRAMES {
        match input.byte() % 8 {
            0 | 1 => {
                let n = usize::from(input.byte() % 64);
                out.push(Frame::Binary(input.take(n).to_vec()));
            }
            2 | 3 => {
                let start = input.byte() & 1 == 0;
                let m = marker(&mut input, start);
                out.push(Frame::Marker(marker_text(&m), Some(m)));
            }
            4 => {
                // A message chunked as the provider chunks it: start, consecutive slices, end.
                let id = IDS[usize::from(input.byte()) % IDS.len()].to_string();
                let (len, chunk) = (usize::from(input.byte()), usize::from(input.byte() % 32) + 1);
                let body = input.take(len).to_vec();
                let (size, count) = (body.len() as u64, body.len().div_ceil(chunk) as u64);
                let start = Marker { id, start: true, size, count };
                out.push(Frame::Marker(marker_text(&start), Some(start.clone())));
                out.extend(body.chunks(chunk).map(|c| Frame::Binary(c.to_vec())));
                let end = Marker { start: false, ..start };
                out.push(Frame::Marker(marker_text(&end), Some(end)));
            }
            5 => out.push(variant_marker(&mut input)),
            6 => {
                let n = usize::from(input.byte() % 64);
                let text = String::from_utf8_lossy(input.take(n)).into_owned();
                out.push(if text.starts_with(MARKER_PREFIX) { Frame::Unknown(text) } else { Frame::Text(text) });
            }
            _ => {
                let n = usize::from(input.byte() % 128);
                let text = format!("{MARKER_PREFIX}#{}", String::from_utf8_lossy(input.take(n)));
                out.push(Frame::Unknown(text));
            }
        }
    }
    (max, out)
}

/// Pushes the frames `data` describes into a [`Reassembler`] with a small bound and checks:
/// no panic; `pending_bytes()` stays within the bound and equals the bytes of the batch in
/// progress; a whole batch is exactly the concatenation of its chunks and a plain binary frame
/// passes unchanged; an error drops the batch and ends the sequence (the room closes that
/// connection); and, while every frame is one the model understands, each outcome (absorbed,
/// a whole message, or the close code) is what a plain model of the protocol says.
pub fn batch(data: &[u8]) {
    let (max, frames) = frames(data);
    let mut r = Reassembler::new(max);
    let mut model = Some(Model { max: max as u64, open: None });
    // The chunks since the last start marker the reassembler accepted.
    let mut batch: Option<Vec<u8>> = None;
    for frame in frames {
        let (message, is_marker) = match &frame {
            Frame::Binary(b) => (Message::from(b.clone()), false),
            Frame::Text(t) => (Message::from(t.as_str()), false),
            Frame::Marker(t, _) | Frame::Unknown(t) => (Message::from(t.as_str()), true),
        };
        let result = r.push(message);
        assert!(r.pending_bytes() <= max as u64, "{} bytes pending over the bound of {max}", r.pending_bytes());
        let outcome = match &result {
            Ok(None) => Outcome::Absorbed,
            Ok(Some(whole)) => Outcome::Whole(whole.to_vec()),
            Err(e) => Outcome::Close(e.close_code()),
        };
        match (&frame, &result) {
            (_, Err(_)) => assert_eq!(r.pending_bytes(), 0, "a failed batch is dropped"),
            (Frame::Binary(b), Ok(Some(whole))) => {
                assert!(batch.is_none(), "a binary frame inside a batch came out whole");
                assert_eq!(whole, &Bytes::from(b.clone()), "a plain binary frame passes unchanged");
            }
            (Frame::Binary(b), Ok(None)) => {
                batch.as_mut().expect("a chunk is absorbed only inside a batch").extend_from_slice(b);
            }
            (_, Ok(None)) if is_marker => batch = Some(Vec::new()),
            (_, Ok(Some(whole))) => {
                assert!(is_marker, "only an end marker completes a batch");
                let chunks = batch.take().expect("a batch completes only after it started");
                assert_eq!(whole.as_ref(), chunks.as_slice(), "a whole batch is its chunks joined");
                assert!(whole.len() <= max, "a batch over the bound came out");
            }
            (_, Ok(None)) => assert!(batch.is_none(), "text inside a batch is not absorbed"),
        }
        if let Err(e) = &result {
            if let Frame::Marker(_, None) = &frame {
                assert!(matches!(e, BatchError::BadMarker(_)), "a malformed marker is a bad marker: {e}");
            }
        } else {
            assert_eq!(r.pending_bytes(), batch.as_ref().map_or(0, |b| b.len() as u64), "pending bytes");
        }
        if let Some(m) = model.as_mut() {
            if let Frame::Unknown(_) = &frame {
                // Text after the marker prefix that the model cannot read: whatever it did, stop
                // comparing and keep the other checks.
                model = None;
            } else {
                assert_eq!(outcome, m.frame(&frame), "the reassembler and the model disagree on {frame:?}");
            }
        }
        if result.is_err() {
            // The room closes the connection: nothing more arrives on it.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_batch_comes_out_whole() {
        // Bound 100; one provider-style batch of 10 bytes in chunks of 4; a plain binary frame.
        let mut input = vec![100, 4, 1, 10, 3];
        input.extend(0..10u8);
        input.extend([0, 2, 7, 7]);
        let (max, frames) = frames(&input);
        assert_eq!(max, 100);
        let kinds: Vec<_> = frames.iter().map(|f| matches!(f, Frame::Binary(_))).collect();
        assert_eq!(kinds, [false, true, true, true, false, true]);
        batch(&input);
    }

    #[test]
    fn pseudo_random_inputs_pass() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..5_000 {
            let len = (state % 200) as usize;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            batch(&data);
        }
    }
}
