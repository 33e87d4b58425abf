//! The collaborative text page and the JavaScript it loads, compiled into the binary.
//!
//! `GET /text` serves [`TEXT_PAGE`]: a textarea bound to the `Y.Text` named `text` of room
//! `?room=` (default `lobby`) of the `yjs` party, through y-partykit's own provider. `GET
//! /text.js` serves [`CLIENT_JS`]: yjs and y-partykit's provider bundled into one file (global
//! `YPartyKit` with `Y` and `YPartyKitProvider`), built by `yjs/web/build.sh` from the exact
//! versions pinned in `yjs/web/package-lock.json` and committed, so building and running
//! Partyline needs no npm and the page needs no network beyond the server.

use partyline::prelude::*;

/// The collaborative text page.
pub const TEXT_PAGE: &str = include_str!("../assets/text.html");

/// yjs + y-partykit's provider for browsers (minified, with their license notices).
pub const CLIENT_JS: &str = include_str!("../assets/yjs-partykit.js");

/// Path of the page.
pub const TEXT_PATH: &str = "/text";
/// Path of the bundle.
pub const CLIENT_JS_PATH: &str = "/text.js";

/// Answers `GET /text` and `GET /text.js`; `None` for anything else. For a party's `on_fetch`.
pub fn serve(req: &Request) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    let (content_type, body) = match req.uri().path() {
        TEXT_PATH => ("text/html; charset=utf-8", TEXT_PAGE),
        CLIENT_JS_PATH => ("text/javascript; charset=utf-8", CLIENT_JS),
        _ => return None,
    };
    Some(web::with_type(StatusCode::OK, content_type, Bytes::from_static(body.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Option<Response> {
        serve(&partyline::http::Request::builder().method("GET").uri(path).body(Bytes::new()).unwrap())
    }

    #[test]
    fn serves_the_page_and_the_bundle_only() {
        let page = get("/text").unwrap();
        assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(page.body(), TEXT_PAGE.as_bytes());
        let js = get("/text.js?v=1").unwrap();
        assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
        assert_eq!(js.body().len(), CLIENT_JS.len());
        assert!(get("/").is_none() && get("/text/").is_none() && get("/text.jsx").is_none());
        let post = partyline::http::Request::builder().method("POST").uri("/text").body(Bytes::new()).unwrap();
        assert!(serve(&post).is_none());
    }

    #[test]
    fn page_is_self_contained_and_uses_the_provider() {
        assert!(TEXT_PAGE.starts_with("<!doctype html>"));
        assert!(!TEXT_PAGE.contains("http://") && !TEXT_PAGE.contains("https://"), "no external URLs");
        assert!(!TEXT_PAGE.contains("innerHTML"));
        assert!(TEXT_PAGE.contains(r#"<script src="/text.js"></script>"#));
        assert!(TEXT_PAGE.contains(r#"party: "yjs""#));
        assert!(TEXT_PAGE.contains("disableBc: true"), "tabs must sync through the server");
    }

    /// The bundle was built from the versions the interop tests pin.
    #[test]
    fn bundle_matches_the_pinned_versions() {
        let lock: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/interop/package-lock.json")).expect("the interop lock file");
        let version =
            |name: &str| lock["packages"][format!("node_modules/{name}")]["version"].as_str().unwrap().to_string();
        let banner = CLIENT_JS.lines().next().unwrap();
        for name in ["yjs", "y-partykit", "y-protocols", "lib0"] {
            assert!(banner.contains(&format!("{name} {}", version(name))), "{name} {} not in {banner}", version(name));
        }
        assert!(CLIENT_JS.contains("var YPartyKit="), "the global the page uses");
    }
}
