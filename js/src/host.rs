//! The natives the prelude builds on (`globalThis.__partyline_native`): the room (connections,
//! broadcast, storage, alarms, other rooms), timers, outbound `fetch`, and the pieces of Web APIs
//! that are better done in Rust (URL parsing, UTF-8, digests, random bytes).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use http::{HeaderName, HeaderValue};
use partyline::room_socket::{RoomSocket, SocketEvent, SocketSender};
use partyline::sync::Lock;
use partyline::{ListOptions, Message, RoomKey};
use rquickjs::function::Opt;
use rquickjs::{Array, ArrayBuffer, Ctx, Function, Object, Value};
use sha2::Digest;
use tokio::sync::mpsc;

use crate::bridge::{Global, HostCall, RoomCall};
use crate::engine::{Host, Shared};

/// Tag bytes of stored JS values that are not plain JSON text.
const TAG_BYTES: u8 = 1;
const TAG_CLONE: u8 = 2;

/// The result of a host operation, turned into a JS value when it is delivered.
pub(crate) enum OpResult {
    /// Storage entries in key order.
    Entries(Vec<(String, Bytes)>),
    /// A count.
    Count(usize),
    /// An alarm time, if set.
    Alarm(Option<i64>),
    /// Nothing.
    Unit,
    /// An HTTP response (from `fetch` or another room).
    Response(Box<http::Response<Bytes>>, String),
    /// A socket to another room opened: its number.
    Socket(u64),
    /// The next event of a socket to another room (`None`: it ended without a close).
    SocketEvent(Option<SocketEvent>),
    /// The operation failed.
    Error(String),
}

/// Where outbound `fetch` may go, how long it may take, and which TLS roots it trusts.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    /// Allowed hosts: `*` for any, `example.com`, `*.example.com`, or `host:port`. Checked on
    /// every hop of a redirect chain.
    pub allow: Vec<String>,
    /// Time limit of one fetch (connect to last body byte, redirects included).
    pub timeout: Duration,
    /// PEM files of CA certificates `https` fetches trust besides Mozilla's roots (the
    /// `webpki-roots` set), e.g. a private CA or a development certificate. Read when the first
    /// `https` fetch needs them.
    pub extra_roots: Vec<PathBuf>,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy { allow: vec!["*".into()], timeout: Duration::from_secs(30), extra_roots: Vec::new() }
    }
}

impl FetchPolicy {
    /// Whether `host` (with `port`) may be fetched.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let with_port = format!("{host}:{port}");
        self.allow.iter().any(|a| {
            a == "*"
                || a.eq_ignore_ascii_case(host)
                || a.eq_ignore_ascii_case(&with_port)
                || a.strip_prefix("*.").is_some_and(|suffix| {
                    host.len() > suffix.len() + 1
                        && host.to_ascii_lowercase().ends_with(&format!(".{}", suffix.to_ascii_lowercase()))
                })
        })
    }
}

/// Throws a JS `Error` with `msg`.
fn throw(ctx: &Ctx<'_>, msg: impl std::fmt::Display) -> rquickjs::Error {
    match rquickjs::Exception::from_message(ctx.clone(), &msg.to_string()) {
        Ok(e) => ctx.throw(e.into_value()),
        Err(e) => e,
    }
}

/// Bytes from a string whose characters are all below 256 (how the prelude passes bytes).
pub(crate) fn latin1(s: &str) -> Vec<u8> {
    s.chars().map(|c| c as u32 as u8).collect()
}

fn pairs<'js>(ctx: &Ctx<'js>, pairs: impl Iterator<Item = (String, String)>) -> rquickjs::Result<Value<'js>> {
    let arr = Array::new(ctx.clone())?;
    for (i, (k, v)) in pairs.enumerate() {
        let pair = Array::new(ctx.clone())?;
        pair.set(0, k)?;
        pair.set(1, v)?;
        arr.set(i, pair)?;
    }
    Ok(arr.into_value())
}

fn header_pairs(headers: &http::HeaderMap) -> impl Iterator<Item = (String, String)> + '_ {
    headers.iter().map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
}

/// A request as the prelude's `requestIn` takes it.
pub(crate) fn request_value<'js>(ctx: &Ctx<'js>, req: partyline::Request) -> rquickjs::Result<Value<'js>> {
    let (parts, body) = req.into_parts();
    let obj = Object::new(ctx.clone())?;
    obj.set("method", parts.method.as_str())?;
    obj.set("url", parts.uri.to_string())?;
    obj.set("headers", pairs(ctx, header_pairs(&parts.headers))?)?;
    if body.is_empty() && (parts.method == http::Method::GET || parts.method == http::Method::HEAD) {
        obj.set("body", Value::new_null(ctx.clone()))?;
    } else {
        obj.set("body", ArrayBuffer::new(ctx.clone(), body.to_vec())?)?;
    }
    Ok(obj.into_value())
}

fn response_value<'js>(ctx: &Ctx<'js>, res: http::Response<Bytes>, url: String) -> rquickjs::Result<Value<'js>> {
    let (parts, body) = res.into_parts();
    let obj = Object::new(ctx.clone())?;
    obj.set("status", parts.status.as_u16())?;
    obj.set("statusText", parts.status.canonical_reason().unwrap_or(""))?;
    obj.set("headers", pairs(ctx, header_pairs(&parts.headers))?)?;
    let null_body = parts.status == http::StatusCode::NO_CONTENT || parts.status == http::StatusCode::NOT_MODIFIED;
    if null_body {
        obj.set("body", Value::new_null(ctx.clone()))?;
    } else {
        obj.set("body", ArrayBuffer::new(ctx.clone(), body.to_vec())?)?;
    }
    obj.set("url", url)?;
    obj.set("redirected", parts.extensions.get::<crate::fetch::Redirected>().is_some())?;
    Ok(obj.into_value())
}

/// A stored value as `[key, kind, payload]` for the prelude's `decodeValue`.
fn entry_value<'js>(ctx: &Ctx<'js>, key: String, v: &Bytes) -> rquickjs::Result<Value<'js>> {
    let arr = Array::new(ctx.clone())?;
    arr.set(0, key)?;
    match v.first() {
        Some(&TAG_BYTES) => {
            arr.set(1, 1)?;
            arr.set(2, ArrayBuffer::new(ctx.clone(), v[1..].to_vec())?)?;
        }
        Some(&TAG_CLONE) => {
            arr.set(1, 2)?;
            arr.set(2, String::from_utf8_lossy(&v[1..]).into_owned())?;
        }
        _ => {
            arr.set(1, 0)?;
            arr.set(2, String::from_utf8_lossy(v).into_owned())?;
        }
    }
    Ok(arr.into_value())
}

/// The JS value of a finished operation.
pub(crate) fn op_value<'js>(ctx: &Ctx<'js>, result: OpResult) -> rquickjs::Result<Value<'js>> {
    Ok(match result {
        OpResult::Entries(entries) => {
            let arr = Array::new(ctx.clone())?;
            for (i, (k, v)) in entries.into_iter().enumerate() {
                arr.set(i, entry_value(ctx, k, &v)?)?;
            }
            arr.into_value()
        }
        OpResult::Count(n) => Value::new_number(ctx.clone(), n as f64),
        OpResult::Alarm(Some(at)) => Value::new_number(ctx.clone(), at as f64),
        OpResult::Alarm(None) | OpResult::Unit => Value::new_null(ctx.clone()),
        OpResult::Response(res, url) => response_value(ctx, *res, url)?,
        OpResult::Socket(id) => Value::new_number(ctx.clone(), id as f64),
        OpResult::SocketEvent(event) => socket_event_value(ctx, event)?,
        OpResult::Error(msg) => return Err(throw(ctx, msg)),
    })
}

/// A socket event as the prelude takes it: `[0, text]`, `[1, ArrayBuffer]` or
/// `[2, code, reason]`; a socket that ended without a close closed abnormally (1006).
fn socket_event_value<'js>(ctx: &Ctx<'js>, event: Option<SocketEvent>) -> rquickjs::Result<Value<'js>> {
    let arr = Array::new(ctx.clone())?;
    match event {
        Some(SocketEvent::Message(Message::Text(t))) => {
            arr.set(0, 0)?;
            arr.set(1, t.as_str())?;
        }
        Some(SocketEvent::Message(Message::Binary(b))) => {
            arr.set(0, 1)?;
            arr.set(1, ArrayBuffer::new(ctx.clone(), b.to_vec())?)?;
        }
        Some(SocketEvent::Close { code, reason }) => {
            arr.set(0, 2)?;
            arr.set(1, code)?;
            arr.set(2, reason)?;
        }
        None => {
            arr.set(0, 2)?;
            arr.set(1, ABNORMAL_CLOSURE)?;
            arr.set(2, "")?;
        }
    }
    Ok(arr.into_value())
}

/// The close code of a socket that ended without a close frame.
const ABNORMAL_CLOSURE: u16 = 1006;

/// The sockets a room opened to other rooms, by number: the sending half, and the receiving
/// half that `socketRecv` operations take turns on.
#[derive(Default)]
pub(crate) struct Sockets {
    next: u64,
    open: HashMap<u64, (SocketSender, SocketEvents)>,
}

impl Sockets {
    /// Adds a socket (to another room, or the client socket of `onSocket`): its number.
    pub(crate) fn add(&mut self, socket: RoomSocket) -> u64 {
        self.next += 1;
        let events = Arc::new(tokio::sync::Mutex::new(socket.events));
        self.open.insert(self.next, (socket.sender, events));
        self.next
    }

    /// How many are open.
    pub(crate) fn count(&self) -> usize {
        self.open.len()
    }
}

/// The events of a socket to another room, read by one `socketRecv` at a time.
type SocketEvents = Arc<tokio::sync::Mutex<mpsc::Receiver<SocketEvent>>>;

/// Builds an HTTP request from the prelude's `requestOut` object.
fn request_from(obj: &Object<'_>) -> Result<partyline::Request, String> {
    let get = |k: &str| obj.get::<_, Option<String>>(k).map_err(|e| e.to_string());
    let method = get("method")?.unwrap_or_else(|| "GET".into());
    let url = get("url")?.unwrap_or_default();
    let headers: Vec<Vec<String>> = obj.get("headers").map_err(|e| e.to_string())?;
    build_request(&method, &url, headers, get("text")?, get("latin1")?)
}

fn build_request(
    method: &str,
    url: &str,
    headers: Vec<Vec<String>>,
    text: Option<String>,
    latin1_body: Option<String>,
) -> Result<partyline::Request, String> {
    let body = match (text, latin1_body) {
        (Some(t), _) => Bytes::from(t),
        (None, Some(b)) => Bytes::from(latin1(&b)),
        (None, None) => Bytes::new(),
    };
    let mut req = http::Request::new(body);
    *req.method_mut() =
        http::Method::from_bytes(method.as_bytes()).map_err(|_| format!("invalid method {method:?}"))?;
    *req.uri_mut() = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    for pair in headers {
        if let [k, v] = pair.as_slice() {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("invalid header name {k:?}"))?;
            let value = HeaderValue::from_str(v).map_err(|_| format!("invalid value for header {k}"))?;
            req.headers_mut().append(name, value);
        }
    }
    Ok(req)
}

fn url_parts(u: &url::Url) -> Vec<String> {
    let host = match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    };
    let origin = u.origin().ascii_serialization();
    let search = match u.query() {
        Some(q) if !q.is_empty() => format!("?{q}"),
        _ => String::new(),
    };
    let hash = match u.fragment() {
        Some(f) if !f.is_empty() => format!("#{f}"),
        _ => String::new(),
    };
    vec![
        u.as_str().to_string(),
        format!("{}:", u.scheme()),
        u.username().to_string(),
        u.password().unwrap_or("").to_string(),
        host,
        u.host_str().unwrap_or("").to_string(),
        u.port().map(|p| p.to_string()).unwrap_or_default(),
        u.path().to_string(),
        search,
        hash,
        if origin == "null" { "null".to_string() } else { origin },
    ]
}

fn set_url_part(href: &str, part: &str, value: &str) -> Option<Vec<String>> {
    let mut u = url::Url::parse(href).ok()?;
    let strip = |v: &str, p: char| v.strip_prefix(p).unwrap_or(v).to_string();
    match part {
        "protocol" => {
            let _ = u.set_scheme(value.trim_end_matches(':'));
        }
        "username" => {
            let _ = u.set_username(value);
        }
        "password" => {
            let _ = u.set_password(Some(value).filter(|v| !v.is_empty()));
        }
        "host" => {
            let (h, p) = value.rsplit_once(':').map_or((value, None), |(h, p)| (h, p.parse::<u16>().ok()));
            let _ = u.set_host(Some(h));
            let _ = u.set_port(p);
        }
        "hostname" => {
            let _ = u.set_host(Some(value));
        }
        "port" => {
            let _ = u.set_port(value.parse::<u16>().ok());
        }
        "pathname" => u.set_path(value),
        "search" => {
            let q = strip(value, '?');
            u.set_query(Some(q.as_str()).filter(|q| !q.is_empty()));
        }
        "hash" => {
            let f = strip(value, '#');
            u.set_fragment(Some(f.as_str()).filter(|f| !f.is_empty()));
        }
        _ => return None,
    }
    Some(url_parts(&u))
}

/// Installs `globalThis.__partyline_native`: the realm's natives ([`HostCall`]). Timers and
/// `fetch` belong to the room whose code calls them ([`Shared::current`]).
pub(crate) fn install<'js>(ctx: &Ctx<'js>, shared: Arc<Shared>) -> rquickjs::Result<()> {
    let n = Object::new(ctx.clone())?;
    let label = shared.label.clone();
    n.set(
        HostCall::Log.name(),
        Function::new(ctx.clone(), move |level: i32, msg: String| match level {
            0 => tracing::trace!(target: "party", party = %label, "{msg}"),
            1 => tracing::debug!(target: "party", party = %label, "{msg}"),
            2 => tracing::info!(target: "party", party = %label, "{msg}"),
            3 => tracing::warn!(target: "party", party = %label, "{msg}"),
            _ => tracing::error!(target: "party", party = %label, "{msg}"),
        })?,
    )?;
    n.set(
        HostCall::Now.name(),
        Function::new(ctx.clone(), || crate::engine::epoch().elapsed().as_secs_f64() * 1000.0)?,
    )?;
    let sh = shared.clone();
    n.set(
        HostCall::SetTimer.name(),
        Function::new(ctx.clone(), move |id: f64, ms: f64| {
            if let Some(h) = sh.current() {
                h.set_timer(id as u64, ms);
            }
        })?,
    )?;
    // A timer is cleared wherever it was set: any room's code may clear one it can see.
    let sh = shared.clone();
    n.set(
        HostCall::ClearTimer.name(),
        Function::new(ctx.clone(), move |id: f64| {
            if let Some(h) = sh.current() {
                h.clear_timer(id as u64);
            }
        })?,
    )?;
    n.set(
        HostCall::Utf8Encode.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: String| ArrayBuffer::new(ctx, s.into_bytes()))?,
    )?;
    n.set(
        HostCall::Utf8Decode.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: String, fatal: bool| {
            let bytes = latin1(&s);
            match String::from_utf8(bytes) {
                Ok(s) => Ok(s),
                Err(_) if fatal => Err(throw(&ctx, "The encoded data was not valid for encoding utf-8")),
                Err(e) => Ok(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            }
        })?,
    )?;
    n.set(
        HostCall::RandomBytes.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, len: usize| {
            let mut buf = vec![0u8; len];
            getrandom::fill(&mut buf).map_err(|e| throw(&ctx, e))?;
            ArrayBuffer::new(ctx, buf)
        })?,
    )?;
    n.set(HostCall::Uuid.name(), Function::new(ctx.clone(), || uuid::Uuid::new_v4().to_string())?)?;
    n.set(
        HostCall::Digest.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, alg: String, data: String| {
            let data = latin1(&data);
            let out: Vec<u8> = match alg.as_str() {
                "sha1" => sha1::Sha1::digest(&data).to_vec(),
                "sha256" => sha2::Sha256::digest(&data).to_vec(),
                "sha384" => sha2::Sha384::digest(&data).to_vec(),
                "sha512" => sha2::Sha512::digest(&data).to_vec(),
                other => return Err(throw(&ctx, format!("unsupported digest {other}"))),
            };
            ArrayBuffer::new(ctx, out)
        })?,
    )?;
    n.set(
        HostCall::ParseUrl.name(),
        Function::new(ctx.clone(), |input: String, base: Opt<Option<String>>| {
            let parsed = match base.0.flatten() {
                Some(b) => url::Url::parse(&b).and_then(|b| b.join(&input)),
                None => url::Url::parse(&input),
            };
            parsed.ok().map(|u| url_parts(&u))
        })?,
    )?;
    n.set(
        HostCall::SetUrl.name(),
        Function::new(ctx.clone(), |href: String, part: String, value: String| set_url_part(&href, &part, &value))?,
    )?;
    let sh = shared.clone();
    n.set(
        HostCall::Fetch.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, req: Object<'js>| {
            let mode = req.get::<_, Option<String>>("redirect")?.unwrap_or_else(|| "follow".into());
            let mode = crate::fetch::RedirectMode::parse(&mode).map_err(|e| throw(&ctx, e))?;
            let req = request_from(&req).map_err(|e| throw(&ctx, e))?;
            let h = sh.current().ok_or_else(|| throw(&ctx, "fetch() outside of any room's code"))?;
            h.op(&ctx, crate::fetch::fetch(sh.fetch.clone(), req, mode).boxed())
        })?,
    )?;
    crate::crypto::install(ctx, &n)?;
    crate::wasm::install(ctx, &n, &shared)?;
    ctx.globals().set(Global::Natives.name(), n)?;
    Ok(())
}

/// The natives of one room (or static hook call) on its scope, `s.R` ([`RoomCall`]).
pub(crate) fn room_natives<'js>(ctx: &Ctx<'js>, host: &Arc<Host>) -> rquickjs::Result<Object<'js>> {
    let n = Object::new(ctx.clone())?;
    install_room(ctx, &n, host)?;
    install_block(ctx, &n, host)?;
    let h = host.clone();
    n.set(RoomCall::Settled.name(), Function::new(ctx.clone(), move || h.settled())?)?;
    Ok(n)
}

fn install_room<'js>(ctx: &Ctx<'js>, n: &Object<'js>, host: &Arc<Host>) -> rquickjs::Result<()> {
    let h = host.clone();
    n.set(
        RoomCall::StorageGet.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, keys: Vec<String>| {
            let storage = h.room()?.storage().clone();
            h.storage_op(
                &ctx,
                async move {
                    match storage.get_many(&keys).await {
                        Ok(map) => OpResult::Entries(map.into_iter().collect()),
                        Err(e) => OpResult::Error(e.to_string()),
                    }
                }
                .boxed(),
            )
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::StoragePut.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, entries: Vec<Array<'js>>| {
            let storage = h.room()?.storage().clone();
            let mut batch = Vec::with_capacity(entries.len());
            for e in entries {
                let key: String = e.get(0)?;
                let kind: i32 = e.get(1)?;
                let payload: String = e.get(2)?;
                let bytes = match kind {
                    1 => {
                        let raw = latin1(&payload);
                        let mut v = Vec::with_capacity(raw.len() + 1);
                        v.push(TAG_BYTES);
                        v.extend_from_slice(&raw);
                        v
                    }
                    2 => {
                        let mut v = Vec::with_capacity(payload.len() + 1);
                        v.push(TAG_CLONE);
                        v.extend_from_slice(payload.as_bytes());
                        v
                    }
                    _ => payload.into_bytes(),
                };
                // The limit applies to the value; the one tag byte is not counted.
                let len = if kind == 0 { bytes.len() } else { bytes.len() - 1 };
                if len > h.max_value_bytes {
                    return Err(throw(
                        &ctx,
                        format!("Values cannot be larger than {} bytes (key {key:?})", h.max_value_bytes),
                    ));
                }
                batch.push((key, Bytes::from(bytes)));
            }
            let put = storage.put_many(batch);
            match put.now_or_never() {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(throw(&ctx, e)),
                // Only a put that may take the room past its storage quota waits on the store
                // (for the previous values of keys the room never read).
                None => Err(throw(
                    &ctx,
                    "storage put may exceed the room's storage quota: read the keys it replaces first, or delete data",
                )),
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::StorageDelete.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, keys: Vec<String>| {
            let storage = h.room()?.storage().clone();
            h.storage_op(
                &ctx,
                async move {
                    match storage.delete_many(&keys).await {
                        Ok(n) => OpResult::Count(n),
                        Err(e) => OpResult::Error(e.to_string()),
                    }
                }
                .boxed(),
            )
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::StorageDeleteAll.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| {
            let storage = h.room()?.storage().clone();
            match storage.delete_all().now_or_never() {
                Some(Ok(())) | None => Ok(()),
                Some(Err(e)) => Err(throw(&ctx, e)),
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::StorageList.name(),
        Function::new(
            ctx.clone(),
            move |ctx: Ctx<'js>,
                  start: Option<String>,
                  start_after: Option<String>,
                  end: Option<String>,
                  prefix: Option<String>,
                  reverse: bool,
                  limit: Option<f64>| {
                let storage = h.room()?.storage().clone();
                let opts = ListOptions { start, start_after, end, prefix, reverse, limit: limit.map(|l| l as usize) };
                h.storage_op(
                    &ctx,
                    async move {
                        match storage.list(opts).await {
                            Ok(entries) => OpResult::Entries(entries),
                            Err(e) => OpResult::Error(e.to_string()),
                        }
                    }
                    .boxed(),
                )
            },
        )?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::GetAlarm.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| {
            let storage = h.room()?.storage().clone();
            h.storage_op(
                &ctx,
                async move {
                    match storage.get_alarm().await {
                        Ok(a) => OpResult::Alarm(a),
                        Err(e) => OpResult::Error(e.to_string()),
                    }
                }
                .boxed(),
            )
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::SetAlarm.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, at: f64| {
            let storage = h.room()?.storage().clone();
            match storage.set_alarm(at as i64).now_or_never() {
                Some(Ok(())) | None => Ok(()),
                Some(Err(e)) => Err(throw(&ctx, e)),
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::DeleteAlarm.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| {
            let storage = h.room()?.storage().clone();
            match storage.delete_alarm().now_or_never() {
                Some(Ok(())) | None => Ok(()),
                Some(Err(e)) => Err(throw(&ctx, e)),
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::StorageSync.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>| {
            let storage = h.room()?.storage().clone();
            h.storage_op(
                &ctx,
                async move {
                    match storage.sync().await {
                        Ok(()) => OpResult::Unit,
                        Err(e) => OpResult::Error(e.to_string()),
                    }
                }
                .boxed(),
            )
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::ConnUri.name(),
        Function::new(ctx.clone(), move |id: String| h.conn(&id).map(|c| c.uri().to_string()))?,
    )?;
    let h = host.clone();
    n.set(RoomCall::ConnTags.name(), Function::new(ctx.clone(), move |id: String| h.conn(&id).map(|c| c.tags()))?)?;
    let h = host.clone();
    n.set(
        RoomCall::ConnState.name(),
        Function::new(ctx.clone(), move |id: String| {
            h.conn(&id).and_then(|c| c.state_bytes()).map(|b| String::from_utf8_lossy(&b).into_owned())
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::SetConnState.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, id: String, json: Option<String>| {
            let Some(conn) = h.conn(&id) else { return Ok(()) };
            match json {
                None => {
                    conn.clear_state();
                    Ok(())
                }
                Some(json) => {
                    let raw = serde_json::value::RawValue::from_string(json).map_err(|e| throw(&ctx, e))?;
                    conn.set_state(&*raw).map_err(|e| throw(&ctx, e))
                }
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::ConnList.name(),
        Function::new(ctx.clone(), move |tag: Opt<Option<String>>| -> rquickjs::Result<Vec<Vec<String>>> {
            let room = h.room()?;
            let conns = room.get_connections(tag.0.flatten().as_deref());
            Ok(conns
                .into_iter()
                .map(|c| {
                    h.remember(&c);
                    vec![c.id().to_string(), c.uri().to_string()]
                })
                .collect())
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::Send.name(),
        Function::new(ctx.clone(), move |id: String, data: String, binary: bool| {
            if let Some(conn) = h.conn(&id) {
                conn.send(message(data, binary));
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::Close.name(),
        Function::new(ctx.clone(), move |id: String, code: f64, reason: String| {
            if let Some(conn) = h.conn(&id) {
                conn.close(code as u16, &partyline::runtime::link::close_reason(&reason));
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::Broadcast.name(),
        Function::new(ctx.clone(), move |data: String, binary: bool, without: Opt<Option<Vec<String>>>| {
            let room = h.room()?;
            let without = without.0.flatten().unwrap_or_default();
            let refs: Vec<&str> = without.iter().map(String::as_str).collect();
            room.broadcast_without(message(data, binary), &refs);
            Ok::<(), rquickjs::Error>(())
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::PartyFetch.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, party: String, room: String, req: Object<'js>| {
            let req = request_from(&req).map_err(|e| throw(&ctx, e))?;
            let stub = h.parties.locked().get(&party, &room);
            let key = RoomKey::new(&party, &room);
            h.op(
                &ctx,
                async move {
                    match stub.fetch(req).await {
                        Ok(res) => OpResult::Response(Box::new(res), format!("{key}")),
                        Err(e) => OpResult::Error(format!("{e:#}")),
                    }
                }
                .boxed(),
            )
        })?,
    )?;
    install_sockets(ctx, n, host)
}

/// Sockets to other rooms. Their events reach the prelude as host operations (`socketRecv`, one
/// at a time), so they run between the room's other events like any completion.
fn install_sockets<'js>(ctx: &Ctx<'js>, n: &Object<'js>, host: &Arc<Host>) -> rquickjs::Result<()> {
    let h = host.clone();
    n.set(
        RoomCall::PartySocket.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, party: String, room: String, id: String, req: Object<'js>| {
            // Static hooks have no events of their own to run the socket's listeners as.
            h.room()?;
            let req = request_from(&req).map_err(|e| throw(&ctx, e))?;
            let stub = h.parties.locked().get(&party, &room);
            let weak = Arc::downgrade(&h);
            h.op(
                &ctx,
                async move {
                    let socket = match stub.socket(&id, req).await {
                        Ok(socket) => socket,
                        Err(e) => return OpResult::Error(format!("{e:#}")),
                    };
                    // The room may have gone meanwhile: the socket is then dropped, closed.
                    let Some(h) = weak.upgrade() else { return OpResult::Error("the room stopped".into()) };
                    let n = h.sockets.locked().add(socket);
                    OpResult::Socket(n)
                }
                .boxed(),
            )
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::SocketRecv.name(),
        Function::new(ctx.clone(), move |ctx: Ctx<'js>, socket: f64| {
            let events = h.sockets.locked().open.get(&(socket as u64)).map(|(_, events)| events.clone());
            let Some(events) = events else {
                return Err(throw(&ctx, "this socket is closed"));
            };
            h.op(&ctx, async move { OpResult::SocketEvent(events.lock().await.recv().await) }.boxed())
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::SocketSend.name(),
        Function::new(ctx.clone(), move |socket: f64, data: String, binary: bool| {
            if let Some((sender, _)) = h.sockets.locked().open.get(&(socket as u64)) {
                sender.send(SocketEvent::Message(message(data, binary)));
            }
        })?,
    )?;
    let h = host.clone();
    n.set(
        RoomCall::SocketClose.name(),
        Function::new(ctx.clone(), move |socket: f64, code: u16, reason: String| {
            if let Some((sender, _)) = h.sockets.locked().open.remove(&(socket as u64)) {
                sender.send(SocketEvent::Close { code, reason });
            }
        })?,
    )?;
    Ok(())
}

fn message(data: String, binary: bool) -> Message {
    if binary {
        Message::Binary(Bytes::from(latin1(&data)))
    } else {
        Message::from(data)
    }
}

/// `blockConcurrencyWhile`'s hold on the room's input gate.
fn install_block<'js>(ctx: &Ctx<'js>, n: &Object<'js>, host: &Arc<Host>) -> rquickjs::Result<()> {
    let h = host.clone();
    n.set(RoomCall::BlockBegin.name(), Function::new(ctx.clone(), move || h.block_begin() as f64)?)?;
    let h = host.clone();
    n.set(RoomCall::BlockEnd.name(), Function::new(ctx.clone(), move |token: f64| h.block_end(token as u64))?)?;
    Ok(())
}
