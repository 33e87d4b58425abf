//! The `broadcast` party: every frame, text or binary, goes to every connection in the room,
//! the sender included, unchanged. No storage, no history: the plain fan-out that the load
//! tester's `fanout` scenario measures.

use partyline::prelude::*;

/// The party's name.
pub const NAME: &str = "broadcast";

/// The fan-out room.
pub struct Broadcast {
    room: Room,
}

impl Party for Broadcast {
    fn new(room: Room) -> Self {
        Broadcast { room }
    }

    async fn on_message(&mut self, message: Message, _sender: &Connection) -> anyhow::Result<()> {
        self.room.broadcast(message);
        Ok(())
    }
}
