//! TLS between gateways and nodes, and rotating the cluster secret: a cluster with mutual TLS
//! serves rooms; a gateway sends the secret only to a node whose certificate the cluster CA
//! signed; a node refuses callers without such a certificate; nodes accept a list of secrets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use partyline::Limits;
use partyline_cluster::redis::testing::{RedisCluster, RedisServer, TlsFiles};
use partyline_cluster::redis::{NodeInfo, Redis, RedisConfig};
use partyline_cluster::tls::ClusterTls;
use partyline_node::server::{NodeConfig, Rebalance};
use partyline_node::shards::LeaseTiming;
use partyline_server::gateway::GatewayProcessConfig;
use partyline_test_macros::timed_test;
use partyline_tests::cluster::Process;
use partyline_tests::{all_parties, http, repo_root, within, Client};
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot;

fn certs() -> PathBuf {
    repo_root().join("tests/certs")
}

/// The cluster CA and one of the certificates it signed (`server` for nodes, `client` for
/// gateways).
fn tls(name: &str) -> ClusterTls {
    let dir = certs();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    ClusterTls::from_files(&dir.join("ca.pem"), Some(&cert), Some(&key)).unwrap()
}

async fn node(redis_url: &str, secret: &str, accept: &[&str], tls: Option<ClusterTls>) -> Process {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = NodeConfig {
        id: format!("node-{}", addr.port()),
        advertise: addr.to_string(),
        redis: RedisConfig::new(redis_url),
        secret: secret.into(),
        accept_secrets: accept.iter().map(|s| s.to_string()).collect(),
        tls,
        leases: LeaseTiming::FAST,
        heartbeat: Duration::from_millis(500),
        member_ttl: Duration::from_secs(3),
        drain_timeout: Duration::from_secs(5),
        rebalance: Rebalance::default(),
        fast_failover: true,
        limits: Limits::default(),
        env: Default::default(),
        // A fresh Redis per test: whichever node starts first creates the cluster.
        init_cluster: true,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(partyline_node::server::run(cfg, all_parties(), listener, async {
        let _ = stopped.await;
    }));
    let redis = Redis::connect(RedisConfig::new(redis_url)).await.unwrap();
    within(30, "the node to register", async {
        while !redis.membership().live().await.unwrap_or_default().iter().any(|n| n.addr == addr.to_string()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    Process::running(addr.to_string(), addr, stop, task)
}

async fn gateway(redis_url: &str, secret: &str, cluster_tls: Option<ClusterTls>) -> Process {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = GatewayProcessConfig {
        name: format!("gateway-{}", addr.port()),
        redis: RedisConfig::new(redis_url),
        secret: secret.into(),
        limits: Limits::default(),
        env: Default::default(),
        max_connections: 1000,
        edge: Default::default(),
        tls: None,
        cluster_tls,
        max_clock_offset: None,
        console: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(partyline_server::gateway::run_gateway(cfg, all_parties(), listener, async {
        let _ = stopped.await;
    }));
    within(20, "the gateway to listen", async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Process::running(addr.to_string(), addr, stop, task)
}

fn ws(addr: SocketAddr, path: &str) -> String {
    format!("ws://{addr}{path}")
}

#[timed_test]
async fn a_cluster_with_mutual_tls_serves_rooms_and_refuses_callers_without_a_certificate() {
    let redis = RedisServer::start();
    let _node = node(&redis.url(), "s3cret-s3cret-s3cret", &[], Some(tls("server"))).await;
    let gw = gateway(&redis.url(), "s3cret-s3cret-s3cret", Some(tls("client"))).await;
    let mut a = Client::connect(&ws(gw.addr, "/parties/main/tls?_pk=a")).await.unwrap();
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("over mutual tls").await;
    assert_eq!(a.recv_text().await, "over mutual tls");
    let res = http(gw.addr, "GET", "/parties/main/tls", &[], b"").await;
    assert_eq!((res.status, res.text().as_str()), (200, r#"["over mutual tls"]"#));

    // A gateway that trusts the CA but has no certificate of its own is refused by the node.
    let dir = certs();
    let anonymous = ClusterTls::from_files(&dir.join("ca.pem"), None, None).unwrap();
    let gw2 = gateway(&redis.url(), "s3cret-s3cret-s3cret", Some(anonymous)).await;
    let res = within(60, "the anonymous gateway's answer", http(gw2.addr, "GET", "/parties/main/tls", &[], b"")).await;
    assert_eq!((res.status, res.text().as_str()), (503, partyline::client_text::TRY_AGAIN_LATER));
}

#[timed_test]
async fn a_gateway_sends_nothing_to_a_node_the_cluster_ca_did_not_sign() {
    let redis = RedisServer::start();
    // An impostor registers itself as a node (anyone who can write to Redis could), serving
    // TLS with a certificate from another CA, and records what it receives.
    let dir = certs();
    let impostor_tls =
        partyline_gateway::tls_config(&dir.join("other-server.pem"), &dir.join("other-server.key")).unwrap();
    let mut impostor_tls = (*impostor_tls).clone();
    impostor_tls.alpn_protocols = vec![b"h2".to_vec()];
    let impostor_tls = Arc::new(impostor_tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, received) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, rec) = (accepted.clone(), received.clone());
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(impostor_tls);
        while let Ok((tcp, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (acceptor, rec) = (acceptor.clone(), rec.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        rec.fetch_add(n, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let r = Redis::connect(RedisConfig::new(redis.url())).await.unwrap();
    let fake =
        NodeInfo { id: "impostor".into(), inc: "impostor-1".into(), addr: addr.to_string(), ..NodeInfo::default() };
    let beat = tokio::spawn(async move {
        loop {
            let _ = r.membership().heartbeat(&fake, Duration::from_secs(3)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let gw = gateway(&redis.url(), "s3cret-s3cret-s3cret", Some(tls("client"))).await;
    let res = within(60, "the gateway to give up", http(gw.addr, "GET", "/parties/main/x", &[], b"")).await;
    beat.abort();
    assert_eq!(res.status, 503);
    assert!(!res.text().contains(&addr.to_string()), "no internal address reaches the client: {}", res.text());
    assert!(accepted.load(Ordering::SeqCst) > 0, "the gateway did try the impostor");
    assert_eq!(received.load(Ordering::SeqCst), 0, "not one byte of a request (or the secret) reached it");

    // The control: a gateway that trusts the impostor's CA does send it requests (so the count
    // above would have seen them).
    let beat = {
        let r = Redis::connect(RedisConfig::new(redis.url())).await.unwrap();
        let fake =
            NodeInfo { id: "impostor".into(), inc: "impostor-1".into(), addr: addr.to_string(), ..NodeInfo::default() };
        tokio::spawn(async move {
            loop {
                let _ = r.membership().heartbeat(&fake, Duration::from_secs(3)).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let fooled =
        ClusterTls::from_files(&dir.join("other-ca.pem"), Some(&dir.join("client.pem")), Some(&dir.join("client.key")))
            .unwrap();
    let gw2 = gateway(&redis.url(), "s3cret-s3cret-s3cret", Some(fooled)).await;
    let _ = within(60, "the fooled gateway's answer", http(gw2.addr, "GET", "/parties/main/x", &[], b"")).await;
    beat.abort();
    assert!(received.load(Ordering::SeqCst) > 0, "a gateway that trusts the impostor talks to it");
}

#[timed_test]
async fn nodes_accept_a_list_of_secrets_for_rotation() {
    let redis = RedisServer::start();
    // The node moved to the new secret and still accepts the old one.
    let _node = node(&redis.url(), "new-secret-new-secret", &["old-secret-old-secret"], None).await;
    let old = gateway(&redis.url(), "old-secret-old-secret", None).await;
    let new = gateway(&redis.url(), "new-secret-new-secret", None).await;
    for gw in [&old, &new] {
        let res = http(gw.addr, "GET", "/parties/main/rotate", &[], b"").await;
        assert_eq!(res.status, 200, "{}", gw.id);
    }
    // A secret it does not accept gets nowhere, and the client is not told why.
    let wrong = gateway(&redis.url(), "wrong-secret-wrong-secret", None).await;
    let res = http(wrong.addr, "GET", "/parties/main/rotate", &[], b"").await;
    assert_eq!((res.status, res.text().as_str()), (503, partyline::client_text::TRY_AGAIN_LATER));
}

/// A `redis-server` serving only TLS (with the test certificate), killed on drop.
struct TlsRedis {
    port: u16,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let certs = certs();
        let arg = |name: &str| certs.join(name).display().to_string();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--tls-cert-file", &arg("server.pem"), "--tls-key-file", &arg("server.key")])
            .args(["--tls-ca-cert-file", &arg("ca.pem"), "--tls-auth-clients", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (with TLS support) must be installed");
        within(20, "redis-server to listen", async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        TlsRedis { port, _child: child, _dir: dir }
    }
}

#[timed_test]
async fn nodes_and_gateways_reach_redis_over_tls() {
    // rediss:// checks Redis's certificate against the system's roots; a private CA is added
    // the usual way (SSL_CERT_FILE). Each test runs in its own process under nextest.
    std::env::set_var("SSL_CERT_FILE", certs().join("ca.pem"));
    let redis = TlsRedis::start().await;
    chat_through_a_cluster_on(&format!("rediss://localhost:{}", redis.port), "rediss").await;
}

#[timed_test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_gateways_reach_a_redis_cluster_over_tls() {
    std::env::set_var("SSL_CERT_FILE", certs().join("ca.pem"));
    let files =
        TlsFiles { cert: certs().join("server.pem"), key: certs().join("server.key"), ca: certs().join("ca.pem") };
    let cluster = tokio::task::spawn_blocking(move || RedisCluster::start_tls(3, files)).await.unwrap();
    // Only TLS ports are given: the nodes the cluster reports must be reached over TLS too (a
    // plain connection to a TLS port, or TLS to a plain one, fails).
    let url = cluster.tls_url();
    chat_through_a_cluster_on(&url, "rediss-cluster").await;
    // The writes are in the cluster: the room's history key holds the message.
    let keys: Vec<String> =
        cluster.primaries().into_iter().flat_map(|p| cluster.keys_on(p, "*rediss-cluster*")).collect();
    assert!(!keys.is_empty(), "no key of the room on any primary");
}

/// A node and a gateway on the Redis at `url`, and a chat in room `room` through the gateway.
async fn chat_through_a_cluster_on(url: &str, room: &str) {
    let r = Redis::connect(RedisConfig::new(url)).await.expect("connect over TLS");
    assert!(r.membership().live().await.unwrap().is_empty());
    let _node = node(url, "s3cret-s3cret-s3cret", &[], None).await;
    let gw = gateway(url, "s3cret-s3cret-s3cret", None).await;
    let mut a = within(20, "a socket through the gateway", async {
        loop {
            if let Ok(c) = Client::connect(&ws(gw.addr, &format!("/parties/main/{room}"))).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(a.recv_text().await, "[]");
    a.send_text("stored over tls").await;
    assert_eq!(a.recv_text().await, "stored over tls");
}
