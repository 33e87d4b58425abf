//! # Collaborative documents for Partyline
//!
//! A Yjs document server on [`yrs`] (the Rust port of Yjs; same update format) that speaks the
//! protocol of y-partykit's provider (`YPartyKitProvider`), so a provider pointed at Partyline
//! works as pointed at PartyKit:
//!
//! - on connect the room sends SyncStep1 (its state vector), then every awareness state if any;
//! - it answers a client's SyncStep1 with SyncStep2 (what the client misses);
//! - every update it applies goes to every connection, the sender included, once stored;
//! - awareness changes go to every connection, the sender included; when a connection closes
//!   or drops, the states it introduced are removed for the others;
//! - chunked client messages (`y-pk-batch#` markers around binary slices) are joined, up to a
//!   limit; a batch that is too large or contradicts its markers closes that connection
//!   (1009 / 1002); outbound frames are never chunked.
//!
//! Two ways to use it:
//! - the built-in party [`party::YjsParty`], served as `yjs` (`/parties/yjs/<room>`) by the
//!   example registry;
//! - [`YjsRoom`] inside your own party, with y-partykit-like [`YjsOptions`]: persistence
//!   ([`Persist`]), `on_load` to seed a document, a debounced `on_save` ([`OnSave`]) and
//!   read-only connections decided from the request; so a party can authenticate in
//!   `on_before_connect` and then be a Yjs room.
//!
//! Modules:
//! - [`protocol`]: the y-websocket message codec (lib0 varUints).
//! - [`awareness`]: awareness states with y-protocols' clock rule.
//! - [`batch`]: `y-pk-batch` reassembly.
//! - [`persist`]: the document in room storage (snapshot + update log, split under the value limit).
//! - [`save`]: the debounced save callback.
//! - [`room`]: [`YjsRoom`] and its options.
//! - [`party`]: the built-in `yjs` party.
//! - [`web`]: the collaborative text page (`/text`) and its JavaScript bundle.
//! - `fuzzing`: the check the `yjs_batch` fuzz target in `fuzz/` runs (the test suite replays
//!   the corpus).

pub mod awareness;
pub mod batch;
#[doc(hidden)]
pub mod fuzzing;
pub mod party;
pub mod persist;
pub mod protocol;
pub mod room;
pub mod save;
pub mod web;

#[cfg(test)]
mod room_tests;
#[cfg(test)]
mod testkit;

pub use party::YjsParty;
pub use room::{Persist, YjsOptions, YjsRoom};
pub use save::OnSave;
pub use yrs;
