//! HTTP types for `on_request` and the static hooks: `http` crate requests and responses with
//! the whole body in memory, plus small constructors for common responses.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

/// An HTTP request with its body read.
pub type Request = http::Request<Bytes>;
/// An HTTP response with its whole body.
pub type Response = http::Response<Bytes>;

/// The content type PartyKit gives a string body that names none.
pub const TEXT_PLAIN: &str = "text/plain;charset=UTF-8";

/// A `text/plain;charset=UTF-8` response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    with_type(status, TEXT_PLAIN, Bytes::from(body.into()))
}

/// An `application/json` response with `value` serialized.
pub fn json<T: serde::Serialize + ?Sized>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => with_type(status, "application/json", Bytes::from(body)),
        Err(e) => {
            let r = crate::client_text::ErrorRef::new();
            tracing::warn!(error_ref = %r, error = %e, "json encoding failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, r.tag(crate::client_text::INTERNAL_SERVER_ERROR))
        }
    }
}

/// A response with the given content type and body.
pub fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response {
    let mut res = http::Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

/// The query parameter `name` of a request, decoded as a form (`%XX` and `+`, bytes that are
/// not UTF-8 as U+FFFD); the first one wins.
pub fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    form_urlencoded::parse(uri.query()?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The raw (still percent-encoded) value of the first parameter `name` in a query string.
pub fn query_param_raw<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then_some(v)
    })
}

/// Decodes `%XX` escapes and `+` (as in form encoding); invalid escapes are kept as they are,
/// and bytes that do not form UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// Like [`percent_decode`], but `None` when the decoded bytes are not UTF-8.
pub fn percent_decode_utf8(s: &str) -> Option<String> {
    String::from_utf8(percent_decode_bytes(s)).ok()
}

/// The client's address as the gateway saw it (the `cf-connecting-ip` header it sets on every
/// request; a client cannot forge it, see `--trusted-proxies`).
pub fn client_ip<B>(req: &http::Request<B>) -> Option<std::net::IpAddr> {
    req.headers().get("cf-connecting-ip")?.to_str().ok()?.parse().ok()
}

fn percent_decode_bytes(s: &str) -> Vec<u8> {
    // `+` first, so an escaped `%2B` stays a plus; invalid escapes are kept as they are.
    percent_encoding::percent_decode_str(&s.replace('+', " ")).collect()
}

/// An error that carries the HTTP status it should answer with, for `on_request` and the
/// static hooks (PartyKit uses an error's `code` the same way).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HttpError {
    /// Status of the response.
    pub status: StatusCode,
    /// Body of the response.
    pub message: String,
}

impl HttpError {
    /// An error answered with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        HttpError { status, message: message.into() }
    }
}

/// The response an `on_request` error becomes: an [`HttpError`]'s own status and message (the
/// party's words); any other error is `default` with a fixed text and a reference, the error
/// itself going to the log ([`crate::client_text`]).
pub fn error_response(err: &anyhow::Error, default: StatusCode) -> Response {
    match err.downcast_ref::<HttpError>() {
        Some(e) => text(e.status, e.message.clone()),
        None => {
            let r = crate::client_text::ErrorRef::new();
            tracing::warn!(error_ref = %r, error = format!("{err:#}"), "request failed");
            text(default, r.tag(crate::client_text::INTERNAL_SERVER_ERROR))
        }
    }
}

/// Where the response of a deferred `on_request` goes (see [`deferred`]): the response, or the
/// handler's error (answered as an error returned by `on_request` is).
pub type ResponseSender = tokio::sync::oneshot::Sender<anyhow::Result<Response>>;

/// The mark a deferred response carries.
#[derive(Clone)]
struct DeferredMark(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<anyhow::Result<Response>>>>>);

/// A response that `on_request` returns before it has its answer, so the room goes on with its
/// next event (as a Durable Object's input gate lets other events in while a handler awaits
/// I/O). The answer is sent on the returned sender, later, from whatever event of the room
/// finishes it; it reaches the caller through the output gate like any response. A sender
/// dropped without an answer answers 500; an answer that takes longer than the handler time
/// limit (counted from `on_request`'s return) answers 500 too.
pub fn deferred() -> (ResponseSender, Response) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut res = Response::new(Bytes::new());
    res.extensions_mut().insert(DeferredMark(std::sync::Arc::new(std::sync::Mutex::new(Some(rx)))));
    (tx, res)
}

/// The receiver of a response made by [`deferred`], if `res` is one.
pub(crate) fn take_deferred(res: &mut Response) -> Option<tokio::sync::oneshot::Receiver<anyhow::Result<Response>>> {
    use crate::sync::Lock;
    let mark = res.extensions_mut().remove::<DeferredMark>()?;
    let rx = mark.0.locked().take();
    rx
}

/// Rewrites a request made with a path relative to a room (`/`, `/sub?q=1`) to the room's own
/// URL, as PartyKit's `stub.fetch(path)` does.
pub fn room_request(room: &crate::RoomKey, req: Request) -> Request {
    let (mut parts, body) = req.into_parts();
    let rel = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let rel = if rel == "/" { "" } else { rel };
    let uri = format!("http://partyline.internal/parties/{}/{}{}", room.party, room.room, rel);
    if let Ok(uri) = uri.parse() {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_param_decodes_and_takes_first() {
        let uri: http::Uri = "/parties/main/r?_pk=a%20b&x=1&_pk=second&e".parse().unwrap();
        assert_eq!(query_param(&uri, "_pk").as_deref(), Some("a b"));
        assert_eq!(query_param(&uri, "x").as_deref(), Some("1"));
        assert_eq!(query_param(&uri, "e").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "nope"), None);
    }

    #[test]
    fn percent_decode_keeps_bad_escapes() {
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41%62c"), "Abc");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode_utf8("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode_utf8("%C3%28"), None, "not UTF-8");
        assert_eq!(percent_decode("%C3%28"), "\u{FFFD}(");
    }
}
