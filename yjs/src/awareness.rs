//! Awareness (presence) states, kept as y-protocols' server-side `Awareness` keeps them.
//!
//! An awareness update is a varUint count of entries, each `clientID clock state`, where the
//! state is a JSON string and `"null"` means "gone". An entry is applied when its clock is newer
//! than the known one for that client, or when it removes a state at the same clock (that is
//! how a server tells others that a connection left). Nothing in the states is interpreted
//! beyond checking that it is JSON, and states are relayed as the clients wrote them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::protocol::{write_var_string, write_var_uint, DecodeError, Reader};

/// A client id, as Yjs numbers them (a 53-bit integer).
pub type ClientId = u64;

/// Why an awareness update was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwarenessError {
    /// The update is not well-formed.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A state is not JSON.
    #[error("awareness state of client {0} is not JSON")]
    NotJson(ClientId),
}

/// One entry of an awareness update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The client.
    pub client: ClientId,
    /// Its clock: every change of its state increments it.
    pub clock: u64,
    /// The state as JSON; `None` means removed (`null` on the wire).
    pub state: Option<&'a str>,
}

/// Decodes an awareness update, checking that every state is JSON.
pub fn decode(payload: &[u8]) -> Result<Vec<Entry<'_>>, AwarenessError> {
    let mut r = Reader::new(payload);
    let count = r.var_uint()?;
    // Every entry takes at least 3 bytes; do not trust the count for the allocation.
    let mut entries = Vec::with_capacity((count as usize).min(payload.len() / 3));
    for _ in 0..count {
        let client = r.var_uint()?;
        let clock = r.var_uint()?;
        let json = r.var_string()?;
        if serde_json::from_str::<serde::de::IgnoredAny>(json).is_err() {
            return Err(AwarenessError::NotJson(client));
        }
        let state = (json.trim() != "null").then_some(json);
        entries.push(Entry { client, clock, state });
    }
    Ok(entries)
}

/// Encodes entries as an awareness update.
pub fn encode<'a>(entries: impl ExactSizeIterator<Item = Entry<'a>>) -> Vec<u8> {
    let mut out = Vec::new();
    write_var_uint(&mut out, entries.len() as u64);
    for e in entries {
        write_var_uint(&mut out, e.client);
        write_var_uint(&mut out, e.clock);
        write_var_string(&mut out, e.state.unwrap_or("null"));
    }
    out
}

#[derive(Debug, Clone)]
struct Meta {
    clock: u64,
    state: Option<Arc<str>>,
}

/// What applying an update changed, as y-protocols reports it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Clients that got a state for the first time.
    pub added: Vec<ClientId>,
    /// Clients whose state was replaced (possibly by an equal one: a heartbeat).
    pub updated: Vec<ClientId>,
    /// Clients whose state was removed.
    pub removed: Vec<ClientId>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.removed.is_empty()
    }

    /// Every changed client, in y-protocols' order (added, updated, removed).
    pub fn all(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.added.iter().chain(&self.updated).chain(&self.removed).copied()
    }
}

/// The awareness states of one document.
#[derive(Debug, Default)]
pub struct Awareness {
    clients: HashMap<ClientId, Meta>,
}

impl Awareness {
    /// No states.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many clients have a state.
    pub fn len(&self) -> usize {
        self.clients.values().filter(|m| m.state.is_some()).count()
    }

    /// Whether no client has a state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The state of `client` as JSON, if it has one.
    pub fn state(&self, client: ClientId) -> Option<&str> {
        self.clients.get(&client)?.state.as_deref()
    }

    /// Applies an encoded update with y-protocols' clock rule; returns what changed.
    pub fn apply(&mut self, payload: &[u8]) -> Result<Changes, AwarenessError> {
        let mut changes = Changes::default();
        for e in decode(payload)? {
            let known = self.clients.get(&e.client);
            let (clock, had_state) = known.map_or((0, false), |m| (m.clock, m.state.is_some()));
            let newer = clock < e.clock;
            let removes_at_same_clock = clock == e.clock && e.state.is_none() && had_state;
            if !(newer || removes_at_same_clock) {
                continue;
            }
            match (known.is_some(), e.state) {
                (false, Some(_)) => changes.added.push(e.client),
                (true, None) => changes.removed.push(e.client),
                (_, Some(_)) => changes.updated.push(e.client),
                // A removal of a client never seen: recorded (its clock matters), not reported.
                (false, None) => {}
            }
            self.clients.insert(e.client, Meta { clock: e.clock, state: e.state.map(Arc::from) });
        }
        Ok(changes)
    }

    /// Removes the states of `clients` at their current clocks (what a server does when a
    /// connection leaves); returns the clients that had a state.
    pub fn remove(&mut self, clients: impl IntoIterator<Item = ClientId>) -> Vec<ClientId> {
        let mut removed = Vec::new();
        for c in clients {
            if let Some(meta) = self.clients.get_mut(&c) {
                if meta.state.take().is_some() {
                    removed.push(c);
                }
            }
        }
        removed
    }

    /// Encodes the current entries of `clients` (removed ones as `null`); unknown clients are
    /// skipped.
    pub fn encode(&self, clients: impl IntoIterator<Item = ClientId>) -> Vec<u8> {
        let entries: Vec<Entry<'_>> = clients
            .into_iter()
            .filter_map(|c| {
                let m = self.clients.get(&c)?;
                Some(Entry { client: c, clock: m.clock, state: m.state.as_deref() })
            })
            .collect();
        encode(entries.into_iter())
    }

    /// Encodes every client that has a state, or `None` when none has.
    pub fn encode_all(&self) -> Option<Vec<u8>> {
        let mut clients: Vec<ClientId> =
            self.clients.iter().filter(|(_, m)| m.state.is_some()).map(|(c, _)| *c).collect();
        if clients.is_empty() {
            return None;
        }
        clients.sort_unstable();
        Some(self.encode(clients))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(ClientId, u64, &str)]) -> Vec<u8> {
        encode(entries.iter().map(|&(client, clock, json)| Entry {
            client,
            clock,
            state: (json != "null").then_some(json),
        }))
    }

    #[test]
    fn wire_format_matches_y_protocols() {
        // encodeAwarenessUpdate(awareness, [7]) with clientID 7, clock 1, state {"a":1}.
        let bytes = update(&[(7, 1, r#"{"a":1}"#)]);
        assert_eq!(bytes, [&[0x01, 0x07, 0x01, 0x07][..], br#"{"a":1}"#].concat());
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded, [Entry { client: 7, clock: 1, state: Some(r#"{"a":1}"#) }]);
        assert_eq!(decode(&update(&[(7, 2, "null")])).unwrap()[0].state, None);
    }

    #[test]
    fn first_state_at_clock_zero_is_not_applied() {
        // The provider's initial `{}` at clock 0 is not newer than an unknown client's 0.
        let mut a = Awareness::new();
        assert!(a.apply(&update(&[(1, 0, "{}")])).unwrap().is_empty());
        assert!(a.is_empty());
        let c = a.apply(&update(&[(1, 1, r#"{"name":"x"}"#)])).unwrap();
        assert_eq!(c.added, [1]);
        assert_eq!(a.state(1), Some(r#"{"name":"x"}"#));
    }

    #[test]
    fn clock_rule_and_removal() {
        let mut a = Awareness::new();
        a.apply(&update(&[(1, 3, r#"{"v":3}"#), (2, 1, "{}")])).unwrap();
        // Older and equal clocks are ignored.
        assert!(a.apply(&update(&[(1, 2, r#"{"v":2}"#), (1, 3, r#"{"v":9}"#)])).unwrap().is_empty());
        assert_eq!(a.state(1), Some(r#"{"v":3}"#));
        // A heartbeat (same state, newer clock) counts as updated.
        assert_eq!(a.apply(&update(&[(1, 4, r#"{"v":3}"#)])).unwrap().updated, [1]);
        // Removal at the same clock applies once.
        assert_eq!(a.apply(&update(&[(1, 4, "null")])).unwrap().removed, [1]);
        assert!(a.apply(&update(&[(1, 4, "null")])).unwrap().is_empty());
        assert_eq!(a.state(1), None);
        // A removed client comes back with a newer clock as "updated" (its meta is known).
        assert_eq!(a.apply(&update(&[(1, 5, "{}")])).unwrap().updated, [1]);
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn server_removal_keeps_the_clock() {
        let mut a = Awareness::new();
        a.apply(&update(&[(5, 2, r#"{"x":1}"#), (6, 1, "{}")])).unwrap();
        assert_eq!(a.remove([5, 99]), [5]);
        assert!(a.remove([5]).is_empty());
        // Others apply "null at the same clock" as a removal.
        let removal = a.encode([5]);
        assert_eq!(decode(&removal).unwrap(), [Entry { client: 5, clock: 2, state: None }]);
        let mut other = Awareness::new();
        other.apply(&update(&[(5, 2, r#"{"x":1}"#)])).unwrap();
        assert_eq!(other.apply(&removal).unwrap().removed, [5]);
    }

    #[test]
    fn encode_all_lists_live_states_only() {
        let mut a = Awareness::new();
        assert_eq!(a.encode_all(), None);
        a.apply(&update(&[(2, 1, "{}"), (1, 1, r#"{"n":1}"#), (3, 1, "{}")])).unwrap();
        a.remove([3]);
        let all = a.encode_all().unwrap();
        let entries = decode(&all).unwrap();
        assert_eq!(entries.iter().map(|e| e.client).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn malformed_updates_are_rejected_whole() {
        let mut a = Awareness::new();
        assert_eq!(a.apply(&update(&[(1, 1, "{not json")])), Err(AwarenessError::NotJson(1)));
        assert!(matches!(a.apply(&[0x02, 0x01, 0x01]), Err(AwarenessError::Decode(_))));
        // A count far larger than the payload does not allocate for it.
        assert!(matches!(a.apply(&[0xff, 0xff, 0xff, 0x7f]), Err(AwarenessError::Decode(_))));
        assert!(a.is_empty());
    }
}
