//! The edge's room limits in a cluster: the node refuses and the gateway answers for it.

use std::time::Duration;

use partyline::Limits;
use partyline_tests::cluster::TestCluster;
use partyline_tests::{raw_upgrade, within};

#[tokio::test]
async fn a_node_at_its_room_limit_makes_the_gateway_answer_503() {
    let limits = Limits { max_rooms: 1, ..Default::default() };
    let c = TestCluster::builder().nodes(1).gateways(1).limits(limits).start().await;
    let _a = c.connect(0, "/parties/faulty/first").await;
    let res = c.http(0, "GET", "/parties/faulty/second", b"").await;
    assert_eq!((res.status, res.text().as_str()), (503, "Too many rooms, try again later"));
    let (_, head) = raw_upgrade(c.gateway(0), "/parties/faulty/second", "").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    // The first room goes on.
    assert_eq!(c.http(0, "GET", "/parties/faulty/first", b"").await.status, 200);
}

#[tokio::test]
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
    assert_eq!(b.expect_close().await, (1013, "Room overloaded, try again later".into()));
    let res = within(20, "the request to be refused", c.http(0, "GET", "/parties/faulty/stuck", b"")).await;
    assert_eq!((res.status, res.text().as_str()), (503, "Room overloaded, try again later"));
    assert_eq!(c.http(0, "GET", "/parties/faulty/other", b"").await.status, 200, "other rooms go on");
}
