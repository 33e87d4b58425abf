//! A load driver for fault tests (and a chaos runner): K rooms of the example parties, a few
//! WebSocket clients per room spread over the gateways, each sending uniquely numbered messages
//! at a modest rate, recording everything it sees with its receive time, and reconnecting like
//! PartySocket when its socket closes or fails (same `_pk`, growing delays, a connect timeout).
//!
//! Parties (both served by the `partyline` binary):
//! - `main` (chat, not hibernating): on connect the room sends its history (a JSON array);
//!   every text message is stored, then broadcast to everyone, the sender included. A client
//!   sends `<client id>:<seq>`; seeing its own message come back means the write was durable
//!   (the output gate holds a frame until the write before it is acknowledged by the store).
//! - `counter` (`hibernate: true`): on connect `{"count": n}`; `inc` increments the stored
//!   count and broadcasts `{"count": n}` to everyone.
//!
//! [`Load::stop`] ends the run and returns a [`LoadReport`]: every client's sessions, the frames
//! each received (with times), how each session ended (close code and reason, or dropped), the
//! answers to refused connection attempts, and what each sent. [`crate::checks`] holds what to
//! check it against (storage, epochs, and the texts clients may read:
//! [`LoadReport::undocumented_texts`]).
//!
//! Reconnect delays are PartySocket's shape (a minimum, growing ×1.3 per failed attempt, a
//! ceiling, reset after a connection stayed up) with shorter figures, so that a test measures
//! the server's failover rather than the client's patience: 100–200 ms first, at most 2 s.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use partyline::RoomKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Which example party a room runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `main`: the chat (history in storage, every message broadcast; not hibernating).
    Chat,
    /// `counter`: a stored counter, `hibernate: true`.
    Counter,
}

impl Kind {
    /// The party name.
    pub fn party(self) -> &'static str {
        match self {
            Kind::Chat => "main",
            Kind::Counter => "counter",
        }
    }
}

/// One room of the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomSpec {
    /// Its party.
    pub kind: Kind,
    /// The room id.
    pub name: String,
}

impl RoomSpec {
    /// A room of `kind` named `name`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        RoomSpec { kind, name: name.into() }
    }

    /// Its storage key.
    pub fn key(&self) -> RoomKey {
        RoomKey::new(self.kind.party(), self.name.clone())
    }

    /// `party/room`.
    pub fn label(&self) -> String {
        format!("{}/{}", self.kind.party(), self.name)
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Where clients connect; client `j` of room `r` uses gateway `(r + j) % len`.
    pub gateways: Vec<SocketAddr>,
    /// The rooms.
    pub rooms: Vec<RoomSpec>,
    /// Clients per room.
    pub clients_per_room: usize,
    /// Time between two messages of one chat client.
    pub chat_interval: Duration,
    /// Time between two `inc` of one counter client.
    pub counter_interval: Duration,
    /// First reconnect delay (plus up to as much again at random).
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// A connection attempt not open within this is abandoned and retried (PartySocket: 4 s).
    pub connect_timeout: Duration,
    /// A connection that stayed open this long resets the reconnect delay (PartySocket: 5 s).
    pub min_uptime: Duration,
}

impl LoadConfig {
    /// No rooms yet, 3 clients per room, a chat message every 100 ms and an `inc` every 200 ms
    /// per client.
    pub fn new(gateways: Vec<SocketAddr>) -> Self {
        LoadConfig {
            gateways,
            rooms: Vec::new(),
            clients_per_room: 3,
            chat_interval: Duration::from_millis(100),
            counter_interval: Duration::from_millis(200),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(4),
            min_uptime: Duration::from_secs(2),
        }
    }

    /// Adds `n` chat rooms named `<prefix>-<i>`.
    pub fn chat_rooms(mut self, prefix: &str, n: usize) -> Self {
        self.rooms.extend((0..n).map(|i| RoomSpec::new(Kind::Chat, format!("{prefix}-{i}"))));
        self
    }

    /// Adds `n` counter rooms named `<prefix>-<i>`.
    pub fn counter_rooms(mut self, prefix: &str, n: usize) -> Self {
        self.rooms.extend((0..n).map(|i| RoomSpec::new(Kind::Counter, format!("{prefix}-{i}"))));
        self
    }

    /// Adds one room.
    pub fn room(mut self, room: RoomSpec) -> Self {
        self.rooms.push(room);
        self
    }

    /// Sets the clients per room.
    pub fn clients_per_room(mut self, n: usize) -> Self {
        self.clients_per_room = n;
        self
    }
}

/// A received data frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// When it was received.
    pub at: Instant,
    /// Its text (binary frames are recorded as `<binary N bytes>`).
    pub text: String,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The server sent a close frame.
    Closed {
        /// When.
        at: Instant,
        /// Its code (1005 when it had none).
        code: u16,
        /// Its reason.
        reason: String,
    },
    /// The connection failed or ended without a close frame.
    Dropped {
        /// When.
        at: Instant,
        /// What happened.
        error: String,
    },
    /// The driver closed it at the end of the run.
    Stopped {
        /// When.
        at: Instant,
    },
}

impl End {
    /// When it ended.
    pub fn at(&self) -> Instant {
        match self {
            End::Closed { at, .. } | End::Dropped { at, .. } | End::Stopped { at } => *at,
        }
    }

    /// Whether the server (or the network) ended it, rather than the driver.
    pub fn is_disconnect(&self) -> bool {
        !matches!(self, End::Stopped { .. })
    }

    /// The close code, if the server sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            End::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One WebSocket connection of a client, from the 101 to its end.
#[derive(Clone, Debug)]
pub struct Session {
    /// The gateway it went through.
    pub gateway: SocketAddr,
    /// When the upgrade completed.
    pub opened: Instant,
    /// What it sent: (sequence number, time). Chat: the message `<client>:<seq>`; counter:
    /// the n-th `inc` of this client.
    pub sent: Vec<(u64, Instant)>,
    /// Every data frame received, in order. The first is the room's greeting (chat: the
    /// history; counter: the count).
    pub frames: Vec<Frame>,
    /// How it ended.
    pub end: End,
}

/// Everything one client did and saw.
#[derive(Clone, Debug)]
pub struct ClientLog {
    /// Its id (`_pk`), unique in the run.
    pub id: String,
    /// Index of its room in [`LoadReport::rooms`].
    pub room: usize,
    /// Its sessions, in order.
    pub sessions: Vec<Session>,
    /// Connection attempts that failed before a 101: (time, error).
    pub connect_failures: Vec<(Instant, String)>,
    /// Connection attempts refused with an HTTP answer whose body arrived whole: (time,
    /// status, body).
    pub refusals: Vec<(Instant, u16, String)>,
}

impl ClientLog {
    /// Sequence numbers of its chat messages it saw come back (acknowledged writes).
    pub fn acked(&self) -> Vec<u64> {
        let prefix = format!("{}:", self.id);
        let mut acked = Vec::new();
        for s in &self.sessions {
            for f in s.frames.iter().skip(1) {
                if let Some(seq) = f.text.strip_prefix(&prefix).and_then(|n| n.parse().ok()) {
                    acked.push(seq);
                }
            }
        }
        acked
    }

    /// Messages (chat) or `inc`s (counter) sent.
    pub fn sent(&self) -> usize {
        self.sessions.iter().map(|s| s.sent.len()).sum()
    }

    /// The sessions the server or the network ended.
    pub fn disconnects(&self) -> impl Iterator<Item = &Session> {
        self.sessions.iter().filter(|s| s.end.is_disconnect())
    }
}

/// A write a client saw acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// When the client saw it.
    pub at: Instant,
    /// Which write it was.
    pub write: Written,
}

/// What identifies an acknowledged write, so that a fault's in-flight writes are not taken
/// for writes made after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// A chat message, sent at this time.
    SentAt(Instant),
    /// A counter increment that made the count this. A broadcast does not say whose `inc` it
    /// was: a count counts as written after `t` when it is above the highest count seen by `t`
    /// plus the `inc`s sent in the [`IN_FLIGHT`] before `t` (those may still land).
    Count(i64),
}

/// How long before a fault an `inc` may have been sent and still be applied after it (a
/// commit and a broadcast take milliseconds here). A counter room's failover figure can be
/// late by about the time its clients take to send this many `inc`s again.
pub const IN_FLIGHT: Duration = Duration::from_millis(300);

/// The count above which a counter room's writes were made after `t`: the highest count seen by
/// `t` plus the `inc`s sent in the [`IN_FLIGHT`] before `t`.
fn count_after(acks: &[Ack], incs: impl Iterator<Item = Instant>, t: Instant) -> i64 {
    let seen = acks
        .iter()
        .filter(|a| a.at <= t)
        .filter_map(|a| match a.write {
            Written::Count(c) => Some(c),
            Written::SentAt(_) => None,
        })
        .max()
        .unwrap_or(0);
    let in_flight = incs.filter(|&s| s < t && s + IN_FLIGHT >= t).count();
    seen + in_flight as i64
}

/// When the writes among `acks` made after `t` were seen, sorted.
fn acked_after(acks: &[Ack], incs: impl Iterator<Item = Instant>, t: Instant) -> Vec<Instant> {
    let threshold = count_after(acks, incs, t);
    let mut times: Vec<Instant> = acks
        .iter()
        .filter(|a| a.at > t)
        .filter(|a| match a.write {
            Written::SentAt(sent) => sent > t,
            Written::Count(count) => count > threshold,
        })
        .map(|a| a.at)
        .collect();
    times.sort();
    times
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Send and reconnect.
    Run,
    /// Stop sending and reconnecting; keep receiving.
    Quiet,
    /// Close and report.
    Stop,
}

#[derive(Default)]
struct Live {
    /// Per room: writes seen acknowledged (chat: a client saw its own message; counter: a
    /// client saw a count broadcast).
    acks: Vec<Vec<Ack>>,
    /// Per counter room: when each `inc` was sent.
    incs: Vec<Vec<Instant>>,
    /// Per client: messages sent in the current session and not yet seen back (chat).
    pending: Vec<u64>,
    /// Per client: whether a session is open.
    connected: Vec<bool>,
}

/// A running load; see the module docs.
pub struct Load {
    cfg: Arc<LoadConfig>,
    live: Arc<Mutex<Live>>,
    phase: watch::Sender<Phase>,
    tasks: Vec<JoinHandle<ClientLog>>,
    started: Instant,
}

impl Load {
    /// Starts every client (they connect at once and start sending).
    pub fn start(cfg: LoadConfig) -> Load {
        assert!(!cfg.gateways.is_empty(), "the load needs a gateway");
        let cfg = Arc::new(cfg);
        let clients = cfg.rooms.len() * cfg.clients_per_room;
        let live = Arc::new(Mutex::new(Live {
            acks: vec![Vec::new(); cfg.rooms.len()],
            incs: vec![Vec::new(); cfg.rooms.len()],
            pending: vec![0; clients],
            connected: vec![false; clients],
        }));
        let (phase, _) = watch::channel(Phase::Run);
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for (r, room) in cfg.rooms.iter().enumerate() {
            for j in 0..cfg.clients_per_room {
                let index = r * cfg.clients_per_room + j;
                let client = ClientTask {
                    index,
                    room: r,
                    spec: room.clone(),
                    id: format!("r{r}c{j}"),
                    gateway: cfg.gateways[(r + j) % cfg.gateways.len()],
                    cfg: cfg.clone(),
                    live: live.clone(),
                    phase: phase.subscribe(),
                    rng: Rng::new(index as u64),
                };
                tasks.push(tokio::spawn(client.run()));
            }
        }
        Load { cfg, live, phase, tasks, started }
    }

    /// The rooms.
    pub fn rooms(&self) -> &[RoomSpec] {
        &self.cfg.rooms
    }

    /// When the load started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Writes seen acknowledged so far in room `r`.
    pub fn acks(&self, r: usize) -> usize {
        self.live.lock().unwrap().acks[r].len()
    }

    /// When the `n`-th (1-based) write made after `t` in room `r` was seen acknowledged
    /// (writes in flight at `t` do not count).
    pub fn nth_ack_after(&self, r: usize, t: Instant, n: usize) -> Option<Instant> {
        let live = self.live.lock().unwrap();
        acked_after(&live.acks[r], live.incs[r].iter().copied(), t).get(n.saturating_sub(1)).copied()
    }

    /// Clients with an open session.
    pub fn connected(&self) -> usize {
        self.live.lock().unwrap().connected.iter().filter(|c| **c).count()
    }

    /// Waits until each of `rooms` has `n` acknowledged writes made after `t`, or `timeout`
    /// passes. Returns, per room, the time from `t` to the `n`-th; `None` for rooms that did
    /// not get there.
    pub async fn wait_acks_after(
        &self,
        rooms: &[usize],
        t: Instant,
        n: usize,
        timeout: Duration,
    ) -> Vec<Option<Duration>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got: Vec<Option<Duration>> =
                rooms.iter().map(|&r| self.nth_ack_after(r, t, n).map(|a| a.duration_since(t))).collect();
            if got.iter().all(Option::is_some) || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every room has `n` acknowledged writes (the load is flowing); panics naming
    /// the rooms that did not within `timeout`.
    pub async fn warm_up(&self, n: usize, timeout: Duration) {
        let all: Vec<usize> = (0..self.cfg.rooms.len()).collect();
        let got = self.wait_acks_after(&all, self.started, n, timeout).await;
        let cold: Vec<String> =
            all.iter().zip(&got).filter(|(_, g)| g.is_none()).map(|(&r, _)| self.cfg.rooms[r].label()).collect();
        assert!(cold.is_empty(), "no acknowledged writes within {timeout:?} in {cold:?}");
    }

    /// Stops sending, waits (up to 5 s) for the messages in flight to come back, closes every
    /// client and returns what they recorded.
    pub async fn stop(self) -> LoadReport {
        self.phase.send_replace(Phase::Quiet);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let busy = {
                let live = self.live.lock().unwrap();
                live.pending.iter().zip(&live.connected).any(|(p, c)| *c && *p > 0)
            };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The counter's broadcasts are not matched to senders: give the last ones a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.phase.send_replace(Phase::Stop);
        let mut clients = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            match tokio::time::timeout(Duration::from_secs(20), task).await {
                Ok(Ok(log)) => clients.push(log),
                Ok(Err(e)) => panic!("a load client panicked: {e}"),
                Err(_) => panic!("a load client did not stop within 20 s"),
            }
        }
        LoadReport { rooms: self.cfg.rooms.clone(), clients, started: self.started, ended: Instant::now() }
    }
}

/// A small deterministic generator for jitter (no dependency needed for this).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        Rng((seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (t as u64) | 1)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct ClientTask {
    index: usize,
    room: usize,
    spec: RoomSpec,
    id: String,
    gateway: SocketAddr,
    cfg: Arc<LoadConfig>,
    live: Arc<Mutex<Live>>,
    phase: watch::Receiver<Phase>,
    rng: Rng,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

impl ClientTask {
    async fn run(mut self) -> ClientLog {
        let mut log = ClientLog {
            id: self.id.clone(),
            room: self.room,
            sessions: Vec::new(),
            connect_failures: Vec::new(),
            refusals: Vec::new(),
        };
        let url =
            format!("ws://{}/parties/{}/{}?_pk={}", self.gateway, self.spec.kind.party(), self.spec.name, self.id);
        let mut seq = 0u64;
        let mut failures = 0u32;
        // Spread the clients' first connections a little.
        let spread = Duration::from_millis((self.rng.next_f64() * 100.0) as u64);
        self.pause(spread).await;
        while self.phase() == Phase::Run {
            let attempt = Instant::now();
            match tokio::time::timeout(self.cfg.connect_timeout, tokio_tungstenite::connect_async(&url)).await {
                Ok(Ok((ws, _))) => {
                    let session = self.session(ws, &mut seq).await;
                    let uptime = session.end.at().duration_since(session.opened);
                    log.sessions.push(session);
                    if uptime >= self.cfg.min_uptime {
                        failures = 0;
                    }
                }
                Ok(Err(e)) => {
                    if let tokio_tungstenite::tungstenite::Error::Http(res) = &e {
                        if let Some(body) = crate::client_texts::refused_upgrade_body(res) {
                            log.refusals.push((attempt, res.status().as_u16(), body));
                        }
                    }
                    log.connect_failures.push((attempt, e.to_string()));
                }
                Err(_) => {
                    log.connect_failures.push((attempt, format!("not open within {:?}", self.cfg.connect_timeout)))
                }
            }
            if self.phase() != Phase::Run {
                break;
            }
            failures += 1;
            let grown = self.cfg.reconnect_min.as_secs_f64() * 1.3f64.powi(failures as i32 - 1);
            let delay = Duration::from_secs_f64(grown * (1.0 + self.rng.next_f64())).min(self.cfg.reconnect_max);
            self.pause(delay).await;
        }
        log
    }

    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Sleeps `d`, or less if the phase changes.
    async fn pause(&mut self, d: Duration) {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return,
                changed = self.phase.changed() => if changed.is_err() || *self.phase.borrow() != Phase::Run { return },
            }
        }
    }

    fn set_connected(&self, connected: bool) {
        let mut live = self.live.lock().unwrap();
        live.connected[self.index] = connected;
        live.pending[self.index] = 0;
    }

    async fn session(&mut self, mut ws: Ws, seq: &mut u64) -> Session {
        let opened = Instant::now();
        self.set_connected(true);
        let mut session = Session {
            gateway: self.gateway,
            opened,
            sent: Vec::new(),
            frames: Vec::new(),
            end: End::Stopped { at: opened },
        };
        let interval = match self.spec.kind {
            Kind::Chat => self.cfg.chat_interval,
            Kind::Counter => self.cfg.counter_interval,
        };
        let first = Duration::from_secs_f64(interval.as_secs_f64() * self.rng.next_f64());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + first, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let own = format!("{}:", self.id);
        let end = loop {
            let sending = self.phase() == Phase::Run;
            tokio::select! {
                msg = ws.next() => {
                    let at = Instant::now();
                    let text = match msg {
                        Some(Ok(WsMessage::Text(t))) => t.to_string(),
                        Some(Ok(WsMessage::Binary(b))) => format!("<binary {} bytes>", b.len()),
                        Some(Ok(WsMessage::Close(f))) => {
                            let (code, reason) = f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                            break End::Closed { at, code, reason };
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break End::Dropped { at, error: e.to_string() },
                        None => break End::Dropped { at, error: "the connection ended".into() },
                    };
                    let greeting = session.frames.is_empty();
                    if !greeting {
                        let written = match self.spec.kind {
                            Kind::Chat => text
                                .strip_prefix(&own)
                                .and_then(|n| n.parse::<u64>().ok())
                                .and_then(|seq| session.sent.binary_search_by_key(&seq, |(s, _)| *s).ok())
                                .map(|i| Written::SentAt(session.sent[i].1)),
                            Kind::Counter => count_of(&text).map(Written::Count),
                        };
                        if let Some(write) = written {
                            let mut live = self.live.lock().unwrap();
                            live.acks[self.room].push(Ack { at, write });
                            if self.spec.kind == Kind::Chat {
                                live.pending[self.index] = live.pending[self.index].saturating_sub(1);
                            }
                        }
                    }
                    session.frames.push(Frame { at, text });
                }
                _ = tick.tick(), if sending => {
                    *seq += 1;
                    let text = match self.spec.kind {
                        Kind::Chat => format!("{}{}", own, *seq),
                        Kind::Counter => "inc".to_string(),
                    };
                    let at = Instant::now();
                    // A browser's send never blocks; a socket whose buffers stay full this long is dead.
                    match tokio::time::timeout(Duration::from_secs(10), ws.send(WsMessage::text(text))).await {
                        Ok(Ok(())) => {
                            session.sent.push((*seq, at));
                            let mut live = self.live.lock().unwrap();
                            match self.spec.kind {
                                Kind::Chat => live.pending[self.index] += 1,
                                Kind::Counter => live.incs[self.room].push(at),
                            }
                        }
                        Ok(Err(e)) => break End::Dropped { at: Instant::now(), error: format!("send: {e}") },
                        Err(_) => break End::Dropped { at: Instant::now(), error: "send stalled for 10 s".into() },
                    }
                }
                changed = self.phase.changed() => {
                    if changed.is_err() || *self.phase.borrow() == Phase::Stop {
                        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                        break End::Stopped { at: Instant::now() };
                    }
                }
            }
        };
        self.set_connected(false);
        session.end = end;
        session
    }
}

/// The `count` of a counter frame (`{"count": n, ...}`).
pub fn count_of(text: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(text).ok()?.get("count")?.as_i64()
}

/// The instance that sent a counter frame (`{"count": n, "inst": "<id>"}`: broadcasts of a
/// commit, and `slow` replies), if it names one (a greeting does not).
pub fn inst_of(text: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(text).ok()?.get("inst")?.as_str().map(str::to_string)
}

/// What a load run recorded; see the module docs.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The rooms, indexed as [`ClientLog::room`].
    pub rooms: Vec<RoomSpec>,
    /// Every client's log.
    pub clients: Vec<ClientLog>,
    /// When the load started.
    pub started: Instant,
    /// When it was stopped.
    pub ended: Instant,
}

/// One disconnect seen by a client.
#[derive(Clone, Debug)]
pub struct Disconnect {
    /// The client.
    pub client: String,
    /// Its room.
    pub room: usize,
    /// How the session ended.
    pub end: End,
}

impl LoadReport {
    /// The clients of room `r`.
    pub fn clients_of(&self, r: usize) -> impl Iterator<Item = &ClientLog> {
        self.clients.iter().filter(move |c| c.room == r)
    }

    /// Indexes of the rooms of `kind`.
    pub fn rooms_of(&self, kind: Kind) -> Vec<usize> {
        (0..self.rooms.len()).filter(|&r| self.rooms[r].kind == kind).collect()
    }

    /// Times of the writes seen acknowledged in room `r` (chat: a client saw its own message;
    /// counter: a client saw a count broadcast), sorted.
    pub fn ack_times(&self, r: usize) -> Vec<Instant> {
        let mut times = Vec::new();
        for c in self.clients_of(r) {
            let own = format!("{}:", c.id);
            for s in &c.sessions {
                for f in s.frames.iter().skip(1) {
                    if self.rooms[r].kind == Kind::Counter || f.text.starts_with(&own) {
                        times.push(f.at);
                    }
                }
            }
        }
        times.sort();
        times
    }

    /// The count values seen broadcast in counter room `r` (each one an acknowledged increment).
    pub fn counts_seen(&self, r: usize) -> BTreeSet<i64> {
        self.clients_of(r)
            .flat_map(|c| c.sessions.iter().flat_map(|s| s.frames.iter().skip(1)))
            .filter_map(|f| count_of(&f.text))
            .collect()
    }

    /// Writes seen acknowledged in every room: chat messages their senders saw come back, and
    /// distinct counts seen broadcast (as [`LoadReport::summary`] counts them).
    pub fn acknowledged(&self) -> usize {
        (0..self.rooms.len())
            .map(|r| match self.rooms[r].kind {
                Kind::Chat => self.clients_of(r).map(|c| c.acked().len()).sum(),
                Kind::Counter => self.counts_seen(r).len(),
            })
            .sum()
    }

    /// The longest time room `r` went without an acknowledged write between `from` and `to`
    /// (counting from `from` and up to `to`).
    pub fn longest_ack_gap(&self, r: usize, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for a in self.ack_times(r).into_iter().filter(|&a| a > from && a <= to).chain([to]) {
            longest = longest.max(a.saturating_duration_since(last));
            last = a;
        }
        longest
    }

    /// Every write seen acknowledged in room `r`, in no particular order (see [`Written`]).
    pub fn acks(&self, r: usize) -> Vec<Ack> {
        let mut acks = Vec::new();
        for c in self.clients_of(r) {
            let own = format!("{}:", c.id);
            let sent: HashMap<u64, Instant> = c.sessions.iter().flat_map(|s| s.sent.iter().copied()).collect();
            for f in c.sessions.iter().flat_map(|s| s.frames.iter().skip(1)) {
                let write = match self.rooms[r].kind {
                    Kind::Chat => f
                        .text
                        .strip_prefix(&own)
                        .and_then(|n| n.parse::<u64>().ok())
                        .and_then(|seq| sent.get(&seq))
                        .map(|&at| Written::SentAt(at)),
                    Kind::Counter => count_of(&f.text).map(Written::Count),
                };
                acks.extend(write.map(|write| Ack { at: f.at, write }));
            }
        }
        acks
    }

    /// When the first write made after `t` in room `r` was seen acknowledged (writes in flight
    /// at `t` do not count): with `t` a fault, the end of the room's failover.
    pub fn first_ack_after(&self, r: usize, t: Instant) -> Option<Instant> {
        let incs = self.clients_of(r).flat_map(|c| c.sessions.iter().flat_map(|s| s.sent.iter().map(|(_, at)| *at)));
        acked_after(&self.acks(r), incs, t).first().copied()
    }

    /// Disconnects (sessions the server or network ended) in `rooms` between `from` and `to`.
    pub fn disconnects(&self, rooms: &[usize], from: Instant, to: Instant) -> Vec<Disconnect> {
        let mut out = Vec::new();
        for c in self.clients.iter().filter(|c| rooms.contains(&c.room)) {
            for s in c.disconnects() {
                let at = s.end.at();
                if at >= from && at <= to {
                    out.push(Disconnect { client: c.id.clone(), room: c.room, end: s.end.clone() });
                }
            }
        }
        out.sort_by_key(|d| d.end.at());
        out
    }

    /// When the chat message `text` (`<client>:<seq>`) was sent by its client, if a client of
    /// the load sent it.
    pub fn sent_at(&self, text: &str) -> Option<Instant> {
        let (id, seq) = text.split_once(':')?;
        let seq: u64 = seq.parse().ok()?;
        let client = self.clients.iter().find(|c| c.id == id && self.rooms[c.room].kind == Kind::Chat)?;
        client.sessions.iter().flat_map(|s| s.sent.iter()).find(|(n, _)| *n == seq).map(|(_, at)| *at)
    }

    /// Close reasons and error bodies the clients of room `r` received that are not documented
    /// texts (see [`crate::client_texts`]): each check's message (naming the code or status and
    /// the text) with how many times, in the order first seen.
    pub fn undocumented_texts(&self, r: usize) -> Vec<(String, usize)> {
        let mut found: Vec<(String, usize)> = Vec::new();
        let mut count = |checked: Result<(), String>| {
            if let Err(e) = checked {
                match found.iter_mut().find(|(m, _)| *m == e) {
                    Some((_, n)) => *n += 1,
                    None => found.push((e, 1)),
                }
            }
        };
        for c in self.clients_of(r) {
            for s in &c.sessions {
                if let End::Closed { code, reason, .. } = &s.end {
                    count(crate::client_texts::check_close(*code, reason));
                }
            }
            for (_, status, body) in &c.refusals {
                count(crate::client_texts::check_body(*status, body));
            }
        }
        found
    }

    /// Data frames received after `after` on sessions of `rooms` that were opened before
    /// `opened_before`: (client, receive time, text).
    pub fn frames_on_old_sessions(
        &self,
        rooms: &[usize],
        opened_before: Instant,
        after: Instant,
    ) -> Vec<(String, Instant, String)> {
        let mut out = Vec::new();
        for c in self.clients.iter().filter(|c| rooms.contains(&c.room)) {
            for s in c.sessions.iter().filter(|s| s.opened < opened_before) {
                for f in s.frames.iter().filter(|f| f.at > after) {
                    out.push((c.id.clone(), f.at, f.text.clone()));
                }
            }
        }
        out
    }

    /// `t` as seconds since the load started, for printing.
    pub fn secs(&self, t: Instant) -> String {
        if t >= self.started {
            format!("{:.2}s", t.duration_since(self.started).as_secs_f64())
        } else {
            format!("-{:.2}s", self.started.duration_since(t).as_secs_f64())
        }
    }

    /// A few lines per room: clients, sessions, sent, acknowledged, disconnects by close code,
    /// failed connection attempts.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let (mut sent, mut acked) = (0usize, 0usize);
        for (r, room) in self.rooms.iter().enumerate() {
            let clients: Vec<&ClientLog> = self.clients_of(r).collect();
            let sessions: usize = clients.iter().map(|c| c.sessions.len()).sum();
            let room_sent: usize = clients.iter().map(|c| c.sent()).sum();
            let room_acked = match room.kind {
                Kind::Chat => clients.iter().map(|c| c.acked().len()).sum(),
                Kind::Counter => self.counts_seen(r).len(),
            };
            sent += room_sent;
            acked += room_acked;
            let mut codes: HashMap<String, usize> = HashMap::new();
            for c in &clients {
                for s in c.disconnects() {
                    let what = match &s.end {
                        End::Closed { code, .. } => code.to_string(),
                        End::Dropped { .. } => "dropped".into(),
                        End::Stopped { .. } => unreachable!(),
                    };
                    *codes.entry(what).or_default() += 1;
                }
            }
            let mut codes: Vec<_> = codes.into_iter().collect();
            codes.sort();
            let failures: usize = clients.iter().map(|c| c.connect_failures.len()).sum();
            let _ = writeln!(
                out,
                "  {:<24} clients {} sessions {:>3} sent {:>4} acked {:>4} disconnects {:?} failed connects {}",
                room.label(),
                clients.len(),
                sessions,
                room_sent,
                room_acked,
                codes,
                failures
            );
        }
        let secs = self.ended.duration_since(self.started).as_secs_f64();
        format!(
            "load: {} rooms, {} clients, {secs:.1}s, {sent} sent, {acked} acknowledged\n{out}",
            self.rooms.len(),
            self.clients.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(at: Instant, text: &str) -> Frame {
        Frame { at, text: text.into() }
    }

    #[test]
    fn acks_made_after_a_fault_and_gaps() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let gateway: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let chat = Session {
            gateway,
            opened: t0,
            // a:1 sent before the fault at 100 ms and seen after it; a:2 sent after it.
            sent: vec![(1, ms(90)), (2, ms(300))],
            frames: vec![frame(ms(1), "[]"), frame(ms(120), "a:1"), frame(ms(150), "b:7"), frame(ms(900), "a:2")],
            end: End::Closed { at: ms(1000), code: 1012, reason: String::new() },
        };
        let counter = Session {
            gateway,
            opened: t0,
            sent: vec![(1, ms(50)), (2, ms(90)), (3, ms(2400))],
            frames: vec![
                frame(ms(1), r#"{"count":0}"#),
                frame(ms(60), r#"{"count":1}"#),
                frame(ms(130), r#"{"count":2}"#),
                frame(ms(2700), r#"{"count":3}"#),
            ],
            end: End::Stopped { at: ms(3000) },
        };
        let report = LoadReport {
            rooms: vec![RoomSpec::new(Kind::Chat, "c"), RoomSpec::new(Kind::Counter, "n")],
            clients: vec![
                ClientLog {
                    id: "a".into(),
                    room: 0,
                    sessions: vec![chat],
                    connect_failures: Vec::new(),
                    refusals: Vec::new(),
                },
                ClientLog {
                    id: "b".into(),
                    room: 1,
                    sessions: vec![counter],
                    connect_failures: Vec::new(),
                    refusals: Vec::new(),
                },
            ],
            started: t0,
            ended: ms(3000),
        };
        let fault = ms(100);
        assert_eq!(report.first_ack_after(0, fault), Some(ms(900)), "a:1 was in flight at the fault");
        // Seen by the fault: 1; sent within a second before it: 2 -> only a count above 3 is
        // certainly from an inc sent after the fault.
        assert_eq!(report.first_ack_after(1, fault), None, "counts 2 and 3 may come from incs sent before");
        assert_eq!(report.first_ack_after(1, ms(2000)), Some(ms(2700)), "seen 2 by then, nothing in flight");
        assert_eq!(report.first_ack_after(1, ms(2500)), None, "the inc sent at 2.4 s was in flight");
        assert_eq!(report.ack_times(0), vec![ms(120), ms(900)], "only the client's own messages");
        assert_eq!(report.longest_ack_gap(0, fault, ms(1000)), Duration::from_millis(780));
        assert_eq!(report.counts_seen(1), BTreeSet::from([1, 2, 3]));
        let old = report.frames_on_old_sessions(&[0], ms(10), ms(140));
        assert_eq!(old.iter().map(|(_, _, t)| t.as_str()).collect::<Vec<_>>(), ["b:7", "a:2"]);
        let d = report.disconnects(&[0, 1], t0, ms(3000));
        assert_eq!(d.len(), 1, "a stop by the driver is not a disconnect");
        assert_eq!(d[0].end.code(), Some(1012));
        assert!(report.summary().contains("disconnects [(\"1012\", 1)]"), "{}", report.summary());
        assert_eq!(report.acknowledged(), 2 + 3, "a:1 and a:2, and counts 1, 2, 3");
        assert_eq!(report.sent_at("a:2"), Some(ms(300)));
        assert_eq!(report.sent_at("a:3"), None);
        assert_eq!(report.sent_at("b:1"), None, "b is a counter client: its sends are not messages");
        assert!(report.undocumented_texts(0).is_empty() && report.undocumented_texts(1).is_empty());
    }

    #[test]
    fn undocumented_texts_are_counted_per_room() {
        let t0 = Instant::now();
        let gateway: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let leak = "room storage failed: write refused: lease 823 is no longer held at epoch 1796527189502";
        let closed = |code: u16, reason: &str| Session {
            gateway,
            opened: t0,
            sent: Vec::new(),
            frames: Vec::new(),
            end: End::Closed { at: t0, code, reason: reason.into() },
        };
        let moved = partyline::client_text::ROOM_MOVED;
        let internal = partyline::client_text::ErrorRef::new().tag(partyline::client_text::INTERNAL_ERROR);
        let client = |id: &str, sessions, refusals| ClientLog {
            id: id.into(),
            room: 0,
            sessions,
            connect_failures: Vec::new(),
            refusals,
        };
        let report = LoadReport {
            rooms: vec![RoomSpec::new(Kind::Chat, "c")],
            clients: vec![
                client("a", vec![closed(1012, leak), closed(1012, moved), closed(1011, &internal)], Vec::new()),
                client(
                    "b",
                    vec![closed(1012, leak), closed(1005, "")],
                    vec![
                        (t0, 503, "node-2 at 10.0.0.7:7001 refused".into()),
                        (t0, 503, "Room unavailable, try again later".into()),
                        (t0, 200, "x".into()),
                    ],
                ),
            ],
            started: t0,
            ended: t0,
        };
        let found = report.undocumented_texts(0);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].1, 2, "the same leak twice: {found:?}");
        assert!(found[0].0.contains("close 1012") && found[0].0.contains(leak), "{found:?}");
        assert!(found[1].0.contains("HTTP 503") && found[1].0.contains("10.0.0.7"), "{found:?}");
    }
}
