//! The edge's room limits in a cluster: the node refuses and the gateway answers for it; the
//! storage quota holds on Redis.

use std::time::Duration;

use partyline::client_text;
use partyline::Limits;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::TestCluster;
use partyline_tests::{raw_upgrade, within};

#[timed_test]
async fn a_node_at_its_room_limit_makes_the_gateway_answer_503() {
    let limits = Limits { max_rooms: 1, ..Default::default() };
    let c = TestCluster::builder().nodes(1).gateways(1).limits(limits).start().await;
    let _a = c.connect(0, "/parties/faulty/first").await;
    let res = c.http(0, "GET", "/parties/faulty/second", b"").await;
    assert_eq!((res.status, res.text().as_str()), (503, client_text::TOO_MANY_ROOMS));
    let (_, head) = raw_upgrade(c.gateway(0), "/parties/faulty/second", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // The first room goes on.
    assert_eq!(c.http(0, "GET", "/parties/faulty/first", b"").await.status, 200);
}

#[timed_test]
async fn a_stuck_room_on_a_node_sheds_load_with_1013_and_503() {
    let limits = Limits {
        room_queue_timeout: Duration::from_millis(300),
        handler_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let c = TestCluster::builder().nodes(1).gateways(1).limits(limits).start().await;
    let mut a = c.connect(0, "/parties/faulty/stuck?_pk=a").await;
    let mut b = c.connect(0, "/parties/faulty/stuck?_pk=b").await;
    a.send_text("hang").await;
    // The node's forwarder finds the room's queue full: it closes the sender with 1013.
    for i in 0..1200 {
        b.send_text(&i.to_string()).await;
    }
    assert_eq!(b.expect_close().await, (1013, client_text::OVERLOADED.into()));
    let res = within(20, "the request to be refused", c.http(0, "GET", "/parties/faulty/stuck", b"")).await;
    assert_eq!((res.status, res.text().as_str()), (503, client_text::OVERLOADED));
    assert_eq!(c.http(0, "GET", "/parties/faulty/other", b"").await.status, 200, "other rooms go on");
}

#[timed_test]
async fn the_storage_quota_holds_on_redis() {
    let limits = Limits { max_room_bytes: 10_000, max_room_keys: 4, ..Default::default() };
    let c = TestCluster::builder().nodes(1).gateways(1).limits(limits).start().await;
    let mut a = c.connect(0, "/parties/faulty/quota").await;
    let mut ask = async |cmd: &str| {
        a.send_text(cmd).await;
        a.recv_text().await
    };
    assert_eq!(ask("putkey k1 4000").await, "ok");
    assert_eq!(ask("putkey k2 4000").await, "ok");
    let err = ask("putkey k3 4000").await;
    assert!(err.contains("quota exceeded") && err.contains("12006 bytes"), "{err}");
    assert_eq!(ask("putkey k1 1000").await, "ok", "an overwrite that shrinks");
    assert_eq!(ask("putkey k3 4000").await, "ok", "fits now");
    assert_eq!(ask("putkey a 1").await, "ok");
    let err = ask("putkey b 1").await;
    assert!(err.contains("5 keys"), "{err}");
    assert_eq!(ask("echo").await, "echo", "the room goes on");
}
