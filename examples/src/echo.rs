//! The `echo` party: sends every frame back to its sender only, text as text and binary as
//! binary. It sends nothing on connect and keeps nothing.

use partyline::prelude::*;

/// The party's name.
pub const NAME: &str = "echo";

/// The echo room.
pub struct Echo;

impl Party for Echo {
    fn new(_room: Room) -> Self {
        Echo
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        sender.send(message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, Gateway};

    #[tokio::test]
    async fn echoes_text_and_binary_to_the_sender_only() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        let mut b = Gateway::open(&room).await;
        let joined = a.connect(1, "a", "/parties/echo/r?_pk=a").await;
        assert_eq!(joined.tags(), ["a"]);
        assert!(joined.frames(1).is_empty(), "nothing is sent on connect");
        assert!(b.connect(2, "b", "/parties/echo/r?_pk=b").await.frames(2).is_empty());

        a.send(1, "text").await;
        a.send(1, b"\x00\xffbinary".to_vec()).await;
        a.send(1, "").await;
        a.send(1, Vec::new()).await;
        assert_eq!(a.frame(1).await, Message::from("text"));
        assert_eq!(a.frame(1).await, Message::Binary(Bytes::from_static(b"\x00\xffbinary")));
        assert_eq!(a.frame(1).await, Message::from(""));
        assert_eq!(a.frame(1).await, Message::Binary(Bytes::new()));

        // b's first frame is its own echo: none of a's reached it.
        b.send(2, "from b").await;
        assert_eq!(b.frame(2).await, Message::from("from b"));

        // Binary bytes that happen to be UTF-8 stay binary.
        a.send(1, b"looks like text".to_vec()).await;
        let echoed = a.frame(1).await;
        assert_eq!(echoed.as_text(), None);
        assert_eq!(echoed.as_bytes(), b"looks like text");
    }
}
