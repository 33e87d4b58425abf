//! The real npm `yjs` + `y-partykit` provider, run under Node against the `yjs` party (and the
//! `yjs-auth` test party) in `dev` and in a cluster with two gateways, and the collaborative text
//! page in two tabs of headless Chromium. The checks live in `tests/interop/yjs.mjs` and
//! `tests/interop/textpage.mjs`; `scripts/test.sh` installs their packages (`npm ci`) and
//! Chromium (apt).

use partyline::Limits;
use partyline_server::dev::DevConfig;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::TestCluster;
use partyline_tests::{run_interop_script, run_yjs_checks, DevServer};

#[timed_test]
async fn providers_against_dev() {
    let s = DevServer::start(DevConfig::default()).await;
    let addr = s.addr.to_string();
    run_yjs_checks(&["check", &addr, "--auth"]).await;
}

#[timed_test]
async fn a_document_survives_a_dev_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = DevServer::start(DevServer::on_disk(dir.path())).await;
    let addr = s.addr.to_string();
    run_yjs_checks(&["write", &addr, "restart-doc"]).await;
    s.stop().await;
    let s = DevServer::start(DevServer::on_disk(dir.path())).await;
    let addr = s.addr.to_string();
    run_yjs_checks(&["read", &addr, "restart-doc"]).await;
}

#[timed_test]
async fn providers_through_two_gateways_of_a_cluster() {
    let c = TestCluster::builder().nodes(2).gateways(2).start().await;
    let (a, b) = (c.gateway(0).to_string(), c.gateway(1).to_string());
    run_yjs_checks(&["check", &a, &b, "--auth"]).await;
}

#[timed_test]
async fn a_document_moves_to_another_node_whole() {
    // Small values force the 2 MB document into many pieces in Redis.
    let limits = Limits { max_value_bytes: 64 << 10, ..Limits::default() };
    let mut c = TestCluster::builder().nodes(1).gateways(2).limits(limits).start().await;
    let a = c.gateway(0).to_string();
    run_yjs_checks(&["write", &a, "moving-doc"]).await;
    // The only node stops (releasing its shards); a new node serves the room from Redis.
    c.nodes[0].stop().await;
    c.add_node().await;
    c.wait_for_members(1).await;
    let b = c.gateway(1).to_string();
    run_yjs_checks(&["read", &b, "moving-doc"]).await;
}

#[timed_test]
async fn the_text_page_in_two_tabs_of_headless_chromium() {
    let s = DevServer::start(DevConfig::default()).await;
    let addr = s.addr.to_string();
    run_interop_script("textpage.mjs", &[&addr], 120).await;
}
