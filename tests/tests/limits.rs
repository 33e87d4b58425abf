//! Limits and misbehaving parties and clients against `partyline dev`: each limit answers with
//! its documented close code or status, and the room keeps serving everyone else.

use std::time::Duration;

use partyline::client_text::{self, is_server_text};
use partyline::Limits;
use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::{client_frame, close_payload, raw_upgrade, read_server_frame, within, DevServer, Received};
use serde_json::json;
use tokio::io::AsyncWriteExt;

fn with_limits(limits: Limits) -> DevConfig {
    DevConfig { limits, ..DevConfig::default() }
}

#[timed_test]
async fn oversized_message_closes_with_1009() {
    let s = DevServer::start(with_limits(Limits { max_message_bytes: 1024, ..Default::default() })).await;
    let mut a = s.connect("/parties/echo/big").await;
    a.send_text(&"x".repeat(1024)).await;
    assert_eq!(a.recv_text().await.len(), 1024, "a message at the limit passes");
    a.send_text(&"x".repeat(1025)).await;
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 1009);
    assert_eq!(reason, client_text::MESSAGE_TOO_LARGE);
}

#[timed_test]
async fn an_outbound_frame_over_the_limit_closes_with_1009_or_is_dropped() {
    let limits = Limits { max_outbound_message_bytes: 1000, ..Default::default() };
    let s = DevServer::start(with_limits(limits)).await;
    // `send` (the echo party): that connection is closed with 1009.
    let mut a = s.connect("/parties/echo/out").await;
    a.send_text(&"x".repeat(1000)).await;
    assert_eq!(a.recv_text().await.len(), 1000, "a frame at the limit goes out");
    a.send_text(&"x".repeat(1001)).await;
    assert_eq!(a.expect_close().await, (1009, client_text::MESSAGE_TOO_LARGE.to_string()));
    // `broadcast`: the frame is dropped, the connection and the room go on.
    let mut b = s.connect("/parties/broadcast/out").await;
    b.send_text(&"y".repeat(1001)).await;
    b.send_text("small").await;
    assert_eq!(b.recv_text().await, "small");
}

#[timed_test]
async fn a_frame_larger_than_the_send_queue_bound_still_goes_out_alone() {
    let limits = Limits { max_outbox_bytes: 1000, max_outbound_message_bytes: 1 << 20, ..Default::default() };
    let s = DevServer::start(with_limits(limits)).await;
    let mut a = s.connect("/parties/echo/queue").await;
    a.send_binary(&vec![7u8; 200_000]).await;
    assert_eq!(a.recv().await, Received::Binary(vec![7u8; 200_000]));
    a.send_text("after").await;
    assert_eq!(a.recv_text().await, "after");
}

#[timed_test]
async fn invalid_utf8_text_closes_with_1007() {
    let s = DevServer::start(DevConfig::default()).await;
    let (mut stream, head) = raw_upgrade(s.addr, "/parties/echo/utf?_pk=raw", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(&client_frame(0x1, b"ok")).await.unwrap();
    let (fin, opcode, payload) = read_server_frame(&mut stream).await;
    assert!(fin);
    assert_eq!((opcode, payload.as_slice()), (0x1, b"ok".as_slice()));
    stream.write_all(&client_frame(0x1, &[0xc3, 0x28])).await.unwrap();
    let (_, opcode, payload) = read_server_frame(&mut stream).await;
    assert_eq!(opcode, 0x8, "a close frame");
    assert_eq!(close_payload(&payload), (1007, client_text::INVALID_UTF8.to_string()));
}

#[timed_test]
async fn ping_is_answered_and_client_close_is_answered() {
    let s = DevServer::start(DevConfig::default()).await;
    let (mut stream, _) = raw_upgrade(s.addr, "/parties/echo/ping", "").await;
    stream.write_all(&client_frame(0x9, b"are you there")).await.unwrap();
    let (_, opcode, payload) = read_server_frame(&mut stream).await;
    assert_eq!((opcode, payload.as_slice()), (0xA, b"are you there".as_slice()));
    let mut close = 4001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    stream.write_all(&client_frame(0x8, &close)).await.unwrap();
    let (_, opcode, payload) = read_server_frame(&mut stream).await;
    assert_eq!(opcode, 0x8, "the server answers a close frame (RFC 6455; PartyKit does not)");
    assert_eq!(close_payload(&payload).0, 4001);
}

#[timed_test]
async fn long_room_id_and_large_body_are_refused() {
    let s = DevServer::start(with_limits(Limits { max_request_body_bytes: 100, ..Default::default() })).await;
    let long = "r".repeat(257);
    let res = s.http("GET", &format!("/parties/main/{long}"), b"").await;
    assert_eq!((res.status, res.text().as_str()), (400, client_text::ROOM_ID_TOO_LONG));
    let res = s.http("GET", &format!("/parties/main/{}", "r".repeat(256)), b"").await;
    assert_eq!(res.status, 200);
    let res = s.http("POST", "/parties/main/body", &[b'x'; 101]).await;
    assert_eq!((res.status, res.text().as_str()), (413, client_text::BODY_TOO_LARGE));
}

#[timed_test]
async fn a_client_that_does_not_read_is_closed_and_the_room_goes_on() {
    let limits = Limits { max_outbox_messages: 64, max_outbox_bytes: 1 << 20, ..Default::default() };
    let s = DevServer::start(with_limits(limits)).await;
    // The slow client connects over raw TCP and never reads after the handshake.
    let (slow, head) = raw_upgrade(s.addr, "/parties/main/slow?_pk=slow", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut fast = s.connect("/parties/main/slow?_pk=fast").await;
    assert_eq!(fast.recv_text().await, "[]");
    let payload = "y".repeat(4000);
    for i in 0..2000 {
        fast.send_text(&format!("{i}{payload}")).await;
        let got = fast.recv_text().await;
        assert!(got.starts_with(&i.to_string()), "the fast client gets every broadcast in order");
    }
    // The slow one was cut off: the server closed its TCP connection.
    let mut slow = slow;
    let mut buf = vec![0u8; 1 << 16];
    let ended = within(20, "the slow client's connection to end", async {
        use tokio::io::AsyncReadExt;
        let mut total = 0usize;
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    assert!(ended < 2000 * 4000, "the slow client did not get everything: {ended} bytes");
    fast.send_text("still here").await;
    assert_eq!(fast.recv_text().await, "still here");
}

#[timed_test]
async fn panics_errors_and_hangs_are_contained() {
    let s = DevServer::start(with_limits(Limits { handler_timeout: Duration::from_millis(300), ..Default::default() }))
        .await;
    let mut bystander = s.connect("/parties/faulty/f?_pk=bystander").await;
    let mut a = s.connect("/parties/faulty/f?_pk=a").await;
    a.send_text("error").await;
    assert_eq!(a.recv_text().await, "error: asked to fail", "on_message errors reach on_error");
    a.send_text("panic").await;
    let (code, reason) = a.expect_close().await;
    assert_eq!(code, 1011);
    assert_internal_error(&reason, "asked to panic");
    assert_eq!(bystander.recv_text().await, "closed a", "on_close ran for the closed connection");
    let mut b = s.connect("/parties/faulty/f?_pk=b").await;
    b.send_text("hang").await;
    let (code, reason) = b.expect_close().await;
    assert_eq!(code, 1011);
    assert_internal_error(&reason, "timed out");
    bystander.send_text("count").await;
    loop {
        match bystander.recv().await {
            Received::Text(t) if t.starts_with("closed") => continue,
            Received::Text(t) => {
                assert_eq!(t, "1", "only the bystander is left");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // HTTP handlers are contained too.
    let res = s.http("GET", "/parties/faulty/f/panic", b"").await;
    assert_eq!(res.status, 500);
    assert_referenced(&res.text(), client_text::INTERNAL_SERVER_ERROR, "asked to panic");
    let res = s.http("GET", "/parties/faulty/f/hang", b"").await;
    assert_eq!(res.status, 500);
    assert_referenced(&res.text(), client_text::INTERNAL_SERVER_ERROR, "timed out");
    let res = s.http("GET", "/parties/faulty/f/error", b"").await;
    assert_eq!((res.status, res.text().as_str()), (418, "asked to fail"));
    let res = s.http("GET", "/parties/faulty/f", b"").await;
    assert_eq!(res.status, 200);
}

/// `text` is `<base> (ref xxxxxxxx)`, a documented server text, and says nothing of `inside`
/// (the party's error, which goes to the log only).
fn assert_referenced(text: &str, base: &str, inside: &str) {
    assert!(is_server_text(text), "{text:?}");
    assert!(text.starts_with(&format!("{base} (ref ")), "{text:?}");
    assert!(!text.contains(inside), "the party's error reached the client: {text:?}");
}

/// A 1011 reason for a failed handler: `internal error (ref xxxxxxxx)`, without the error.
fn assert_internal_error(reason: &str, inside: &str) {
    assert_referenced(reason, client_text::INTERNAL_ERROR, inside);
}

#[timed_test]
async fn a_failing_on_connect_is_a_101_then_1011_with_a_reference() {
    let s = DevServer::start(DevConfig::default()).await;
    let (mut stream, head) = raw_upgrade(s.addr, "/parties/faulty/c?fail=1", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, opcode, payload) = read_server_frame(&mut stream).await;
    assert_eq!(opcode, 0x8);
    let (code, reason) = close_payload(&payload);
    assert_eq!(code, 1011);
    // The error ("on_connect refused this connection") is logged with the same reference.
    assert_internal_error(&reason, "on_connect refused");
    let tags = (0..10).map(|i| format!("t{i}")).collect::<Vec<_>>().join(",");
    let mut c = s.connect(&format!("/parties/faulty/c?tags={tags}")).await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1011);
    assert_internal_error(&reason, "tags");
}

#[timed_test]
async fn state_and_storage_limits_are_errors_for_the_party() {
    let s = DevServer::start(DevConfig::default()).await;
    let mut a = s.connect("/parties/faulty/lim").await;
    a.send_text("state 100").await;
    assert_eq!(a.recv_text().await, "ok");
    a.send_text("state 20000").await;
    assert!(a.recv_text().await.contains("the limit is 16384"));
    a.send_text("put 1000").await;
    assert_eq!(a.recv_text().await, "ok");
    a.send_text(&format!("put {}", 128 * 1024 + 1)).await;
    assert!(a.recv_text().await.contains("the limit is 131072"));
}

#[timed_test]
async fn newest_connection_with_an_id_wins() {
    let s = DevServer::start(DevConfig::default()).await;
    let mut old = s.connect("/parties/faulty/dup?_pk=same").await;
    let mut other = s.connect("/parties/faulty/dup?_pk=other").await;
    let mut new = s.connect("/parties/faulty/dup?_pk=same").await;
    let (code, reason) = old.expect_close().await;
    assert_eq!((code, reason.as_str()), (4409, client_text::REPLACED));
    assert_eq!(other.recv_text().await, "closed same", "on_close ran for the replaced socket");
    new.send_text("ids").await;
    assert_eq!(new.recv_text().await, "other,same", "never both");
    // The old socket closing later does not disturb the new one.
    drop(old);
    tokio::time::sleep(Duration::from_millis(200)).await;
    new.send_text("count").await;
    assert_eq!(new.recv_text().await, "2");
    other.send_text("tagged same").await;
    assert_eq!(other.recv_text().await, "same");
}

#[timed_test]
async fn hibernation_keeps_sockets_ids_tags_and_state() {
    let limits = Limits { hibernate_idle: Duration::from_millis(300), ..Default::default() };
    let s = DevServer::start(with_limits(limits)).await;
    let mut a = s.connect("/parties/counter/h?_pk=alice&role=admin").await;
    assert_eq!(a.recv_json().await, json!({"count": 0}));
    a.send_text("who").await;
    let before = a.recv_json().await;
    assert_eq!(before["id"], json!("alice"));
    assert_eq!(before["tags"], json!(["alice", "role:admin"]));
    assert_eq!(before["mine"], json!(1));
    a.send_text("inc").await;
    assert_eq!(a.recv_json().await["count"], json!(1));
    // Idle past hibernate_idle: the room unloads, the socket stays open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.send_text("who").await;
    let after = a.recv_json().await;
    assert_eq!(after["id"], json!("alice"));
    assert_eq!(after["tags"], json!(["alice", "role:admin"]));
    assert_eq!(after["mine"], json!(3), "connection state survived hibernation");
    assert_eq!(after["count"], json!(1), "storage was re-read");
    let (b, a_started) = (before["started"].as_u64().unwrap(), after["started"].as_u64().unwrap());
    assert!(a_started > b, "on_start ran again after hibernation ({b} -> {a_started})");
}
