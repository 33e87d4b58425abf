//! The [`Party`] trait: the Rust shape of PartyKit's `Party.Server`, and the registry of the
//! parties a server hosts.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::connection::Connection;
use crate::message::Message;
use crate::room::{Env, Parties, Room};
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
}

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
/// Errors returned from handlers are contained: from `on_message` they reach `on_error`; from
/// `get_connection_tags` or `on_connect` they close the new socket with 1011 and the error
/// text; from `on_request` they answer 500 (or an [`web::HttpError`]'s status). A panic or a
/// handler that runs past the time limit closes the affected connection with 1011 (or answers
/// 500) and the room goes on serving.
#[async_trait]
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
    async fn on_before_connect(req: Request, _lobby: Lobby) -> anyhow::Result<Before>
    where
        Self: Sized,
    {
        Ok(Before::Continue(req))
    }

    /// Runs before an HTTP request reaches the room (at the gateway). Same contract as
    /// `on_before_connect`.
    async fn on_before_request(req: Request, _lobby: Lobby) -> anyhow::Result<Before>
    where
        Self: Sized,
    {
        Ok(Before::Continue(req))
    }

    /// Answers requests that are not for any party (only the `main` party's hook is used, as in
    /// PartyKit). `None` answers 404.
    async fn on_fetch(_req: Request, _lobby: Lobby) -> Option<Response>
    where
        Self: Sized,
    {
        None
    }

    /// Runs once per instance before any other handler; a failure fails the event that started
    /// the room, and the next event tries again.
    async fn on_start(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Tags for a new connection, for `Room::get_connections(Some(tag))`; at most 9 besides the
    /// id, each at most 256 bytes.
    async fn get_connection_tags(
        &mut self,
        _conn: &Connection,
        _ctx: &ConnectionContext,
    ) -> anyhow::Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// A client connected. The upgrade completes only after this returns.
    async fn on_connect(&mut self, _conn: &Connection, _ctx: &ConnectionContext) -> anyhow::Result<()> {
        Ok(())
    }

    /// A frame from `sender`, text or binary as sent.
    async fn on_message(&mut self, _message: Message, _sender: &Connection) -> anyhow::Result<()> {
        Ok(())
    }

    /// A connection closed.
    async fn on_close(&mut self, _conn: &Connection) -> anyhow::Result<()> {
        Ok(())
    }

    /// A connection failed, or `on_message` returned an error.
    async fn on_error(&mut self, _conn: &Connection, _error: &anyhow::Error) -> anyhow::Result<()> {
        Ok(())
    }

    /// An HTTP request to the room (`/parties/:party/:room[/*]`), any method.
    async fn on_request(&mut self, _req: Request) -> anyhow::Result<Response> {
        Ok(web::text(http::StatusCode::INTERNAL_SERVER_ERROR, "No onRequest handler"))
    }

    /// The room's alarm went off. An error retries with backoff (2 s, doubling, 6 times).
    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// When the party has work of its own between events (see [`Wakeup`]); asked after every
    /// event. Parties written in Rust have none: they spawn tasks and reach the room through it.
    fn wakeup(&self) -> Option<Wakeup> {
        None
    }

    /// Runs the background work [`Party::wakeup`] announced, as an event of its own: alone, with
    /// the time limit and the output gate like any handler. It does not count as activity for
    /// hibernation and idle unloading.
    async fn on_wakeup(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A party type with its static parts, erased so a registry can hold many.
pub trait PartyFactory: Send + Sync + 'static {
    /// Creates the party value for a room.
    fn create(&self, room: Room) -> Box<dyn Party>;
    /// The party's options.
    fn options(&self) -> PartyOptions;
    /// The `on_before_connect` hook.
    fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>>;
    /// The `on_before_request` hook.
    fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>>;
    /// The `on_fetch` hook.
    fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>>;
}

struct Factory<P>(PhantomData<fn() -> P>);

impl<P: Party> PartyFactory for Factory<P> {
    fn create(&self, room: Room) -> Box<dyn Party> {
        Box::new(P::new(room))
    }
    fn options(&self) -> PartyOptions {
        P::options()
    }
    fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        P::on_before_connect(req, lobby)
    }
    fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        P::on_before_request(req, lobby)
    }
    fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>> {
        P::on_fetch(req, lobby)
    }
}

/// The parties a server hosts, by name. Names follow PartyKit's rule: `[a-z0-9_-]+`.
#[derive(Clone, Default)]
pub struct PartyRegistry {
    parties: BTreeMap<String, Arc<dyn PartyFactory>>,
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

    /// The party called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn PartyFactory>> {
        self.parties.get(name)
    }

    /// Party names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.parties.keys().map(String::as_str)
    }
}

/// Whether `name` is a valid party name (`[a-z0-9_-]+`).
pub fn valid_party_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
