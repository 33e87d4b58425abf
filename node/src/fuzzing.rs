//! The checks behind the fuzz targets in `fuzz/` (link protocol decoding, storage key encoding,
//! list ranges), kept in the library so the regular test suite replays the fuzz corpus and
//! every crash found (`tests/tests/fuzz_corpus.rs`). Each check panics when a property fails.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use partyline::store::{ListOptions, RoomKey, Store, WriteOp};
use partyline::MemoryStore;
use partyline_proto::pb;
use prost::Message as _;

use crate::store::embedded::{self, EmbeddedStore};
use partyline_cluster::redis::keys;
use partyline_cluster::wire;

/// Decodes `data` as one of the link protocol's gRPC messages (the first byte picks which) and
/// maps it to the room protocol: never a panic, and what decodes survives a round trip.
pub fn wire(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            let Ok(msg) = pb::LinkIn::decode(rest) else { return };
            let Some(kind) = msg.kind else { return };
            let Ok(to_room) = wire::to_room(kind) else { return };
            let before = format!("{to_room:?}");
            let encoded = wire::link_in(to_room).encode_to_vec();
            let kind = pb::LinkIn::decode(encoded.as_slice()).expect("re-decodes").kind.expect("kind");
            let after = wire::to_room(kind).expect("what decoded once decodes again");
            assert_eq!(format!("{after:?}"), before);
        }
        1 => {
            let Ok(msg) = pb::LinkOut::decode(rest) else { return };
            let Some(kind) = msg.kind else { return };
            let Ok(from_room) = wire::from_room(kind) else { return };
            let before = format!("{from_room:?}");
            let encoded = wire::link_out(from_room).encode_to_vec();
            let kind = pb::LinkOut::decode(encoded.as_slice()).expect("re-decodes").kind.expect("kind");
            let after = wire::from_room(kind).expect("what decoded once decodes again");
            assert_eq!(format!("{after:?}"), before);
        }
        2 => {
            let Ok(req) = pb::RoomRequest::decode(rest) else { return };
            let _ = wire::room_key(req.room);
            let Ok(http) = wire::request(req.head, req.body) else { return };
            let (parts, body) = http.into_parts();
            let again = wire::request(Some(wire::head(&parts)), body.clone()).expect("an encoded head decodes");
            assert_eq!(again.method(), parts.method);
            assert_eq!(again.uri(), &parts.uri);
            assert_eq!(again.headers(), &parts.headers);
        }
        _ => {
            let Ok(res) = pb::HttpResponse::decode(rest) else { return };
            let Ok(http) = wire::http_response(res) else { return };
            let (status, headers) = (http.status(), http.headers().clone());
            let again = wire::http_response(wire::response(http)).expect("an encoded response decodes");
            assert_eq!((again.status(), again.headers()), (status, &headers));
        }
    }
}

/// Splits fuzz input into strings at `0xFF` (never part of UTF-8), invalid UTF-8 replaced.
fn strings(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xFF).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Storage key encodings: the embedded store's room prefixes and alarm index keys, and the Redis
/// room tags and alarm members, round-trip and never let one room's keys run into another's.
pub fn storage_keys(data: &[u8]) {
    let parts = strings(data);
    let get = |i: usize| parts.get(i).cloned().unwrap_or_default();
    let (a, b) = (RoomKey::new(get(0), get(1)), RoomKey::new(get(2), get(3)));
    let user_key = get(4);
    let shard = data.first().map_or(0, |b| u16::from(*b) * 16) % 4096;
    let time = data.iter().fold(0i64, |acc, b| acc.rotate_left(7) ^ i64::from(*b));

    // Embedded store: prefix ‖ key, and time ‖ prefix.
    let (pa, pb) = (embedded::room_prefix(&a).unwrap(), embedded::room_prefix(&b).unwrap());
    assert_eq!(embedded::decode_room_prefix(&pa).unwrap(), a);
    if a != b {
        let full = [pa.as_slice(), user_key.as_bytes()].concat();
        assert!(!full.starts_with(&pb), "a key of {a} lies in the range of {b}");
    }
    assert_eq!(embedded::decode_index_key(&embedded::index_key(time, &pa)).unwrap(), (time, a.clone()));
    let later = time.saturating_add(1);
    if later != time {
        assert!(embedded::index_key(time, &pa) < embedded::index_key(later, &pb), "the alarm index is in time order");
    }
    let _ = embedded::decode_room_prefix(data);
    let _ = embedded::decode_index_key(data);

    // Redis: room tags are unambiguous, alarm members parse back.
    assert_eq!(keys::parse_alarm_member(keys::alarm_member(shard, &a).as_bytes()), Some((shard, a.clone())));
    if a != b {
        assert_ne!(keys::room_tag(&a), keys::room_tag(&b));
    }
    let _ = keys::parse_alarm_member(data);
    if let Some(next) = keys::successor(user_key.as_bytes()) {
        assert!(next.as_slice() > user_key.as_bytes());
        let longer = [user_key.as_bytes(), "\u{10FFFF}".as_bytes()].concat();
        assert!(next > longer, "the successor bounds every extension");
    }
}

/// A list-range check: one runtime and one embedded store for every input (a fresh room each).
pub struct ListRanges {
    runtime: tokio::runtime::Runtime,
    embedded: Arc<EmbeddedStore>,
    memory: Arc<MemoryStore>,
    rooms: u64,
}

impl Default for ListRanges {
    fn default() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        ListRanges {
            runtime,
            embedded: Arc::new(EmbeddedStore::in_memory().expect("an in-memory store")),
            memory: Arc::new(MemoryStore::new()),
            rooms: 0,
        }
    }
}

impl ListRanges {
    /// Stores the keys `data` names in a fresh room of each store, lists the range `data`
    /// describes, and checks both stores against a plain model (filter the sorted keys).
    pub fn check(&mut self, data: &[u8]) {
        let Some((&flags, rest)) = data.split_first() else { return };
        let mut parts = strings(rest);
        let opt =
            |p: &mut Vec<String>, bit: u8| if flags & bit != 0 && !p.is_empty() { Some(p.remove(0)) } else { None };
        let opts = ListOptions {
            start: opt(&mut parts, 1),
            start_after: opt(&mut parts, 2),
            end: opt(&mut parts, 4),
            prefix: opt(&mut parts, 8),
            reverse: flags & 16 != 0,
            limit: (flags & 32 != 0).then(|| usize::from(flags >> 6) * 3),
        };
        let entries: BTreeMap<String, Bytes> =
            parts.into_iter().take(64).map(|k| (k.clone(), Bytes::from(k.into_bytes()))).collect();
        let mut model: Vec<(String, Bytes)> =
            entries.iter().filter(|(k, _)| opts.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
        if opts.reverse {
            model.reverse();
        }
        model.truncate(opts.limit.unwrap_or(usize::MAX));
        self.rooms += 1;
        let room = RoomKey::new("fuzz", self.rooms.to_string());
        let ops: Vec<WriteOp> = entries.iter().map(|(k, v)| WriteOp::Put(k.clone(), v.clone())).collect();
        let (embedded, memory) = (self.embedded.clone(), self.memory.clone());
        let (from_embedded, from_memory) = self.runtime.block_on(async {
            embedded.commit(&room, None, &ops).await.expect("commit");
            memory.commit(&room, None, &ops).await.expect("commit");
            let e = embedded.list(&room, &opts).await.expect("list");
            let m = memory.list(&room, &opts).await.expect("list");
            embedded.commit(&room, None, &[WriteOp::DeleteAll]).await.expect("clean up");
            memory.commit(&room, None, &[WriteOp::DeleteAll]).await.expect("clean up");
            (e, m)
        });
        assert_eq!(from_memory, model, "memory store vs model for {opts:?}");
        assert_eq!(from_embedded, model, "embedded store vs model for {opts:?}");
        let ordered = model.windows(2).all(|w| if opts.reverse { w[0].0 > w[1].0 } else { w[0].0 < w[1].0 });
        assert!(ordered, "order of {opts:?}");
    }
}
