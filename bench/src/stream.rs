//! The WebSocket message scenarios: `fanout`, `echo`, `idle` and `yjs`. Every client is one task
//! that connects, reads every frame (decoding the tester's payloads and accounting for them
//! per sender), and, if it is a sender, sends on its schedule. In `yjs` the payloads travel
//! inside Yjs updates ([`crate::yjs`]).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::client::{self, ws_error_kind};
use crate::payload::{self, Stamp};
use crate::progress::{self, Progress};
use crate::stats::{Errors, HistBuf, IdleFigures, Live, Messages, SharedHist};
use crate::track::{Arrival, ReceiverTrack, Totals};
use crate::{Endpoint, Plan, Scenario, ServerWatch};

/// Where the run is; every client watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Run(RunPlan),
    Close,
}

/// Most frames one client handles per wake-up before it looks at its phase and timer again.
const RECV_BATCH: usize = 64;
/// Frames handled between two reads of the clock (their latency is measured at the last read).
const CLOCK_EVERY: usize = 8;

/// Time between the idle scenario's broadcasts.
const BROADCAST_GAP: Duration = Duration::from_secs(1);

/// When senders send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunPlan {
    send_from: Instant,
    send_until_ns: u64,
}

/// How a client sends.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Never.
    Receive,
    /// `rate` messages per second, the first at `offset` after the start.
    Rate { rate: f64, offset: Duration },
    /// As fast as the window allows: at most `window` messages not yet back at the sender.
    Window(usize),
    /// `times` messages, `gap` apart, from the start (the idle scenario's broadcasts).
    Broadcasts { times: u64, gap: Duration },
}

struct Ctx {
    base: std::time::Instant,
    sources: Option<Vec<IpAddr>>,
    connect_timeout: Duration,
    ramp: crate::sys::Ramp,
    connect_sem: Semaphore,
    size: usize,
    binary: bool,
    echo: bool,
    /// Payloads travel in Yjs updates.
    yjs: bool,
    live: Arc<Live>,
    errors: Errors,
    latency: SharedHist,
    connect_ms: SharedHist,
    phase: watch::Receiver<Phase>,
    /// Payloads sent at or after this time (ns on `base`) are measured.
    measure_from_ns: AtomicU64,
    /// Connected clients per room.
    members: Vec<AtomicU64>,
    /// Idle: per broadcast (by sequence number), the longest time until a receiver had it.
    broadcast_max_ns: Vec<AtomicU64>,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn ns_of(&self, t: Instant) -> u64 {
        t.into_std().saturating_duration_since(self.base).as_nanos() as u64
    }
}

struct Spec {
    idx: usize,
    ep: Endpoint,
    room: usize,
    path: String,
    mode: Mode,
}

#[derive(Default)]
struct Out {
    connected: bool,
    open_at_end: bool,
    measured_sent: u64,
    warmup_sent: u64,
    track: ReceiverTrack,
    other_frames: u64,
}

/// Counts not yet added to the shared [`Live`] counters (added every 64 events or 50 ms).
#[derive(Default)]
struct Pending {
    n: u64,
    received: u64,
    measured: u64,
    sent: u64,
    expected: u64,
    flush_at: Option<Instant>,
}

impl Pending {
    fn flush(&mut self, live: &Live) {
        Live::add(&live.received, self.received);
        Live::add(&live.measured, self.measured);
        Live::add(&live.sent, self.sent);
        Live::add(&live.expected, self.expected);
        *self = Pending::default();
    }

    fn touched(&mut self, live: &Live) {
        self.n += 1;
        if self.n >= 64 {
            self.flush(live);
        } else if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + Duration::from_millis(50));
        }
    }
}

/// The payloads in one received frame: at most one, except in Yjs updates.
enum FrameStamps<'a> {
    One(Option<Stamp>),
    Yjs(crate::yjs::Stamps<'a>),
}

impl Iterator for FrameStamps<'_> {
    type Item = Stamp;

    fn next(&mut self) -> Option<Stamp> {
        match self {
            FrameStamps::One(s) => s.take(),
            FrameStamps::Yjs(it) => it.next(),
        }
    }
}

/// A sender's state.
struct Sending {
    mode: Mode,
    plan: Option<RunPlan>,
    seq: u64,
    in_flight: usize,
    next_due: Option<Instant>,
    done: bool,
}

enum End {
    Close,
    Lost,
}

type Sink = futures::stream::SplitSink<client::Ws, Message>;

async fn client(ctx: Arc<Ctx>, spec: Spec) -> Out {
    let mut out = Out::default();
    ctx.ramp.wait().await;
    let ws = {
        let Ok(_permit) = ctx.connect_sem.acquire().await else { return out };
        if *ctx.phase.borrow() != Phase::Connecting {
            ctx.errors.add(&ctx.live, "connect: not attempted before the connect deadline");
            Live::add(&ctx.live.connect_failed, 1);
            return out;
        }
        let source = ctx.sources.as_ref().map(|ips| ips[spec.idx % ips.len()]);
        let t0 = Instant::now();
        match client::connect(spec.ep.addr, source, &spec.ep.authority, &spec.path, ctx.connect_timeout).await {
            Ok(ws) => {
                ctx.connect_ms.record_one(t0.elapsed().as_nanos() as u64);
                ws
            }
            Err(kind) => {
                ctx.errors.add(&ctx.live, kind);
                Live::add(&ctx.live.connect_failed, 1);
                return out;
            }
        }
    };
    out.connected = true;
    ctx.members[spec.room].fetch_add(1, Ordering::Relaxed);
    Live::add(&ctx.live.connected, 1);
    Live::add(&ctx.live.open, 1);
    let (mut sink, mut stream) = ws.split();
    let mut writer = None;
    if ctx.yjs {
        for frame in crate::yjs::opening_frames(spec.idx as u64) {
            if let Err(e) = sink.feed(Message::Binary(frame.into())).await {
                ctx.errors.add(&ctx.live, ws_error_kind("write", &e));
            }
        }
        let _ = sink.flush().await;
        writer = Some(crate::yjs::Writer::new());
    }
    let mut phase_rx = ctx.phase.clone();
    let mut lat = HistBuf::new(&ctx.latency);
    let mut pend = Pending::default();
    let mut snd = Sending { mode: spec.mode, plan: None, seq: 0, in_flight: 0, next_due: None, done: false };
    let me = spec.idx as u64;
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut timer_at: Option<Instant> = None;
    let mut phase = *phase_rx.borrow_and_update();

    let end = 'run: loop {
        match phase {
            Phase::Close => break End::Close,
            Phase::Run(plan) if snd.plan.is_none() => {
                snd.plan = Some(plan);
                snd.next_due = match snd.mode {
                    Mode::Receive => None,
                    Mode::Rate { offset, .. } => Some(plan.send_from + offset),
                    Mode::Window(_) | Mode::Broadcasts { .. } => Some(plan.send_from),
                };
            }
            _ => {}
        }
        let want = match (snd.next_due.filter(|_| !snd.done), pend.flush_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if want != timer_at {
            if let Some(w) = want {
                timer.as_mut().reset(w);
            }
            timer_at = want;
        }
        tokio::select! {
            // In order, not at random: the phase and the timer first, since under load a frame
            // is nearly always ready and must not starve them.
            biased;
            r = phase_rx.changed() => {
                phase = if r.is_ok() { *phase_rx.borrow_and_update() } else { Phase::Close };
            }
            _ = &mut timer, if timer_at.is_some() => {
                timer_at = None;
                let now = Instant::now();
                if pend.flush_at.is_some_and(|f| f <= now) {
                    pend.flush(&ctx.live);
                }
                if let (Some(due), Some(plan), false) = (snd.next_due, snd.plan, snd.done) {
                    if due <= now {
                        let n = match snd.mode {
                            Mode::Receive => 0,
                            Mode::Broadcasts { .. } => 1,
                            Mode::Window(w) => w.saturating_sub(snd.in_flight),
                            Mode::Rate { rate, offset } => {
                                let since = now.saturating_duration_since(plan.send_from + offset).as_secs_f64();
                                ((since * rate) as u64 + 1).saturating_sub(snd.seq).min(1000) as usize
                            }
                        };
                        snd.next_due = None;
                        if let Err(e) = send(&ctx, &mut sink, &mut snd, &mut out, &mut pend, &mut writer, spec.room, me, n).await {
                            ctx.errors.add(&ctx.live, ws_error_kind("write", &e));
                            break End::Lost;
                        }
                        match snd.mode {
                            Mode::Rate { rate, offset } if !snd.done => {
                                snd.next_due = Some(plan.send_from + offset + Duration::from_secs_f64(snd.seq as f64 / rate));
                            }
                            Mode::Broadcasts { times, gap } => {
                                if snd.seq >= times {
                                    snd.done = true;
                                } else {
                                    snd.next_due = Some(plan.send_from + gap * snd.seq as u32);
                                }
                            }
                            _ => {}
                        }
                        if snd.done {
                            pend.flush(&ctx.live);
                        }
                    }
                }
            }
            frame = stream.next() => {
                // Frames that are already readable are handled here, up to a batch, without going
                // back through the select (which costs a watch and a timer poll per frame), and
                // the clock is read once every few frames: frames read together arrived
                // together. At fan-out saturation this loop is most of the tester's CPU.
                let mut frame = frame;
                let mut now_ns = ctx.now_ns();
                let mut n = 0;
                loop {
                    'frame: {
                        let msg = match frame {
                            Some(Ok(m)) => m,
                            Some(Err(e)) => {
                                ctx.errors.add(&ctx.live, ws_error_kind("read", &e));
                                break 'run End::Lost;
                            }
                            None => {
                                ctx.errors.add(&ctx.live, "read: connection ended without a close frame");
                                break 'run End::Lost;
                            }
                        };
                        let stamps = match &msg {
                            Message::Binary(b) if ctx.yjs => FrameStamps::Yjs(crate::yjs::stamps(b)),
                            Message::Text(t) => FrameStamps::One(payload::decode_text(t.as_bytes())),
                            Message::Binary(b) => FrameStamps::One(payload::decode_binary(b)),
                            Message::Close(frame) => {
                                let kind = match frame {
                                    Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                                    None => "closed by server: no code".to_string(),
                                };
                                ctx.errors.add(&ctx.live, kind);
                                break 'run End::Lost;
                            }
                            _ => break 'frame,
                        };
                        pend.received += 1;
                        let mut any = false;
                        for s in stamps {
                            any = true;
                            let measured = s.sent_ns >= ctx.measure_from_ns.load(Ordering::Relaxed);
                            let arrival = out.track.observe(s.sender, s.seq, measured);
                            if measured && arrival != Arrival::Duplicate {
                                pend.measured += 1;
                                let took = now_ns.saturating_sub(s.sent_ns);
                                lat.record(took);
                                if let Some(m) = ctx.broadcast_max_ns.get(s.seq as usize) {
                                    m.fetch_max(took, Ordering::Relaxed);
                                }
                            }
                            if s.sender == me && arrival != Arrival::Duplicate {
                                snd.in_flight = snd.in_flight.saturating_sub(1);
                                if let Mode::Window(w) = snd.mode {
                                    if !snd.done && snd.plan.is_some() && snd.next_due.is_none() && snd.in_flight < w {
                                        let room = w - snd.in_flight;
                                        if let Err(e) = send(&ctx, &mut sink, &mut snd, &mut out, &mut pend, &mut writer, spec.room, me, room).await {
                                            ctx.errors.add(&ctx.live, ws_error_kind("write", &e));
                                            break 'run End::Lost;
                                        }
                                        // What arrives after this may be what was just sent.
                                        now_ns = ctx.now_ns();
                                    }
                                }
                            }
                        }
                        if !any {
                            out.other_frames += 1;
                        }
                        pend.touched(&ctx.live);
                    }
                    n += 1;
                    if n == RECV_BATCH {
                        break;
                    }
                    match stream.next().now_or_never() {
                        Some(f) => frame = f,
                        None => break,
                    }
                    if n % CLOCK_EVERY == 0 {
                        now_ns = ctx.now_ns();
                    }
                }
            }
        }
    };
    pend.flush(&ctx.live);
    lat.flush();
    match end {
        End::Close => {
            out.open_at_end = true;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = sink.send(Message::Close(None)).await;
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        End::Lost => {}
    }
    ctx.live.open.fetch_sub(1, Ordering::Relaxed);
    out
}

/// Sends up to `n` messages (fewer once the send window has ended), then flushes.
#[allow(clippy::too_many_arguments)]
async fn send(
    ctx: &Ctx,
    sink: &mut Sink,
    snd: &mut Sending,
    out: &mut Out,
    pend: &mut Pending,
    writer: &mut Option<crate::yjs::Writer>,
    room: usize,
    me: u64,
    n: usize,
) -> Result<(), tungstenite::Error> {
    let Some(plan) = snd.plan else { return Ok(()) };
    let receivers = if ctx.echo { 1 } else { ctx.members[room].load(Ordering::Relaxed) };
    let measure_from = ctx.measure_from_ns.load(Ordering::Relaxed);
    let mut fed = 0;
    for _ in 0..n {
        let now = ctx.now_ns();
        if now >= plan.send_until_ns {
            snd.done = true;
            break;
        }
        let stamp = Stamp { sender: me, seq: snd.seq, sent_ns: now };
        let msg = if let Some(w) = writer.as_mut() {
            Message::Binary(w.append(&payload::encode_text(stamp, ctx.size)).into())
        } else if ctx.binary {
            Message::Binary(payload::encode_binary(stamp, ctx.size).into())
        } else {
            Message::Text(payload::encode_text(stamp, ctx.size).into())
        };
        sink.feed(msg).await?;
        fed += 1;
        snd.seq += 1;
        snd.in_flight += 1;
        pend.sent += 1;
        if now >= measure_from {
            out.measured_sent += 1;
            pend.expected += receivers;
        } else {
            out.warmup_sent += 1;
        }
    }
    if fed > 0 {
        sink.flush().await?;
    }
    Ok(())
}

/// Runs `fanout`, `echo` or `idle`.
pub(crate) async fn run(plan: &Plan) -> anyhow::Result<crate::stats::Report> {
    let a = &plan.args;
    let scenario = a.scenario;
    let (phase_tx, phase_rx) = watch::channel(Phase::Connecting);
    let live = Arc::new(Live::default());
    let ctx = Arc::new(Ctx {
        base: std::time::Instant::now(),
        sources: plan.sources.clone(),
        connect_timeout: a.connect_timeout,
        ramp: crate::sys::Ramp::new(a.ramp),
        connect_sem: Semaphore::new(a.connect_concurrency.max(1)),
        size: plan.params.size,
        binary: a.binary,
        echo: scenario == Scenario::Echo,
        yjs: scenario == Scenario::Yjs,
        live: live.clone(),
        errors: Errors::default(),
        latency: SharedHist::default(),
        connect_ms: SharedHist::default(),
        phase: phase_rx,
        measure_from_ns: AtomicU64::new(u64::MAX),
        members: (0..plan.params.rooms).map(|_| AtomicU64::new(0)).collect(),
        broadcast_max_ns: if scenario == Scenario::Idle {
            (0..a.broadcasts.max(1)).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        },
    });
    let p = &plan.params;
    let mut tasks = JoinSet::new();
    for idx in 0..p.clients {
        let room = idx % p.rooms;
        let mode = match scenario {
            Scenario::Idle if idx < p.rooms => Mode::Broadcasts { times: a.broadcasts.max(1), gap: BROADCAST_GAP },
            Scenario::Idle => Mode::Receive,
            _ if idx >= p.senders => Mode::Receive,
            _ if p.rate > 0.0 => {
                // Spread the senders' first messages over one interval.
                let offset = Duration::from_secs_f64((idx as f64 / p.senders as f64) / p.rate);
                Mode::Rate { rate: p.rate, offset }
            }
            _ => Mode::Window(p.window.max(1)),
        };
        let spec = Spec { idx, ep: plan.endpoint(idx), room, path: plan.path(room, idx), mode };
        tasks.spawn(client(ctx.clone(), spec));
    }

    let started = Instant::now();
    let connect_budget = plan.connect_budget();
    let total = connect_budget + a.warmup + a.duration + a.drain;
    let mut bar = Progress::new(a.quiet, total, live.clone(), p.clients, ("sent", "recv"));
    let mut server_mem = plan.watch_servers();

    // Connect.
    let n = p.clients as u64;
    progress::wait(&mut bar, started, "connect", started + connect_budget, || {
        Live::get(&live.connected) + Live::get(&live.connect_failed) >= n
    })
    .await;
    let ramp_s = started.elapsed().as_secs_f64();
    for m in server_mem.iter_mut() {
        m.sample_connected();
    }
    let connected = Live::get(&live.connected);

    // Run.
    let run_start = Instant::now();
    let mut idle = None;
    let (send_from, send_until, measure_from) = if scenario == Scenario::Idle {
        let hold_end = run_start + a.duration;
        let sending = BROADCAST_GAP * a.broadcasts.max(1) as u32;
        (hold_end, hold_end + sending, hold_end)
    } else {
        let m = run_start + a.warmup;
        (run_start, m + a.duration, m)
    };
    ctx.measure_from_ns.store(ctx.ns_of(measure_from), Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Run(RunPlan { send_from, send_until_ns: ctx.ns_of(send_until) }));
    if scenario == Scenario::Idle {
        let held = Live::get(&live.open);
        server_mem.iter_mut().for_each(ServerWatch::cpu_start);
        progress::wait(&mut bar, started, "hold", send_from, || false).await;
        server_mem.iter_mut().for_each(ServerWatch::cpu_stop);
        idle = Some(IdleFigures {
            hold_s: a.duration.as_secs_f64(),
            held,
            alive_after_hold: Live::get(&live.open),
            ..IdleFigures::default()
        });
        // Let every broadcast go out.
        progress::wait(&mut bar, started, "broadcast", send_until, || false).await;
    } else {
        progress::wait(&mut bar, started, "warm-up", measure_from, || false).await;
        server_mem.iter_mut().for_each(ServerWatch::cpu_start);
        progress::wait(&mut bar, started, "measure", send_until, || false).await;
        server_mem.iter_mut().for_each(ServerWatch::cpu_stop);
    }
    let measured_s = if scenario == Scenario::Idle { 0.0 } else { a.duration.as_secs_f64() };

    // Drain: until every expected delivery arrived (the counters settle within 50 ms).
    tokio::time::sleep(Duration::from_millis(120)).await;
    progress::wait(&mut bar, started, "drain", Instant::now() + a.drain, || {
        Live::get(&live.measured) >= Live::get(&live.expected)
    })
    .await;
    for m in server_mem.iter_mut() {
        m.sample_end();
    }
    let open_at_end = Live::get(&live.open);

    // Close.
    let _ = phase_tx.send(Phase::Close);
    bar.tick("close", started.elapsed());
    let mut outs = Vec::with_capacity(p.clients);
    let closing = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(o) = r {
                outs.push(o);
            }
        }
    })
    .await;
    if closing.is_err() {
        ctx.errors.add(&live, "close: some clients did not finish within 10 s (aborted)");
        tasks.abort_all();
    }
    bar.finish();
    let elapsed_s = started.elapsed().as_secs_f64();

    // Account.
    let mut totals = Totals { expected: Live::get(&live.expected), ..Totals::default() };
    let mut messages = Messages::default();
    for o in &outs {
        o.track.add_to(&mut totals);
        messages.sent += o.measured_sent;
        messages.warmup_sent += o.warmup_sent;
        messages.other_frames += o.other_frames;
    }
    totals.finish();
    messages.latency_ms = ctx.latency.quantiles();
    if let Some(i) = idle.as_mut() {
        i.broadcast_expected = totals.expected;
        i.broadcast_reached = totals.delivered;
        i.broadcast_each_ms = ctx.broadcast_max_ns.iter().map(|m| m.load(Ordering::Relaxed) as f64 / 1e6).collect();
        let mut sorted = i.broadcast_each_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied();
        i.broadcast_all_ms = if totals.expected > 0 && totals.lost == 0 { median } else { None };
    } else if measured_s > 0.0 {
        messages.sent_per_s = messages.sent as f64 / measured_s;
        messages.delivered_per_s = totals.delivered as f64 / measured_s;
    }
    messages.totals = totals;
    let connections = crate::stats::Connections {
        attempted: n,
        connected,
        failed: n - connected,
        open_at_end,
        connect_ms: ctx.connect_ms.quantiles(),
        ramp_s,
    };
    Ok(plan.report(elapsed_s, measured_s, connections, Some(messages), idle, server_mem, ctx.errors.snapshot()))
}
