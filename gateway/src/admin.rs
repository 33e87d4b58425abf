//! A gateway's health and metrics endpoints. With an admin listener (`--admin-listen`) they are
//! served there as `/metrics`, `/healthz` and `/readyz`, and nothing under `/_partyline/` is
//! served on the client port. Without one, the client port serves them as
//! `/_partyline/metrics`, `/_partyline/healthz` (also `/_partyline/health`) and
//! `/_partyline/readyz`.
//!
//! `/healthz` answers 200 while the process serves. `/readyz` answers 200 while the gateway
//! should receive clients: it is not shutting down, and its ready check (set by whoever builds
//! the gateway; in a cluster: Redis answers and at least one node is live) passes.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::StatusCode;
use partyline::sync::Lock;
use partyline::web;
use tokio::net::TcpListener;

use crate::metrics::CONTENT_TYPE;
use crate::{Gateway, Inner};

/// A check that says why the gateway is not ready, if it is not.
pub type ReadyCheck = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The gateway's health state.
pub struct Health {
    shutting_down: AtomicBool,
    /// False once an admin listener serves the endpoints (the client port stops serving them).
    on_client_port: AtomicBool,
    check: Mutex<Option<ReadyCheck>>,
}

impl Default for Health {
    fn default() -> Self {
        Health { shutting_down: AtomicBool::new(false), on_client_port: AtomicBool::new(true), check: Mutex::new(None) }
    }
}

impl Health {
    /// The gateway started shutting down: not ready any more.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    /// Whether `/_partyline/*` is served on the client port.
    pub fn on_client_port(&self) -> bool {
        self.on_client_port.load(Ordering::Acquire)
    }

    async fn ready(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        let check = self.check.locked().clone();
        match check {
            Some(check) => check().await,
            None => Ok(()),
        }
    }
}

impl Gateway {
    /// Sets the check `/readyz` runs (it should answer within a second or two).
    pub fn set_ready_check(&self, check: ReadyCheck) {
        *self.inner.health.check.locked() = Some(check);
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves; from
    /// now on the client port no longer serves `/_partyline/*`.
    pub async fn serve_admin(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_admin_with(listener, axum::Router::new(), shutdown).await
    }

    /// Like [`Gateway::serve_admin`], also serving `extra`'s routes (the operator console);
    /// what they do not match is answered as above.
    pub async fn serve_admin_with(
        &self,
        listener: TcpListener,
        extra: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.inner.health.on_client_port.store(false, Ordering::Release);
        let base = axum::Router::new()
            .fallback(|State(gw): State<Arc<Inner>>, req: http::Request<Body>| async move {
                let path = req.uri().path().trim_start_matches('/').to_string();
                respond(&gw, &path).await
            })
            .with_state(self.inner.clone());
        axum::serve(listener, extra.merge(base)).with_graceful_shutdown(shutdown).await
    }
}

/// The answer to an admin path (`metrics`, `healthz`, `health`, `readyz`).
pub(crate) async fn respond(gw: &Inner, path: &str) -> axum::response::Response {
    let res = match path {
        "metrics" => {
            let open_links = gw.link_count();
            let body = gw.metrics.render(gw.open_sockets.load(Ordering::Acquire), open_links);
            web::with_type(StatusCode::OK, CONTENT_TYPE, Bytes::from(body))
        }
        "healthz" | "health" => web::text(StatusCode::OK, "ok"),
        "readyz" => match gw.health.ready().await {
            Ok(()) => web::text(StatusCode::OK, "ready"),
            Err(why) => web::text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}")),
        },
        _ => web::text(StatusCode::NOT_FOUND, "Not found"),
    };
    res.map(Body::from)
}
