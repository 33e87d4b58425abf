//! Static assets of a project (`serve` in partykit.json): files under one directory, answered
//! for GET and HEAD before `onFetch` runs, as PartyKit does.

use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use partyline::{Request, Response};

/// A directory of static files.
#[derive(Clone, Debug)]
pub struct StaticAssets {
    /// The directory.
    pub root: PathBuf,
    /// Answer paths that name no file with `index.html` (single-page apps).
    pub single_page_app: bool,
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("txt") => "text/plain; charset=utf-8",
        Some("woff2") => "font/woff2",
        Some("woff") => "font/woff",
        _ => "application/octet-stream",
    }
}

impl StaticAssets {
    /// The file a URL path names, if it is inside the root.
    fn file_for(&self, url_path: &str) -> Option<PathBuf> {
        let decoded = partyline::web::percent_decode(url_path.trim_start_matches('/'));
        let rel = Path::new(&decoded);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        Some(self.root.join(rel))
    }

    /// The response for `req` if a file answers it.
    pub async fn serve(&self, req: &Request) -> Option<Response> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let mut path = self.file_for(req.uri().path())?;
        let mut meta = tokio::fs::metadata(&path).await.ok();
        if meta.as_ref().is_some_and(|m| m.is_dir()) {
            path = path.join("index.html");
            meta = tokio::fs::metadata(&path).await.ok();
        }
        if meta.is_none() && self.single_page_app && Path::new(req.uri().path()).extension().is_none() {
            path = self.root.join("index.html");
            meta = tokio::fs::metadata(&path).await.ok();
        }
        if !meta?.is_file() {
            return None;
        }
        let body = tokio::fs::read(&path).await.ok()?;
        let mut res = http::Response::new(if req.method() == Method::HEAD { Bytes::new() } else { Bytes::from(body) });
        *res.status_mut() = StatusCode::OK;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(&path)));
        Some(res)
    }
}
