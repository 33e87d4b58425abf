//! A cluster gateway's readiness (Redis answers, at least one node is live), its router's
//! counters, and its optional admin listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use partyline_cluster::client::ClusterClient;
use partyline_cluster::redis::Redis;
use partyline_gateway::Gateway;
use partyline_node::metrics::{FnKind, FnMetric};
use tokio::net::TcpListener;

/// How long `/readyz` waits for Redis.
const REDIS_CHECK: Duration = Duration::from_secs(1);

/// Serves `gateway` on `listener` (and its admin endpoints on `admin`, when given) until
/// `shutdown` resolves. Ready while Redis answers and a live node is known.
pub async fn serve_gateway(
    gateway: Gateway,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    redis: Redis,
    client: ClusterClient,
) -> anyhow::Result<()> {
    let redirects = client.clone();
    gateway.metrics().register_collector(Box::new(FnMetric::new(
        "partyline_gateway_redirects",
        "\"Not owner\" redirects followed (routing disagreed with the lease holder).",
        FnKind::Counter,
        move || redirects.redirects() as i64,
    )));
    let nodes = client.clone();
    gateway.metrics().register_collector(Box::new(FnMetric::new(
        "partyline_gateway_live_nodes",
        "Live nodes in this gateway's view of the cluster.",
        FnKind::Gauge,
        move || nodes.nodes().len() as i64,
    )));
    #[cfg(feature = "partykit")]
    for (name, help, kind, f) in crate::deploy::metrics("gateway") {
        gateway.metrics().register_collector(Box::new(FnMetric::new(&name, help, kind, f)));
    }
    gateway.set_ready_check(Arc::new(move || {
        let (redis, client) = (redis.clone(), client.clone());
        Box::pin(async move {
            match tokio::time::timeout(REDIS_CHECK, redis.time_ms()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("Redis is unreachable: {e}")),
                Err(_) => return Err("Redis did not answer within 1s".into()),
            }
            if client.nodes().iter().all(|n| n.draining) {
                return Err("no live node in the cluster".into());
            }
            Ok(())
        })
    }));
    let (stop_admin, admin_task) = match admin {
        Some(listener) => {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let gw = gateway.clone();
            let task = tokio::spawn(async move {
                gw.serve_admin(listener, async move {
                    let _ = rx.await;
                })
                .await
            });
            (Some(tx), Some(task))
        }
        None => (None, None),
    };
    let served = gateway.serve(listener, shutdown).await.context("the HTTP server failed");
    drop(stop_admin);
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    served
}
