//! `partyline dev` end to end: real sockets against a server on 127.0.0.1:0.

use std::time::Duration;

use partyline::client_text;
use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::{http, raw_upgrade, DevServer, Received};
use serde_json::json;

fn ephemeral() -> DevConfig {
    DevConfig::default()
}

#[timed_test]
async fn chat_history_and_broadcast_reach_every_member() {
    let s = DevServer::start(ephemeral()).await;
    let mut a = s.connect("/parties/main/room1?_pk=a").await;
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("hello").await;
    assert_eq!(a.recv_text().await, "hello", "the sender gets its own broadcast");
    let mut b = s.connect("/parties/main/room1?_pk=b").await;
    assert_eq!(b.recv_json().await, json!(["hello"]));
    b.send_text("hi there").await;
    assert_eq!(a.recv_text().await, "hi there");
    assert_eq!(b.recv_text().await, "hi there");
    // /party/:room is the same room of party main.
    let mut c = s.connect("/party/room1").await;
    assert_eq!(c.recv_json().await, json!(["hello", "hi there"]));
    // A different room id is a different room; room ids are not percent-decoded.
    let mut d = s.connect("/parties/main/%72oom1").await;
    assert_eq!(d.recv_text().await, "[]");
}

#[timed_test]
async fn http_reaches_the_same_room_state() {
    let s = DevServer::start(ephemeral()).await;
    let mut a = s.connect("/parties/main/h1").await;
    assert_eq!(a.recv_text().await, "[]");
    let res = s.http("POST", "/parties/main/h1", br#""from http""#).await;
    assert_eq!((res.status, res.text().as_str()), (200, "OK"));
    assert_eq!(a.recv_text().await, "from http");
    let res = s.http("GET", "/parties/main/h1", b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&res.body).unwrap(), json!(["from http"]));
    let res = s.http("POST", "/parties/main/h1", b"not json").await;
    assert_eq!(res.status, 400);
    let res = s.http("DELETE", "/parties/main/h1", b"").await;
    assert_eq!(res.status, 405);
}

#[timed_test]
async fn unknown_party_and_fetch_fallback() {
    let s = DevServer::start(ephemeral()).await;
    let res = s.http("GET", "/parties/nope/r", b"").await;
    assert_eq!((res.status, res.text()), (404, client_text::party_not_found("nope")));
    assert_eq!(res.header("content-type"), Some("text/plain;charset=UTF-8"));
    let res = s.http("GET", "/parties/MAIN/r", b"").await;
    assert_eq!((res.status, res.text()), (404, client_text::party_not_found("MAIN")));
    let (_, head) = raw_upgrade(s.addr, "/parties/nope/r", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // Non-party URLs go to main's on_fetch: the chat page, else 404.
    let res = s.http("GET", "/", b"").await;
    assert_eq!(res.status, 200);
    assert!(res.header("content-type").unwrap_or("").starts_with("text/html"));
    assert!(res.text().contains("<html"), "the page is HTML");
    let res = s.http("GET", "/nothing-here", b"").await;
    assert_eq!((res.status, res.text().as_str()), (404, client_text::NOT_FOUND));
    let res = s.http("GET", "/parties/main", b"").await;
    assert_eq!(res.status, 404);
    let res = s.http("GET", "/parties//r", b"").await;
    assert_eq!(res.status, 400);
}

#[timed_test]
async fn handshake_selects_no_subprotocol_and_no_extension() {
    let s = DevServer::start(ephemeral()).await;
    let (_stream, head) = raw_upgrade(
        s.addr,
        "/parties/echo/r?_pk=x",
        "Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    assert!(!lower.contains("sec-websocket-protocol"), "no subprotocol is selected: {head}");
    assert!(!lower.contains("sec-websocket-extensions"), "no extension is negotiated: {head}");
    // Bad handshakes are refused with 400.
    let headers = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let res = http(s.addr, "GET", "/parties/echo/r", &headers, b"").await;
    assert_eq!((res.status, res.text().as_str()), (400, client_text::WS_VERSION));
    let res = http(s.addr, "GET", "/parties/echo/r", &headers[..2], b"").await;
    assert_eq!(res.status, 400, "{}", res.text());
}

#[timed_test]
async fn echo_keeps_text_and_binary_apart_and_answers_only_the_sender() {
    let s = DevServer::start(ephemeral()).await;
    let mut a = s.connect("/parties/echo/e1").await;
    let mut b = s.connect("/parties/echo/e1").await;
    a.send_text("text").await;
    a.send_binary(&[0, 1, 2, 255]).await;
    assert_eq!(a.recv().await, Received::Text("text".into()));
    assert_eq!(a.recv().await, Received::Binary(vec![0, 1, 2, 255]));
    assert_eq!(b.recv_within(Duration::from_millis(300)).await, None, "echo answers the sender only");
}

#[timed_test]
async fn private_party_checks_the_token_at_the_edge() {
    let s = DevServer::start(ephemeral()).await;
    for path in ["/parties/private/p1", "/parties/private/p1?token="] {
        let (_st, head) = raw_upgrade(s.addr, path, "").await;
        assert!(head.starts_with("HTTP/1.1 401"), "{path}: {head}");
    }
    let mut a = s.connect("/parties/private/p1?token=alice").await;
    assert_eq!(a.recv_text().await, "welcome, alice");
    a.send_text("hi").await;
    assert_eq!(a.recv_text().await, "alice: hi");
    let res = s.http("GET", "/parties/private/p1", b"").await;
    assert_eq!(res.status, 401);
    let res = s.http("GET", "/parties/private/p1?token=bob", b"").await;
    assert_eq!(res.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(v["connections"], json!(1));
}

#[timed_test]
async fn storage_and_alarms_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = DevServer::start(DevServer::on_disk(dir.path())).await;
    let mut a = s.connect("/parties/main/keep").await;
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("persisted").await;
    assert_eq!(a.recv_text().await, "persisted");
    let mut c = s.connect("/parties/counter/alarmed").await;
    let _ = c.recv_json().await;
    c.send_text("alarm 2500").await;
    assert!(c.recv_json().await["alarm_at"].is_i64());
    c.send_text("inc").await;
    assert_eq!(c.recv_json().await["count"], json!(1));
    drop((a, c));
    s.stop().await;

    let s = DevServer::start(DevServer::on_disk(dir.path())).await;
    let mut a = s.connect("/parties/main/keep").await;
    assert_eq!(a.recv_json().await, json!(["persisted"]));
    let mut c = s.connect("/parties/counter/alarmed").await;
    assert_eq!(c.recv_json().await["count"], json!(1));
    let fired = partyline_tests::within(15, "the alarm after restart", async {
        loop {
            let v = c.recv_json().await;
            if v["alarm"] == json!(true) {
                return v;
            }
        }
    })
    .await;
    assert_eq!(fired["count"], json!(1));
}

#[timed_test]
async fn an_alarm_wakes_a_room_that_is_not_loaded() {
    let cfg = DevConfig {
        limits: partyline::Limits { room_idle: Duration::from_millis(200), ..Default::default() },
        ..ephemeral()
    };
    let s = DevServer::start(cfg).await;
    // Set the alarm over HTTP-free messaging, then leave: the room unloads while it waits.
    let mut c = s.connect("/parties/counter/sleepy").await;
    let _ = c.recv_json().await;
    c.send_text("alarm 1200").await;
    assert!(c.recv_json().await["alarm_at"].is_i64());
    c.send_text("inc").await;
    assert_eq!(c.recv_json().await["count"], json!(1));
    c.close(1000).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let res = s.http("GET", "/parties/counter/sleepy", b"").await;
    let v: serde_json::Value = serde_json::from_slice(&res.body).unwrap();
    assert_eq!(v["count"], json!(1));
    assert_eq!(v["alarms_fired"], json!(1), "the alarm fired while no client was connected: {v}");
}

#[timed_test]
async fn raw_http_answers_have_the_partykit_shape() {
    let s = DevServer::start(ephemeral()).await;
    let res = http(s.addr, "GET", "/parties/main/shape", &[], b"").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-length"), Some("2"));
    assert_eq!(res.text(), "[]");
}
