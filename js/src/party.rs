//! JS parties as Partyline parties: [`JsFactory`] (a [`PartyFactory`]: static options, the
//! static hooks, static assets) and the room instances it creates, which implement [`Party`] by
//! calling into their engine: their scope in the party's QuickJS realm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{HeaderName, HeaderValue, StatusCode};
use partyline::client_text::{self, ErrorRef};
use partyline::close_code;
use partyline::party::SocketLife;
use partyline::party::{DynParty, Wakeup};
use partyline::room_socket::RoomSocket;
use partyline::sync::Lock;
use partyline::web::ResponseSender;
use partyline::{
    Before, Connection, ConnectionContext, CronEvent, CronSchedule, HttpError, Lobby, Message, Parties, PartiesClient,
    Party, PartyFactory, PartyOptions, Request, Response, Room, RoomKey,
};
use serde::Deserialize;

use crate::bridge::Hook;
use crate::engine::{string_list, Arg, CallError, Engine, EngineLimits, EngineSetup, Outcome, Realm, RealmSetup};
use crate::host::FetchPolicy;
use crate::modules::Modules;
use crate::statics::StaticAssets;

/// Everything about one JS party that its rooms share.
pub(crate) struct PartyDef {
    pub(crate) name: String,
    pub(crate) entry: String,
    pub(crate) modules: Arc<Modules>,
    pub(crate) limits: EngineLimits,
    pub(crate) fetch: Arc<FetchPolicy>,
    pub(crate) max_value_bytes: usize,
    pub(crate) options: PartyOptions,
    pub(crate) hooks: HookFlags,
    pub(crate) assets: Option<StaticAssets>,
    /// Answer the live reload poll of `serve.build.live` (the main party under `dev`).
    pub(crate) live_reload: bool,
    /// partykit.json's `vars` with their JSON types (and `.env`), for `room.env`.
    pub(crate) typed_vars: serde_json::Map<String, serde_json::Value>,
    /// The engines the static hooks run in.
    pub(crate) hook_engine: HookPool,
    /// The realm the party's engines run in (made on first use, and again after one ran out of
    /// memory).
    pub(crate) realm: Mutex<Option<Arc<Realm>>>,
    /// partykit.json's `crons` (the `main` party's).
    pub(crate) crons: Vec<CronSchedule>,
    /// Answer `dev`'s own routes (`/__scheduled__?cron=NAME` runs `onCron`).
    pub(crate) dev_routes: bool,
}

/// Most idle engines a party keeps for its static hooks.
const IDLE_HOOK_ENGINES: usize = 4;

/// The engines a party's static hooks run in: a hook call takes an idle one (or makes one when
/// none is idle) and gives it back after, so hook calls run concurrently, each in an engine of
/// its own; up to [`IDLE_HOOK_ENGINES`] idle ones are kept.
pub(crate) struct HookPool {
    idle: Mutex<Vec<Engine>>,
}

impl HookPool {
    /// A pool holding `engine`, if any (the one the party was loaded with).
    pub(crate) fn new(engine: Option<Engine>) -> Self {
        HookPool { idle: Mutex::new(engine.into_iter().collect()) }
    }

    /// An idle engine, if there is one.
    pub(crate) fn take(&self) -> Option<Engine> {
        self.idle.locked().pop()
    }

    /// Gives an engine back after a call: kept unless it is broken or enough are idle.
    fn give_back(&self, engine: Engine) {
        let mut idle = self.idle.locked();
        if !engine.broken && idle.len() < IDLE_HOOK_ENGINES {
            idle.push(engine);
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookFlags {
    pub(crate) hibernate: bool,
    pub(crate) on_before_connect: bool,
    pub(crate) on_before_request: bool,
    pub(crate) on_fetch: bool,
    pub(crate) on_socket: bool,
    pub(crate) on_cron: bool,
}

/// A request or response as the prelude hands it over.
#[derive(Debug, Deserialize)]
struct JsHttp {
    status: Option<u16>,
    method: Option<String>,
    url: Option<String>,
    headers: Vec<(String, String)>,
    text: Option<String>,
    latin1: Option<String>,
}

impl JsHttp {
    fn body(&self) -> Bytes {
        match (&self.text, &self.latin1) {
            (Some(t), _) => Bytes::from(t.clone()),
            (None, Some(b)) => Bytes::from(crate::host::latin1(b)),
            _ => Bytes::new(),
        }
    }

    fn headers(&self, map: &mut http::HeaderMap) -> anyhow::Result<()> {
        for (k, v) in &self.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| anyhow!("invalid header name {k:?}"))?;
            let value = HeaderValue::from_str(v).map_err(|_| anyhow!("invalid value for header {k}"))?;
            map.append(name, value);
        }
        Ok(())
    }

    fn response(self) -> anyhow::Result<Response> {
        let mut res = http::Response::new(self.body());
        *res.status_mut() = StatusCode::from_u16(self.status.unwrap_or(200))
            .map_err(|_| anyhow!("invalid status {:?}", self.status))?;
        self.headers(res.headers_mut())?;
        Ok(res)
    }

    fn request(self) -> anyhow::Result<Request> {
        let mut req = http::Request::new(self.body());
        let method = self.method.as_deref().unwrap_or("GET");
        *req.method_mut() = http::Method::from_bytes(method.as_bytes()).map_err(|_| anyhow!("invalid method"))?;
        let url = self.url.as_deref().unwrap_or("/");
        *req.uri_mut() = url.parse().map_err(|e| anyhow!("invalid URL {url:?}: {e}"))?;
        self.headers(req.headers_mut())?;
        Ok(req)
    }
}

fn clone_request(req: &Request) -> Request {
    let mut out = http::Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.version_mut() = req.version();
    *out.headers_mut() = req.headers().clone();
    out
}

/// `room.env` / `lobby.env`: the project's `vars` with their JSON types, then the process's
/// variables over them (a process variable that still equals the project's value keeps the
/// JSON type: a number stays a number), as on PartyKit.
fn env_json(env: &partyline::Env, typed: &serde_json::Map<String, serde_json::Value>) -> serde_json::Value {
    let mut out = typed.clone();
    for (k, v) in env.vars() {
        let value = match typed.get(k) {
            Some(t) if t.as_str().map_or_else(|| t.to_string().as_str() == v.as_str(), |s| s == v) => t.clone(),
            _ => serde_json::Value::String(v.clone()),
        };
        out.insert(k.clone(), value);
    }
    serde_json::Value::Object(out)
}

/// Calls to other rooms are not available where no runtime provides them (loading a party to
/// read its static options).
pub(crate) struct NoParties;

#[async_trait]
impl PartiesClient for NoParties {
    async fn fetch(&self, room: RoomKey, _req: Request) -> anyhow::Result<Response> {
        Err(anyhow!("rooms cannot be reached from here ({room})"))
    }
    fn has_party(&self, _party: &str) -> bool {
        false
    }
}

impl PartyDef {
    /// The party's realm: the one its engines share, or a new one (the first, or after the last
    /// ran out of memory).
    fn realm(&self) -> Result<Arc<Realm>, CallError> {
        let mut realm = self.realm.locked();
        if let Some(r) = realm.as_ref().filter(|r| !r.is_broken()) {
            return Ok(r.clone());
        }
        let made = Realm::new(RealmSetup {
            modules: self.modules.clone(),
            entry: self.entry.clone(),
            limits: self.limits.clone(),
            fetch: self.fetch.clone(),
            max_value_bytes: self.max_value_bytes,
            label: self.name.clone(),
        })?;
        *realm = Some(made.clone());
        Ok(made)
    }

    /// The realm for a run of `room`: the party's, unless an earlier run of the same room ran in
    /// it (or it took in as many rooms as a realm does). Module state is the realm's, and a room
    /// that stopped may have run on another node since (a move, a failover): what its earlier run
    /// left in module variables (y-partykit's documents, say) may be stale. That room, and the
    /// rooms started after it, get a new realm; the old one goes once its rooms stop. A
    /// hibernating room keeps its run and its realm.
    fn realm_for(&self, room: &Room) -> Result<Arc<Realm>, CallError> {
        let realm = self.realm()?;
        if realm.admit(room) {
            return Ok(realm);
        }
        tracing::debug!(
            room = %room.key(),
            "a room ran in this realm before, or the realm is full: a new realm for it and the rooms after it"
        );
        {
            let mut cached = self.realm.locked();
            if cached.as_ref().is_some_and(|r| Arc::ptr_eq(r, &realm)) {
                *cached = None;
            }
        }
        let realm = self.realm()?;
        realm.admit(room);
        Ok(realm)
    }

    fn setup(&self, room: Option<Room>, parties: Parties) -> Result<EngineSetup, CallError> {
        let realm = match &room {
            Some(room) => self.realm_for(room)?,
            None => self.realm()?,
        };
        Ok(EngineSetup { realm, room, parties, max_value_bytes: self.max_value_bytes })
    }
}

/// Makes an engine for the party's static hooks and reads its static options and hooks.
pub(crate) async fn hook_engine(def: &PartyDef) -> Result<(Engine, HookFlags), CallError> {
    let mut engine = Engine::new(def.setup(None, Parties::new(Arc::new(NoParties)))?).await?;
    let flags = engine.call(Hook::HooksInit, [Arg::Null, Arg::Null, Arg::Null]).await?;
    let flags: HookFlags = serde_json::from_value(flags).map_err(|e| CallError::Engine(e.to_string()))?;
    Ok((engine, flags))
}

/// The factory of one JS party.
#[derive(Clone)]
pub struct JsFactory {
    pub(crate) def: Arc<PartyDef>,
}

/// A call error as the handler's error: one with an HTTP status (a thrown error's `code`)
/// becomes an [`HttpError`], answered with that status and the error's message.
fn call_error(e: CallError) -> anyhow::Error {
    match e {
        CallError::Status { status, message } => match StatusCode::from_u16(status) {
            Ok(status) => anyhow::Error::new(HttpError::new(status, message)),
            Err(_) => anyhow!(message),
        },
        e => anyhow!(e),
    }
}

impl JsFactory {
    async fn hook(&self, hook: Hook, args: [Arg; 3], parties: Parties) -> anyhow::Result<serde_json::Value> {
        let mut engine = self.take_engine().await?;
        engine.host().set_parties(parties);
        let result = engine.call(hook, args).await;
        self.def.hook_engine.give_back(engine);
        result.map_err(call_error)
    }

    /// Takes an engine for a static hook: an idle one, or a new one.
    async fn take_engine(&self) -> anyhow::Result<Engine> {
        match self.def.hook_engine.take() {
            Some(engine) => Ok(engine),
            None => Ok(hook_engine(&self.def).await.map_err(|e| anyhow!(e))?.0),
        }
    }

    /// Runs `onSocket` for `socket` in an engine of its own, kept for the socket's life (its
    /// listeners hold the socket's state): the rest of the life once the hook returned.
    async fn socket(self, req: Request, lobby: Lobby, socket: RoomSocket) -> SocketLife {
        let mut engine = self.take_engine().await?;
        engine.host().set_parties(lobby.parties.clone());
        let n = engine.host().sockets.locked().add(socket);
        let args = [Arg::Json(n.into()), Arg::Request(Box::new(req)), Arg::Json(self.lobby_json(&lobby))];
        engine.call(Hook::Socket, args).await.map_err(call_error)?;
        let limit = self.def.limits.call_timeout;
        let label = self.def.name.clone();
        Ok(async move { socket_life(engine, limit, &label).await }.boxed())
    }

    /// Runs `onCron` for one firing of a schedule.
    async fn cron(self, cron: CronEvent, lobby: Lobby) -> anyhow::Result<()> {
        let event =
            serde_json::json!({ "name": cron.name, "cron": cron.definition, "scheduledTime": cron.scheduled_ms });
        let args = [Arg::Json(event), Arg::Json(self.lobby_json(&lobby)), Arg::Null];
        self.hook(Hook::Cron, args, lobby.parties.clone()).await.map(drop)
    }

    /// `dev`'s `/__scheduled__?cron=NAME`, as PartyKit's dev server answers it: runs `onCron` now
    /// for that schedule (an unknown name runs as `* * * * *`).
    async fn scheduled(&self, req: &Request, lobby: Lobby) -> Response {
        let name = partyline::web::query_param(req.uri(), "cron").unwrap_or_else(|| "unknown".into());
        let definition = self
            .def
            .crons
            .iter()
            .find(|c| c.name == name)
            .map_or_else(|| "* * * * *".to_string(), |c| c.definition.clone());
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let cron = CronEvent { name: name.clone(), definition: definition.clone(), scheduled_ms: now };
        match self.clone().cron(cron, lobby).await {
            Ok(()) => partyline::web::text(StatusCode::OK, format!("ran cron {name}: {definition}")),
            Err(e) => partyline::web::error_response(&e, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    /// `404.html` of the static assets, when nothing else answered a request.
    async fn not_found(&self, head: bool) -> Option<Response> {
        self.def.assets.as_ref()?.not_found(head).await
    }

    fn lobby_json(&self, lobby: &Lobby) -> serde_json::Value {
        serde_json::json!({ "id": lobby.id, "party": lobby.party, "env": env_json(&lobby.env, &self.def.typed_vars) })
    }

    /// Runs `onBeforeConnect` or `onBeforeRequest` (`hook`).
    async fn before(self, hook: Hook, req: Request, lobby: Lobby) -> anyhow::Result<Before> {
        let args = [Arg::Request(Box::new(req)), Arg::Json(self.lobby_json(&lobby)), Arg::Null];
        let out = match self.hook(hook, args, lobby.parties.clone()).await {
            Ok(out) => out,
            // A thrown error with an HTTP status in its `code` answers with it.
            Err(e) => match e.downcast::<HttpError>() {
                Ok(e) => return Ok(Before::Respond(partyline::web::text(e.status, e.message))),
                Err(e) => return Err(e),
            },
        };
        #[derive(Deserialize)]
        struct Decision {
            respond: Option<JsHttp>,
            request: Option<JsHttp>,
        }
        let d: Decision = serde_json::from_value(out)?;
        match (d.respond, d.request) {
            (Some(res), _) => Ok(Before::Respond(res.response()?)),
            (None, Some(req)) => Ok(Before::Continue(req.request()?)),
            (None, None) => Err(anyhow!("the hook returned nothing")),
        }
    }
}

impl PartyFactory for JsFactory {
    fn create(&self, room: Room) -> Box<dyn DynParty> {
        Box::new(JsParty { room, def: self.def.clone(), engine: None, continued: HashMap::new() })
    }

    fn options(&self) -> PartyOptions {
        self.def.options.clone()
    }

    fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        if !self.def.hooks.on_before_connect {
            return futures::future::ready(Ok(Before::Continue(req))).boxed();
        }
        self.clone().before(Hook::BeforeConnect, req, lobby).boxed()
    }

    fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
        if !self.def.hooks.on_before_request {
            return futures::future::ready(Ok(Before::Continue(req))).boxed();
        }
        self.clone().before(Hook::BeforeRequest, req, lobby).boxed()
    }

    fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>> {
        let this = self.clone();
        async move {
            if this.def.live_reload && req.uri().path() == crate::statics::LIVE_PATH {
                return Some(crate::statics::live_reload(&req).await);
            }
            if this.def.dev_routes && this.def.hooks.on_cron && req.uri().path() == "/__scheduled__" {
                return Some(this.scheduled(&req, lobby).await);
            }
            if let Some(assets) = &this.def.assets {
                if let Some(res) = assets.serve(&req).await {
                    return Some(res);
                }
            }
            if !this.def.hooks.on_fetch {
                return this.not_found(req.method() == http::Method::HEAD).await;
            }
            let head = req.method() == http::Method::HEAD;
            let args = [Arg::Request(Box::new(req)), Arg::Json(this.lobby_json(&lobby)), Arg::Null];
            match this.hook(Hook::Fetch, args, lobby.parties.clone()).await {
                Ok(serde_json::Value::Null) => this.not_found(head).await,
                Ok(v) => {
                    match serde_json::from_value::<JsHttp>(v).map_err(anyhow::Error::from).and_then(JsHttp::response) {
                        Ok(res) => Some(res),
                        Err(e) => Some(partyline::web::error_response(
                            &e.context("onFetch"),
                            StatusCode::INTERNAL_SERVER_ERROR,
                        )),
                    }
                }
                Err(e) => Some(partyline::web::error_response(&e, StatusCode::INTERNAL_SERVER_ERROR)),
            }
        }
        .boxed()
    }

    fn handles_sockets(&self) -> bool {
        self.def.hooks.on_socket
    }

    fn on_socket(&self, req: Request, lobby: Lobby, socket: RoomSocket) -> BoxFuture<'static, SocketLife> {
        self.clone().socket(req, lobby, socket).boxed()
    }

    fn crons(&self) -> Vec<CronSchedule> {
        if self.def.hooks.on_cron {
            self.def.crons.clone()
        } else {
            Vec::new()
        }
    }

    fn on_cron(&self, cron: CronEvent, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<()>> {
        if !self.def.hooks.on_cron {
            return futures::future::ready(Ok(())).boxed();
        }
        self.clone().cron(cron, lobby).boxed()
    }
}

/// The life of an `onSocket` socket after the hook returned: its engine runs what becomes ready
/// (the client's frames reach the listeners as host operations, timers fire) until the socket is
/// closed and nothing is in flight; timers still pending then get at most the handler time limit
/// before the engine is dropped.
async fn socket_life(mut engine: Engine, limit: std::time::Duration, label: &str) {
    let mut closed_at: Option<tokio::time::Instant> = None;
    loop {
        let (notify, at, _) = engine.wakeup();
        let open = engine.host().sockets.locked().count() > 0;
        let in_flight = engine.host().ops.locked().in_flight > 0;
        if !open && !in_flight {
            let since = *closed_at.get_or_insert_with(tokio::time::Instant::now);
            if at.is_none_or(|at| at > since + limit) {
                return;
            }
        }
        let give_up = closed_at.map(|since| since + limit);
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep_until(at.unwrap_or_else(tokio::time::Instant::now)), if at.is_some() => {}
            _ = tokio::time::sleep_until(give_up.unwrap_or_else(tokio::time::Instant::now)), if give_up.is_some() => return,
        }
        if let Err(e) = engine.background().await {
            tracing::warn!(party = %label, error = %e, "an onSocket socket's code failed; the socket is closed");
            return;
        }
    }
}

/// One room of a JS party.
pub struct JsParty {
    room: Room,
    def: Arc<PartyDef>,
    engine: Option<Engine>,
    /// Handlers that went on in the background ([`Outcome::Pending`]), by call id: what their
    /// result is for.
    continued: HashMap<u64, Continued>,
}

/// What the result of a handler that went on in the background is for.
enum Continued {
    /// `onMessage` of this connection: an error goes to `onError`, as the room does.
    Message(Connection),
    /// `onError` after a failed `onMessage`: an error closes the connection (1011).
    Error(Connection),
    /// A handler whose error is only logged (`onClose`, `onError` of a closed connection).
    Logged(&'static str),
    /// `onRequest`: the response goes here.
    Request(ResponseSender),
}

impl JsParty {
    /// The room's engine, created (module loaded, constructor and `onStart` run) when missing:
    /// at the room's start, after hibernation, and after the engine was dropped for running out
    /// of memory.
    async fn engine(&mut self) -> anyhow::Result<&mut Engine> {
        if self.engine.is_none() {
            // Storage puts from JS finish at once (they are buffered): with a quota, the room's
            // usage must be known before they come.
            self.room.storage().prepare_quota().await?;
            let failed = |e| anyhow!("loading the party failed: {e}");
            let setup = self.def.setup(Some(self.room.clone()), self.room.parties().clone()).map_err(failed)?;
            let mut engine = Engine::new(setup).await.map_err(failed)?;
            let info = serde_json::json!({
                "id": self.room.id(),
                "party": self.room.name(),
                "internalID": format!("{}/{}", self.room.name(), self.room.id()),
                "env": env_json(self.room.env(), &self.def.typed_vars),
            });
            engine.call(Hook::Init, [Arg::Json(info), Arg::Null, Arg::Null]).await.map_err(|e| self.failed(e))?;
            engine.call(Hook::Start, [Arg::Null, Arg::Null, Arg::Null]).await.map_err(|e| self.failed(e))?;
            self.engine = Some(engine);
        }
        Ok(self.engine.as_mut().expect("just set"))
    }

    /// Turns a call error into the handler's error; a room out of memory drops its engine and
    /// closes its sockets (clients reconnect to a fresh instance).
    fn failed(&mut self, e: CallError) -> anyhow::Error {
        if let CallError::OutOfMemory(_) = e {
            tracing::error!(room = %self.room.key(), error = %e, "room out of memory; restarting it");
            self.engine = None;
            // Handlers that were going on are gone with the engine (a request waiting for one
            // is answered 500 when its sender drops).
            self.continued.clear();
            for conn in self.room.get_connections(None) {
                conn.close(close_code::INTERNAL_ERROR, partyline::client_text::ROOM_RESTARTED);
            }
        }
        call_error(e)
    }

    async fn call(&mut self, hook: Hook, args: [Arg; 3]) -> anyhow::Result<serde_json::Value> {
        let engine = self.engine().await?;
        let result = engine.call(hook, args).await;
        let result = result.map_err(|e| self.failed(e));
        self.settle_continued().await;
        result
    }

    /// Calls `hook` and lets it go on in the background when it awaits something other than
    /// storage ([`Engine::call_gated`]); `then` says what its result is for in that case.
    /// `None` when it went on in the background.
    async fn call_gated(
        &mut self,
        hook: Hook,
        args: [Arg; 3],
        then: impl FnOnce() -> Continued,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let engine = self.engine().await?;
        let result = match engine.call_gated(hook, args).await {
            Ok(Outcome::Done(v)) => Ok(Some(v)),
            Ok(Outcome::Pending(id)) => {
                self.continued.insert(id, then());
                Ok(None)
            }
            Err(e) => Err(self.failed(e)),
        };
        self.settle_continued().await;
        result
    }

    /// Handles the results of the handlers that went on in the background and have settled.
    async fn settle_continued(&mut self) {
        loop {
            let Some(engine) = self.engine.as_mut() else { return };
            let finished = engine.take_finished();
            if finished.is_empty() {
                return;
            }
            for (id, result) in finished {
                if let Some(then) = self.continued.remove(&id) {
                    let result = result.map_err(|e| self.failed(e));
                    self.settled(then, result).await;
                }
            }
        }
    }

    /// What the room does with the result of a handler when the handler returns, for one that
    /// went on in the background.
    async fn settled(&mut self, then: Continued, result: anyhow::Result<serde_json::Value>) {
        match (then, result) {
            (Continued::Request(tx), result) => {
                let res = result.and_then(|v| serde_json::from_value::<JsHttp>(v)?.response());
                // The caller may be gone (it timed out): nothing to answer then.
                let _ = tx.send(res);
            }
            (_, Ok(_)) => {}
            (Continued::Message(conn), Err(e)) => {
                let args = [Arg::Str(conn.id().into()), Arg::Str(format!("{e:#}")), Arg::Json(conn.is_open().into())];
                let then = conn.clone();
                match self.call_error_hook(args, move || Continued::Error(then)).await {
                    Ok(()) => {}
                    Err(e) => close_failed(&conn, "onError failed", &e),
                }
            }
            (Continued::Error(conn), Err(e)) => close_failed(&conn, "onError failed", &e),
            (Continued::Logged(what), Err(e)) => {
                tracing::warn!(room = %self.room.key(), error = %format!("{e:#}"), "{what} failed");
            }
        }
    }

    /// `onError`, boxed: it runs from [`JsParty::settled`], which it can lead back to.
    fn call_error_hook(
        &mut self,
        args: [Arg; 3],
        then: impl FnOnce() -> Continued + Send + 'static,
    ) -> BoxFuture<'_, anyhow::Result<()>> {
        async move { self.call_gated(Hook::Error, args, then).await.map(|_| ()) }.boxed()
    }

    fn remember(&mut self, conn: &Connection) {
        if let Some(engine) = &self.engine {
            engine.host().remember(conn);
        }
    }
}

impl Party for JsParty {
    /// JS parties are created by [`JsFactory`]; a `JsParty` made without one fails to start.
    fn new(room: Room) -> Self {
        let def = PartyDef {
            name: room.name().to_string(),
            entry: String::new(),
            modules: Arc::new(Modules::new()),
            limits: EngineLimits { memory_bytes: 0, call_timeout: room.limits().handler_timeout },
            fetch: Arc::new(FetchPolicy::default()),
            max_value_bytes: room.limits().max_value_bytes,
            options: PartyOptions::default(),
            hooks: HookFlags::default(),
            assets: None,
            live_reload: false,
            typed_vars: serde_json::Map::new(),
            hook_engine: HookPool::new(None),
            realm: Mutex::new(None),
            crons: Vec::new(),
            dev_routes: false,
        };
        JsParty { room, def: Arc::new(def), engine: None, continued: HashMap::new() }
    }

    async fn on_start(&mut self) -> anyhow::Result<()> {
        if self.def.entry.is_empty() {
            return Err(anyhow!("a JS party is created by partyline_js::JsFactory, not Party::new"));
        }
        self.engine().await.map(|_| ())
    }

    async fn get_connection_tags(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<Vec<String>> {
        self.engine().await?;
        self.remember(conn);
        let args = [
            Arg::Str(conn.id().into()),
            Arg::Str(conn.uri().into()),
            Arg::Request(Box::new(clone_request(&ctx.request))),
        ];
        Ok(string_list(&self.call(Hook::Tags, args).await?))
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(conn);
        let args = [
            Arg::Str(conn.id().into()),
            Arg::Str(conn.uri().into()),
            Arg::Request(Box::new(clone_request(&ctx.request))),
        ];
        self.call(Hook::Connect, args).await.map(|_| ())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(sender);
        let args = [Arg::Str(sender.id().into()), Arg::Message(message), Arg::Null];
        let conn = sender.clone();
        self.call_gated(Hook::Message, args, move || Continued::Message(conn)).await.map(|_| ())
    }

    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(conn);
        let args = [Arg::Str(conn.id().into()), Arg::Null, Arg::Null];
        let result = self.call_gated(Hook::Close, args, || Continued::Logged("onClose")).await;
        if let Some(engine) = &self.engine {
            engine.host().forget(conn.id());
        }
        result.map(|_| ())
    }

    async fn on_error(&mut self, conn: &Connection, error: &anyhow::Error) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(conn);
        let args = [Arg::Str(conn.id().into()), Arg::Str(format!("{error:#}")), Arg::Json(conn.is_open().into())];
        let then = conn.clone();
        // Still open: an error of onMessage (a failure closes the connection, as the room does).
        let open = conn.is_open();
        self.call_error_hook(args, move || if open { Continued::Error(then) } else { Continued::Logged("onError") })
            .await
    }

    /// A request handler that awaits something other than storage answers later
    /// ([`partyline::web::deferred`]): the room goes on with its other events meanwhile.
    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        let args = [Arg::Request(Box::new(req)), Arg::Null, Arg::Null];
        let mut deferred = None;
        let out = self
            .call_gated(Hook::Request, args, || {
                let (tx, res) = partyline::web::deferred();
                deferred = Some(res);
                Continued::Request(tx)
            })
            .await?;
        match (out, deferred) {
            (Some(out), _) => serde_json::from_value::<JsHttp>(out)?.response(),
            (None, Some(res)) => Ok(res),
            (None, None) => Err(anyhow!("the request handler went on without a response to give later")),
        }
    }

    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        self.call(Hook::Alarm, [Arg::Null, Arg::Null, Arg::Null]).await.map(|_| ())
    }

    fn wakeup(&self) -> Option<Wakeup> {
        let engine = self.engine.as_ref()?;
        let (notify, at, busy) = engine.wakeup();
        Some(Wakeup { notify, at, busy })
    }

    async fn on_wakeup(&mut self) -> anyhow::Result<()> {
        let Some(engine) = self.engine.as_mut() else { return Ok(()) };
        let result = engine.background().await;
        let result = result.map_err(|e| self.failed(e));
        self.settle_continued().await;
        result
    }
}

/// Closes a connection whose handler failed, as the room does: 1011 with a fixed text, the
/// failure in the log under the same reference.
fn close_failed(conn: &Connection, what: &str, error: &anyhow::Error) {
    let r = ErrorRef::new();
    tracing::warn!(conn = conn.id(), error_ref = %r, error = %format!("{error:#}"), "{what}");
    conn.close(close_code::INTERNAL_ERROR, &r.tag(client_text::INTERNAL_ERROR));
}

/// Settings every JS party of a project shares.
#[derive(Clone, Debug)]
pub struct JsSettings {
    /// Heap limit of each party's realm in a process, shared by its rooms there (bytes).
    pub memory_bytes: usize,
    /// Outbound `fetch` policy.
    pub fetch: FetchPolicy,
    /// `PARTYKIT_HOST` in the bundles (`dev` sets its address); unset, pages use the host
    /// they were served from (`location.host`) and server code gets `""`.
    pub partykit_host: Option<String>,
    /// Put the live reload script of `serve.build.live` into pages, and answer its poll (`dev`).
    pub live_reload: bool,
    /// Answer the dev server's own routes, as PartyKit's does: `/__scheduled__?cron=NAME` runs
    /// `onCron` at once (`dev`; never on a cluster, where anyone could trigger it).
    pub dev_routes: bool,
}

impl Default for JsSettings {
    fn default() -> Self {
        JsSettings {
            memory_bytes: 128 << 20,
            fetch: FetchPolicy::default(),
            partykit_host: None,
            live_reload: false,
            dev_routes: false,
        }
    }
}

/// What a party takes from its project besides its code.
#[derive(Default)]
pub(crate) struct FromProject {
    /// Static assets (the `main` party's).
    pub(crate) assets: Option<StaticAssets>,
    /// `vars` with their JSON types.
    pub(crate) typed_vars: serde_json::Map<String, serde_json::Value>,
    /// `crons` (the `main` party's).
    pub(crate) crons: Vec<CronSchedule>,
}

/// Builds the factory of the party `name` whose bundle is module `entry` of `modules`, and
/// reads its static options and hooks.
pub(crate) async fn load_party(
    name: &str,
    entry: String,
    modules: Arc<Modules>,
    limits: &partyline::Limits,
    settings: &JsSettings,
    project: FromProject,
) -> anyhow::Result<JsFactory> {
    let FromProject { assets, typed_vars, crons } = project;
    let live_reload = settings.live_reload && assets.is_some();
    let mut def = PartyDef {
        name: name.to_string(),
        entry,
        modules,
        limits: EngineLimits { memory_bytes: settings.memory_bytes, call_timeout: limits.handler_timeout },
        fetch: Arc::new(settings.fetch.clone()),
        max_value_bytes: limits.max_value_bytes,
        options: PartyOptions::default(),
        hooks: HookFlags::default(),
        assets,
        live_reload,
        typed_vars,
        hook_engine: HookPool::new(None),
        realm: Mutex::new(None),
        crons,
        dev_routes: settings.dev_routes,
    };
    let (engine, flags) = hook_engine(&def).await.map_err(|e| anyhow!("party {name}: {e}"))?;
    def.options = PartyOptions { hibernate: flags.hibernate };
    def.hooks = flags;
    def.hook_engine = HookPool::new(Some(engine));
    Ok(JsFactory { def: Arc::new(def) })
}
