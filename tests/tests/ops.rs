//! Operating a cluster of real `partyline` processes: metrics move with traffic on a gateway
//! and a node, one trace covers a request from the gateway through gRPC to the node's room
//! (exported over OTLP to a receiver in this test, with both protocols), and a node on an empty
//! Redis waits for `partyline init` instead of creating a cluster by itself.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use partyline_cluster::redis::testing::RedisServer;
use partyline_cluster::redis::{Redis, RedisConfig};
use partyline_test_macros::timed_test;
use partyline_tests::deploy::{free_port, get, partyline_bin, sample, wait_ok, Proc};
use partyline_tests::{http, within, Client};
use prost::Message as _;

const SECRET: &str = "ops-test-cluster-secret";

struct Cluster {
    _redis: RedisServer,
    _logs: tempfile::TempDir,
    node: Proc,
    gateway: Proc,
    client_addr: SocketAddr,
    node_admin: SocketAddr,
    gateway_admin: SocketAddr,
}

/// Redis, one node (metrics on their own port; the first start of a cluster, so with
/// `--init-cluster`) and one gateway (admin listener), with `extra` environment on both.
async fn cluster(extra: &[(&str, &str)], node_env: &[(&str, &str)], gateway_env: &[(&str, &str)]) -> Cluster {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let bin = partyline_bin();
    let grpc = free_port("127.0.0.1");
    let (node_admin, client, gateway_admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1"));
    let base = |more: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut env = vec![
            ("PARTYLINE_REDIS_URL".to_string(), redis.url()),
            ("PARTYLINE_CLUSTER_SECRET".to_string(), SECRET.to_string()),
            ("PARTYLINE_WORKER_THREADS".to_string(), "2".to_string()),
        ];
        env.extend(extra.iter().chain(more).map(|(k, v)| (k.to_string(), v.to_string())));
        env
    };
    let node_args: Vec<String> = [
        "node",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--id",
        "ops-node",
        "--lease-profile",
        "fast",
        "--metrics-listen",
        &format!("127.0.0.1:{node_admin}"),
        "--init-cluster",
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn("node", &bin, &node_args, &base(node_env), logs.path());
    let gw_args: Vec<String> =
        ["gateway", "--port", &client.to_string(), "--admin-listen", &format!("127.0.0.1:{gateway_admin}")]
            .map(String::from)
            .to_vec();
    let mut gateway = Proc::spawn("gateway", &bin, &gw_args, &base(gateway_env), logs.path());
    let node_admin: SocketAddr = format!("127.0.0.1:{node_admin}").parse().unwrap();
    let gateway_admin: SocketAddr = format!("127.0.0.1:{gateway_admin}").parse().unwrap();
    wait_ok(node_admin, "/readyz", 60, &mut [&mut node, &mut gateway]).await;
    wait_ok(gateway_admin, "/readyz", 60, &mut [&mut node, &mut gateway]).await;
    Cluster {
        _redis: redis,
        _logs: logs,
        node,
        gateway,
        client_addr: format!("127.0.0.1:{client}").parse().unwrap(),
        node_admin,
        gateway_admin,
    }
}

fn at_least(text: &str, name: &str, min: f64) {
    let v = sample(text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    assert!(v >= min, "{name} is {v}, expected at least {min}");
}

#[timed_test]
async fn gateway_and_node_metrics_move_with_traffic() {
    let mut c = within(90, "the cluster to start", cluster(&[], &[], &[])).await;
    let url = format!("ws://{}/parties/main/metrics-room", c.client_addr);
    let mut a = Client::connect(&url).await.expect("connect a");
    let mut b = Client::connect(&url).await.expect("connect b");
    a.recv_text().await; // the chat history
    b.recv_text().await;
    for i in 0..5 {
        a.send_text(&format!("hello {i}")).await;
        assert_eq!(b.recv_text().await, format!("hello {i}"));
    }
    let res = http(c.client_addr, "GET", "/parties/main/metrics-room", &[], b"").await;
    assert_eq!(res.status, 200);

    let gw = get(c.gateway_admin, "/metrics").await;
    assert_eq!(gw.status, 200);
    assert!(gw.header("content-type").unwrap_or_default().starts_with("application/openmetrics-text"));
    let gw = gw.text();
    at_least(&gw, "partyline_gateway_connections_accepted_total", 2.0);
    at_least(&gw, "partyline_gateway_open_sockets", 2.0);
    at_least(&gw, "partyline_gateway_frames_from_clients_total", 5.0);
    at_least(&gw, "partyline_gateway_frames_to_clients_total", 12.0); // 2 histories + 5 x 2 broadcasts
    at_least(&gw, "partyline_gateway_bytes_from_clients_total", 35.0);
    at_least(&gw, "partyline_gateway_room_broadcasts_total", 5.0);
    at_least(&gw, "partyline_gateway_broadcast_fanout_count", 5.0);
    at_least(&gw, "partyline_gateway_broadcast_fanout_sum", 10.0);
    at_least(&gw, "partyline_gateway_hook_duration_seconds_count{hook=\"on_before_connect\"", 2.0);
    at_least(&gw, "partyline_gateway_link_open_duration_seconds_count", 1.0);
    at_least(&gw, "partyline_gateway_room_request_duration_seconds_count", 1.0);
    at_least(&gw, "partyline_gateway_live_nodes", 1.0);

    let node = get(c.node_admin, "/metrics").await;
    assert_eq!(node.status, 200);
    let node = node.text();
    at_least(&node, "partyline_node_links_opened_total", 1.0);
    at_least(&node, "partyline_node_link_messages_in_total", 7.0); // 2 connects + 5 frames
    at_least(&node, "partyline_node_link_messages_out_total", 5.0);
    at_least(&node, "partyline_node_requests_total", 1.0);
    at_least(&node, "partyline_node_lease_acquisitions_total", 1.0);
    at_least(&node, "partyline_node_rooms", 1.0);
    at_least(&node, "partyline_node_shards_owned", 1.0);
    at_least(&node, "partyline_node_event_duration_seconds_count{event=\"message\"", 5.0);
    at_least(&node, "partyline_node_event_duration_seconds_count{event=\"connect\"", 2.0);
    at_least(&node, "partyline_node_commit_duration_seconds_count", 1.0);
    // Renewals run every 500 ms with the fast profile.
    within(10, "a lease renewal", async {
        loop {
            let text = get(c.node_admin, "/metrics").await.text();
            if sample(&text, "partyline_node_lease_renewals_total").unwrap_or(0.0) >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // With an admin listener, the client port does not serve /_partyline/*.
    assert_eq!(http(c.client_addr, "GET", "/_partyline/metrics", &[], b"").await.status, 404);
    assert_eq!(get(c.gateway_admin, "/healthz").await.status, 200);
    assert_eq!(get(c.node_admin, "/healthz").await.status, 200);

    a.close(1000).await;
    b.close(1000).await;
    c.gateway.terminate().await;
    c.node.terminate().await;
}

#[timed_test]
async fn a_short_or_missing_secret_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "too-short\n").unwrap();
    let out = tokio::process::Command::new(partyline_bin())
        .args(["node", "--cluster-secret-file"])
        .arg(&file)
        .env_clear()
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("9 bytes") && err.contains("at least 16"), "{err}");
    let out = tokio::process::Command::new(partyline_bin()).args(["gateway"]).env_clear().output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PARTYLINE_CLUSTER_SECRET_FILE"));
}

/// `GET path` on `addr` over a new connection, however long the answer takes: (status, body).
async fn slow_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let res = partyline_tests::parse_response(&raw);
    (res.status, res.text())
}

/// Runs `partyline init` against `redis_url`: whether it succeeded, and what it printed.
async fn init(redis_url: &str) -> (bool, String) {
    init_with(redis_url, &[]).await
}

/// Runs `partyline init` against `redis_url` with more arguments (`--record`, `--start-over`):
/// whether it succeeded, and what it printed.
async fn init_with(redis_url: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(partyline_bin())
        .args(["init", "--redis-url", redis_url, "--wait", "10s"])
        .args(args)
        .env_clear()
        .output()
        .await
        .expect("run partyline init");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1), "init fails with exit status 1:\n{said}");
    }
    (out.status.success(), said)
}

/// The cluster id in an init's "created cluster <id>" or "already initialized: cluster <id>".
fn said_cluster(said: &str) -> String {
    said.lines()
        .find_map(|l| l.strip_prefix("created cluster ").or_else(|| l.strip_prefix("already initialized: cluster ")))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("partyline init did not name its cluster:\n{said}"))
        .to_string()
}

#[timed_test]
async fn init_with_a_record_refuses_a_redis_that_lost_the_cluster_and_starts_over_only_when_told() {
    let redis = RedisServer::start();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("state/cluster-id");
    let record_arg = record.to_str().unwrap();
    let check = Redis::connect(RedisConfig::new(url.clone())).await.unwrap();

    // The first run creates the cluster and records it; later runs find it.
    let (ok, said) = init_with(&url, &["--record", record_arg]).await;
    assert!(ok && said.contains("created cluster "), "{said}");
    let id = said_cluster(&said);
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), id, "the record holds the cluster's id");
    let (ok, again) = init_with(&url, &["--record", record_arg]).await;
    assert!(ok && again.contains(&format!("already initialized: cluster {id}")), "{again}");

    // Redis lost its data: with the record, init refuses and creates nothing.
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut check.connection()).await.unwrap();
    let (ok, refused) = init_with(&url, &["--record", record_arg]).await;
    assert!(!ok, "init started a cluster over on a Redis that lost its data:\n{refused}");
    for words in [&format!("LOST the data of cluster {id}"), "no cluster marker", "Restore Redis", "--start-over"] {
        assert!(refused.contains(words), "the refusal does not say {words:?}:\n{refused}");
    }
    assert!(refused.contains(&format!("delete {record_arg}")), "{refused}");
    assert_eq!(check.marker().get().await.unwrap(), None, "a refusing init created a cluster");
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), id, "a refusing init kept the record");

    // Another cluster in Redis than the recorded one is refused too.
    let _: () =
        ::redis::cmd("SET").arg("pl:cluster").arg("someone-else").query_async(&mut check.connection()).await.unwrap();
    let (ok, other) = init_with(&url, &["--record", record_arg]).await;
    assert!(!ok && other.contains("another cluster, someone-else"), "{other}");
    let _: () = ::redis::cmd("DEL").arg("pl:cluster").query_async(&mut check.connection()).await.unwrap();

    // Starting over is explicit: --start-over creates a new cluster and records it.
    let (ok, over) = init_with(&url, &["--record", record_arg, "--start-over"]).await;
    assert!(ok && over.contains("created cluster ") && over.contains("--start-over"), "{over}");
    let new_id = said_cluster(&over);
    assert_ne!(new_id, id);
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), new_id);
    assert_eq!(check.marker().get().await.unwrap().as_deref(), Some(new_id.as_str()));
    let (ok, again) = init_with(&url, &["--record", record_arg]).await;
    assert!(ok && again.contains(&format!("already initialized: cluster {new_id}")), "{again}");

    // So is deleting the record; and the record can come from the environment.
    let _: () = ::redis::cmd("FLUSHALL").query_async(&mut check.connection()).await.unwrap();
    std::fs::remove_file(&record).unwrap();
    let out = tokio::process::Command::new(partyline_bin())
        .args(["init", "--redis-url", &url])
        .env_clear()
        .env("PARTYLINE_INIT_RECORD", &record)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success() && said.contains("created cluster "), "{said}");
    assert_eq!(std::fs::read_to_string(&record).unwrap().trim(), said_cluster(&said));
}

// A Redis Cluster of three primaries and a node taking 4096 shards on it.
#[timed_test(secs = 100)]
async fn on_a_redis_cluster_a_primary_that_lost_its_data_is_refused_until_init_starts_its_shards_over() {
    use partyline_cluster::redis::testing::{self, RedisCluster};
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let redis = testing::connect(&url, "pl").await;
    let (ok, said) = init(&url).await;
    assert!(ok, "{said}");
    let id = said_cluster(&said);
    // A primary other than the marker's own loses its data while no node runs.
    let marker_primary = cluster.primary_of(cluster.slot_of(&redis.keys().cluster()));
    let wiped = cluster.primaries().into_iter().find(|p| *p != marker_primary).unwrap();
    cluster.wipe(wiped);

    // A node that starts now refuses to serve, and says how many shards and the way out.
    let logs = tempfile::tempdir().unwrap();
    let (grpc, admin) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let env = vec![
        ("PARTYLINE_REDIS_URL".to_string(), url.clone()),
        ("PARTYLINE_CLUSTER_SECRET".to_string(), SECRET.to_string()),
        ("PARTYLINE_WORKER_THREADS".to_string(), "2".to_string()),
    ];
    let args: Vec<String> = [
        "node",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--id",
        "cluster-node",
        "--lease-profile",
        "fast",
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn("node", &partyline_bin(), &args, &env, logs.path());
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    wait_ok(admin, "/healthz", 60, &mut [&mut node]).await;
    let log = logs.path().join("node.log");
    let said = within(30, "the node to refuse the lost shards", async {
        loop {
            let ready = get(admin, "/readyz").await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if ready.status == 503 && text.contains("Redis LOST THE DATA of") {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(said.contains("partyline init --start-over") && said.contains("Restore that primary"), "{said}");
    let copy = |s: u16| redis.keys().shard_marker(s);
    let lost: Vec<u16> = (0..partyline::runtime::placement::SHARDS)
        .filter(|s| cluster.primary_of(cluster.slot_of(&copy(*s))) == wiped)
        .collect();
    assert!(said.contains(&format!("of {} shards", lost.len())), "the log names how many shards:\n{said}");
    let exists: i64 = ::redis::cmd("EXISTS").arg(copy(lost[0])).query_async(&mut redis.connection()).await.unwrap();
    assert_eq!(exists, 0, "the node wrote a lost copy back by itself");

    // init reports the lost shards and does not restore them by itself...
    let (ok, refused) = init(&url).await;
    assert!(!ok, "{refused}");
    let words = format!("LOST THE DATA of {} of cluster {id}'s", lost.len());
    assert!(refused.contains(&words) && refused.contains("--start-over"), "{refused}");
    assert_eq!(get(admin, "/readyz").await.status, 503);
    // ...only with --start-over, saying those shards start over empty; the node then serves.
    let (ok, over) = init_with(&url, &["--start-over"]).await;
    assert!(ok && over.contains(&format!("{} of cluster {id}'s", lost.len())) && over.contains("EMPTY"), "{over}");
    wait_ok(admin, "/readyz", 30, &mut [&mut node]).await;
    let (ok, again) = init(&url).await;
    assert!(ok && again.contains(&format!("already initialized: cluster {id}")), "{again}");
    node.terminate().await;
}

#[timed_test(secs = 100)]
async fn a_node_on_an_empty_redis_waits_for_partyline_init_then_serves_without_a_restart() {
    let redis = RedisServer::start();
    let logs = tempfile::tempdir().unwrap();
    let bin = partyline_bin();
    let (grpc, node_admin, client, gateway_admin) =
        (free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1"), free_port("127.0.0.1"));
    let env = vec![
        ("PARTYLINE_REDIS_URL".to_string(), redis.url()),
        ("PARTYLINE_CLUSTER_SECRET".to_string(), SECRET.to_string()),
        ("PARTYLINE_WORKER_THREADS".to_string(), "2".to_string()),
    ];
    // No --init-cluster: this node may not create the cluster.
    let node_args: Vec<String> = [
        "node",
        "--listen",
        &format!("127.0.0.1:{grpc}"),
        "--id",
        "waiting-node",
        "--lease-profile",
        "fast",
        "--admin-listen",
        &format!("127.0.0.1:{node_admin}"),
    ]
    .map(String::from)
    .to_vec();
    let mut node = Proc::spawn("node", &bin, &node_args, &env, logs.path());
    let gw_args: Vec<String> =
        ["gateway", "--port", &client.to_string(), "--admin-listen", &format!("127.0.0.1:{gateway_admin}")]
            .map(String::from)
            .to_vec();
    let mut gateway = Proc::spawn("gateway", &bin, &gw_args, &env, logs.path());
    let node_admin: SocketAddr = format!("127.0.0.1:{node_admin}").parse().unwrap();
    let gateway_admin: SocketAddr = format!("127.0.0.1:{gateway_admin}").parse().unwrap();
    let client: SocketAddr = format!("127.0.0.1:{client}").parse().unwrap();
    wait_ok(node_admin, "/healthz", 60, &mut [&mut node, &mut gateway]).await;
    wait_ok(gateway_admin, "/healthz", 60, &mut [&mut node, &mut gateway]).await;

    // The node runs, is not ready, and says why: on /readyz and, once, in its log.
    let log = logs.path().join("node.log");
    let said = within(30, "the node to say it waits for `partyline init`", async {
        loop {
            let ready = get(node_admin, "/readyz").await;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if ready.status == 503 && ready.text().contains("partyline init") && text.contains("NO CLUSTER IN REDIS") {
                return ready.text();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    println!("/readyz before init: {said}");
    let text = std::fs::read_to_string(&log).unwrap();
    for words in ["partyline init", "--init-cluster", "restore Redis", "Redis lost its data"] {
        assert!(text.contains(words), "the node's error does not mention {words:?}:\n{text}");
    }
    // It created nothing, took no room, and no client gets one.
    let check = Redis::connect(RedisConfig::new(redis.url())).await.unwrap();
    assert_eq!(check.marker().get().await.unwrap(), None, "the node created a cluster by itself");
    assert!(check.membership().live().await.unwrap().is_empty(), "a node without a cluster registered");
    // The gateway finds no node for the room and gives up after its route timeout (the lease
    // TTL plus 5 s): longer than `http` waits.
    let (status, body) = within(40, "the gateway to answer", slow_get(client, "/parties/main/before-init")).await;
    assert_eq!(status, 503, "a room was served without a cluster: {body}");
    partyline_tests::client_texts::check_body(status, &body).expect("a documented error body");
    node.assert_running();

    // `partyline init` creates the cluster (and says so), once.
    let (ok, said) = init(&redis.url()).await;
    assert!(ok, "partyline init failed:\n{said}");
    let id = said
        .lines()
        .find_map(|l| l.strip_prefix("created cluster "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("partyline init did not say which cluster it created:\n{said}"))
        .to_string();
    let (ok, again) = init(&redis.url()).await;
    assert!(ok && again.contains(&format!("already initialized: cluster {id}")), "a second init said:\n{again}");
    assert_eq!(check.marker().get().await.unwrap().as_deref(), Some(id.as_str()));

    // The same node process picks the cluster up and serves.
    wait_ok(node_admin, "/readyz", 30, &mut [&mut node, &mut gateway]).await;
    let members = check.membership().live().await.unwrap();
    assert_eq!(
        members.iter().map(|m| (m.id.as_str(), m.cluster.as_str())).collect::<Vec<_>>(),
        [("waiting-node", id.as_str())]
    );
    within(30, "the room to be served", async {
        loop {
            let res = http(client, "POST", "/parties/main/after-init", &[], br#""hello""#).await;
            if res.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let res = http(client, "GET", "/parties/main/after-init", &[], b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, r#"["hello"]"#));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("NO CLUSTER IN REDIS").count(), 1, "the error is logged once:\n{text}");
    assert!(text.contains("the cluster exists now"), "{text}");
    node.assert_running();
    gateway.terminate().await;
    node.terminate().await;
}

/// Spans received, by trace id: (service name, span name, span id, parent span id).
type Spans = Arc<Mutex<HashMap<Vec<u8>, Vec<(String, String, Vec<u8>, Vec<u8>)>>>>;

fn record(spans: &Spans, req: ExportTraceServiceRequest) {
    let mut all = spans.lock().unwrap();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| format!("{:?}", v.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                all.entry(s.trace_id.clone()).or_default().push((
                    service.clone(),
                    s.name.clone(),
                    s.span_id.clone(),
                    s.parent_span_id.clone(),
                ));
            }
        }
    }
}

/// An OTLP/HTTP receiver: POST /v1/traces with a protobuf body.
async fn http_receiver(spans: Spans) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let spans = spans.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                record(&spans, req);
                ExportTraceServiceResponse::default().encode_to_vec()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

struct GrpcReceiver(Spans);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record(&self.0, req.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver.
async fn grpc_receiver(spans: Spans) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream_incoming(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcReceiver(spans)))
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

fn tokio_stream_incoming(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move { Some((l.accept().await.map(|(s, _)| s), l)) })
}

/// Runs a request through a gateway and a node exporting traces with `protocol`, and waits for
/// one trace holding the gateway's HTTP span, the node's gRPC span as its child, and the room's
/// event span below that.
async fn one_trace_covers_gateway_and_node(protocol: &str) {
    let spans: Spans = Arc::default();
    let receiver = match protocol {
        "grpc" => grpc_receiver(spans.clone()).await,
        _ => http_receiver(spans.clone()).await,
    };
    let endpoint = format!("http://{receiver}");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut c = within(
        90,
        "the cluster to start",
        cluster(&otel, &[("OTEL_SERVICE_NAME", "ops-node")], &[("OTEL_SERVICE_NAME", "ops-gateway")]),
    )
    .await;
    let res = http(c.client_addr, "POST", "/parties/main/traced-room", &[], b"\"traced\"").await;
    assert_eq!(res.status, 200, "{}", res.text());

    let found = within(30, "one trace with spans from the gateway and the node", async {
        loop {
            {
                let all = spans.lock().unwrap();
                for trace in all.values() {
                    let gw_ids: HashSet<&Vec<u8>> =
                        trace.iter().filter(|s| s.0.contains("ops-gateway")).map(|s| &s.2).collect();
                    let grpc = trace.iter().find(|s| s.0.contains("ops-node") && s.1.contains("Request"));
                    let event = trace.iter().find(|s| s.0.contains("ops-node") && s.1 == "room.event");
                    if let (Some(grpc), Some(event)) = (grpc, event) {
                        if gw_ids.contains(&grpc.3) && event.3 == grpc.2 {
                            return trace.clone();
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.iter().any(|s| s.0.contains("ops-gateway") && s.1 == "POST"), "{found:?}");
    c.gateway.terminate().await;
    c.node.terminate().await;
}

/// A WebSocket's frames through a gateway and a node exporting traces with the sampler `sampler`;
/// returns the names of the spans each process exported within a few seconds.
async fn frame_spans_with_sampler(sampler: &str) -> (HashSet<String>, HashSet<String>) {
    let spans: Spans = Arc::default();
    let endpoint = format!("http://{}", http_receiver(spans.clone()).await);
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", sampler),
    ];
    let mut c = within(
        90,
        "the cluster to start",
        cluster(&otel, &[("OTEL_SERVICE_NAME", "ops-node")], &[("OTEL_SERVICE_NAME", "ops-gateway")]),
    )
    .await;
    let url = format!("ws://{}/parties/echo/sampled-room", c.client_addr);
    let mut a = Client::connect(&url).await.expect("connect");
    for i in 0..5 {
        a.send_text(&format!("frame {i}")).await;
        assert_eq!(a.recv_text().await, format!("frame {i}"), "frames flow whatever the sampler");
    }
    drop(a);
    // Spans are exported every 100 ms and at shutdown.
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.gateway.terminate().await;
    c.node.terminate().await;
    let all = spans.lock().unwrap();
    let names = |service: &str| -> HashSet<String> {
        all.values().flatten().filter(|s| s.0.contains(service)).map(|s| s.1.clone()).collect()
    };
    (names("ops-gateway"), names("ops-node"))
}

#[timed_test]
async fn frame_spans_exist_only_for_sampled_traces() {
    // Sampled (every trace): the socket at the gateway, the room and its events at the node.
    let (gateway, node) = frame_spans_with_sampler("always_on").await;
    assert!(gateway.contains("socket"), "the gateway's spans: {gateway:?}");
    assert!(node.contains("room") && node.contains("room.event"), "the node's spans: {node:?}");
    // Not sampled: the same traffic exports nothing, from either process.
    let (gateway, node) = frame_spans_with_sampler("always_off").await;
    assert!(gateway.is_empty() && node.is_empty(), "nothing is sampled: {gateway:?} {node:?}");
}

#[timed_test]
async fn one_trace_covers_gateway_and_node_over_otlp_http() {
    one_trace_covers_gateway_and_node("http/protobuf").await;
}

#[timed_test]
async fn one_trace_covers_gateway_and_node_over_otlp_grpc() {
    one_trace_covers_gateway_and_node("grpc").await;
}
