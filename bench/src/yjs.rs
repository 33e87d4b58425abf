//! The `yjs` scenario's side of the wire: every client acts as a y-partykit provider editing one
//! shared `Y.Text` named `t`. Each sender keeps a yrs document holding only its own edits and
//! appends the tester's text payload to it, so every update it sends is a real Yjs update the
//! server must integrate (the first insert lands at the start of the text, later ones after
//! the sender's previous insert). Receivers do not keep replicas: they find the payloads inside
//! the update frames the server sends, so the usual per-sender accounting and latency apply.

use partyline_yjs::protocol::{self, Frame};
use partyline_yjs::yrs::{Doc, ReadTxn, Text, TextRef, Transact};

use crate::payload::{self, Stamp, MAGIC, TEXT_MIN};

/// What a provider sends when its socket opens: its SyncStep1 (an empty state vector) and an
/// awareness state, as y-partykit's provider does.
pub(crate) fn opening_frames(client: u64) -> [Vec<u8>; 2] {
    let name = format!(r#"{{"user":{{"name":"bench-{client}"}}}}"#);
    let entry = partyline_yjs::awareness::Entry { client: awareness_id(client), clock: 1, state: Some(&name) };
    let states = partyline_yjs::awareness::encode(std::iter::once(entry));
    [protocol::sync_step1(&[0x00]), protocol::awareness(&states)]
}

/// A client's awareness id: any number unique in the run (Yjs picks random 32-bit ones).
fn awareness_id(client: u64) -> u64 {
    0x5eed_0000 + client
}

/// One sender's document: only its own edits.
pub(crate) struct Writer {
    doc: Doc,
    text: TextRef,
}

impl Writer {
    pub(crate) fn new() -> Writer {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        Writer { doc, text }
    }

    /// An update frame appending `s` after this sender's previous insert.
    pub(crate) fn append(&mut self, s: &str) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            self.text.insert(&mut txn, len, s);
        }
        let update = self.doc.transact().encode_state_as_update_v1(&before);
        protocol::update(&update)
    }
}

/// The payloads inside a frame from the server: those of an update (or SyncStep2) frame; none
/// for the other messages (SyncStep1, awareness).
pub(crate) fn stamps(frame: &[u8]) -> Stamps<'_> {
    let bytes = match protocol::decode(frame) {
        Ok(Frame::Update(u) | Frame::SyncStep2(u)) => u,
        _ => &[],
    };
    Stamps { bytes, pos: 0 }
}

/// Iterator over the text payloads found in an update (the strings it inserts are stored
/// verbatim; an update that merges several inserts carries several).
pub(crate) struct Stamps<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Iterator for Stamps<'_> {
    type Item = Stamp;

    fn next(&mut self) -> Option<Stamp> {
        while self.pos + TEXT_MIN <= self.bytes.len() {
            let rest = &self.bytes[self.pos..];
            let Some(at) = rest.windows(MAGIC.len()).position(|w| w == MAGIC) else {
                self.pos = self.bytes.len();
                return None;
            };
            self.pos += at + 1;
            if let Some(s) = payload::decode_text(&rest[at..]) {
                self.pos += TEXT_MIN - 1;
                return Some(s);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use partyline_yjs::yrs::updates::decoder::Decode;
    use partyline_yjs::yrs::{GetString, Update};

    use super::*;

    fn stamp(sender: u64, seq: u64) -> Stamp {
        Stamp { sender, seq, sent_ns: 1000 + seq }
    }

    #[test]
    fn updates_carry_their_payloads_and_integrate_into_one_text() {
        let server = Doc::new();
        let mut writers = [Writer::new(), Writer::new()];
        for seq in 0..3 {
            for (i, w) in writers.iter_mut().enumerate() {
                let frame = w.append(&payload::encode_text(stamp(i as u64, seq), 64));
                assert_eq!(stamps(&frame).collect::<Vec<_>>(), [stamp(i as u64, seq)]);
                let Ok(Frame::Update(u)) = protocol::decode(&frame) else { panic!("an update frame") };
                server.transact_mut().apply_update(Update::decode_v1(u).unwrap()).unwrap();
            }
        }
        let text = server.get_or_insert_text("t");
        let all = text.get_string(&server.transact());
        assert_eq!(all.len(), 6 * 64);
        // Each sender's inserts stay together, in order.
        for i in 0..2u64 {
            let mine: Vec<Stamp> = (0..6)
                .filter_map(|k| payload::decode_text(&all.as_bytes()[k * 64..]))
                .filter(|s| s.sender == i)
                .collect();
            assert_eq!(mine, (0..3).map(|seq| stamp(i, seq)).collect::<Vec<_>>());
        }
        // The whole document as one update carries every payload.
        let state = server.transact().encode_state_as_update_v1(&Default::default());
        assert_eq!(stamps(&protocol::sync_step2(&state)).count(), 6);
    }

    #[test]
    fn other_frames_carry_none() {
        let [sync, awareness] = opening_frames(3);
        assert_eq!(stamps(&sync).count(), 0);
        assert_eq!(stamps(&awareness).count(), 0);
        assert_eq!(stamps(b"PLB1").count(), 0);
    }
}
