//! The `private` party: only clients with a token get in, the pattern of PartyKit's
//! authentication guide.
//!
//! - The static `on_before_connect` and `on_before_request` hooks answer 401 `Unauthorized`
//!   (`text/plain;charset=UTF-8`) unless the query has `token=<non-empty>`. The token's user is
//!   the token itself; the hooks pass it on to the room in the request header
//!   [`USER_HEADER`], replacing any such header the client sent. A token that cannot be a header
//!   value (it holds control characters) is refused the same way.
//! - On connect the room sends the text frame `welcome, <user>` and keeps `{"user": <user>}` as
//!   the connection's state.
//! - A text frame is broadcast to everyone, the sender included, as `<user>: <text>`. Binary
//!   frames are ignored.
//! - `GET` answers `{"room": <room id>, "connections": <count>}`; other methods answer 405.

use partyline::http::HeaderValue;
use partyline::prelude::*;
use serde::{Deserialize, Serialize};

/// The party's name.
pub const NAME: &str = "private";

/// The request header the hooks pass the authenticated user in.
pub const USER_HEADER: &str = "x-partyline-user";

/// The token-checked room.
pub struct Private {
    room: Room,
}

/// A connection's state: who it is.
#[derive(Debug, Serialize, Deserialize)]
struct UserState {
    user: String,
}

/// Lets `req` through with its user in [`USER_HEADER`], or refuses it with 401.
fn authorize(mut req: Request) -> Before {
    let token = web::query_param(req.uri(), "token").filter(|t| !t.is_empty());
    // `from_bytes` keeps non-ASCII UTF-8 as is and refuses control characters.
    match token.and_then(|t| HeaderValue::from_bytes(t.as_bytes()).ok()) {
        Some(user) => {
            req.headers_mut().insert(USER_HEADER, user);
            Before::Continue(req)
        }
        None => Before::Respond(web::text(StatusCode::UNAUTHORIZED, "Unauthorized")),
    }
}

/// The user the hooks put in `req`.
fn user_of(req: &Request) -> anyhow::Result<String> {
    let value =
        req.headers().get(USER_HEADER).ok_or_else(|| anyhow::anyhow!("no {USER_HEADER} header: not authorized"))?;
    Ok(String::from_utf8(value.as_bytes().to_vec())?)
}

impl Party for Private {
    fn new(room: Room) -> Self {
        Private { room }
    }

    async fn on_before_connect(req: Request, _lobby: Lobby) -> anyhow::Result<Before> {
        Ok(authorize(req))
    }

    async fn on_before_request(req: Request, _lobby: Lobby) -> anyhow::Result<Before> {
        Ok(authorize(req))
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        let user = user_of(&ctx.request)?;
        conn.set_state(&UserState { user: user.clone() })?;
        conn.send(format!("welcome, {user}"));
        Ok(())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        let Message::Text(text) = message else { return Ok(()) };
        let state: UserState =
            sender.state().ok_or_else(|| anyhow::anyhow!("connection {} has no user", sender.id()))?;
        self.room.broadcast(format!("{}: {text}", state.user));
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        if req.method() != Method::GET {
            return Ok(web::text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"));
        }
        let body = serde_json::json!({ "room": self.room.id(), "connections": self.room.connection_count() });
        Ok(web::json(StatusCode::OK, &body))
    }
}

#[cfg(test)]
mod tests {
    use partyline::runtime::link::FromRoom;

    use super::*;
    use crate::testkit::{self, body_text, content_type, json, request, Gateway};

    async fn before_connect(uri: &str) -> Before {
        let reg = crate::registry();
        let factory = reg.get(NAME).unwrap();
        factory.on_before_connect(request("GET", uri, Bytes::new()), testkit::lobby(NAME, Some("r"))).await.unwrap()
    }

    fn assert_unauthorized(before: &Before) {
        match before {
            Before::Respond(res) => {
                assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
                assert_eq!(content_type(res), web::TEXT_PLAIN);
                assert_eq!(body_text(res), "Unauthorized");
            }
            Before::Continue(req) => panic!("let through: {req:?}"),
        }
    }

    #[tokio::test]
    async fn hooks_refuse_without_a_token() {
        for uri in [
            "/parties/private/r",
            "/parties/private/r?_pk=a",
            "/parties/private/r?token=",
            "/parties/private/r?token=%01",
        ] {
            assert_unauthorized(&before_connect(uri).await);
        }
        let reg = crate::registry();
        let factory = reg.get(NAME).unwrap();
        let before = factory
            .on_before_request(request("GET", "/parties/private/r", Bytes::new()), testkit::lobby(NAME, Some("r")))
            .await
            .unwrap();
        assert_unauthorized(&before);
    }

    #[tokio::test]
    async fn hooks_pass_the_user_on_in_a_header() {
        let mut forged = request("GET", "/parties/private/r?_pk=a&token=al%20ice%C3%A9", Bytes::new());
        forged.headers_mut().insert(USER_HEADER, HeaderValue::from_static("mallory"));
        let reg = crate::registry();
        let factory = reg.get(NAME).unwrap();
        for before in [
            factory.on_before_connect(forged, testkit::lobby(NAME, Some("r"))).await.unwrap(),
            before_connect("/parties/private/r?_pk=a&token=al%20ice%C3%A9").await,
        ] {
            let Before::Continue(req) = before else { panic!("refused") };
            let values: Vec<_> = req.headers().get_all(USER_HEADER).iter().collect();
            assert_eq!(values.len(), 1, "the client's own header is replaced");
            assert_eq!(user_of(&req).unwrap(), "al iceé");
            assert_eq!(req.uri(), "/parties/private/r?_pk=a&token=al%20ice%C3%A9");
        }
        let before = factory
            .on_before_request(
                request("GET", "/parties/private/r?token=bob", Bytes::new()),
                testkit::lobby(NAME, Some("r")),
            )
            .await
            .unwrap();
        let Before::Continue(req) = before else { panic!("refused") };
        assert_eq!(user_of(&req).unwrap(), "bob");
    }

    /// Connects like a gateway does: the hook first, then the room with the request it returned.
    async fn join(gw: &mut Gateway, sid: u64, id: &str, token: &str) -> partyline::testing::Connected {
        let Before::Continue(req) = before_connect(&format!("/parties/private/r?_pk={id}&token={token}")).await else {
            panic!("refused")
        };
        gw.connect_with(sid, id, req).await
    }

    #[tokio::test]
    async fn welcome_state_and_named_broadcasts() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        let mut b = Gateway::open(&room).await;

        let joined = join(&mut a, 1, "a", "alice").await;
        assert_eq!(joined.tags(), ["a"]);
        assert_eq!(joined.frames(1), [Message::from("welcome, alice")]);
        let state = joined.before.iter().find_map(|m| match m {
            FromRoom::State { sid: 1, state: Some(s) } => Some(serde_json::from_slice::<serde_json::Value>(s).unwrap()),
            _ => None,
        });
        assert_eq!(state, Some(serde_json::json!({"user": "alice"})));
        assert_eq!(join(&mut b, 2, "b", "bob").await.frames(2), [Message::from("welcome, bob")]);

        a.send(1, "hi bob").await;
        assert_eq!(a.frame(1).await, Message::from("alice: hi bob"));
        assert_eq!(b.frame(2).await, Message::from("alice: hi bob"));
        b.send(2, b"binary is ignored".to_vec()).await;
        b.send(2, "hi alice").await;
        assert_eq!(b.frame(2).await, Message::from("bob: hi alice"));
        assert_eq!(a.frame(1).await, Message::from("bob: hi alice"));

        let res = room.request(request("GET", "/parties/private/r?token=x", Bytes::new())).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!({"room": "r", "connections": 2}));
        b.close(2).await;
        let res = room.request(request("GET", "/parties/private/r?token=x", Bytes::new())).await.unwrap();
        assert_eq!(json(&Message::from(body_text(&res))), serde_json::json!({"room": "r", "connections": 1}));
        let res = room.request(request("POST", "/parties/private/r?token=x", Bytes::new())).await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn connect_without_the_header_fails() {
        let room = testkit::spawn_fresh(NAME, "r");
        let mut a = Gateway::open(&room).await;
        let joined = a.connect(1, "a", "/parties/private/r?_pk=a&token=skipped-the-hook").await;
        match joined.verdict {
            // The client sees a fixed text with a reference; the missing header is in the log.
            FromRoom::Failed { reason, .. } => {
                assert!(reason.starts_with(partyline::client_text::INTERNAL_ERROR), "{reason}");
                assert!(!reason.contains(USER_HEADER), "{reason}");
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
