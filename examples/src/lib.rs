//! The example parties compiled into the `partyline` binary, one module per party:
//!
//! - [`chat`] (`main`): the chat room from PartyKit's `Party.Server` announcement, with a
//!   browser page served by its `on_fetch`.
//! - [`echo`] (`echo`): sends every frame back to its sender.
//! - [`private`] (`private`): a token check in the static hooks, the user passed to the room in
//!   a request header and kept in connection state.
//! - [`counter`] (`counter`): a stored counter in a hibernating room, with connection tags,
//!   connection state and an alarm.
//!
//! - [`broadcast`] (`broadcast`): every frame to everyone in the room, no storage (the load
//!   tester's fan-out target).
//! - `yjs` ([`partyline_yjs::YjsParty`]): a Yjs document per room for y-partykit's provider,
//!   persisted in room storage; its collaborative text page is served by `main`'s `on_fetch`
//!   at `/text`.
//!
//! [`registry`] registers them all under their names.

pub mod broadcast;
pub mod chat;
pub mod counter;
pub mod echo;
pub mod private;

#[cfg(test)]
mod testkit;

use partyline::PartyRegistry;

/// Every example party, each under its name (`main`, `echo`, `private`, `counter`,
/// `broadcast`, `yjs`).
pub fn registry() -> PartyRegistry {
    PartyRegistry::new()
        .with::<chat::Chat>(chat::NAME)
        .with::<echo::Echo>(echo::NAME)
        .with::<private::Private>(private::NAME)
        .with::<counter::Counter>(counter::NAME)
        .with::<broadcast::Broadcast>(broadcast::NAME)
        .with::<partyline_yjs::YjsParty>(partyline_yjs::party::NAME)
}

#[cfg(test)]
mod tests {
    #[test]
    fn registry_has_every_party() {
        let reg = super::registry();
        assert_eq!(reg.names(), ["broadcast", "counter", "echo", "main", "private", "yjs"]);
        assert!(reg.get("counter").unwrap().options().hibernate);
        for name in ["main", "echo", "private", "broadcast", "yjs"] {
            assert!(!reg.get(name).unwrap().options().hibernate, "{name} must not hibernate");
        }
    }
}
