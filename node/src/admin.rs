//! A node's health and metrics: the HTTP listener of `--admin-listen` (`/metrics`,
//! `/healthz`, `/readyz`) and the standard gRPC health service on the gRPC port, both read
//! from the node's [`NodeState`].
//!
//! `/healthz` answers 200 while the process serves at all (liveness). `/readyz` answers 200
//! only while the node should receive rooms: it holds its membership, Redis answers, it is not
//! draining, Redis still has the cluster's data, and the cluster exists (`partyline init`);
//! otherwise 503 with the reasons.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

use crate::metrics::{NodeMetrics, CONTENT_TYPE};
use crate::server::NodeState;

/// The gRPC service name reported by the health service besides the server-wide `""`.
pub const GRPC_SERVICE: &str = "partyline.Node";

/// How often the gRPC health status is brought in line with the node's state.
const HEALTH_EVERY: Duration = Duration::from_millis(500);

/// Why the node is not ready; empty when it is.
pub fn reasons(state: &NodeState) -> Vec<&'static str> {
    let mut why = Vec::new();
    if !state.registered() {
        why.push("not a member of the cluster yet");
    }
    if !state.redis_ok() {
        why.push("Redis is unreachable");
    }
    if state.draining() && state.drained() {
        why.push("drained by an operator: it takes no rooms until it is stopped");
    } else if state.draining() {
        why.push("draining");
    }
    if state.refusing() {
        why.push("Redis lost the cluster's data; refusing to serve");
    }
    if state.uninitialized() {
        why.push("no cluster in Redis: waiting for `partyline init` (docs/operations.md, 'Redis lost its data')");
    }
    why
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<NodeMetrics>,
    state: Arc<NodeState>,
}

/// The admin routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<NodeMetrics>, state: Arc<NodeState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(render))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route("/readyz", axum::routing::get(ready))
        .with_state(AdminState { metrics, state })
}

async fn render(State(s): State<AdminState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], s.metrics.render())
}

async fn ready(State(s): State<AdminState>) -> impl IntoResponse {
    let why = reasons(&s.state);
    if why.is_empty() {
        (StatusCode::OK, "ready".to_string())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}", why.join("; ")))
    }
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<NodeMetrics>,
    state: Arc<NodeState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> BoxFuture<'static, std::io::Result<()>> {
    serve_boxed(listener, metrics, state, Box::pin(shutdown))
}

/// Boxed here, so axum's server is compiled in this crate (see `server::run_with`).
#[inline(never)]
fn serve_boxed(
    listener: TcpListener,
    metrics: Arc<NodeMetrics>,
    state: Arc<NodeState>,
    shutdown: BoxFuture<'static, ()>,
) -> BoxFuture<'static, std::io::Result<()>> {
    Box::pin(async move { axum::serve(listener, router(metrics, state)).with_graceful_shutdown(shutdown).await })
}

/// The gRPC health service (`grpc.health.v1.Health`) and the loop that keeps it in line with
/// `state` until `stop` is cancelled.
pub fn grpc_health(
    state: Arc<NodeState>,
    stop: CancellationToken,
) -> (
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let update = async move {
        let mut tick = tokio::time::interval(HEALTH_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let status = if state.ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(GRPC_SERVICE, status).await;
        }
    };
    (service, update)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_has_not_registered_is_not_ready_and_says_why() {
        let state = NodeState::default();
        assert!(!state.ready());
        assert_eq!(reasons(&state), vec!["not a member of the cluster yet", "Redis is unreachable"]);
    }
}
