//! Operating a cluster of real `partyline` processes: metrics move with traffic on a gateway
//! and a node, and one trace covers a request from the gateway through gRPC to the node's room
//! (exported over OTLP to a receiver in this test, with both protocols).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use partyline_cluster::redis::testing::RedisServer;
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

/// Redis, one node (metrics on their own port) and one gateway (admin listener), with `extra`
/// environment on both.
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

#[timed_test]
async fn one_trace_covers_gateway_and_node_over_otlp_http() {
    one_trace_covers_gateway_and_node("http/protobuf").await;
}

#[timed_test]
async fn one_trace_covers_gateway_and_node_over_otlp_grpc() {
    one_trace_covers_gateway_and_node("grpc").await;
}
