//! A cluster gateway's readiness (Redis answers, at least one node is live), its router's
//! counters, and its optional admin listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use partyline_cluster::client::ClusterClient;
use partyline_cluster::redis::gateways::{GatewayCounters, GatewayRecord};
use partyline_cluster::redis::Redis;
use partyline_gateway::Gateway;
use partyline_node::metrics::{FnKind, FnMetric};
use tokio::net::TcpListener;

/// How long `/readyz` waits for Redis.
const REDIS_CHECK: Duration = Duration::from_secs(1);

/// Serves `gateway` on `listener` (and its admin endpoints on `admin`, when given) until
/// `shutdown` resolves. Ready while Redis answers and a live node is known.
#[allow(clippy::too_many_arguments)]
pub async fn serve_gateway(
    gateway: Gateway,
    listener: TcpListener,
    admin: Option<TcpListener>,
    console: Option<axum::Router>,
    record: Record,
    shutdown: impl Future<Output = ()> + Send + 'static,
    redis: Redis,
    client: ClusterClient,
) -> anyhow::Result<()> {
    let stop_records = tokio_util::sync::CancellationToken::new();
    let records =
        tokio::spawn(publish_records(gateway.clone(), client.clone(), redis.gateways(), record, stop_records.clone()));
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
                gw.serve_admin_with(listener, console.unwrap_or_default(), async move {
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
    stop_records.cancel();
    let _ = records.await;
    served
}

/// How often a gateway writes its record for operators.
const RECORD_EVERY: Duration = Duration::from_secs(2);

/// Who a gateway is, for its record ([`partyline_cluster::redis::gateways`]).
#[derive(Clone, Debug)]
pub struct Record {
    pub name: String,
    pub addr: String,
    pub admin: Option<String>,
}

/// Writes the gateway's record every [`RECORD_EVERY`] until `stop`, then removes it. A failed
/// write is logged at debug level: routing never reads these records.
async fn publish_records(
    gateway: Gateway,
    client: ClusterClient,
    gateways: partyline_cluster::redis::gateways::Gateways,
    me: Record,
    stop: tokio_util::sync::CancellationToken,
) {
    let started = partyline::storage::unix_ms();
    let mut tick = tokio::time::interval(RECORD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        let record = gateway_record(&gateway, &client, &me, started);
        if let Err(e) = gateways.publish(&record).await {
            tracing::debug!(error = %e, "could not write the gateway's record");
        }
    }
    let _ = gateways.leave(&me.name).await;
}

/// What the gateway serves now and its counters.
fn gateway_record(gateway: &Gateway, client: &ClusterClient, me: &Record, started_unix_ms: u64) -> GatewayRecord {
    let m = gateway.metrics();
    let errors = [&m.link_failures, &m.slow_clients_closed, &m.rate_limited, &m.overloaded, &m.ping_timeouts]
        .iter()
        .map(|c| c.get())
        .sum();
    GatewayRecord {
        id: me.name.clone(),
        addr: me.addr.clone(),
        admin: me.admin.clone(),
        connections: gateway.connection_count() as u64,
        links: gateway.link_count() as u64,
        live_nodes: client.nodes().len() as u64,
        unix_ms: 0,
        started_unix_ms,
        counters: GatewayCounters {
            connects: m.connections_accepted.get(),
            refused: m.connections_refused.get() + m.clients_refused.get() + m.tcp_refused.get(),
            frames_in: m.frames_from_clients.get(),
            frames_out: m.frames_to_clients.get(),
            requests: m.room_requests.get(),
            errors,
            closes: m.client_closes.snapshot(),
        },
    }
}
