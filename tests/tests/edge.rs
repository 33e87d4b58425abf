//! The edge under abuse, against `partyline dev`: oversized frames, slow and idle connections,
//! connection and room floods, silent sockets, fast senders, stuck rooms, storage quotas,
//! forged client addresses and TLS. Each limit answers with its documented close code or status
//! and the server keeps serving everyone else.

use std::time::Duration;

use partyline::client_text;
use partyline::Limits;
use partyline_gateway::EdgeLimits;
use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::{
    client_frame, close_payload, http, raw_upgrade, read_server_frame, repo_root, within, Client, DevServer, Received,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn dev(limits: Limits, edge: EdgeLimits) -> DevConfig {
    DevConfig { limits, edge, ..DevConfig::default() }
}

/// Reads until the server closes the connection (EOF or reset); fails after `secs`.
async fn until_closed(stream: &mut TcpStream, secs: u64, what: &str) {
    let mut buf = [0u8; 4096];
    within(secs, what, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
}

#[timed_test]
async fn oversized_frames_get_1009_and_not_a_reset() {
    let s = DevServer::start(DevConfig::default()).await;
    // 1 MiB is the limit; the client is still sending when the gateway closes: it must read on
    // and discard, or the client's kernel sees a reset and the close frame is lost.
    for size in [1_572_864usize, 2 << 20, 4 << 20, 8 << 20] {
        let mut a = s.connect("/parties/echo/big").await;
        a.send_binary(&vec![7u8; size]).await;
        let (code, reason) = a.expect_close().await;
        assert_eq!(code, 1009, "{size} bytes");
        assert_eq!(reason, client_text::MESSAGE_TOO_LARGE);
    }
    let mut a = s.connect("/parties/echo/big").await;
    a.send_text("still serving").await;
    assert_eq!(a.recv_text().await, "still serving");
}

#[timed_test]
async fn slowloris_request_heads_are_cut_off() {
    let edge = EdgeLimits { header_timeout: Duration::from_secs(1), ..Default::default() };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let addr = s.addr;
    // 100 connections trickle a request head that never ends, a line every 200 ms.
    let tricklers: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(addr).await.unwrap();
                tcp.write_all(format!("GET /parties/main/slow{i} HTTP/1.1\r\nHost: x\r\n").as_bytes()).await.unwrap();
                let started = tokio::time::Instant::now();
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        r = tcp.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return started.elapsed(),
                            Ok(_) => continue,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if tcp.write_all(b"X-Slow: 1\r\n").await.is_err() {
                                return started.elapsed();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // Meanwhile others are served.
    let res = s.http("GET", "/parties/main/fine", b"").await;
    assert_eq!(res.status, 200);
    for t in tricklers {
        let held = within(15, "a slow request head to be cut off", t).await.unwrap();
        assert!(held < Duration::from_secs(5), "held {held:?}");
    }
}

#[timed_test]
async fn idle_keep_alive_connections_and_stalled_bodies_are_closed() {
    let edge = EdgeLimits {
        header_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(800),
        ..Default::default()
    };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    // A keep-alive connection that sends nothing after its first response is closed.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /parties/main/idle HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = within(10, "the first response", tcp.read(&mut buf)).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    until_closed(&mut tcp, 5, "an idle keep-alive connection to be closed").await;
    // A body that stops arriving gets 408.
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"POST /parties/main/stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n\"only part")
        .await
        .unwrap();
    let mut raw = Vec::new();
    within(10, "the 408", tcp.read_to_end(&mut raw)).await.unwrap();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&raw));
    let res = partyline_tests::parse_response(&raw);
    assert_eq!(res.text(), client_text::BODY_TIMEOUT);
}

#[timed_test]
async fn a_client_that_stops_reading_a_response_is_cut_off() {
    let edge = EdgeLimits { idle_timeout: Duration::from_secs(1), ..Default::default() };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /parties/faulty/slow/big HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // Read nothing while the gateway's writes back up, then see what arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    within(10, "the stalled response to end", async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(got < 8 << 20, "the connection was closed before the whole body went out ({got} bytes)");
}

#[timed_test]
async fn tcp_connections_past_the_cap_get_503() {
    let edge = EdgeLimits { max_tcp_connections: 5, ..Default::default() };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(s.addr).await.unwrap());
    }
    // The accept loop counts them as it accepts them: wait until the sixth is refused.
    let refused = within(10, "a connection over the cap to be refused", async {
        loop {
            let res = s.http("GET", "/parties/main/cap", b"").await;
            if res.status == 503 {
                return res;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(refused.text(), client_text::GATEWAY_FULL);
    assert_eq!(refused.header("retry-after"), Some("1"));
    held.pop();
    within(10, "a place to free up", async {
        while s.http("GET", "/parties/main/cap", b"").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[timed_test]
async fn silent_sockets_are_pinged_then_dropped() {
    let edge = EdgeLimits {
        ping_interval: Some(Duration::from_millis(300)),
        pong_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    // A client that never answers: a ping, then a close 1001, then the end.
    let (mut raw, head) = raw_upgrade(s.addr, "/parties/echo/ping", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, opcode, _) = read_server_frame(&mut raw).await;
    assert_eq!(opcode, 0x9, "a ping");
    let (_, opcode, payload) = read_server_frame(&mut raw).await;
    assert_eq!(opcode, 0x8, "then a close frame");
    assert_eq!(close_payload(&payload), (1001, client_text::NO_PONG.into()));
    until_closed(&mut raw, 5, "the silent socket to be dropped").await;
    // A client that answers pings (as browsers and partysocket do) stays.
    let mut a = s.connect("/parties/echo/ping").await;
    assert_eq!(a.recv_within(Duration::from_secs(2)).await, None, "nothing but pings for 2 s");
    a.send_text("still here").await;
    assert_eq!(a.recv_text().await, "still here");
}

#[timed_test]
async fn a_client_over_its_message_rate_is_closed_with_1008() {
    let edge = EdgeLimits { max_messages_per_second: 5, message_burst: 10, ..Default::default() };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let mut a = s.connect("/parties/echo/rate").await;
    for i in 0..10 {
        a.send_text(&i.to_string()).await;
        assert_eq!(a.recv_text().await, i.to_string(), "the burst passes");
    }
    for i in 0..20 {
        a.send_text(&i.to_string()).await;
    }
    assert_eq!(a.expect_close().await, (1008, client_text::RATE_LIMITED.into()));
    let mut b = s.connect("/parties/echo/rate").await;
    b.send_text("others go on").await;
    assert_eq!(b.recv_text().await, "others go on");
}

#[timed_test]
async fn one_client_address_is_limited_in_open_and_new_sockets() {
    let edge = EdgeLimits {
        max_connections_per_ip: 2,
        max_connects_per_ip_per_second: 1,
        connect_burst: 3,
        ..Default::default()
    };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let a = s.connect("/parties/echo/ip").await;
    let _b = s.connect("/parties/echo/ip").await;
    let (_, head) = raw_upgrade(s.addr, "/parties/echo/ip", "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "a third open socket: {head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    drop(a);
    // The freed place can be taken once the gateway saw the close: the burst has one left.
    let _c = within(10, "the freed place", async {
        loop {
            if let Ok(c) = Client::connect(&s.ws("/parties/echo/ip")).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Three connects in a burst, then one a second: the next one comes too fast.
    let (_, head) = raw_upgrade(s.addr, "/parties/echo/other", "").await;
    assert!(head.starts_with("HTTP/1.1 429"), "a fourth connect within the second: {head}");
}

#[timed_test]
async fn parties_see_the_client_address_and_forged_headers_are_replaced() {
    let forged = "X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nCF-Connecting-IP: 6.6.6.6\r\n";
    let s = DevServer::start(DevConfig::default()).await;
    let (mut raw, head) = raw_upgrade(s.addr, "/parties/faulty/who?whoami=1", forged).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_, _, payload) = read_server_frame(&mut raw).await;
    assert_eq!(String::from_utf8(payload).unwrap(), "127.0.0.1|127.0.0.1|127.0.0.1", "not from a trusted proxy");
    let headers = [("X-Forwarded-For", "6.6.6.6"), ("CF-Connecting-IP", "6.6.6.6")];
    let res = http(s.addr, "GET", "/parties/faulty/who/whoami", &headers, b"").await;
    assert_eq!(res.text(), "127.0.0.1|127.0.0.1|127.0.0.1");

    // Behind a trusted proxy: the right-most address it did not add itself.
    let edge = EdgeLimits { trusted_proxies: "127.0.0.0/8".parse().unwrap(), ..Default::default() };
    let s = DevServer::start(dev(Limits::default(), edge)).await;
    let (mut raw, _) =
        raw_upgrade(s.addr, "/parties/faulty/who?whoami=1", "X-Forwarded-For: 6.6.6.6, 1.2.3.4\r\n").await;
    let (_, _, payload) = read_server_frame(&mut raw).await;
    assert_eq!(String::from_utf8(payload).unwrap(), "1.2.3.4|6.6.6.6, 1.2.3.4, 127.0.0.1|1.2.3.4");
    let res = http(s.addr, "GET", "/parties/faulty/who/whoami", &[("X-Real-IP", "2001:db8::5")], b"").await;
    assert_eq!(res.text(), "2001:db8::5|127.0.0.1|2001:db8::5");
}

#[timed_test]
async fn connection_ids_are_bounded_and_utf8() {
    let s = DevServer::start(DevConfig::default()).await;
    let ok = "a".repeat(256);
    let mut a = s.connect(&format!("/parties/faulty/ids?_pk={ok}")).await;
    a.send_text("ids").await;
    assert_eq!(a.recv_text().await, ok);
    let (_, head) = raw_upgrade(s.addr, &format!("/parties/faulty/ids?_pk={}", "a".repeat(257)), "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (_, head) = raw_upgrade(s.addr, "/parties/faulty/ids?_pk=%C3%28", "").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let mut b = s.connect("/parties/faulty/ids?_pk=%C3%A9t%C3%A9").await;
    b.send_text("ids").await;
    assert_eq!(b.recv_text().await, format!("{ok},été"));
}

#[timed_test]
async fn the_connection_limit_never_overshoots() {
    let s = DevServer::start(DevConfig { max_connections: 5, ..DevConfig::default() }).await;
    let addr = s.addr;
    let attempts: Vec<_> = (0..40)
        .map(|i| tokio::spawn(async move { raw_upgrade(addr, &format!("/parties/echo/many?_pk={i}"), "").await }))
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for a in attempts {
        let (stream, head) = a.await.unwrap();
        if head.starts_with("HTTP/1.1 101") {
            open.push(stream);
        } else {
            assert!(head.starts_with("HTTP/1.1 503"), "{head}");
            refused += 1;
        }
    }
    assert_eq!((open.len(), refused), (5, 35));
}

#[timed_test]
async fn the_room_limit_refuses_new_rooms_and_idle_rooms_make_way() {
    let limits = Limits { max_rooms: 2, ..Default::default() };
    let s = DevServer::start(dev(limits, EdgeLimits::default())).await;
    let _r1 = s.connect("/parties/faulty/r1").await;
    let r2 = s.connect("/parties/faulty/r2").await;
    // Both rooms have someone in them: a third room is refused, before any 101.
    let res = s.http("GET", "/parties/faulty/r3", b"").await;
    assert_eq!((res.status, res.text().as_str()), (503, client_text::TOO_MANY_ROOMS));
    let (_, head) = raw_upgrade(s.addr, "/parties/faulty/r3", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // Once nobody is in r2, it leaves for r3 (long before its idle time).
    drop(r2);
    within(10, "r2 to make way", async {
        while s.http("GET", "/parties/faulty/r3", b"").await.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Rooms only reached over HTTP make way for each other.
    for room in ["r4", "r5", "r6"] {
        assert_eq!(s.http("GET", &format!("/parties/faulty/{room}"), b"").await.status, 200, "{room}");
    }
}

#[timed_test]
async fn a_stuck_room_sheds_load_with_1013_and_503() {
    let limits = Limits {
        room_queue_timeout: Duration::from_millis(300),
        handler_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let s = DevServer::start(dev(limits, EdgeLimits::default())).await;
    let mut a = s.connect("/parties/faulty/stuck?_pk=a").await;
    let mut b = s.connect("/parties/faulty/stuck?_pk=b").await;
    a.send_text("hang").await;
    // The room's queue (1,024 commands) fills; the frame after that waits 300 ms, then the
    // sender is told to come back later.
    for i in 0..1100 {
        b.send_text(&i.to_string()).await;
    }
    assert_eq!(b.expect_close().await, (1013, client_text::OVERLOADED.into()));
    let res = s.http("GET", "/parties/faulty/stuck", b"").await;
    assert_eq!((res.status, res.text().as_str()), (503, client_text::OVERLOADED));
    assert_eq!(res.header("retry-after"), Some("1"));
    // Other rooms are not affected.
    assert_eq!(s.http("GET", "/parties/faulty/other", b"").await.status, 200);
}

#[timed_test]
async fn storage_quotas_are_errors_for_the_party_in_memory_and_on_disk() {
    let limits = Limits { max_room_bytes: 10_000, max_room_keys: 4, ..Default::default() };
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        dev(limits.clone(), EdgeLimits::default()),
        DevConfig { limits: limits.clone(), ..DevServer::on_disk(dir.path()) },
    ] {
        let s = DevServer::start(cfg).await;
        let mut a = s.connect("/parties/faulty/quota").await;
        assert_eq!(ask(&mut a, "putkey k1 4000").await, "ok");
        assert_eq!(ask(&mut a, "putkey k2 4000").await, "ok");
        let err = ask(&mut a, "putkey k3 4000").await;
        assert!(err.contains("quota exceeded") && err.contains("12006 bytes"), "{err}");
        assert_eq!(ask(&mut a, "putkey k1 1000").await, "ok", "an overwrite that shrinks");
        assert_eq!(ask(&mut a, "putkey k3 4000").await, "ok", "fits now");
        assert_eq!(ask(&mut a, "putkey a 1").await, "ok");
        let err = ask(&mut a, "putkey b 1").await;
        assert!(err.contains("5 keys"), "{err}");
        assert_eq!(ask(&mut a, "echo").await, "echo", "the room goes on");
        drop(a);
        s.stop().await;
    }
}

async fn ask(a: &mut Client, cmd: &str) -> String {
    a.send_text(cmd).await;
    a.recv_text().await
}

#[timed_test]
async fn try_send_reports_the_outbound_limit_and_keeps_the_connection() {
    let limits = Limits { max_outbound_message_bytes: 1000, ..Default::default() };
    let s = DevServer::start(dev(limits, EdgeLimits::default())).await;
    let mut a = s.connect("/parties/faulty/out").await;
    a.send_text("send 1000").await;
    assert_eq!(a.recv().await, Received::Binary(vec![b'x'; 1000]));
    a.send_text("send 1001").await;
    assert_eq!(a.recv_text().await, "outbound message is too large: 1001 > 1000");
    a.send_text("still open").await;
    assert_eq!(a.recv_text().await, "still open");
}

#[timed_test]
async fn wss_and_https_with_tls() {
    let certs = repo_root().join("tests/certs");
    let tls = partyline_gateway::tls_config(&certs.join("server.pem"), &certs.join("server.key")).unwrap();
    let s = DevServer::start(DevConfig { tls: Some(tls), ..DevConfig::default() }).await;
    let connector = partyline_tests::tls::connector(&certs.join("ca.pem"));
    // wss://
    let stream = partyline_tests::tls::connect(&connector, s.addr).await;
    let url = format!("wss://localhost:{}/parties/echo/tls", s.addr.port());
    let (ws, _) = tokio_tungstenite::client_async(url, stream).await.expect("a WebSocket over TLS");
    let mut a = Client::from_stream(ws);
    a.send_text("over tls").await;
    assert_eq!(a.recv().await, Received::Text("over tls".into()));
    // https://
    let mut stream = partyline_tests::tls::connect(&connector, s.addr).await;
    stream.write_all(b"GET /parties/main/tls HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    within(10, "an HTTPS response", stream.read_to_end(&mut raw)).await.ok();
    assert!(String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    // Plain HTTP to a TLS port gets nothing useful, and the port keeps serving.
    let mut plain = TcpStream::connect(s.addr).await.unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    until_closed(&mut plain, 15, "a plain HTTP request on the TLS port to be dropped").await;
}

#[timed_test]
async fn raw_frames_after_a_close_do_not_hang_the_gateway() {
    // A client that sends a too-large frame header and then nothing more: the linger ends on its
    // own time and the socket is gone.
    let s = DevServer::start(with_small_linger()).await;
    let (mut raw, _) = raw_upgrade(s.addr, "/parties/echo/linger", "").await;
    let mut frame = client_frame(0x2, &[0u8; 16]);
    // Claim 2 MiB in the header, send only 16 bytes.
    frame.truncate(2);
    frame[1] = 0x80 | 127;
    frame.extend_from_slice(&(2u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    raw.write_all(&frame).await.unwrap();
    let (_, opcode, payload) = read_server_frame(&mut raw).await;
    assert_eq!((opcode, close_payload(&payload)), (0x8, (1009, client_text::MESSAGE_TOO_LARGE.to_string())));
    until_closed(&mut raw, 10, "the lingering socket to close").await;
}

fn with_small_linger() -> DevConfig {
    dev(Limits::default(), EdgeLimits { linger: Duration::from_millis(500), ..Default::default() })
}
