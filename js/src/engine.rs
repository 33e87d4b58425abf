//! A party's realm (one QuickJS runtime and context per party and process, which every room of
//! the party shares, as a Workers isolate holds many Durable Objects: the prelude and the party's
//! module are evaluated once), and an engine per room (or per static hook call): the room's scope
//! in the realm, its natives, and the event loop that runs a call to completion: microtasks,
//! host operations (storage reads, `fetch`, calls to other rooms) and timers.
//!
//! The realm runs one piece of JS at a time (QuickJS's runtime lock); rooms interleave at awaits.
//! What a room starts while its code runs (host operations, timers) is the room's: its engine
//! delivers and fires them. A room's results are kept on its scope; one that settles while
//! another room's code runs (a promise shared through module state) wakes the room.
//!
//! A call is one dispatch into the prelude's handlers; its result is collected once its promise
//! settled, or, for a call that may go on in the background (`Engine::call_gated`), once the
//! handler awaits nothing that closes the room's input gate (storage, `blockConcurrencyWhile`):
//! its result is then collected later (`Engine::take_finished`). Host operations run as tokio
//! tasks and report back on a channel; timers are kept here. Between calls the same work is done
//! by [`Engine::background`], which the room runs as an event of its own when
//! [`Engine::wakeup`] fires.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use partyline::sync::Lock;
use partyline::{Connection, Message, Parties, Room};
use rquickjs::{ArrayBuffer, Context, Ctx, Function, Module, Object, Runtime, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::bridge::{Api, Global, Hook};
use crate::host::{self, OpResult};
use crate::modules::{Modules, RoomLoader, PRELUDE};

/// Settings of an engine.
#[derive(Clone, Debug)]
pub struct EngineLimits {
    /// Heap limit of the realm (all the party's rooms in this process); over it, the realm is
    /// dropped and its rooms restarted.
    pub memory_bytes: usize,
    /// Time one call may run (the room's handler limit).
    pub call_timeout: Duration,
}

/// What a realm's natives share: the state of the realm, and which room's code runs.
pub(crate) struct Shared {
    /// The end of the running call, in microseconds since [`epoch`] (`u64::MAX` when none):
    /// the interrupt handler and WebAssembly check it (js/src/wasm.rs).
    pub(crate) deadline: AtomicU64,
    /// Set by the interrupt handler when it stopped the running code.
    interrupted: AtomicBool,
    /// Set when a promise was rejected with no handler: the engine asks the prelude which
    /// rejections stayed unhandled once the microtasks ran, and logs them.
    rejected: AtomicBool,
    /// The realm ran out of memory: every engine on it must be dropped.
    broken: AtomicBool,
    /// The host of the room whose code runs now (set by [`Engine::with`] while it holds the
    /// realm): what timers and `fetch` started by that code belong to.
    current: Mutex<Option<Arc<Host>>>,
    /// The realm's own host, current while the realm loads (the module's top-level timers).
    own: OnceLock<Arc<Host>>,
    /// Host operation ids, unique in the realm (the prelude keeps one table of them).
    next_op: AtomicU64,
    /// Scope numbers.
    next_scope: AtomicU64,
    pub(crate) fetch: Arc<crate::host::FetchPolicy>,
    /// The realm's heap limit, also the budget of its WebAssembly memories.
    pub(crate) memory_bytes: usize,
    pub(crate) label: String,
}

impl Shared {
    /// The host of the code that runs now.
    pub(crate) fn current(&self) -> Option<Arc<Host>> {
        self.current.locked().clone().or_else(|| self.own.get().cloned())
    }
}

/// The part of an engine its natives share: a room's (or a static hook call's) own state.
pub(crate) struct Host {
    /// The room (none for the static hooks, and once the engine is dropped: the natives of a
    /// dropped scope may outlive it in the realm until its garbage is collected, and must not
    /// keep the room, its store and its connections).
    room: Mutex<Option<Room>>,
    pub(crate) parties: Mutex<Parties>,
    pub(crate) conns: Mutex<HashMap<String, Connection>>,
    /// Sockets this room opened to other rooms (`stub.socket()`).
    pub(crate) sockets: Mutex<host::Sockets>,
    pub(crate) ops: Mutex<Ops>,
    pub(crate) done: mpsc::UnboundedSender<(u64, OpResult)>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) max_value_bytes: usize,
    pub(crate) shared: Arc<Shared>,
}

#[derive(Default)]
pub(crate) struct Ops {
    pub(crate) in_flight: usize,
    /// The host operations in flight (what the prelude forgets when the engine is dropped).
    pending: BTreeSet<u64>,
    /// The storage operations among those in flight: while one is, the room's input gate is
    /// closed (no other event starts), as on a Durable Object.
    storage: BTreeSet<u64>,
    timers: HashMap<u64, Instant>,
    queue: BTreeSet<(Instant, u64)>,
    /// The highest timer id set so far (the prelude numbers timers in order).
    last_timer: u64,
    /// `blockConcurrencyWhile` calls that have not settled: they close the input gate too.
    blocks: BTreeSet<u64>,
    next_block: u64,
}

impl Host {
    pub(crate) fn room(&self) -> rquickjs::Result<Room> {
        self.room.locked().clone().ok_or_else(|| {
            rquickjs::Error::new_from_js_message("hook", "room", "room APIs are not available in static hooks")
        })
    }

    /// Runs `fut` as a host operation: `[true, value]` when it finished at once, else
    /// `[false, id]` and the result arrives later through `__partyline.complete`. While it is in
    /// flight, other events of the room may run (see [`Host::storage_op`] for the other kind).
    pub(crate) fn op<'js>(
        self: &Arc<Self>,
        ctx: &Ctx<'js>,
        fut: BoxFuture<'static, OpResult>,
    ) -> rquickjs::Result<Value<'js>> {
        self.start_op(ctx, fut, false)
    }

    /// Like [`Host::op`], for a storage operation: while it is in flight, no other event of the
    /// room starts (the input gate of a Durable Object).
    pub(crate) fn storage_op<'js>(
        self: &Arc<Self>,
        ctx: &Ctx<'js>,
        fut: BoxFuture<'static, OpResult>,
    ) -> rquickjs::Result<Value<'js>> {
        self.start_op(ctx, fut, true)
    }

    fn start_op<'js>(
        self: &Arc<Self>,
        ctx: &Ctx<'js>,
        fut: BoxFuture<'static, OpResult>,
        storage: bool,
    ) -> rquickjs::Result<Value<'js>> {
        let mut fut = fut;
        if let Some(result) = (&mut fut).now_or_never() {
            let value = host::op_value(ctx, result)?;
            return pair(ctx, Value::new_bool(ctx.clone(), true), value);
        }
        let id = {
            let id = self.shared.next_op.fetch_add(1, Ordering::Relaxed) + 1;
            let mut ops = self.ops.locked();
            ops.in_flight += 1;
            ops.pending.insert(id);
            if storage {
                ops.storage.insert(id);
            }
            id
        };
        let done = self.done.clone();
        let notify = self.notify.clone();
        tokio::spawn(async move {
            let result = fut.await;
            let _ = done.send((id, result));
            notify.notify_one();
        });
        pair(ctx, Value::new_bool(ctx.clone(), false), Value::new_number(ctx.clone(), id as f64))
    }

    pub(crate) fn set_timer(&self, id: u64, delay_ms: f64) {
        let at = Instant::now() + Duration::from_micros((delay_ms.max(0.0) * 1000.0) as u64);
        let mut ops = self.ops.locked();
        ops.last_timer = ops.last_timer.max(id);
        if let Some(old) = ops.timers.insert(id, at) {
            ops.queue.remove(&(old, id));
        }
        ops.queue.insert((at, id));
    }

    pub(crate) fn clear_timer(&self, id: u64) {
        let mut ops = self.ops.locked();
        if let Some(at) = ops.timers.remove(&id) {
            ops.queue.remove(&(at, id));
        }
    }

    /// Starts a `blockConcurrencyWhile`: its token, for [`Host::block_end`].
    pub(crate) fn block_begin(&self) -> u64 {
        let mut ops = self.ops.locked();
        ops.next_block += 1;
        let token = ops.next_block;
        ops.blocks.insert(token);
        token
    }

    /// A `blockConcurrencyWhile` settled (a token dropped by a time limit is ignored).
    pub(crate) fn block_end(&self, token: u64) {
        self.ops.locked().blocks.remove(&token);
    }

    /// Whether the input gate is closed: a storage operation or a `blockConcurrencyWhile` is
    /// pending, so no other event may start.
    fn gated(&self) -> bool {
        let ops = self.ops.locked();
        !ops.storage.is_empty() || !ops.blocks.is_empty()
    }

    /// Whether anything pending can still make progress (a host operation or a timer).
    fn can_progress(&self) -> bool {
        let ops = self.ops.locked();
        ops.in_flight > 0 || !ops.queue.is_empty()
    }

    fn next_timer(&self) -> Option<Instant> {
        self.ops.locked().queue.first().map(|(at, _)| *at)
    }

    fn due_timers(&self) -> Vec<u64> {
        let now = Instant::now();
        let mut ops = self.ops.locked();
        let mut due = Vec::new();
        while let Some(&(at, id)) = ops.queue.first() {
            if at > now {
                break;
            }
            ops.queue.pop_first();
            ops.timers.remove(&id);
            due.push(id);
        }
        due
    }

    /// The connection `id`, as the room knows it (also one seen in an earlier event).
    pub(crate) fn conn(&self, id: &str) -> Option<Connection> {
        if let Some(c) = self.conns.locked().get(id) {
            return Some(c.clone());
        }
        let c = self.room.locked().as_ref()?.get_connection(id)?;
        self.conns.locked().insert(id.to_string(), c.clone());
        Some(c)
    }

    pub(crate) fn remember(&self, conn: &Connection) {
        self.conns.locked().insert(conn.id().to_string(), conn.clone());
    }

    /// Drops a closed connection.
    pub(crate) fn forget(&self, id: &str) {
        self.conns.locked().remove(id);
    }

    /// Sets how other rooms are reached (the static hooks get it with each call).
    pub(crate) fn set_parties(&self, parties: Parties) {
        *self.parties.locked() = parties;
    }

    /// A result of this host's calls settled: wakes its engine when another room's code runs
    /// (its own engine collects it anyway after running its code).
    pub(crate) fn settled(self: &Arc<Self>) {
        let running = self.shared.current.locked().as_ref().is_some_and(|c| Arc::ptr_eq(c, self));
        if !running {
            self.notify.notify_one();
        }
    }

    /// Lets go of the room, its connections, sockets and timers: the engine is dropped.
    fn retire(&self) {
        self.room.locked().take();
        *self.parties.locked() = Parties::new(Arc::new(crate::party::NoParties));
        self.conns.locked().clear();
        *self.sockets.locked() = host::Sockets::default();
        *self.ops.locked() = Ops::default();
    }

    /// The realm's label (the party's name), for logs.
    pub(crate) fn label(&self) -> &str {
        &self.shared.label
    }
}

fn pair<'js>(ctx: &Ctx<'js>, a: Value<'js>, b: Value<'js>) -> rquickjs::Result<Value<'js>> {
    let arr = rquickjs::Array::new(ctx.clone())?;
    arr.set(0, a)?;
    arr.set(1, b)?;
    Ok(arr.into_value())
}

/// What stopped JS code that failed with `message`: the time limit (the interrupt handler
/// stopped it), the memory limit (QuickJS says so, or the realm was already over it), or a throw.
fn stop_reason(interrupted: bool, out_of_memory: bool, message: String, limits: &EngineLimits) -> CallError {
    if interrupted {
        CallError::Timeout(limits.call_timeout)
    } else if out_of_memory || message.contains("out of memory") {
        CallError::OutOfMemory(limits.memory_bytes)
    } else {
        CallError::Thrown(message)
    }
}

/// A time origin for `performance.now()` and deadlines.
pub(crate) fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// QuickJS's message for an error value (with the stack when there is one).
pub(crate) fn js_error(ctx: &Ctx<'_>, err: rquickjs::Error) -> String {
    if !matches!(err, rquickjs::Error::Exception) {
        return err.to_string();
    }
    let value = ctx.catch();
    exception_text(&value)
}

fn exception_text(value: &Value<'_>) -> String {
    if let Some(obj) = value.as_object() {
        let message: Option<String> = obj.get("message").ok();
        let name: Option<String> = obj.get("name").ok();
        let stack: Option<String> = obj.get("stack").ok();
        let mut out = match (name, message) {
            (Some(n), Some(m)) if !m.is_empty() => format!("{n}: {m}"),
            (Some(n), _) => n,
            (None, Some(m)) => m,
            (None, None) => "uncaught exception".to_string(),
        };
        if let Some(stack) = stack.filter(|s| !s.trim().is_empty()) {
            out.push('\n');
            out.push_str(stack.trim_end());
        }
        // Bundle positions become the project's files and lines.
        return crate::bundle::map_locations(&out);
    }
    value.as_string().and_then(|s| s.to_string().ok()).unwrap_or_else(|| format!("{value:?}"))
}

/// What a call passes to the prelude's handler.
pub(crate) enum Arg {
    Null,
    Str(String),
    Message(Message),
    Request(Box<partyline::Request>),
    Json(serde_json::Value),
    Ids(Vec<u64>),
}

fn arg_value<'js>(ctx: &Ctx<'js>, arg: Arg) -> rquickjs::Result<Value<'js>> {
    Ok(match arg {
        Arg::Null => Value::new_null(ctx.clone()),
        Arg::Str(s) => rquickjs::String::from_str(ctx.clone(), &s)?.into_value(),
        Arg::Message(Message::Text(t)) => rquickjs::String::from_str(ctx.clone(), t.as_str())?.into_value(),
        Arg::Message(Message::Binary(b)) => ArrayBuffer::new(ctx.clone(), b.to_vec())?.into_value(),
        Arg::Request(req) => host::request_value(ctx, *req)?,
        Arg::Json(v) => ctx.json_parse(v.to_string())?,
        Arg::Ids(ids) => {
            let arr = rquickjs::Array::new(ctx.clone())?;
            for (i, id) in ids.into_iter().enumerate() {
                arr.set(i, id as f64)?;
            }
            arr.into_value()
        }
    })
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The party code threw or rejected.
    #[error("{0}")]
    Thrown(String),
    /// The party code threw an error whose `code` is an HTTP status (PartyKit answers a request
    /// with it).
    #[error("{message}")]
    Status {
        /// The error's `code`.
        status: u16,
        /// The error's message.
        message: String,
    },
    /// The call ran past the time limit and was stopped.
    #[error("the handler ran past the time limit of {0:?} and was stopped")]
    Timeout(Duration),
    /// The runtime ran out of memory; the engine must be dropped.
    #[error("the room ran out of memory (limit {0} bytes); it is restarted")]
    OutOfMemory(usize),
    /// The call's promise can never settle.
    #[error("the handler awaits a promise that nothing can settle (onStart, getConnectionTags, onConnect and onAlarm run alone, so no other event of the room can settle it)")]
    Stuck,
    /// An engine error.
    #[error("{0}")]
    Engine(String),
}

/// How a call that may go on in the background came out.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It settled with this result.
    Done(serde_json::Value),
    /// It awaits something other than storage (`fetch`, another room, a timer, an event of the
    /// room): it goes on in the background, and its result comes from [`Engine::take_finished`]
    /// under this call id.
    Pending(u64),
}

/// A call's result once it settled.
type Taken = Option<Result<serde_json::Value, CallError>>;

/// A call's result as the prelude's `take` reports it: the value, or the error's message and the
/// HTTP status in its `code`.
type RawResult = Result<serde_json::Value, (String, Option<u16>)>;

/// A party's realm: one runtime and context with the prelude and the party's module loaded,
/// shared by the party's engines in this process.
pub(crate) struct Realm {
    // Dropped first: the context before its runtime.
    ctx: Context,
    rt: Runtime,
    shared: Arc<Shared>,
    limits: EngineLimits,
    /// Taken (asynchronously) before the runtime's own lock, so that an engine waiting for the
    /// realm while another room's code runs yields its thread instead of blocking it.
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The rooms that ran in the realm, by id, with their run ([`Room::instance`]).
    rooms: Mutex<HashMap<String, u64>>,
}

/// The most rooms a realm takes in ([`Realm::admit`]). It remembers the run of every room it
/// served, to tell a room that comes back; past this many, new rooms get a new realm (the old one
/// goes once its rooms stop), so a realm that serves ever-new rooms does not keep every id.
const MAX_ROOMS_PER_REALM: usize = 1 << 16;

/// What a realm is made of.
pub(crate) struct RealmSetup {
    pub(crate) modules: Arc<Modules>,
    pub(crate) entry: String,
    pub(crate) limits: EngineLimits,
    pub(crate) fetch: Arc<crate::host::FetchPolicy>,
    pub(crate) max_value_bytes: usize,
    pub(crate) label: String,
}

impl Realm {
    /// A runtime with the prelude and the party module `entry` loaded.
    pub(crate) fn new(setup: RealmSetup) -> Result<Arc<Self>, CallError> {
        let rt = Runtime::new().map_err(|e| CallError::Engine(e.to_string()))?;
        rt.set_memory_limit(setup.limits.memory_bytes);
        rt.set_max_stack_size(1 << 20);
        rt.set_gc_threshold(4 << 20);
        let shared = Arc::new(Shared {
            deadline: AtomicU64::new(u64::MAX),
            interrupted: AtomicBool::new(false),
            rejected: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            current: Mutex::new(None),
            own: OnceLock::new(),
            next_op: AtomicU64::new(0),
            next_scope: AtomicU64::new(0),
            fetch: setup.fetch,
            memory_bytes: setup.limits.memory_bytes,
            label: setup.label,
        });
        {
            let shared = shared.clone();
            rt.set_interrupt_handler(Some(Box::new(move || {
                let now = epoch().elapsed().as_micros() as u64;
                let stop = now > shared.deadline.load(Ordering::Relaxed);
                if stop {
                    shared.interrupted.store(true, Ordering::Relaxed);
                }
                stop
            })));
        }
        rt.set_loader(RoomLoader(setup.modules.clone()), RoomLoader(setup.modules.clone()));
        {
            let shared = shared.clone();
            rt.set_host_promise_rejection_tracker(Some(Box::new(move |ctx, promise, reason, handled| {
                if !handled {
                    shared.rejected.store(true, Ordering::Relaxed);
                }
                track_rejection(&ctx, promise, reason, handled);
            })));
        }
        let ctx = Context::full(&rt).map_err(|e| CallError::Engine(e.to_string()))?;
        let realm = Arc::new(Realm {
            ctx,
            rt,
            shared,
            limits: setup.limits,
            gate: Arc::default(),
            rooms: Mutex::new(HashMap::new()),
        });
        // The realm's own host: what the module's top-level code starts belongs to it.
        let (own, _done) =
            Host::new(None, Parties::new(Arc::new(crate::party::NoParties)), setup.max_value_bytes, &realm.shared);
        let _ = realm.shared.own.set(own);
        let limit = epoch().elapsed() + realm.limits.call_timeout;
        realm.shared.deadline.store(limit.as_micros() as u64, Ordering::Relaxed);
        let entry = setup.entry;
        let shared = realm.shared.clone();
        let result = realm.ctx.with(|ctx| -> Result<(), String> {
            host::install(&ctx, shared).map_err(|e| js_error(&ctx, e))?;
            install_part_loader(&ctx).map_err(|e| js_error(&ctx, e))?;
            import(&ctx, PRELUDE)?;
            let ns = import(&ctx, &entry)?;
            ctx.globals().set(Global::Module.name(), ns).map_err(|e| js_error(&ctx, e))?;
            api(&ctx, Api::Load)?.call::<_, ()>(()).map_err(|e| js_error(&ctx, e))
        });
        realm.shared.deadline.store(u64::MAX, Ordering::Relaxed);
        if let Err(message) = result {
            return Err(stop_reason(realm.shared.interrupted.load(Ordering::Relaxed), false, message, &realm.limits));
        }
        Ok(realm)
    }

    /// Takes `room` in: false when another run of the same room ran in this realm before (it
    /// stopped, and may have run on another node since), whose module state may be stale; and
    /// false for a room new to a realm that has seen [`MAX_ROOMS_PER_REALM`] rooms.
    pub(crate) fn admit(&self, room: &Room) -> bool {
        self.admit_run(room.id(), room.instance())
    }

    fn admit_run(&self, room: &str, run: u64) -> bool {
        let mut rooms = self.rooms.locked();
        match rooms.get(room) {
            Some(seen) => *seen == run,
            None if rooms.len() >= MAX_ROOMS_PER_REALM => false,
            None => {
                rooms.insert(room.to_string(), run);
                true
            }
        }
    }

    /// Whether the realm ran out of memory (its engines must be dropped, a new realm made).
    pub(crate) fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::Relaxed)
    }

    /// Heap bytes in use by the realm.
    pub(crate) fn memory_used(&self) -> i64 {
        self.rt.memory_usage().memory_used_size
    }
}

impl Host {
    /// A host, and the receiving end of its host operations' results.
    fn new(
        room: Option<Room>,
        parties: Parties,
        max_value_bytes: usize,
        shared: &Arc<Shared>,
    ) -> (Arc<Host>, mpsc::UnboundedReceiver<(u64, OpResult)>) {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let host = Arc::new(Host {
            room: Mutex::new(room),
            parties: Mutex::new(parties),
            conns: Mutex::new(HashMap::new()),
            sockets: Mutex::new(host::Sockets::default()),
            ops: Mutex::new(Ops::default()),
            done: done_tx,
            notify: Arc::new(Notify::new()),
            max_value_bytes,
            shared: shared.clone(),
        });
        (host, done_rx)
    }
}

/// A room's (or a static hook call's) engine: its scope in the party's realm.
pub struct Engine {
    /// The number of the room's scope in the realm (`newScope` of the prelude).
    scope: u64,
    realm: Arc<Realm>,
    host: Arc<Host>,
    done: mpsc::UnboundedReceiver<(u64, OpResult)>,
    /// The end of this engine's running call (µs since [`epoch`]; `u64::MAX` between calls).
    deadline: AtomicU64,
    /// The realm's interrupt handler stopped this engine's code.
    interrupted: AtomicBool,
    next_call: u64,
    limits: EngineLimits,
    /// Calls that went on in the background ([`Outcome::Pending`]), not settled yet.
    detached: BTreeSet<u64>,
    /// Calls that went on in the background and settled since [`Engine::take_finished`].
    finished: Vec<(u64, Result<serde_json::Value, CallError>)>,
    /// The realm ran out of memory: drop the engine.
    pub broken: bool,
}

/// Where an engine runs and what it can reach.
pub(crate) struct EngineSetup {
    pub(crate) realm: Arc<Realm>,
    pub(crate) room: Option<Room>,
    pub(crate) parties: Parties,
    pub(crate) max_value_bytes: usize,
}

impl Engine {
    /// A scope for a room (or the static hooks) in `setup.realm`.
    pub(crate) async fn new(setup: EngineSetup) -> Result<Self, CallError> {
        let realm = setup.realm;
        if realm.is_broken() {
            return Err(CallError::OutOfMemory(realm.limits.memory_bytes));
        }
        let (host, done) = Host::new(setup.room, setup.parties, setup.max_value_bytes, &realm.shared);
        let limits = realm.limits.clone();
        let scope = realm.shared.next_scope.fetch_add(1, Ordering::Relaxed) + 1;
        let mut engine = Engine {
            scope,
            realm,
            host,
            done,
            deadline: AtomicU64::new(u64::MAX),
            interrupted: AtomicBool::new(false),
            next_call: 0,
            limits,
            detached: BTreeSet::new(),
            finished: Vec::new(),
            broken: false,
        };
        engine.arm();
        let host = engine.host.clone();
        let _gate = engine.gate().await;
        let made = engine.with(|ctx, scope| {
            let natives = host::room_natives(ctx, &host).map_err(|e| js_error(ctx, e))?;
            api(ctx, Api::NewScope)?.call::<_, ()>((scope as f64, natives)).map_err(|e| js_error(ctx, e))
        });
        engine.disarm();
        made.map_err(|e| engine.classify(e))?;
        Ok(engine)
    }

    /// Runs `f` with the realm held for this engine: its code is what runs (timers and host
    /// operations it starts are this engine's) under its deadline; `f` gets the number of the
    /// room's scope.
    fn with<R>(&self, f: impl for<'js> FnOnce(&Ctx<'js>, u64) -> Result<R, String>) -> Result<R, String> {
        let shared = &self.realm.shared;
        self.realm.ctx.with(|ctx| {
            *shared.current.locked() = Some(self.host.clone());
            shared.deadline.store(self.deadline.load(Ordering::Relaxed), Ordering::Relaxed);
            shared.interrupted.store(false, Ordering::Relaxed);
            let out = f(&ctx, self.scope);
            if shared.interrupted.swap(false, Ordering::Relaxed) {
                self.interrupted.store(true, Ordering::Relaxed);
            }
            shared.deadline.store(u64::MAX, Ordering::Relaxed);
            *shared.current.locked() = None;
            out
        })
    }

    /// The realm's gate, for a step that runs JS.
    async fn gate(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.realm.gate.clone().lock_owned().await
    }

    fn arm(&self) {
        let limit = epoch().elapsed() + self.limits.call_timeout;
        self.interrupted.store(false, Ordering::Relaxed);
        self.deadline.store(limit.as_micros() as u64, Ordering::Relaxed);
    }

    fn disarm(&self) {
        self.deadline.store(u64::MAX, Ordering::Relaxed);
    }

    /// What stopped this engine's code; out of memory breaks the realm.
    fn classify(&mut self, message: String) -> CallError {
        let why = stop_reason(self.interrupted.load(Ordering::Relaxed), self.realm.is_broken(), message, &self.limits);
        if matches!(why, CallError::OutOfMemory(_)) {
            self.realm.shared.broken.store(true, Ordering::Relaxed);
            self.broken = true;
        }
        why
    }

    /// The host shared with the natives.
    pub(crate) fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Heap bytes in use by the realm this engine runs in (shared with the party's other
    /// engines).
    pub fn memory_used(&self) -> i64 {
        self.realm.memory_used()
    }

    /// Calls the prelude's handler of `hook` with `args` and runs the engine until its result is
    /// in; the result is returned as JSON (`null` for none).
    pub(crate) async fn call(&mut self, hook: Hook, args: [Arg; 3]) -> Result<serde_json::Value, CallError> {
        match self.call_with(hook, args, false).await? {
            Outcome::Done(v) => Ok(v),
            Outcome::Pending(_) => Err(CallError::Engine("a call that must settle went on in the background".into())),
        }
    }

    /// Calls the prelude's handler of `hook` like [`Engine::call`], but returns as soon as the
    /// handler only awaits things that do not close the room's input gate (anything but storage
    /// and `blockConcurrencyWhile`): the handler then goes on in the background, between the
    /// room's other events, as a Durable Object's handlers interleave at such awaits.
    pub(crate) async fn call_gated(&mut self, hook: Hook, args: [Arg; 3]) -> Result<Outcome, CallError> {
        self.call_with(hook, args, true).await
    }

    async fn call_with(&mut self, hook: Hook, args: [Arg; 3], may_detach: bool) -> Result<Outcome, CallError> {
        if self.realm.is_broken() {
            self.broken = true;
            return Err(CallError::OutOfMemory(self.limits.memory_bytes));
        }
        self.next_call += 1;
        let id = self.next_call;
        let timers_before = self.host.ops.locked().last_timer;
        self.arm();
        let result = self.run(id, hook, args, may_detach).await;
        self.disarm();
        if let Err(e @ (CallError::Timeout(_) | CallError::Stuck)) = &result {
            let cancelled = self.stopped(e, Some(timers_before));
            self.cancel(cancelled).await;
        }
        if let Ok(Outcome::Pending(id)) = &result {
            self.detached.insert(*id);
        }
        result
    }

    /// After a call was stopped (time limit) or found stuck: the timers set since it began
    /// (`timers_after` is the last id before it) are cancelled, so its code cannot run later,
    /// while the timers the room had before stay; and the input gate opens. Returns the ids of
    /// the cancelled timers, for [`Engine::cancel`].
    fn stopped(&mut self, why: &CallError, timers_after: Option<u64>) -> Vec<u64> {
        let mut ops = self.host.ops.locked();
        ops.blocks.clear();
        let Some(after) = timers_after else { return Vec::new() };
        let cancelled: Vec<(Instant, u64)> = ops.queue.iter().filter(|(_, id)| *id > after).copied().collect();
        for (at, id) in &cancelled {
            ops.queue.remove(&(*at, *id));
            ops.timers.remove(id);
        }
        if !cancelled.is_empty() {
            tracing::warn!(
                party = %self.host.label(),
                timers = cancelled.len(),
                reason = %why,
                "the timers set by a stopped handler were cancelled"
            );
        }
        cancelled.into_iter().map(|(_, id)| id).collect()
    }

    /// Has the prelude drop the callbacks of timers the host cancelled: the realm outlives the
    /// room's calls, and a callback keeps alive whatever it closes over.
    async fn cancel(&mut self, timers: Vec<u64>) {
        if timers.is_empty() {
            return;
        }
        let _gate = self.gate().await;
        let out = self.with(|ctx, _| {
            let ids = arg_value(ctx, Arg::Ids(timers)).map_err(|e| js_error(ctx, e))?;
            api(ctx, Api::Cancel)?.call::<_, ()>((ids,)).map_err(|e| js_error(ctx, e))
        });
        if let Err(e) = out {
            tracing::debug!(party = %self.host.label(), error = %e, "dropping cancelled timers");
        }
    }

    async fn run(&mut self, id: u64, hook: Hook, args: [Arg; 3], may_detach: bool) -> Result<Outcome, CallError> {
        let gate = self.gate().await;
        let started = self.with(|ctx, scope| {
            let dispatch = api(ctx, Api::Dispatch)?;
            let [a, b, c] = args;
            let a = arg_value(ctx, a).map_err(|e| js_error(ctx, e))?;
            let b = arg_value(ctx, b).map_err(|e| js_error(ctx, e))?;
            let c = arg_value(ctx, c).map_err(|e| js_error(ctx, e))?;
            dispatch.call::<_, ()>((scope as f64, id as f64, hook.name(), a, b, c)).map_err(|e| js_error(ctx, e))
        });
        if let Err(e) = started {
            return Err(self.classify(e));
        }
        let mut result = None;
        let mut held = Some(gate);
        loop {
            let gate = match held.take() {
                Some(gate) => gate,
                None => self.gate().await,
            };
            self.jobs()?;
            if result.is_none() {
                result = self.take(id)?;
            }
            self.collect_detached()?;
            drop(gate);
            let gated = self.host.gated();
            let can_progress = self.host.can_progress();
            match result {
                // Settled, and the storage operations it left unawaited are done too (they keep
                // the input gate closed, and what follows them must see them in order).
                Some(r) if !gated || !can_progress => return r.map(Outcome::Done),
                Some(_) => {}
                None if may_detach && !gated => return Ok(Outcome::Pending(id)),
                None if !can_progress => return Err(CallError::Stuck),
                None => {}
            }
            self.wait().await?;
        }
    }

    /// Waits for the next thing that can move the engine on (a host operation finishing, a
    /// timer, a result settled by another room's code) and delivers it; an error at the time
    /// limit.
    async fn wait(&mut self) -> Result<(), CallError> {
        let next_timer = self.host.next_timer();
        let remaining = self.deadline_instant();
        let notify = self.host.notify.clone();
        tokio::select! {
            done = self.done.recv() => {
                if let Some((op, result)) = done {
                    let _gate = self.gate().await;
                    self.deliver(op, result)?;
                }
            }
            _ = tokio::time::sleep_until(next_timer.unwrap_or(remaining)), if next_timer.is_some() => {
                let _gate = self.gate().await;
                self.fire_timers()?;
            }
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(remaining) => {
                return Err(CallError::Timeout(self.limits.call_timeout));
            }
        }
        Ok(())
    }

    fn deadline_instant(&self) -> Instant {
        let at = self.deadline.load(Ordering::Relaxed);
        let now = epoch().elapsed().as_micros() as u64;
        Instant::now() + Duration::from_micros(at.saturating_sub(now))
    }

    /// Runs pending microtasks, then logs the promise rejections nothing handled.
    fn jobs(&mut self) -> Result<(), CallError> {
        let rejected = &self.realm.shared.rejected;
        let out = self.with(|ctx, _| {
            while ctx.execute_pending_job() {}
            if !rejected.swap(false, Ordering::Relaxed) {
                return Ok(Vec::new());
            }
            let report = api(ctx, Api::Rejections)?;
            report.call::<_, Vec<String>>(()).map_err(|e| js_error(ctx, e))
        });
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(CallError::Timeout(self.limits.call_timeout));
        }
        for text in out.map_err(|e| self.classify(e))? {
            // Where the error was made, in the project's own files (the bundle's source map).
            let text = crate::bundle::map_locations(&text);
            let at = error_location(&text).unwrap_or("unknown");
            tracing::warn!(target: "party", party = %self.host.label(), at, "unhandled promise rejection: {text}");
        }
        Ok(())
    }

    /// The result of call `id` once it settled.
    fn take(&mut self, id: u64) -> Result<Taken, CallError> {
        let label = self.host.label();
        let out = self.with(|ctx, scope| -> Result<Option<RawResult>, String> {
            let ctx = ctx.clone();
            let take = api(&ctx, Api::Take)?;
            let r: Value = take.call((scope as f64, id as f64)).map_err(|e| js_error(&ctx, e))?;
            let Some(arr) = r.as_array() else { return Ok(None) };
            let ok: bool = arr.get(0).map_err(|e| js_error(&ctx, e))?;
            if ok {
                let v: Value = arr.get(1).map_err(|e| js_error(&ctx, e))?;
                if v.is_null() || v.is_undefined() {
                    return Ok(Some(Ok(serde_json::Value::Null)));
                }
                let json = ctx.json_stringify(v).map_err(|e| js_error(&ctx, e))?;
                let json = json.map(|s| s.to_string()).transpose().map_err(|e| e.to_string())?;
                let v = json.map(|j| serde_json::from_str(&j)).transpose().map_err(|e| e.to_string())?;
                Ok(Some(Ok(v.unwrap_or(serde_json::Value::Null))))
            } else {
                let message: String = arr.get(1).map_err(|e| js_error(&ctx, e))?;
                let stack: String = arr.get(2).unwrap_or_default();
                let status: Option<f64> = arr.get(3).unwrap_or_default();
                let status = status.map(|s| s as u16);
                if !stack.is_empty() {
                    // Where it was thrown, in the project's own files (the bundle's source map).
                    let stack = crate::bundle::map_locations(&stack);
                    let at = error_location(&stack).unwrap_or("?");
                    tracing::warn!(party = %label, at, stack = %stack, "party code threw: {message}");
                }
                Ok(Some(Err((message, status))))
            }
        });
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(CallError::Timeout(self.limits.call_timeout));
        }
        match out {
            Err(e) => Err(self.classify(e)),
            Ok(None) => Ok(None),
            Ok(Some(Ok(v))) => Ok(Some(Ok(v))),
            Ok(Some(Err((message, Some(status))))) => Ok(Some(Err(CallError::Status { status, message }))),
            Ok(Some(Err((message, None)))) => Ok(Some(Err(self.classify(message)))),
        }
    }

    /// Moves the calls that went on in the background and have settled to `finished`.
    fn collect_detached(&mut self) -> Result<(), CallError> {
        let ids: Vec<u64> = self.detached.iter().copied().collect();
        for id in ids {
            if let Some(result) = self.take(id)? {
                self.detached.remove(&id);
                self.finished.push((id, result));
            }
        }
        Ok(())
    }

    /// The calls that went on in the background ([`Outcome::Pending`]) and have settled since
    /// the last time, with their results.
    pub(crate) fn take_finished(&mut self) -> Vec<(u64, Result<serde_json::Value, CallError>)> {
        std::mem::take(&mut self.finished)
    }

    fn deliver(&mut self, op: u64, result: OpResult) -> Result<(), CallError> {
        {
            let mut ops = self.host.ops.locked();
            ops.in_flight -= 1;
            ops.pending.remove(&op);
            ops.storage.remove(&op);
        }
        let out = self.with(|ctx, _| {
            let ctx = ctx.clone();
            let complete = api(&ctx, Api::Complete)?;
            let (ok, value) = match result {
                OpResult::Error(msg) => {
                    (false, rquickjs::String::from_str(ctx.clone(), &msg).map_err(|e| js_error(&ctx, e))?.into_value())
                }
                r => (true, host::op_value(&ctx, r).map_err(|e| js_error(&ctx, e))?),
            };
            complete.call::<_, ()>((op as f64, ok, value)).map_err(|e| js_error(&ctx, e))
        });
        out.map_err(|e| self.classify(e))
    }

    /// Fires this engine's due timers, and those the party's module set as it loaded (they
    /// belong to no room: whichever engine of the realm runs next fires them).
    fn fire_timers(&mut self) -> Result<(), CallError> {
        let mut due = self.host.due_timers();
        if let Some(own) = self.realm.shared.own.get() {
            due.extend(own.due_timers());
        }
        if due.is_empty() {
            return Ok(());
        }
        let out = self.with(|ctx, _| {
            let timers = api(ctx, Api::Timers)?;
            let ids = arg_value(ctx, Arg::Ids(due)).map_err(|e| js_error(ctx, e))?;
            timers.call::<_, ()>((ids,)).map_err(|e| js_error(ctx, e))
        });
        out.map_err(|e| self.classify(e))
    }

    /// What the engine waits for between calls: a host operation finishing (the notify) or its
    /// next timer; and whether a call that went on in the background waits for a host operation
    /// (the room should stay loaded for it).
    pub fn wakeup(&self) -> (Arc<Notify>, Option<Instant>, bool) {
        let busy = !self.detached.is_empty() && self.host.ops.locked().in_flight > 0;
        (self.host.notify.clone(), self.host.next_timer(), busy)
    }

    /// Runs what became ready between calls: finished host operations, due timers, and the
    /// microtasks they queue; then, while the input gate is closed (a storage operation or a
    /// `blockConcurrencyWhile` of that work is pending), whatever it waits for, so no other event
    /// starts meanwhile.
    pub async fn background(&mut self) -> Result<(), CallError> {
        self.arm();
        let result = self.background_inner().await;
        self.disarm();
        if let Err(e @ (CallError::Timeout(_) | CallError::Stuck)) = &result {
            let cancelled = self.stopped(e, None);
            debug_assert!(cancelled.is_empty());
        }
        result
    }

    async fn background_inner(&mut self) -> Result<(), CallError> {
        {
            let _gate = self.gate().await;
            while let Ok((op, result)) = self.done.try_recv() {
                self.deliver(op, result)?;
                self.jobs()?;
            }
            self.fire_timers()?;
        }
        loop {
            {
                let _gate = self.gate().await;
                self.jobs()?;
                self.collect_detached()?;
            }
            if !self.host.gated() {
                return Ok(());
            }
            if !self.host.can_progress() {
                return Err(CallError::Stuck);
            }
            self.wait().await?;
        }
    }
}

impl Drop for Engine {
    /// Drops the room's scope in the realm (under its lock), and has the prelude forget the
    /// timers and host operations of the room that will never come.
    fn drop(&mut self) {
        let (timers, ops): (Vec<u64>, Vec<u64>) = {
            let ops = self.host.ops.locked();
            (ops.timers.keys().copied().collect(), ops.pending.iter().copied().collect())
        };
        self.host.retire();
        let scope = self.scope as f64;
        let realm = self.realm.clone();
        let forget = move || {
            realm.ctx.with(|ctx| {
                let forgot = api(&ctx, Api::Forget)
                    .and_then(|f| f.call::<_, ()>((scope, timers, ops)).map_err(|e| js_error(&ctx, e)));
                if let Err(e) = forgot {
                    tracing::debug!(party = %realm.shared.label, error = %e, "forgetting a dropped engine's scope");
                }
            });
        };
        // Without waiting for another room's code to finish: later, when the realm is busy.
        match (self.realm.gate.clone().try_lock_owned(), tokio::runtime::Handle::try_current()) {
            (Ok(_gate), _) => forget(),
            (Err(_), Ok(rt)) => {
                let gate = self.realm.gate.clone();
                rt.spawn(async move {
                    let _gate = gate.lock_owned().await;
                    forget();
                });
            }
            (Err(_), Err(_)) => forget(),
        }
    }
}

/// `file:line:column` of the first stack frame in an error's text, if it has one.
/// The first frame in the party's own code is preferred to frames of the prelude.
fn error_location(text: &str) -> Option<&str> {
    let mut frames = text.lines().map(str::trim).filter_map(|line| {
        let frame = line.strip_prefix("at ")?;
        let loc = match (frame.rfind('('), frame.ends_with(')')) {
            (Some(open), true) => &frame[open + 1..frame.len() - 1],
            _ => frame,
        };
        loc.contains(':').then_some(loc)
    });
    let first = frames.next()?;
    if !first.starts_with("partyline:") {
        return Some(first);
    }
    Some(frames.find(|loc| !loc.starts_with("partyline:")).unwrap_or(first))
}

/// The prelude's entry point `entry` (on `globalThis.__partyline`).
fn api<'js>(ctx: &Ctx<'js>, entry: Api) -> Result<Function<'js>, String> {
    let api: Object = ctx.globals().get(Global::Api.name()).map_err(|e| js_error(ctx, e))?;
    api.get(entry.name()).map_err(|e| js_error(ctx, e))
}

/// Tells the prelude a promise was rejected with no handler (`handled` false) or got one later
/// (`handled` true); the prelude keeps the unhandled ones until the engine asks for them.
fn track_rejection<'js>(ctx: &Ctx<'js>, promise: Value<'js>, reason: Value<'js>, handled: bool) {
    let Ok(track) = api(ctx, Api::Rejection) else { return };
    if track.call::<_, ()>((promise, reason, handled)).is_err() {
        let _ = ctx.catch();
    }
}

/// The global the prelude takes its lazy parts' loader from (and deletes).
const PART_LOADER: &str = "__partyline_part";

/// Installs `globalThis.__partyline_part(name)`: loads and evaluates the lazy part `name` of the
/// prelude (see `LAZY_PARTS` in js/src/modules.rs) and returns its default export. It runs inside
/// a JS call (a getter of the global the part makes), so it cannot run the job queue: a part is
/// a module without imports or top-level `await`, whose evaluation finishes synchronously.
fn install_part_loader<'js>(ctx: &Ctx<'js>) -> rquickjs::Result<()> {
    let load = Function::new(ctx.clone(), |ctx: Ctx<'js>, name: String| -> rquickjs::Result<Value<'js>> {
        let code = crate::modules::lazy_part(&name)
            .ok_or_else(|| rquickjs::Error::new_loading(&name))?
            .map_err(|e| rquickjs::Error::new_loading_message(&name, e.to_string()))?;
        use rquickjs::loader::Loader as _;
        let module = rquickjs::loader::Bundle { 0: code }.load(&ctx, &name, None)?;
        let (module, promise) = module.eval()?;
        match promise.result::<Value>() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(rquickjs::Error::new_loading_message(&name, "its evaluation did not finish")),
        }
        module.namespace()?.get("default")
    })?;
    ctx.globals().set(PART_LOADER, load)
}

/// Imports module `name` and runs the jobs its evaluation queued; the module's namespace.
fn import<'js>(ctx: &Ctx<'js>, name: &str) -> Result<Object<'js>, String> {
    let promise = Module::import(ctx, name).map_err(|e| js_error(ctx, e))?;
    while ctx.execute_pending_job() {}
    match promise.result::<Object>() {
        None => {
            Err(format!("{name}: module evaluation did not finish (top-level await on something that never settles?)"))
        }
        Some(r) => r.map_err(|e| js_error(ctx, e)),
    }
}

/// Text of a call result that should be a string list.
pub(crate) fn string_list(v: &serde_json::Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
}

#[cfg(test)]
mod memory_tests {
    use super::*;

    /// QuickJS's accounting of a runtime, in the units `JS_DumpMemoryUsage` prints.
    fn breakdown(rt: &Runtime) -> String {
        let u = rt.memory_usage();
        format!(
            "used {} B ({} allocations); atoms {} / {} B; strings {} / {} B; objects {} / {} B; \
             properties {} / {} B; shapes {} / {} B; functions {} / {} B, bytecode {} B, pc2line {} B; \
             C functions {}; arrays {} (fast {}, {} elements); binary objects {} / {} B",
            u.memory_used_size,
            u.memory_used_count,
            u.atom_count,
            u.atom_size,
            u.str_count,
            u.str_size,
            u.obj_count,
            u.obj_size,
            u.prop_count,
            u.prop_size,
            u.shape_count,
            u.shape_size,
            u.js_func_count,
            u.js_func_size,
            u.js_func_code_size,
            u.js_func_pc2line_size,
            u.c_func_count,
            u.array_count,
            u.fast_array_count,
            u.fast_array_elements,
            u.binary_object_count,
            u.binary_object_size,
        )
    }

    fn relay() -> (Arc<Modules>, String) {
        let modules = Arc::new(Modules::new());
        let bundle = crate::bundle::ServerBundle {
            code: "export default class Relay { constructor(room) { this.room = room; } \
                   onMessage(m, sender) { this.room.broadcast(m, [sender.id]); } }\n"
                .into(),
            map: Default::default(),
            files: Vec::new(),
        };
        let entry = modules.add_bundle("relay", &bundle).expect("compiles");
        (modules, entry)
    }

    fn realm(modules: &Arc<Modules>, entry: &str) -> Arc<Realm> {
        Realm::new(RealmSetup {
            modules: modules.clone(),
            entry: entry.to_string(),
            limits: EngineLimits { memory_bytes: 64 << 20, call_timeout: Duration::from_secs(10) },
            fetch: Arc::new(crate::host::FetchPolicy::default()),
            max_value_bytes: 128 << 10,
            label: "relay".into(),
        })
        .expect("a realm")
    }

    async fn engine(realm: &Arc<Realm>) -> Engine {
        Engine::new(EngineSetup {
            realm: realm.clone(),
            room: None,
            parties: partyline::testing::no_parties(),
            max_value_bytes: 128 << 10,
        })
        .await
        .expect("an engine")
    }

    /// A realm takes in each room once per run, and at most [`MAX_ROOMS_PER_REALM`] rooms.
    #[test]
    fn a_realm_takes_in_a_bounded_number_of_rooms() {
        let (modules, entry) = relay();
        let realm = realm(&modules, &entry);
        assert!(realm.admit_run("a", 1));
        assert!(realm.admit_run("a", 1), "the same run again (an engine after hibernation)");
        assert!(!realm.admit_run("a", 2), "another run of a room that ran here");
        for i in 1..MAX_ROOMS_PER_REALM {
            assert!(realm.admit_run(&format!("r{i}"), 1));
        }
        assert!(!realm.admit_run("one too many", 1));
        assert!(realm.admit_run("r1", 1), "the rooms it has keep it");
    }

    /// The heap of a party's realm, and what each room's scope adds to it: what goal (c) of the
    /// benchmarks (at most 150 KiB of server memory per idle loaded JS room) leaves to QuickJS.
    /// Prints where the bytes go (`cargo nextest run -p partyline-js idle_engine --no-capture`).
    #[tokio::test]
    async fn idle_engine_heap_stays_small() {
        let (modules, entry) = relay();
        let bare = Runtime::new().unwrap();
        let _ctx = Context::full(&bare).unwrap();
        println!("bare runtime + full context: {}", breakdown(&bare));
        let realm = realm(&modules, &entry);
        println!("realm with the prelude and a relay party: {}", breakdown(&realm.rt));
        realm.rt.run_gc();
        let before = realm.memory_used();
        // Rooms: a scope each, with the party instance made (`init`).
        let mut engines = Vec::new();
        for i in 0..100 {
            let mut e = engine(&realm).await;
            let info = serde_json::json!({ "id": format!("r{i}"), "party": "relay", "internalID": "x", "env": {} });
            e.call(Hook::Init, [Arg::Json(info), Arg::Null, Arg::Null]).await.expect("init");
            engines.push(e);
        }
        realm.rt.run_gc();
        println!("with 100 rooms: {}", breakdown(&realm.rt));
        let per_room = (realm.memory_used() - before) / 100;
        println!("heap per room: {per_room} B");
        // About 340 KB for the realm (QuickJS's own count, 2026-12; a bare runtime and context is
        // 96 KB of it); the bounds catch a prelude that grew or lost its stripping or lazy parts,
        // and a room that costs more than its scope and instance.
        assert!(before < 400_000, "an idle realm uses {before} bytes");
        assert!(per_room < 16_000, "a room's scope uses {per_room} bytes");
        drop(engines);
        realm.rt.run_gc();
        let after = realm.memory_used();
        assert!(after < before + 16_000, "dropped rooms leave their scopes behind: {before} -> {after} bytes");
        // The lazy parts load on first use, into plain globals.
        let loaded: bool = realm
            .ctx
            .with(|ctx| {
                ctx.eval(
                    "typeof WebAssembly.Module === 'function' && typeof crypto.subtle.digest === 'function' \
                     && CryptoKey.name === 'CryptoKey' && crypto.subtle === crypto.subtle \
                     && Object.getOwnPropertyDescriptor(globalThis, 'WebAssembly').writable === true",
                )
            })
            .expect("the lazy parts load");
        assert!(loaded);
        println!("with WebAssembly and crypto.subtle loaded: {}", breakdown(&realm.rt));
    }
}
