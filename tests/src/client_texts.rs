//! What clients may read in a close reason or an HTTP error body (issue 22): a server text
//! ([`partyline::client_text`]: a fixed, documented text, optionally with ` (ref xxxxxxxx)`,
//! or `Party <name> not found`), an empty text, or a text a party of this repository chooses
//! itself ([`PARTY_TEXTS`]). Anything else (an error chain, a storage or lease error, a node id
//! or address) leaked from inside the server.
//!
//! The harness holds every close and error body its clients receive against these checks: the
//! WebSocket test client ([`crate::Client`]) and the raw HTTP helpers ([`crate::http()`](fn@crate::http),
//! [`crate::raw_upgrade`], [`crate::close_payload`]) panic at a leak, so the test fails where it
//! happened; the load clients of the fault scenarios and the chaos run count them
//! ([`crate::load::LoadReport::undocumented_texts`]) as a category of findings
//! ([`crate::checks::Category::UndocumentedText`]).

use partyline::client_text::is_server_text;

/// Texts the repository's own test and example parties choose themselves (their own
/// `conn.close(code, reason)`, a `Response` they return, an `HttpError`), which reach clients
/// unchanged. A `*` stands for any run of characters (a size, a detail). The examples' and the
/// JS example project's `Unauthorized` (401) and `Not found` (404) are the same words as the
/// server's texts, so they need no entry.
pub const PARTY_TEXTS: &[&str] = &[
    // tests/src/parties.rs, `faulty`: its `close` command closes the sender with 4000 `bye`.
    // (tests/tests/limits.rs's raw client also closes with 4001 `bye`, which the server echoes.)
    "bye",
    // tests/src/parties.rs, `faulty`: `GET .../error` returns a 418 `HttpError`.
    "asked to fail",
    // tests/src/parties.rs, `yjs-auth`: `on_before_connect` answers 401 without `?token=`.
    "a token is required",
    // examples/src/chat.rs: 400 for a POST whose body is not a JSON string.
    "The body must be a JSON string: the message to post, e.g. \"hello\"",
    // examples/src/{chat,counter,private}.rs, yjs/src/party.rs, examples/partykit/src/server.ts:
    // 405 for a method they do not serve.
    "Method not allowed",
    // yjs/src/batch.rs (`BatchError`, closes with 1009 or 1002) and yjs/src/room.rs (a document
    // over the frame limit, 1009): the Yjs party's protocol errors.
    "batch of * bytes is over the limit of *",
    "malformed batch marker: *",
    "inconsistent batch: *",
    "the document is * bytes, over the frame limit of *",
];

/// Whether `text` is one of [`PARTY_TEXTS`].
pub fn is_party_text(text: &str) -> bool {
    PARTY_TEXTS.iter().any(|pattern| matches_pattern(pattern, text))
}

/// Whether a client may receive `text`: empty, a server text, or a party's own.
pub fn is_documented(text: &str) -> bool {
    text.is_empty() || is_server_text(text) || is_party_text(text)
}

/// A close frame a client received: `Err` naming the code and the reason when the reason is
/// not documented.
pub fn check_close(code: u16, reason: &str) -> Result<(), String> {
    if is_documented(reason) {
        Ok(())
    } else {
        Err(format!("a client received close {code} with an undocumented reason: {reason:?}"))
    }
}

/// An HTTP answer a client received: `Err` naming the status and the body when an error
/// (status 400 and above) has an undocumented body. Bodies of other answers are the party's.
pub fn check_body(status: u16, body: &str) -> Result<(), String> {
    if status < 400 || is_documented(body) {
        Ok(())
    } else {
        Err(format!("a client received HTTP {status} with an undocumented body: {body:?}"))
    }
}

/// The body of a refused WebSocket upgrade as tungstenite reports it (`Error::Http`), when it
/// is whole: tungstenite keeps what arrived with the response head, which may be part of the
/// body only, so a body is returned only when its `Content-Length` says it is all there.
pub fn refused_upgrade_body(res: &tokio_tungstenite::tungstenite::http::Response<Option<Vec<u8>>>) -> Option<String> {
    let body = res.body().as_deref().unwrap_or_default();
    let length: usize = res.headers().get("content-length")?.to_str().ok()?.trim().parse().ok()?;
    (length == body.len()).then(|| String::from_utf8_lossy(body).into_owned())
}

/// `text` against `pattern`, where `*` matches any run of characters.
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use partyline::client_text::{self, ErrorRef};

    use super::*;

    #[test]
    fn a_leaked_storage_error_is_refused() {
        let leak = "room storage failed: write refused: lease 823 is no longer held at epoch 1796527189502";
        let err = check_close(1012, leak).unwrap_err();
        assert!(err.contains("close 1012") && err.contains("undocumented reason") && err.contains(leak), "{err}");
        let err = check_body(503, leak).unwrap_err();
        assert!(err.contains("HTTP 503") && err.contains(leak), "{err}");
        assert!(check_close(1011, "on_connect refused this connection").is_err(), "a party's error chain");
        assert!(check_body(500, "asked to panic in on_request").is_err());
        assert!(check_close(1011, "internal error (ref xyz)").is_err(), "not a reference");
        assert!(check_close(1012, "room moved to node-2").is_err(), "a fixed text with more after it");
    }

    #[test]
    fn a_referenced_internal_error_is_accepted() {
        let reason = ErrorRef::new().tag(client_text::INTERNAL_ERROR);
        assert_eq!(check_close(1011, &reason), Ok(()));
        assert_eq!(check_close(1012, &ErrorRef::new().tag(client_text::ROOM_UNAVAILABLE)), Ok(()));
        assert_eq!(check_body(500, &ErrorRef::new().tag(client_text::INTERNAL_SERVER_ERROR)), Ok(()));
        assert_eq!(check_body(401, &ErrorRef::new().tag(client_text::UNAUTHORIZED)), Ok(()));
        assert_eq!(check_close(1012, client_text::ROOM_MOVED), Ok(()));
        assert_eq!(check_body(404, &client_text::party_not_found("nope")), Ok(()));
        assert_eq!(check_close(1005, ""), Ok(()), "no reason");
        assert_eq!(check_body(404, ""), Ok(()));
    }

    #[test]
    fn the_parties_own_texts_are_accepted_and_only_error_bodies_are_checked() {
        assert_eq!(check_close(4000, "bye"), Ok(()));
        assert_eq!(check_body(418, "asked to fail"), Ok(()));
        assert_eq!(check_body(401, "a token is required"), Ok(()));
        assert_eq!(check_body(405, "Method not allowed"), Ok(()));
        assert_eq!(check_close(1009, "batch of 9000000 bytes is over the limit of 8388608"), Ok(()));
        assert_eq!(check_close(1002, "malformed batch marker: no id"), Ok(()));
        assert_eq!(check_close(1009, "the document is 2000000 bytes, over the frame limit of 1048576"), Ok(()));
        assert!(check_close(1009, "batch of 9000000 bytes").is_err(), "a pattern matches whole");
        assert!(check_close(4000, "bye bye").is_err());
        assert_eq!(check_body(200, "anything a party answers"), Ok(()));
        assert_eq!(check_body(302, "moved"), Ok(()));
        assert!(check_body(400, "room id is 257 bytes, over the limit of 256").is_err());
    }

    #[test]
    fn patterns() {
        assert!(matches_pattern("a*b", "ab"));
        assert!(matches_pattern("a*b", "axxb"));
        assert!(!matches_pattern("a*b", "axxbc"));
        assert!(!matches_pattern("a*b*c", "abc "));
        assert!(matches_pattern("a*b*c", "a1b2c"));
        assert!(matches_pattern("x", "x"));
        assert!(!matches_pattern("x", "xy"));
        assert!(!matches_pattern("ab*ba", "aba"), "the ends do not overlap");
    }
}
