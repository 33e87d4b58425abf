//! The operator console: a web page served by a gateway on its admin listener (never on the
//! client port) under `/console/`, off unless a console token is configured
//! (`--console-token`). Every request needs the token: HTTP Basic auth, the user name being the
//! operator's (recorded with every action), or `Authorization: Bearer <token>` (recorded as
//! `token`). A missing or wrong token gets 401 and nothing else.
//!
//! The page (assets/, embedded in the binary) reads a JSON API beside it:
//! - `GET api/overview`: the cluster at a glance ([`crate::ops::Overview`]);
//! - `GET api/stream`: the same as server-sent events (`event: overview`), about every second;
//! - `GET api/room?party=P&room=R`: a room's lookup ([`crate::ops::RoomLookup`]);
//! - `GET api/events?n=100`: the cluster's recent events, newest first;
//! - `POST api/drain {"node"}`, `POST api/move {"shard"} | {"party","room"}`,
//!   `POST api/close {"party","room"}`: the actions, answering `{"ok","message"}`.
//!
//! One overview is built at a time and shared by every viewer for up to a second, so the
//! number of open consoles does not multiply the reads of Redis (the 4,096 leases) and the
//! calls to nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use partyline::RoomKey;
use partyline_gateway::Gateway;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::ops::{ActionReply, ConnView, Ops};

/// How long one overview is shared between viewers.
const OVERVIEW_FRESH: Duration = Duration::from_millis(900);

/// How often the stream sends an overview.
const STREAM_EVERY: Duration = Duration::from_secs(1);

/// Events `api/events` returns at most.
const MAX_EVENTS: usize = 500;

/// The console's settings.
#[derive(Clone)]
pub struct ConsoleConfig {
    /// The token every request must carry.
    pub token: String,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleConfig { token: *** }")
    }
}

/// The shortest console token accepted.
pub const MIN_TOKEN_BYTES: usize = 16;

impl ConsoleConfig {
    /// Checks the token: long enough to resist guessing, printable, no colon (Basic auth).
    pub fn new(token: String) -> anyhow::Result<Self> {
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_BYTES,
            "the console token must be at least {MIN_TOKEN_BYTES} bytes (e.g. `openssl rand -hex 24`)"
        );
        anyhow::ensure!(
            token.bytes().all(|b| b.is_ascii_graphic()),
            "the console token must be printable ASCII without spaces"
        );
        Ok(ConsoleConfig { token })
    }
}

struct Console {
    ops: Ops,
    gateway: Gateway,
    name: String,
    token: String,
    /// The last overview (JSON) and when it was built; the lock is held while one is built.
    overview: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
}

/// Who asked: the Basic auth user name, or `token` for a bearer token.
#[derive(Clone)]
struct Who(String);

/// The console's routes, under `/console`.
pub fn router(config: ConsoleConfig, ops: Ops, gateway: Gateway, name: String) -> Router {
    let console = Arc::new(Console { ops, gateway, name, token: config.token, overview: Default::default() });
    let api = Router::new()
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route(
            "/console/assets/{*file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>| async move { asset(&file) }),
        )
        .route("/console/api/overview", get(overview))
        .route("/console/api/stream", get(stream))
        .route("/console/api/room", get(room))
        .route("/console/api/events", get(events))
        .route("/console/api/{action}", post(act))
        .route("/console/{*rest}", get(|| async { text(StatusCode::NOT_FOUND, "Not found") }))
        .with_state(console.clone());
    api.layer(axum::middleware::from_fn_with_state(console, authenticate))
}

/// Lets a request through with the right token, else answers 401.
async fn authenticate(State(c): State<Arc<Console>>, mut req: Request, next: Next) -> Response {
    match who(req.headers(), &c.token) {
        Some(who) => {
            req.extensions_mut().insert(Who(who));
            next.run(req).await
        }
        None => {
            let mut res = text(StatusCode::UNAUTHORIZED, "unauthorized");
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Partyline console\", charset=\"UTF-8\""),
            );
            res
        }
    }
}

/// The operator a request's credentials name, when they carry `token`.
fn who(headers: &HeaderMap, token: &str) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    let same = |given: &[u8]| bool::from(given.ct_eq(token.as_bytes()));
    if scheme.eq_ignore_ascii_case("bearer") {
        return same(rest.trim().as_bytes()).then(|| "token".to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        if !same(password.as_bytes()) {
            return None;
        }
        let user: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
        return Some(if user.is_empty() { "token".into() } else { user });
    }
    None
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")], body.into())
        .into_response()
}

fn json_of<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    json(status, serde_json::to_vec(value).expect("serializes"))
}

fn failed(status: StatusCode, e: anyhow::Error) -> Response {
    json_of(status, &ActionReply { ok: false, message: format!("{e:#}") })
}

/// An embedded file of the page.
fn asset(file: &str) -> Response {
    let found: Option<(&'static str, &'static [u8])> = match file {
        "index.html" => Some(("text/html; charset=utf-8", include_bytes!("assets/index.html"))),
        "console.js" => Some(("text/javascript; charset=utf-8", include_bytes!("assets/console.js"))),
        "console.css" => Some(("text/css; charset=utf-8", include_bytes!("assets/console.css"))),
        "vendor/uplot/uPlot.iife.min.js" => {
            Some(("text/javascript; charset=utf-8", include_bytes!("assets/vendor/uplot/uPlot.iife.min.js")))
        }
        "vendor/uplot/uPlot.min.css" => {
            Some(("text/css; charset=utf-8", include_bytes!("assets/vendor/uplot/uPlot.min.css")))
        }
        _ => None,
    };
    match found {
        Some((kind, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::X_FRAME_OPTIONS, "DENY"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ],
            Body::from(Bytes::from_static(body)),
        )
            .into_response(),
        None => text(StatusCode::NOT_FOUND, "Not found"),
    }
}

impl Console {
    /// The overview as JSON, built at most once per [`OVERVIEW_FRESH`] whoever asks.
    async fn overview_json(&self) -> anyhow::Result<Bytes> {
        let mut last = self.overview.lock().await;
        if let Some((at, json)) = last.as_ref() {
            if at.elapsed() < OVERVIEW_FRESH {
                return Ok(json.clone());
            }
        }
        let overview = self.ops.overview(&self.name).await?;
        let json = Bytes::from(serde_json::to_vec(&overview).expect("serializes"));
        *last = Some((Instant::now(), json.clone()));
        Ok(json)
    }
}

async fn overview(State(c): State<Arc<Console>>) -> Response {
    match c.overview_json().await {
        Ok(json) => self::json(StatusCode::OK, json),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn stream(State(c): State<Arc<Console>>) -> Response {
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval(STREAM_EVERY));
    let events = futures::StreamExt::then(ticks, move |_| {
        let c = c.clone();
        async move {
            let event = match c.overview_json().await {
                Ok(json) => SseEvent::default().event("overview").data(String::from_utf8_lossy(&json)),
                Err(e) => SseEvent::default().event("failure").data(format!("{e:#}")),
            };
            Ok::<_, std::convert::Infallible>(event)
        }
    });
    let mut res = Sse::new(events).keep_alive(KeepAlive::default()).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The query string's value of `name`.
fn query(req_query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(req_query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

async fn room(State(c): State<Arc<Console>>, uri: http::Uri) -> Response {
    let (Some(party), Some(name)) = (query(uri.query(), "party"), query(uri.query(), "room")) else {
        return failed(StatusCode::BAD_REQUEST, anyhow::anyhow!("give party and room"));
    };
    let mut lookup = match c.ops.room(&party, &name).await {
        Ok(l) => l,
        Err(e) => return failed(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    // The sockets this gateway holds for the room that its owner did not list: hibernating
    // (the room is out of memory while the gateway keeps them).
    for record in c.gateway.records(&RoomKey::new(&party, &name)) {
        if !lookup.connections.iter().any(|conn| conn.id == record.id) {
            lookup.connections.push(ConnView {
                id: record.id.clone(),
                tags: record.tags.into_iter().filter(|t| *t != record.id).collect(),
                gateway: c.name.clone(),
                hibernating: !lookup.running,
            });
        }
    }
    json_of(StatusCode::OK, &lookup)
}

async fn events(State(c): State<Arc<Console>>, uri: http::Uri) -> Response {
    let n = query(uri.query(), "n").and_then(|n| n.parse().ok()).unwrap_or(100).min(MAX_EVENTS);
    match c.ops.events(n).await {
        Ok(events) => json_of(StatusCode::OK, &events),
        Err(e) => failed(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The body of an action.
#[derive(Deserialize)]
struct Target {
    node: Option<String>,
    shard: Option<u16>,
    party: Option<String>,
    room: Option<String>,
}

/// Refuses what a hostile page could make a browser send with the operator's cached
/// credentials: an action must be JSON (a cross-site form cannot send that type without a
/// preflight, which is refused) and, when the browser says where it comes from, same-origin.
fn same_origin_json(headers: &HeaderMap) -> Result<(), Refused> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err((StatusCode::UNSUPPORTED_MEDIA_TYPE, "an action is a JSON body".into()));
    }
    let foreign = || (StatusCode::FORBIDDEN, "actions come from the console's own page".to_string());
    if headers.get("sec-fetch-site").is_some_and(|v| v != "same-origin" && v != "none") {
        return Err(foreign());
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if origin_host != host {
            return Err(foreign());
        }
    }
    Ok(())
}

/// Why an action was refused before it was tried.
type Refused = (StatusCode, String);

fn target(headers: &HeaderMap, body: &Bytes) -> Result<Target, Refused> {
    same_origin_json(headers)?;
    serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("the body must be JSON naming the target: {e}")))
}

fn refused((status, why): Refused) -> Response {
    json_of(status, &ActionReply { ok: false, message: why })
}

/// Answers an action's result, logging it with who asked.
fn acted(what: &str, who: &Who, result: anyhow::Result<ActionReply>) -> Response {
    match result {
        Ok(reply) => {
            tracing::info!(who = %who.0, action = what, ok = reply.ok, "console: {}", reply.message);
            let status = if reply.ok { StatusCode::OK } else { StatusCode::CONFLICT };
            json_of(status, &reply)
        }
        Err(e) => {
            tracing::warn!(who = %who.0, action = what, "console: {e:#}");
            failed(StatusCode::BAD_GATEWAY, e)
        }
    }
}

/// `POST api/drain`, `api/move`, `api/close`: checks the request, runs the action, answers
/// and logs what it did with who asked.
async fn act(
    State(c): State<Arc<Console>>,
    axum::extract::Path(action): axum::extract::Path<String>,
    axum::Extension(who): axum::Extension<Who>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let t = match target(&headers, &body) {
        Ok(t) => t,
        Err(why) => return refused(why),
    };
    let bad = |why: &str| failed(StatusCode::BAD_REQUEST, anyhow::anyhow!("{why}"));
    let result = match (action.as_str(), t) {
        ("drain", Target { node: Some(node), .. }) => c.ops.drain(&node, &who.0).await,
        ("drain", _) => return bad("name the node"),
        ("move", Target { shard: Some(shard), .. }) => c.ops.move_shard(shard, &who.0).await,
        ("move", Target { party: Some(party), room: Some(room), .. }) => c.ops.move_room(&party, &room, &who.0).await,
        ("move", _) => return bad("name a shard, or a party and a room"),
        ("close", Target { party: Some(party), room: Some(room), .. }) => c.ops.close_room(&party, &room, &who.0).await,
        ("close", _) => return bad("name a party and a room"),
        _ => return text(StatusCode::NOT_FOUND, "Not found"),
    };
    acted(&action, &who, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn only_the_token_gets_in_and_names_who_asked() {
        let token = "0123456789abcdef-token";
        assert_eq!(who(&headers(&basic("alice", token)), token).as_deref(), Some("alice"));
        assert_eq!(who(&headers(&basic("", token)), token).as_deref(), Some("token"));
        assert_eq!(who(&headers(&format!("Bearer {token}")), token).as_deref(), Some("token"));
        assert_eq!(who(&headers(&basic("alice", "wrong")), token), None);
        assert_eq!(who(&headers("Bearer wrong"), token), None);
        assert_eq!(who(&headers(&format!("Digest {token}")), token), None);
        assert_eq!(who(&HeaderMap::new(), token), None);
    }

    #[test]
    fn actions_must_be_json_from_the_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:9100"));
        assert!(same_origin_json(&h).is_err(), "no content type");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(same_origin_json(&h).is_err(), "a form's type");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert!(same_origin_json(&h).is_ok(), "curl or a script");
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:9100"));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin_json(&h).is_ok(), "the console's page");
        h.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(same_origin_json(&h).is_err(), "another origin");
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(same_origin_json(&h).is_err(), "another site");
    }

    #[test]
    fn short_or_odd_tokens_are_refused() {
        assert!(ConsoleConfig::new("short".into()).is_err());
        assert!(ConsoleConfig::new("has a space in it, long enough".into()).is_err());
        assert!(ConsoleConfig::new("0123456789abcdef".into()).is_ok());
    }

    #[test]
    fn every_asset_the_page_loads_is_embedded() {
        let page = String::from_utf8_lossy(include_bytes!("assets/index.html")).to_string();
        for file in ["console.js", "console.css", "vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css"] {
            assert!(page.contains(&format!("assets/{file}")), "index.html does not load {file}");
            assert_eq!(asset(file).status(), StatusCode::OK, "{file}");
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
    }
}
