//! The `http` scenario: keep-alive HTTP/1.1 connections sending requests to a room.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{io_kind, tcp};
use crate::progress::{self, Progress};
use crate::stats::{Connections, Errors, HistBuf, HttpFigures, Live, SharedHist};
use crate::Plan;

struct Ctx {
    sources: Option<Vec<std::net::IpAddr>>,
    method: http::Method,
    body: Bytes,
    connect_timeout: Duration,
    ramp: crate::sys::Ramp,
    live: Arc<Live>,
    errors: Errors,
    latency: SharedHist,
    connect_ms: SharedHist,
}

#[derive(Default)]
struct Out {
    connected: bool,
    /// Still working when the measured window ended.
    open_at_end: bool,
    responses: u64,
    statuses: BTreeMap<u16, u64>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(ctx: &Ctx, ep: &crate::Endpoint, idx: usize) -> Result<Sender, String> {
    let source = ctx.sources.as_ref().map(|ips| ips[idx % ips.len()]);
    let attempt = async {
        let stream = tcp(ep.addr, source).await.map_err(|e| format!("connect: {}", io_kind(&e)))?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("connect: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    };
    tokio::time::timeout(ctx.connect_timeout, attempt).await.unwrap_or_else(|_| Err("connect: timed out".into()))
}

#[allow(clippy::too_many_arguments)]
async fn client(
    ctx: Arc<Ctx>,
    idx: usize,
    ep: crate::Endpoint,
    path: String,
    start: Instant,
    measure_from: Instant,
    until: Instant,
    rate: f64,
) -> Out {
    let mut out = Out::default();
    ctx.ramp.wait().await;
    let t0 = Instant::now();
    let mut sender = match open(&ctx, &ep, idx).await {
        Ok(s) => s,
        Err(kind) => {
            ctx.errors.add(&ctx.live, kind);
            Live::add(&ctx.live.connect_failed, 1);
            return out;
        }
    };
    ctx.connect_ms.record_one(t0.elapsed().as_nanos() as u64);
    out.connected = true;
    Live::add(&ctx.live.connected, 1);
    Live::add(&ctx.live.open, 1);
    let mut lat = HistBuf::new(&ctx.latency);
    tokio::time::sleep_until(start).await;
    let mut sent = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            out.open_at_end = true;
            break;
        }
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                tokio::time::sleep_until(due.min(until)).await;
                continue;
            }
        }
        let req = http::Request::builder()
            .method(ctx.method.clone())
            .uri(&path)
            .header(http::header::HOST, &ep.authority)
            .body(Full::new(ctx.body.clone()))
            .expect("valid request");
        let t = Instant::now();
        sent += 1;
        Live::add(&ctx.live.sent, 1);
        let result = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, hyper::Error>(status)
        };
        match tokio::time::timeout_at(until + Duration::from_secs(5), result).await {
            Ok(Ok(status)) => {
                Live::add(&ctx.live.received, 1);
                if t >= measure_from {
                    out.responses += 1;
                    *out.statuses.entry(status).or_default() += 1;
                    lat.record(t.elapsed().as_nanos() as u64);
                }
                if !(200..400).contains(&status) && t >= measure_from {
                    ctx.errors.add(&ctx.live, format!("http: status {status}"));
                }
            }
            Ok(Err(e)) => {
                ctx.errors.add(&ctx.live, format!("http: {e}"));
                // Reconnect (the server may close a connection after some responses).
                tokio::time::sleep(Duration::from_millis(50)).await;
                match open(&ctx, &ep, idx).await {
                    Ok(s) => sender = s,
                    Err(kind) => {
                        ctx.errors.add(&ctx.live, kind);
                        break;
                    }
                }
            }
            Err(_) => {
                ctx.errors.add(&ctx.live, "http: no response within 5 s of the end");
                break;
            }
        }
    }
    ctx.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    out
}

/// Runs the `http` scenario.
pub(crate) async fn run(plan: &Plan) -> anyhow::Result<crate::stats::Report> {
    let a = &plan.args;
    let p = &plan.params;
    let method: http::Method =
        a.method.parse().map_err(|_| anyhow::anyhow!("--method {:?} is not an HTTP method", a.method))?;
    let live = Arc::new(Live::default());
    let ctx = Arc::new(Ctx {
        sources: plan.sources.clone(),
        method,
        body: Bytes::from(a.body.clone().unwrap_or_default()),
        connect_timeout: a.connect_timeout,
        ramp: crate::sys::Ramp::new(a.ramp),
        live: live.clone(),
        errors: Errors::default(),
        latency: SharedHist::default(),
        connect_ms: SharedHist::default(),
    });
    let started = Instant::now();
    let connect_budget = plan.connect_budget();
    // Requests start together once every connection had its chance to open.
    let start = started
        + connect_budget.min(
            Duration::from_secs(2)
                + Duration::from_secs_f64(if a.ramp > 0.0 { p.clients as f64 / a.ramp } else { 0.0 }),
        );
    let measure_from = start + a.warmup;
    let until = measure_from + a.duration;
    let mut tasks = JoinSet::new();
    for idx in 0..p.clients {
        // http paths carry no _pk; the room is the same URL as the WebSocket's.
        let path = plan.path(idx % p.rooms, idx);
        tasks.spawn(client(ctx.clone(), idx, plan.endpoint(idx), path, start, measure_from, until, a.rate));
    }
    let mut bar = Progress::new(a.quiet, until + a.drain - started, live.clone(), p.clients, ("req", "resp"));
    let mut servers = plan.watch_servers();
    progress::wait(&mut bar, started, "connect", start, || false).await;
    for s in servers.iter_mut() {
        s.sample_connected();
    }
    progress::wait(&mut bar, started, "warm-up", measure_from, || false).await;
    servers.iter_mut().for_each(crate::ServerWatch::cpu_start);
    progress::wait(&mut bar, started, "measure", until, || false).await;
    servers.iter_mut().for_each(crate::ServerWatch::cpu_stop);
    for s in servers.iter_mut() {
        s.sample_end();
    }
    let mut outs = Vec::new();
    let done = tokio::time::timeout(a.drain + Duration::from_secs(5), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(o) = r {
                outs.push(o);
            }
        }
    })
    .await;
    if done.is_err() {
        ctx.errors.add(&live, "http: some connections did not finish (aborted)");
        tasks.abort_all();
    }
    bar.finish();
    let mut figures = HttpFigures::default();
    let mut connected = 0;
    let mut open_at_end = 0;
    for o in &outs {
        open_at_end += u64::from(o.open_at_end);
        connected += u64::from(o.connected);
        figures.responses += o.responses;
        for (k, v) in &o.statuses {
            *figures.statuses.entry(*k).or_default() += v;
        }
    }
    figures.per_s = figures.responses as f64 / a.duration.as_secs_f64();
    figures.latency_ms = ctx.latency.quantiles();
    let n = p.clients as u64;
    let connections = Connections {
        attempted: n,
        connected,
        failed: n - connected,
        open_at_end,
        connect_ms: ctx.connect_ms.quantiles(),
        ramp_s: 0.0,
    };
    let mut report = plan.report(
        started.elapsed().as_secs_f64(),
        a.duration.as_secs_f64(),
        connections,
        None,
        None,
        servers,
        ctx.errors.snapshot(),
    );
    report.http = Some(figures);
    Ok(report)
}
