//! JS parties as Partyline parties: [`JsFactory`] (a [`PartyFactory`]: static options, the
//! static hooks, static assets) and the room instances it creates, which implement [`Party`] by
//! calling into their own QuickJS engine.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use http::{HeaderName, HeaderValue, StatusCode};
use partyline::close_code;
use partyline::party::{DynParty, Wakeup};
use partyline::{
    Before, Connection, ConnectionContext, Lobby, Message, Parties, PartiesClient, Party, PartyFactory, PartyOptions,
    Request, Response, Room, RoomKey,
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::bridge::Hook;
use crate::engine::{string_list, Arg, CallError, Engine, EngineLimits, EngineSetup};
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
    /// The engine the static hooks run in (one per party per process; hooks of one party run
    /// one at a time).
    pub(crate) hook_engine: Mutex<Option<Engine>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HookFlags {
    pub(crate) hibernate: bool,
    pub(crate) on_before_connect: bool,
    pub(crate) on_before_request: bool,
    pub(crate) on_fetch: bool,
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

fn env_json(env: &partyline::Env) -> serde_json::Value {
    serde_json::Value::Object(
        env.vars().iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
    )
}

/// Calls to other rooms are not available where no runtime provides them (loading a party to
/// read its static options).
struct NoParties;

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
    fn setup(&self, room: Option<Room>, parties: Parties) -> EngineSetup {
        EngineSetup {
            room,
            parties,
            modules: self.modules.clone(),
            entry: self.entry.clone(),
            limits: self.limits.clone(),
            fetch: self.fetch.clone(),
            max_value_bytes: self.max_value_bytes,
            label: self.name.clone(),
        }
    }
}

/// Loads a party's module in a hook engine and reads its static options and hooks.
pub(crate) async fn hook_engine(def: &PartyDef) -> Result<(Engine, HookFlags), CallError> {
    let mut engine = Engine::new(def.setup(None, Parties::new(Arc::new(NoParties))))?;
    let flags = engine.call(Hook::HooksInit, [Arg::Null, Arg::Null, Arg::Null]).await?;
    let flags: HookFlags = serde_json::from_value(flags).map_err(|e| CallError::Engine(e.to_string()))?;
    Ok((engine, flags))
}

/// The factory of one JS party.
#[derive(Clone)]
pub struct JsFactory {
    pub(crate) def: Arc<PartyDef>,
}

impl JsFactory {
    async fn hook(&self, hook: Hook, args: [Arg; 3], parties: Parties) -> anyhow::Result<serde_json::Value> {
        let mut guard = self.def.hook_engine.lock().await;
        if guard.as_ref().is_none_or(|e| e.broken) {
            *guard = Some(hook_engine(&self.def).await.map_err(|e| anyhow!(e))?.0);
        }
        let engine = guard.as_mut().expect("just set");
        engine.host().set_parties(parties);
        engine.call(hook, args).await.map_err(|e| anyhow!(e))
    }

    fn lobby_json(lobby: &Lobby) -> serde_json::Value {
        serde_json::json!({ "id": lobby.id, "party": lobby.party, "env": env_json(&lobby.env) })
    }

    /// Runs `onBeforeConnect` or `onBeforeRequest` (`hook`).
    async fn before(self, hook: Hook, req: Request, lobby: Lobby) -> anyhow::Result<Before> {
        let args = [Arg::Request(Box::new(req)), Arg::Json(Self::lobby_json(&lobby)), Arg::Null];
        let out = self.hook(hook, args, lobby.parties.clone()).await?;
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
        Box::new(JsParty { room, def: self.def.clone(), engine: None })
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
            if let Some(assets) = &this.def.assets {
                if let Some(res) = assets.serve(&req).await {
                    return Some(res);
                }
            }
            if !this.def.hooks.on_fetch {
                return None;
            }
            let args = [Arg::Request(Box::new(req)), Arg::Json(Self::lobby_json(&lobby)), Arg::Null];
            match this.hook(Hook::Fetch, args, lobby.parties.clone()).await {
                Ok(serde_json::Value::Null) => None,
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
}

/// One room of a JS party.
pub struct JsParty {
    room: Room,
    def: Arc<PartyDef>,
    engine: Option<Engine>,
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
            let mut engine = Engine::new(self.def.setup(Some(self.room.clone()), self.room.parties().clone()))
                .map_err(|e| anyhow!("loading the party failed: {e}"))?;
            let info = serde_json::json!({
                "id": self.room.id(),
                "party": self.room.name(),
                "internalID": format!("{}/{}", self.room.name(), self.room.id()),
                "env": env_json(self.room.env()),
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
            for conn in self.room.get_connections(None) {
                conn.close(close_code::INTERNAL_ERROR, partyline::client_text::ROOM_RESTARTED);
            }
        }
        anyhow!(e)
    }

    async fn call(&mut self, hook: Hook, args: [Arg; 3]) -> anyhow::Result<serde_json::Value> {
        let engine = self.engine().await?;
        let result = engine.call(hook, args).await;
        result.map_err(|e| self.failed(e))
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
            hook_engine: Mutex::new(None),
        };
        JsParty { room, def: Arc::new(def), engine: None }
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
        self.call(Hook::Message, [Arg::Str(sender.id().into()), Arg::Message(message), Arg::Null]).await.map(|_| ())
    }

    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(conn);
        let result = self.call(Hook::Close, [Arg::Str(conn.id().into()), Arg::Null, Arg::Null]).await;
        if let Some(engine) = &self.engine {
            engine.host().forget(conn.id());
        }
        result.map(|_| ())
    }

    async fn on_error(&mut self, conn: &Connection, error: &anyhow::Error) -> anyhow::Result<()> {
        self.engine().await?;
        self.remember(conn);
        self.call(Hook::Error, [Arg::Str(conn.id().into()), Arg::Str(format!("{error:#}")), Arg::Null])
            .await
            .map(|_| ())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        let out = self.call(Hook::Request, [Arg::Request(Box::new(req)), Arg::Null, Arg::Null]).await?;
        serde_json::from_value::<JsHttp>(out)?.response()
    }

    async fn on_alarm(&mut self) -> anyhow::Result<()> {
        self.call(Hook::Alarm, [Arg::Null, Arg::Null, Arg::Null]).await.map(|_| ())
    }

    fn wakeup(&self) -> Option<Wakeup> {
        let engine = self.engine.as_ref()?;
        let (notify, at) = engine.wakeup();
        Some(Wakeup { notify, at })
    }

    async fn on_wakeup(&mut self) -> anyhow::Result<()> {
        let Some(engine) = self.engine.as_mut() else { return Ok(()) };
        let result = engine.background().await;
        result.map_err(|e| self.failed(e))
    }
}

/// Settings every JS party of a project shares.
#[derive(Clone, Debug)]
pub struct JsSettings {
    /// Heap limit of each room's runtime (bytes).
    pub memory_bytes: usize,
    /// Outbound `fetch` policy.
    pub fetch: FetchPolicy,
}

impl Default for JsSettings {
    fn default() -> Self {
        JsSettings { memory_bytes: 128 << 20, fetch: FetchPolicy::default() }
    }
}

/// Builds the factory of the party `name` whose module is `entry`: loads and compiles its
/// modules and reads its static options and hooks.
pub(crate) async fn load_party(
    name: &str,
    entry: PathBuf,
    modules: Arc<Modules>,
    limits: &partyline::Limits,
    settings: &JsSettings,
    assets: Option<StaticAssets>,
) -> anyhow::Result<JsFactory> {
    let entry = entry.to_string_lossy().into_owned();
    modules.preload(&entry)?;
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
        hook_engine: Mutex::new(None),
    };
    let (engine, flags) = hook_engine(&def).await.map_err(|e| anyhow!("party {name}: {e}"))?;
    def.options = PartyOptions { hibernate: flags.hibernate };
    def.hooks = flags;
    def.hook_engine = Mutex::new(Some(engine));
    Ok(JsFactory { def: Arc::new(def) })
}
