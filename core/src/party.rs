//! The [`Party`] trait: the Rust shape of PartyKit's `Party.Server`, and the registry of the
//! parties a server hosts.

use std::collections::BTreeMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::connection::Connection;
use crate::message::Message;
use crate::room::{Env, Parties, Room};
use crate::room_socket::{RoomSocket, SocketEvent};
use crate::web::{self, Request, Response};

/// Per-party options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartyOptions {
    /// Unload the room when idle while its sockets stay open; the next event re-creates it
    /// (`new` and `on_start` again) with every connection's id, tags and state intact. A room
    /// that hibernates also survives moves between nodes without disconnecting its clients.
    pub hibernate: bool,
}

/// What a `on_before_connect` / `on_before_request` hook decided.
#[derive(Debug)]
pub enum Before {
    /// Go on to the room with this (possibly modified) request. Headers set here reach
    /// `ConnectionContext::request` and `on_request`.
    Continue(Request),
    /// Stop and answer with this response.
    Respond(Response),
}

/// What the static hooks can see: the target room id (when there is one), the party, the
/// environment, and other rooms.
#[derive(Clone)]
pub struct Lobby {
    /// The room id the request is for; `None` in `on_fetch`.
    pub id: Option<String>,
    /// The party name.
    pub party: String,
    /// Variables set for parties.
    pub env: Env,
    /// Other rooms.
    pub parties: Parties,
}

/// Work a party has of its own between events (a script runtime's timers, or I/O an earlier
/// handler started): the room runs [`Party::on_wakeup`] when `notify` is notified or at `at`.
#[derive(Clone, Debug)]
pub struct Wakeup {
    /// Notified when background work became ready.
    pub notify: Arc<tokio::sync::Notify>,
    /// When the next timer is due, if any.
    pub at: Option<tokio::time::Instant>,
    /// A handler that went on in the background waits for I/O: the room neither hibernates nor
    /// unloads while this is set (timers alone do not keep it).
    pub busy: bool,
}

/// A cron schedule of a project (PartyKit's `crons` in partykit.json: a name and a cron
/// expression, see [`crate::cron`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronSchedule {
    /// The schedule's name (the key in `crons`).
    pub name: String,
    /// The cron expression, as written.
    pub definition: String,
}

/// One firing of a cron schedule, as [`PartyFactory::on_cron`] gets it (PartyKit's `Cron`
/// controller: `name`, `cron`, `scheduledTime`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronEvent {
    /// The schedule's name.
    pub name: String,
    /// Its cron expression.
    pub definition: String,
    /// When it was due, in milliseconds since the Unix epoch.
    pub scheduled_ms: i64,
}

/// What [`PartyFactory::on_socket`] resolves to: the rest of the socket's life, or why the
/// hook refused it.
pub type SocketLife = anyhow::Result<BoxFuture<'static, ()>>;

/// What `get_connection_tags` and `on_connect` get besides the connection.
#[derive(Debug)]
pub struct ConnectionContext {
    /// The upgrade request, as the `on_before_connect` hook left it.
    pub request: Request,
}

/// A party: the code behind every room of one kind. One value exists per live room; the room
/// runs its handlers one at a time, never concurrently. Every method has a default, so a party
/// implements only what it needs.
///
/// Handlers are written as plain `async fn` (no attribute macro): the trait declares them as
/// returning a `Send` future, and the room boxes them internally (see [`DynParty`]). So a
/// handler must not hold a value that is not `Send` (an `Rc`, a `std::sync::MutexGuard`)
/// across an `.await`; the compiler says "future cannot be sent between threads safely" at the
/// handler if it does.
///
/// ```
/// use partyline::prelude::*;
///
/// struct Echo;
///
/// impl Party for Echo {
///     fn new(_room: Room) -> Self {
///         Echo
///     }
///     async fn on_message(&mut self, msg: Message, sender: &Connection) -> anyhow::Result<()> {
///         sender.send(msg);
///         Ok(())
///     }
/// }
/// ```
///
/// Errors returned from handlers are contained: from `on_message` they reach `on_error`; from
/// `get_connection_tags` or `on_connect` they close the new socket with 1011 and the error
/// text; from `on_request` they answer 500 (or an [`web::HttpError`]'s status); from `on_close`
/// and `on_error` they are logged. A panic or a handler that runs past the time limit closes
/// the affected connection with 1011 (or answers 500) and the room goes on serving.
///
/// Parties written for the earlier form of this trait, with `#[async_trait]` on the impl:
/// delete that attribute line; the methods stay as they are.
pub trait Party: Send + 'static {
    /// Creates the party value for a room (PartyKit's constructor). Runs again after
    /// hibernation.
    fn new(room: Room) -> Self
    where
        Self: Sized;

    /// The party's options.
    fn options() -> PartyOptions
    where
        Self: Sized,
    {
        PartyOptions::default()
    }

    /// Runs before a WebSocket upgrade reaches the room (at the gateway). Return
    /// `Before::Respond` to refuse; an error answers 401 with the error text.
    fn on_before_connect(req: Request, _lobby: Lobby) -> impl Future<Output = anyhow::Result<Before>> + Send
    where
        Self: Sized,
    {
        async { Ok(Before::Continue(req)) }
    }

    /// Runs before an HTTP request reaches the room (at the gateway). Same contract as
    /// `on_before_connect`.
    fn on_before_request(req: Request, _lobby: Lobby) -> impl Future<Output = anyhow::Result<Before>> + Send
    where
        Self: Sized,
    {
        async { Ok(Before::Continue(req)) }
    }

    /// Answers requests that are not for any party (only the `main` party's hook is used, as in
    /// PartyKit). `None` answers 404.
    fn on_fetch(_req: Request, _lobby: Lobby) -> impl Future<Output = Option<Response>> + Send
    where
        Self: Sized,
    {
        async { None }
    }

    /// Runs once per instance before any other handler; a failure fails the event that started
    /// the room, and the next event tries again.
    fn on_start(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Tags for a new connection, for `Room::get_connections(Some(tag))`; at most 9 besides the
    /// id, each at most 256 bytes.
    fn get_connection_tags(
        &mut self,
        _conn: &Connection,
        _ctx: &ConnectionContext,
    ) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send {
        async { Ok(Vec::new()) }
    }

    /// A client connected. The upgrade completes only after this returns.
    fn on_connect(
        &mut self,
        _conn: &Connection,
        _ctx: &ConnectionContext,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// A frame from `sender`, text or binary as sent.
    fn on_message(
        &mut self,
        _message: Message,
        _sender: &Connection,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// A connection closed.
    fn on_close(&mut self, _conn: &Connection) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// A connection failed, or `on_message` returned an error.
    fn on_error(
        &mut self,
        _conn: &Connection,
        _error: &anyhow::Error,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// An HTTP request to the room (`/parties/:party/:room[/*]`), any method. A handler that
    /// must wait for I/O without holding up the room may return [`web::deferred`]'s response and
    /// answer later.
    fn on_request(&mut self, _req: Request) -> impl Future<Output = anyhow::Result<Response>> + Send {
        async { Ok(web::text(http::StatusCode::INTERNAL_SERVER_ERROR, crate::client_text::NO_ON_REQUEST)) }
    }

    /// The room's alarm went off. An error retries with backoff (2 s, doubling, 6 times).
    fn on_alarm(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// When the party has work of its own between events (see [`Wakeup`]); asked after every
    /// event. Parties written in Rust have none: they spawn tasks and reach the room through it.
    fn wakeup(&self) -> Option<Wakeup> {
        None
    }

    /// Runs the background work [`Party::wakeup`] announced, as an event of its own: alone, with
    /// the time limit and the output gate like any handler. It does not count as activity for
    /// hibernation and idle unloading.
    fn on_wakeup(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// A party value as the room runtime holds it: [`Party`]'s instance handlers with their
/// futures boxed, so parties of different types fit behind one `Box<dyn DynParty>`. Every
/// [`Party`] is one; implement [`Party`], not this (a [`PartyFactory`] returns it from
/// `create`).
pub trait DynParty: Send + 'static {
    /// [`Party::on_start`].
    fn on_start(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// [`Party::get_connection_tags`].
    fn get_connection_tags<'a>(
        &'a mut self,
        conn: &'a Connection,
        ctx: &'a ConnectionContext,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>>;
    /// [`Party::on_connect`].
    fn on_connect<'a>(
        &'a mut self,
        conn: &'a Connection,
        ctx: &'a ConnectionContext,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
    /// [`Party::on_message`].
    fn on_message<'a>(&'a mut self, message: Message, sender: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>>;
    /// [`Party::on_close`].
    fn on_close<'a>(&'a mut self, conn: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>>;
    /// [`Party::on_error`].
    fn on_error<'a>(&'a mut self, conn: &'a Connection, error: &'a anyhow::Error) -> BoxFuture<'a, anyhow::Result<()>>;
    /// [`Party::on_request`].
    fn on_request(&mut self, req: Request) -> BoxFuture<'_, anyhow::Result<Response>>;
    /// [`Party::on_alarm`].
    fn on_alarm(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// [`Party::wakeup`].
    fn wakeup(&self) -> Option<Wakeup>;
    /// [`Party::on_wakeup`].
    fn on_wakeup(&mut self) -> BoxFuture<'_, anyhow::Result<()>>;
}

impl<P: Party> DynParty for P {
    fn on_start(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Party::on_start(self).boxed()
    }
    fn get_connection_tags<'a>(
        &'a mut self,
        conn: &'a Connection,
        ctx: &'a ConnectionContext,
    ) -> BoxFuture<'a, anyhow::Result<Vec<String>>> {
        Party::get_connection_tags(self, conn, ctx).boxed()
    }
    fn on_connect<'a>(
        &'a mut self,
        conn: &'a Connection,
        ctx: &'a ConnectionContext,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Party::on_connect(self, conn, ctx).boxed()
    }
    fn on_message<'a>(&'a mut self, message: Message, sender: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>> {
        Party::on_message(self, message, sender).boxed()
    }
    fn on_close<'a>(&'a mut self, conn: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>> {
        Party::on_close(self, conn).boxed()
    }
    fn on_error<'a>(&'a mut self, conn: &'a Connection, error: &'a anyhow::Error) -> BoxFuture<'a, anyhow::Result<()>> {
        Party::on_error(self, conn, error).boxed()
    }
    fn on_request(&mut self, req: Request) -> BoxFuture<'_, anyhow::Result<Response>> {
        Party::on_request(self, req).boxed()
    }
    fn on_alarm(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Party::on_alarm(self).boxed()
    }
    fn wakeup(&self) -> Option<Wakeup> {
        Party::wakeup(self)
    }
    fn on_wakeup(&mut self) -> BoxFuture<'_, anyhow::Result<()>> {
        Party::on_wakeup(self).boxed()
    }
}

/// A party type with its static parts, erased so a registry can hold many.
pub trait PartyFactory: Send + Sync + 'static {
    /// Creates the party value for a room.
    fn create(&self, room: Room) -> Box<dyn DynParty>;
    /// The party's options.
    fn options(&self) -> PartyOptions;
    /// The `on_before_connect` hook.
    fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>>;
    /// The `on_before_request` hook.
    fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>>;
    /// The `on_fetch` hook.
    fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>>;
    /// Whether [`PartyFactory::on_socket`] takes WebSockets to URLs outside any room
    /// (PartyKit's static `onSocket`; honoured on the `main` party only). When not, such an
    /// upgrade goes to `on_fetch` like any request.
    fn handles_sockets(&self) -> bool {
        false
    }
    /// A WebSocket to a URL outside any room (PartyKit's static `onSocket`): `socket` is the
    /// client's socket as the hook holds it (its events are the client's frames, then its
    /// close; what it sends goes to the client once the upgrade completes). Resolves when the
    /// hook returned: `Ok(life)`, and the upgrade completes while `life` runs the socket's
    /// listeners to its end; or the hook's error, answered with 500 instead of the upgrade.
    fn on_socket(&self, req: Request, lobby: Lobby, socket: RoomSocket) -> BoxFuture<'static, SocketLife> {
        let _ = (req, lobby);
        socket.sender.send(SocketEvent::Close { code: crate::close_code::POLICY, reason: String::new() });
        futures::future::ready(Err(anyhow::anyhow!("this party does not take sockets outside its rooms"))).boxed()
    }
    /// The project's cron schedules (partykit.json's `crons`; the `main` party's only). Each
    /// fires [`PartyFactory::on_cron`] once per due time in the whole cluster.
    fn crons(&self) -> Vec<CronSchedule> {
        Vec::new()
    }
    /// A cron schedule is due (PartyKit's static `onCron`), `lobby` without a room id.
    fn on_cron(&self, cron: CronEvent, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<()>> {
        let _ = (cron, lobby);
        futures::future::ready(Ok(())).boxed()
    }
}

struct Factory<P>(PhantomData<fn() -> P>);

impl<P: Party> PartyFactory for Factory<P> {
    fn create(&self, room: Room) -> Box<dyn DynParty> {
        Box::new(P::new(room))
    }
    fn options(&self) -> PartyOptions {
        P::options()
    }
    fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        P::on_before_connect(req, lobby).boxed()
    }
    fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        P::on_before_request(req, lobby).boxed()
    }
    fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>> {
        P::on_fetch(req, lobby).boxed()
    }
}

/// The parties a server hosts, by name. Names follow PartyKit's rule: `[a-z0-9_-]+`.
///
/// Besides the parties registered when the server starts, a registry may have a live part
/// ([`LiveParties`], [`PartyRegistry::with_live`]) whose parties are replaced while the server
/// runs (a deployed project's new version): a lookup sees the current ones, so rooms started
/// after a replacement run the new code while running rooms keep the instance they have.
#[derive(Clone, Default)]
pub struct PartyRegistry {
    parties: BTreeMap<String, Arc<dyn PartyFactory>>,
    live: Option<LiveParties>,
}

/// The replaceable part of a [`PartyRegistry`]; clones share it.
#[derive(Clone)]
pub struct LiveParties(Arc<LiveInner>);

struct LiveInner {
    parties: std::sync::RwLock<BTreeMap<String, Arc<dyn PartyFactory>>>,
    changes: tokio::sync::watch::Sender<LiveChange>,
}

/// A replacement of the live parties, as [`LiveParties::changes`] tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LiveChange {
    /// Counts replacements (0: none yet).
    pub generation: u64,
    /// Running rooms of the replaced parties should move to the new ones now, this many per
    /// second on each node ([`crate::runtime::handle::RoomHandle::upgrade`]); `None`: they move when
    /// they next start.
    pub restart_per_second: Option<u32>,
}

impl Default for LiveParties {
    fn default() -> Self {
        LiveParties(Arc::new(LiveInner {
            parties: Default::default(),
            changes: tokio::sync::watch::channel(LiveChange::default()).0,
        }))
    }
}

impl LiveParties {
    /// An empty live part.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every live party with those of `parties` (its live part is ignored).
    pub fn replace(&self, parties: &PartyRegistry) {
        self.replace_with(parties, None);
    }

    /// [`LiveParties::replace`], asking running rooms to move to the new parties now
    /// (`restart_per_second`, see [`LiveChange`]).
    pub fn replace_with(&self, parties: &PartyRegistry, restart_per_second: Option<u32>) {
        let next = parties.parties.clone();
        *self.0.parties.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.0.changes.send_modify(|c| {
            c.generation += 1;
            c.restart_per_second = restart_per_second;
        });
    }

    /// Replacements as they happen.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<LiveChange> {
        self.0.changes.subscribe()
    }

    /// Whether `name` is one of the live parties now.
    pub fn contains(&self, name: &str) -> bool {
        self.0.parties.read().unwrap_or_else(|e| e.into_inner()).contains_key(name)
    }

    fn get(&self, name: &str) -> Option<Arc<dyn PartyFactory>> {
        self.0.parties.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.0.parties.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }
}

impl PartyRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds party type `P` under `name`.
    ///
    /// # Panics
    /// When `name` is not `[a-z0-9_-]+` or is taken: both are programming errors found at start.
    pub fn with<P: Party>(mut self, name: &str) -> Self {
        assert!(valid_party_name(name), "party name {name:?} must match [a-z0-9_-]+");
        let fresh = self.parties.insert(name.to_string(), Arc::new(Factory::<P>(PhantomData))).is_none();
        assert!(fresh, "party {name:?} registered twice");
        self
    }

    /// Adds a party under `name` from its factory (parties not written as a Rust type, such as
    /// JS parties).
    ///
    /// # Panics
    /// When `name` is not `[a-z0-9_-]+` or is taken.
    pub fn with_factory(mut self, name: &str, factory: Arc<dyn PartyFactory>) -> Self {
        assert!(valid_party_name(name), "party name {name:?} must match [a-z0-9_-]+");
        let fresh = self.parties.insert(name.to_string(), factory).is_none();
        assert!(fresh, "party {name:?} registered twice");
        self
    }

    /// Adds a live part: its parties are looked up after the registered ones (a registered
    /// party's name always means the registered party).
    pub fn with_live(mut self, live: LiveParties) -> Self {
        self.live = Some(live);
        self
    }

    /// The live part, if it has one.
    pub fn live(&self) -> Option<&LiveParties> {
        self.live.as_ref()
    }

    /// The party called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn PartyFactory>> {
        match self.parties.get(name) {
            Some(f) => Some(f.clone()),
            None => self.live.as_ref()?.get(name),
        }
    }

    /// Party names, sorted (the live part's included, as they are now).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.parties.keys().cloned().collect();
        if let Some(live) = &self.live {
            names.extend(live.names().into_iter().filter(|n| !self.parties.contains_key(n)));
            names.sort();
        }
        names
    }
}

/// Whether `name` is a valid party name (`[a-z0-9_-]+`).
pub fn valid_party_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
