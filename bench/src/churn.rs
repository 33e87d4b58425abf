//! The `churn` scenario: every client connects, stays `--hold`, closes (or drops the TCP
//! connection with `--abrupt`), and connects again with the same `_pk`, as partysocket does
//! when it reconnects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, ws_error_kind};
use crate::progress::{self, Progress};
use crate::stats::{ChurnFigures, Connections, Errors, Live, SharedHist};
use crate::Plan;

struct Ctx {
    sources: Option<Vec<std::net::IpAddr>>,
    connect_timeout: Duration,
    hold: Duration,
    abrupt: bool,
    ramp: crate::sys::Ramp,
    live: Arc<Live>,
    errors: Errors,
    connect_ms: SharedHist,
    server_closes: Mutex<BTreeMap<String, u64>>,
}

#[derive(Default)]
struct Out {
    connected_once: bool,
    cycles: u64,
}

async fn client(
    ctx: Arc<Ctx>,
    idx: usize,
    ep: crate::Endpoint,
    path: String,
    measure_from: Instant,
    until: Instant,
) -> Out {
    let mut out = Out::default();
    let source = ctx.sources.as_ref().map(|ips| ips[idx % ips.len()]);
    loop {
        ctx.ramp.wait().await;
        let t0 = Instant::now();
        if t0 >= until {
            break;
        }
        Live::add(&ctx.live.sent, 1);
        let ws = match client::connect(ep.addr, source, &ep.authority, &path, ctx.connect_timeout).await {
            Ok(ws) => ws,
            Err(kind) => {
                ctx.errors.add(&ctx.live, kind);
                Live::add(&ctx.live.connect_failed, 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let measured = t0 >= measure_from;
        if measured {
            ctx.connect_ms.record_one(t0.elapsed().as_nanos() as u64);
        }
        if !out.connected_once {
            out.connected_once = true;
            Live::add(&ctx.live.connected, 1);
        }
        Live::add(&ctx.live.open, 1);
        let (mut sink, mut stream) = ws.split();
        // Hold: read whatever the room sends; a close from the server ends the hold.
        let hold_end = Instant::now() + ctx.hold;
        let mut server_closed = false;
        loop {
            let frame = tokio::select! {
                _ = tokio::time::sleep_until(hold_end) => break,
                f = stream.next() => f,
            };
            match frame {
                Some(Ok(Message::Close(f))) => {
                    let kind =
                        f.map_or_else(|| "no code".to_string(), |f| format!("{} {}", u16::from(f.code), f.reason));
                    *ctx.server_closes.lock().expect("lock").entry(kind).or_default() += 1;
                    server_closed = true;
                    break;
                }
                Some(Ok(_)) => Live::add(&ctx.live.received, 1),
                Some(Err(e)) => {
                    ctx.errors.add(&ctx.live, ws_error_kind("read", &e));
                    server_closed = true;
                    break;
                }
                None => {
                    ctx.errors.add(&ctx.live, "read: connection ended without a close frame");
                    server_closed = true;
                    break;
                }
            }
        }
        if !ctx.abrupt && !server_closed {
            let closed = tokio::time::timeout(Duration::from_secs(2), async {
                sink.send(Message::Close(None)).await.map_err(|e| ws_error_kind("close", &e))?;
                loop {
                    match stream.next().await {
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(ws_error_kind("close", &e)),
                    }
                }
            })
            .await;
            match closed {
                Ok(Ok(())) => {}
                Ok(Err(kind)) => ctx.errors.add(&ctx.live, kind),
                Err(_) => ctx.errors.add(&ctx.live, "close: no close reply within 2 s"),
            }
        }
        drop((sink, stream));
        ctx.live.open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if measured && Instant::now() <= until + Duration::from_secs(1) {
            out.cycles += 1;
        }
    }
    out
}

/// Runs the `churn` scenario.
pub(crate) async fn run(plan: &Plan) -> anyhow::Result<crate::stats::Report> {
    let a = &plan.args;
    let p = &plan.params;
    let live = Arc::new(Live::default());
    let ctx = Arc::new(Ctx {
        sources: plan.sources.clone(),
        connect_timeout: a.connect_timeout,
        hold: a.hold,
        abrupt: a.abrupt,
        ramp: crate::sys::Ramp::new(a.ramp),
        live: live.clone(),
        errors: Errors::default(),
        connect_ms: SharedHist::default(),
        server_closes: Mutex::new(BTreeMap::new()),
    });
    let started = Instant::now();
    let measure_from = started + a.warmup;
    let until = measure_from + a.duration;
    let mut tasks = JoinSet::new();
    for idx in 0..p.clients {
        tasks.spawn(client(ctx.clone(), idx, plan.endpoint(idx), plan.path(idx % p.rooms, idx), measure_from, until));
    }
    let mut bar = Progress::new(a.quiet, until - started, live.clone(), p.clients, ("connect", "frames"));
    let mut servers = plan.watch_servers();
    progress::wait(&mut bar, started, "warm-up", measure_from, || false).await;
    for s in servers.iter_mut() {
        s.sample_connected();
        s.cpu_start();
    }
    progress::wait(&mut bar, started, "churn", until, || false).await;
    servers.iter_mut().for_each(crate::ServerWatch::cpu_stop);
    for s in servers.iter_mut() {
        s.sample_end();
    }
    let mut outs = Vec::new();
    let grace = a.connect_timeout + a.hold + Duration::from_secs(3);
    let done = tokio::time::timeout(grace, async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(o) = r {
                outs.push(o);
            }
        }
    })
    .await;
    if done.is_err() {
        ctx.errors.add(&live, "churn: some clients did not finish (aborted)");
        tasks.abort_all();
    }
    bar.finish();
    let cycles: u64 = outs.iter().map(|o| o.cycles).sum();
    let figures = ChurnFigures {
        cycles,
        cycles_per_s: cycles as f64 / a.duration.as_secs_f64(),
        server_closes: ctx.server_closes.lock().expect("lock").clone(),
    };
    let attempts = Live::get(&live.sent);
    let connections = Connections {
        attempted: attempts,
        connected: attempts - Live::get(&live.connect_failed),
        failed: Live::get(&live.connect_failed),
        open_at_end: 0,
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
    report.churn = Some(figures);
    Ok(report)
}
