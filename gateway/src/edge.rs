//! The HTTP handler: routes every request, runs the static hooks, and either upgrades to a
//! WebSocket (after the room accepted the connection), forwards to the room's `on_request`, or
//! answers from `on_fetch`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use partyline::client_text::{self, ErrorRef};
use partyline::runtime::link::{close_code, ToRoom};
use partyline::web;
use partyline::{Before, Lobby, PartyFactory, Request, Response, RoomKey};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use crate::clients::{self, ClientSlot, TooMany};
use crate::links::Admission;
use crate::listener::Peer;
use crate::metrics::{Metrics, ADMIN_PREFIX};
use crate::paths::{self, Target};
use crate::router::RouteError;
use crate::socket::{self, SocketTask};
use crate::Inner;

/// Extra time a gateway waits for a room's answer to a connection beyond the handler limit
/// (on_start plus tags plus on_connect may each use it).
const ADMISSION_SLACK: Duration = Duration::from_secs(5);

pub(crate) type AxumResponse = axum::response::Response;

pub(crate) fn respond(res: Response) -> AxumResponse {
    res.map(Body::from)
}

pub(crate) fn text(status: StatusCode, body: impl Into<String>) -> AxumResponse {
    respond(web::text(status, body))
}

pub(crate) async fn handle(State(gw): State<Arc<Inner>>, req: http::Request<Body>) -> AxumResponse {
    let span = tracing::info_span!("http", otel.name = %req.method(), http.path = %req.uri().path());
    route_request(gw, req).instrument(span).await
}

async fn route_request(gw: Arc<Inner>, mut req: http::Request<Body>) -> AxumResponse {
    // Who the client is, in the headers parties read it from (forwarded headers believed only
    // from trusted proxies). Without a TCP peer (a router used without the listener) nothing
    // is known and nothing is claimed.
    let client = req.extensions().get::<Peer>().copied().map(|Peer(peer)| {
        let trusted = &gw.edge.trusted_proxies;
        let ip = clients::client_ip(peer.ip(), req.headers(), trusted);
        clients::set_client_headers(req.headers_mut(), peer.ip(), ip, trusted);
        ip
    });
    let path = req.uri().path().to_string();
    if let Some(admin) = path.strip_prefix(ADMIN_PREFIX) {
        if !gw.health.on_client_port() {
            return text(StatusCode::NOT_FOUND, client_text::NOT_FOUND);
        }
        return crate::admin::respond(&gw, admin).await;
    }
    match paths::parse(&path) {
        Target::Room { party, room } => {
            let Some(factory) = gw.parties.get(party) else {
                return text(StatusCode::NOT_FOUND, client_text::party_not_found(party));
            };
            if room.len() > gw.limits.max_room_id_bytes {
                return text(StatusCode::BAD_REQUEST, client_text::ROOM_ID_TOO_LONG);
            }
            let key = RoomKey::new(party, room);
            if is_upgrade(&req) {
                upgrade(gw, key, factory, req, client).await
            } else {
                request(gw, key, factory, req).await
            }
        }
        Target::MissingParty => text(StatusCode::BAD_REQUEST, client_text::NO_PARTY),
        Target::Fetch => {
            // A WebSocket outside any room: the main party's on_socket, when it takes them.
            let main = gw.parties.get("main").filter(|main| main.handles_sockets());
            match main {
                Some(main) if is_upgrade(&req) => crate::fetch_socket::upgrade(gw, main, req, client).await,
                _ => fetch(gw, req).await,
            }
        }
    }
}

fn is_upgrade(req: &http::Request<Body>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The absolute URL of a request, as PartyKit hands it to parties (`connection.uri`).
pub(crate) fn absolute_uri(parts: &http::request::Parts) -> http::Uri {
    let host = parts.headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("http://{host}{pq}").parse().unwrap_or_else(|_| parts.uri.clone())
}

pub(crate) fn lobby(gw: &Inner, party: &str, room: Option<&str>) -> Lobby {
    Lobby {
        id: room.map(str::to_string),
        party: party.to_string(),
        env: gw.env.clone(),
        parties: gw.lobby_parties.clone(),
    }
}

/// Runs a before-hook (timed as `name`): a request to go on with, or the response that ends it.
async fn before(
    gw: &Inner,
    name: &'static str,
    hook: futures::future::BoxFuture<'static, anyhow::Result<Before>>,
) -> Result<Request, AxumResponse> {
    let started = Instant::now();
    let outcome = hook.await;
    gw.metrics.hook(name, started);
    match outcome {
        Ok(Before::Continue(req)) => Ok(req),
        Ok(Before::Respond(res)) => Err(respond(res)),
        // PartyKit answers a throwing hook with 401; the error itself is for the log.
        Err(e) => {
            let r = ErrorRef::new();
            tracing::info!(hook = name, error_ref = %r, error = format!("{e:#}"), "a before-hook refused the request");
            Err(text(StatusCode::UNAUTHORIZED, r.tag(client_text::UNAUTHORIZED)))
        }
    }
}

/// `text` when it is one of the fixed client texts (what a node sends), else `instead`: whatever a
/// node of another version or a bug puts there stays out of the client's sight.
fn only_server_text<'a>(text: &'a str, instead: &'a str) -> &'a str {
    if client_text::is_server_text(text) {
        text
    } else {
        tracing::warn!(text, "a node sent a refusal text that is not a client text; answering with a fixed one");
        instead
    }
}

/// A 503 that asks the client to come back.
fn unavailable(body: &str) -> AxumResponse {
    let mut res = text(StatusCode::SERVICE_UNAVAILABLE, body);
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    res
}

/// The answer for a room that could not be reached. What went wrong inside the cluster (node
/// ids, addresses, error chains) goes to the log, not to the client.
fn route_error(key: &RoomKey, e: RouteError) -> AxumResponse {
    match e {
        RouteError::UnknownParty(p) => text(StatusCode::NOT_FOUND, client_text::party_not_found(&p)),
        RouteError::Unavailable(why) => {
            tracing::warn!(room = %key, error = %why, "room unavailable");
            unavailable(client_text::TRY_AGAIN_LATER)
        }
        RouteError::Busy(why) => {
            tracing::info!(room = %key, reason = %why, "room busy");
            unavailable(only_server_text(&why, client_text::OVERLOADED))
        }
    }
}

/// Reads a request's body (within the limit; 413 above it, 408 when it does not arrive within
/// the body timeout) and makes its URL absolute.
async fn read_request(gw: &Inner, req: http::Request<Body>) -> Result<Request, AxumResponse> {
    let (mut parts, body) = req.into_parts();
    let max = gw.limits.max_request_body_bytes;
    let read = http_body_util::Limited::new(body, max).collect();
    let body = match tokio::time::timeout(gw.edge.body_timeout, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(text(StatusCode::PAYLOAD_TOO_LARGE, client_text::BODY_TOO_LARGE)),
        Err(_) => {
            let mut res = text(StatusCode::REQUEST_TIMEOUT, client_text::BODY_TIMEOUT);
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return Err(res);
        }
    };
    parts.uri = absolute_uri(&parts);
    Ok(Request::from_parts(parts, body))
}

async fn request(
    gw: Arc<Inner>,
    key: RoomKey,
    factory: Arc<dyn PartyFactory>,
    req: http::Request<Body>,
) -> AxumResponse {
    let req = match read_request(&gw, req).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let hook = factory.on_before_request(req, lobby(&gw, &key.party, Some(&key.room)));
    let req = match before(&gw, "on_before_request", hook).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    Metrics::inc(&gw.metrics.room_requests);
    match gw.router.request(&key, req).await {
        Ok(res) => respond(res),
        Err(e) => route_error(&key, e),
    }
}

async fn fetch(gw: Arc<Inner>, req: http::Request<Body>) -> AxumResponse {
    let Some(main) = gw.parties.get("main") else {
        return text(StatusCode::NOT_FOUND, client_text::NOT_FOUND);
    };
    let req = match read_request(&gw, req).await {
        Ok(req) => req,
        Err(res) => return res,
    };
    let started = Instant::now();
    let res = main.on_fetch(req, lobby(&gw, "main", None)).await;
    gw.metrics.hook("on_fetch", started);
    match res {
        Some(res) => respond(res),
        None => text(StatusCode::NOT_FOUND, client_text::NOT_FOUND),
    }
}

/// The connection id a URL asks for (`?_pk=`): at most `max` bytes and UTF-8 once
/// percent-decoded, since it is kept (and often stored by parties) for the socket's life.
/// The error is the text of the 400 answer.
fn connection_id(uri: &http::Uri, max: usize) -> Result<Option<String>, &'static str> {
    let Some(raw) = uri.query().and_then(|q| web::query_param_raw(q, "_pk")) else { return Ok(None) };
    match web::percent_decode_utf8(raw) {
        Some(id) if id.len() <= max => Ok(Some(id)),
        Some(_) => Err(client_text::CONNECTION_ID_TOO_LONG),
        None => Err(client_text::CONNECTION_ID_NOT_UTF8),
    }
}

async fn upgrade(
    gw: Arc<Inner>,
    key: RoomKey,
    factory: Arc<dyn PartyFactory>,
    req: http::Request<Body>,
    client: Option<std::net::IpAddr>,
) -> AxumResponse {
    let (mut parts, _body) = req.into_parts();
    let (ws_key, on_upgrade) = match handshake(&mut parts) {
        Ok(h) => h,
        Err(res) => return *res,
    };
    if let Err(why) = connection_id(&parts.uri, gw.limits.max_connection_id_bytes) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    let slot = match admit(&gw, client) {
        Ok(slot) => slot,
        Err(res) => return *res,
    };
    parts.uri = absolute_uri(&parts);
    let req = Request::from_parts(parts, Bytes::new());
    let hook = factory.on_before_connect(req, lobby(&gw, &key.party, Some(&key.room)));
    let req = match before(&gw, "on_before_connect", hook).await {
        Ok(req) => req,
        Err(res) => {
            Metrics::inc(&gw.metrics.connections_refused);
            return res;
        }
    };
    // The hook may have rewritten the URL: the id is the one it left (checked again).
    let id = match connection_id(req.uri(), gw.limits.max_connection_id_bytes) {
        Ok(id) => id.filter(|id| !id.is_empty()).unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    let uri = req.uri().to_string();
    let sid = gw.next_sid.fetch_add(1, Ordering::Relaxed);
    let Some(attached) = gw.attach(&key, sid, id.clone(), uri.clone()) else {
        Metrics::inc(&gw.metrics.connections_refused);
        return unavailable(client_text::GATEWAY_FULL);
    };
    let connect = ToRoom::Connect { sid, id, uri, request: Box::new(req) };
    if let Err(e) = attached.link.send(connect).await {
        gw.detach(&attached.link, sid, None).await;
        return route_error(&key, e);
    }
    let wait = gw.limits.handler_timeout * 3 + ADMISSION_SLACK;
    let failed_reason = match tokio::time::timeout(wait, attached.admission).await {
        Ok(Ok(Admission::Accepted)) => None,
        Ok(Ok(Admission::Failed { reason })) => Some(reason),
        Ok(Ok(Admission::Refused { status, reason })) => {
            Metrics::inc(&gw.metrics.connections_refused);
            gw.detach(&attached.link, sid, None).await;
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return text(status, only_server_text(&reason, client_text::TRY_AGAIN_LATER));
        }
        Ok(Err(_)) | Err(_) => {
            gw.detach(&attached.link, sid, Some("connection setup timed out".into())).await;
            return text(StatusCode::GATEWAY_TIMEOUT, client_text::CONNECT_TIMEOUT);
        }
    };
    if let Some(reason) = &failed_reason {
        // PartyKit's contract: the upgrade succeeds, then the socket closes with 1011 and why.
        attached
            .queue
            .close(close_code::INTERNAL_ERROR, only_server_text(reason, client_text::INTERNAL_ERROR).to_string());
    }
    let task = SocketTask { sid, link: attached.link.clone(), queue: attached.queue.clone(), client: slot };
    let config = socket::ws_config(gw.limits.max_message_bytes);
    let gw2 = gw.clone();
    // Only for a sampled trace: the socket's task runs for every frame it reads.
    let span = partyline::runtime::observe::frame_span(|| {
        let span = tracing::info_span!(parent: None, "socket", room = %key, sid);
        span.follows_from(tracing::Span::current());
        span
    });
    // The socket runs in a task of its own, spawned once the upgrade completed: the task that
    // waits for the upgrade ends then, so what a socket holds for its whole life is only the
    // socket task's state.
    let upgrade_span = span.clone();
    tokio::spawn(
        async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                    tokio::spawn(socket::run(gw2, ws, task).instrument(span));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade failed");
                    gw2.detach(&task.link, task.sid, Some(format!("upgrade failed: {e}"))).await;
                }
            }
        }
        .instrument(upgrade_span),
    );
    Metrics::inc(&gw.metrics.connections_accepted);
    switching_protocols(&ws_key)
}

/// Checks a WebSocket upgrade request: its key and the upgrade to complete, or the 400 answer.
pub(crate) fn handshake(
    parts: &mut http::request::Parts,
) -> Result<(HeaderValue, hyper::upgrade::OnUpgrade), Box<AxumResponse>> {
    let refuse = |why: &str| Err(Box::new(text(StatusCode::BAD_REQUEST, why)));
    let version_ok = parts.headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    if !version_ok {
        return refuse(client_text::WS_VERSION);
    }
    let Some(ws_key) = parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(client_text::WS_KEY);
    };
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return refuse(client_text::NOT_UPGRADABLE);
    };
    Ok((ws_key, on_upgrade))
}

/// Per client address: open sockets and connects per second (429 past either). The slot is
/// given back when dropped.
pub(crate) fn admit(gw: &Inner, client: Option<std::net::IpAddr>) -> Result<Option<ClientSlot>, Box<AxumResponse>> {
    match client.map(|ip| gw.clients.admit(ip)) {
        None => Ok(None),
        Some(Ok(slot)) => Ok(Some(slot)),
        Some(Err(too_many)) => {
            Metrics::inc(&gw.metrics.clients_refused);
            let why = match too_many {
                TooMany::Open(_) => client_text::TOO_MANY_CONNECTIONS,
                TooMany::Rate => client_text::TOO_MANY_CONNECTS,
            };
            let mut res = text(StatusCode::TOO_MANY_REQUESTS, why);
            res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Err(Box::new(res))
        }
    }
}

/// The 101 that completes a WebSocket upgrade with key `ws_key`.
pub(crate) fn switching_protocols(ws_key: &HeaderValue) -> AxumResponse {
    let mut res = http::Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(ws_key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    res
}
