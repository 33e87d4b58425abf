//! Static assets of a project (`serve` in partykit.json): files under one directory and the
//! output of `serve.build` (kept in memory), answered for GET and HEAD before `onFetch` runs, as
//! PartyKit does; `singlePageApp` for navigations only; `404.html` when nothing answered; and
//! the live reload endpoint of `serve.build.live` under `partyline dev`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use partyline::{Request, Response};
use tokio::sync::watch;

/// The path the live reload script polls.
pub const LIVE_PATH: &str = "/__partyline/live";

/// A directory of static files, and the files `serve.build` made.
#[derive(Clone, Debug)]
pub struct StaticAssets {
    /// The directory.
    pub root: PathBuf,
    /// Answer navigations to paths that name no file with `index.html` (single-page apps).
    pub single_page_app: bool,
    /// Built files by path relative to `root` (`dist/client.js`).
    built: Arc<BTreeMap<String, Bytes>>,
    /// Whether files not in `built` are read from `root` (not for a deployed artifact, which
    /// holds every file).
    disk: bool,
}

fn content_type(path: &Path) -> Option<&'static str> {
    Some(match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref()? {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "txt" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "mp3" => "audio/mpeg",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "pdf" => "application/pdf",
        "xml" => "application/xml",
        _ => return None,
    })
}

/// Whether `path` is a room's (`/party/ID...`, `/parties/NAME/ID...`).
fn is_room_path(path: &str) -> bool {
    path.starts_with("/party/") || path.starts_with("/parties/")
}

impl StaticAssets {
    /// The files under `root`.
    pub fn new(root: PathBuf, single_page_app: bool) -> Self {
        StaticAssets { root, single_page_app, built: Arc::default(), disk: true }
    }

    /// Every file from memory, by path (`index.html`, `dist/client.js`): a deployed
    /// artifact's.
    pub fn in_memory(files: BTreeMap<String, Bytes>, single_page_app: bool) -> Self {
        StaticAssets { root: PathBuf::new(), single_page_app, built: Arc::new(files), disk: false }
    }

    /// Serves `files` (by path relative to `outdir`) from memory; files outside `root` cannot be
    /// reached by a URL and are left out.
    pub fn set_built(&mut self, outdir: &Path, files: BTreeMap<String, Bytes>) {
        let Ok(prefix) = outdir.strip_prefix(&self.root) else {
            tracing::warn!(outdir = %outdir.display(), root = %self.root.display(), "serve.build.outdir is outside serve.path: its files are not served");
            return;
        };
        let prefix = prefix.to_string_lossy().replace('\\', "/");
        let built = files
            .into_iter()
            .map(|(name, bytes)| {
                let path = if prefix.is_empty() { name } else { format!("{}/{name}", prefix.trim_end_matches('/')) };
                (path, bytes)
            })
            .collect();
        self.built = Arc::new(built);
    }

    /// The built files (for tests and `partyline build`).
    pub fn built(&self) -> &BTreeMap<String, Bytes> {
        &self.built
    }

    /// The relative path a URL path names, if it stays inside the root.
    fn relative(url_path: &str) -> Option<String> {
        let decoded = partyline::web::percent_decode(url_path.trim_start_matches('/'));
        if Path::new(&decoded).components().any(|c| !matches!(c, Component::Normal(_))) {
            return None;
        }
        Some(decoded)
    }

    async fn file(&self, rel: &str) -> Option<(Bytes, &'static str)> {
        let ty = content_type(Path::new(rel)).unwrap_or("application/octet-stream");
        if let Some(bytes) = self.built.get(rel) {
            return Some((bytes.clone(), ty));
        }
        if !self.disk {
            return None;
        }
        let path = self.root.join(rel);
        if !tokio::fs::metadata(&path).await.ok()?.is_file() {
            return None;
        }
        Some((Bytes::from(tokio::fs::read(&path).await.ok()?), ty))
    }

    fn respond(req: &Request, status: StatusCode, (body, ty): (Bytes, &'static str)) -> Response {
        let mut res = http::Response::new(if req.method() == Method::HEAD { Bytes::new() } else { body });
        *res.status_mut() = status;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
        res
    }

    /// The response for `req` if a file answers it.
    pub async fn serve(&self, req: &Request) -> Option<Response> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let mut rel = Self::relative(req.uri().path())?;
        if rel.is_empty() || rel.ends_with('/') {
            rel.push_str("index.html");
        }
        if let Some(file) = self.file(&rel).await {
            return Some(Self::respond(req, StatusCode::OK, file));
        }
        if let Some(file) = self.file(&format!("{rel}/index.html")).await {
            return Some(Self::respond(req, StatusCode::OK, file));
        }
        // As PartyKit: only a browser navigation gets index.html, and only for a path that is no
        // room's, an .html path, or one without a known file type; a `fetch("/api/x")` from
        // the page goes on to `onFetch`.
        let navigate = req.headers().get("sec-fetch-mode").is_some_and(|v| v.as_bytes() == b"navigate");
        if self.single_page_app && navigate {
            let path = req.uri().path();
            if !is_room_path(path) || rel.ends_with(".html") || content_type(Path::new(&rel)).is_none() {
                return self.file("index.html").await.map(|f| Self::respond(req, StatusCode::OK, f));
            }
        }
        None
    }

    /// `404.html` with status 404, for a request nothing answered (`head`: a HEAD request),
    /// when the project has one.
    pub async fn not_found(&self, head: bool) -> Option<Response> {
        let (body, ty) = self.file("404.html").await?;
        let mut res = http::Response::new(if head { Bytes::new() } else { body });
        *res.status_mut() = StatusCode::NOT_FOUND;
        res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
        Some(res)
    }
}

/// The build counter live reload watches: bumped whenever a project finished loading.
fn builds() -> &'static watch::Sender<u64> {
    static BUILDS: OnceLock<watch::Sender<u64>> = OnceLock::new();
    BUILDS.get_or_init(|| watch::channel(0).0)
}

/// Records that a project (re)loaded: pages polling [`LIVE_PATH`] reload.
pub(crate) fn bump_build() {
    builds().send_modify(|n| *n += 1);
}

/// The script `serve.build.live` puts before the page's bundle (one line, so the source map
/// of every other line stays right): it asks the dev server for the build it came from and
/// reloads the page when there is a newer one. The request waits up to 25 s for a change; a
/// server restarting in between is retried.
pub(crate) fn live_reload_script() -> String {
    let build = *builds().borrow() + 1;
    format!(
        "(()=>{{const b=\"{build}\";const poll=(d)=>setTimeout(()=>fetch(\"{LIVE_PATH}?build=\"+b).then((r)=>r.text()).then((t)=>{{if(t!==b)location.reload();else poll(0)}},()=>poll(500)),d);poll(0)}})();"
    )
}

/// Answers the live reload poll: the current build, at once when it is not `build=` of the
/// query, else when the next build lands or after 25 s.
pub async fn live_reload(req: &Request) -> Response {
    let query = req.uri().query().unwrap_or("");
    let seen: Option<u64> = query.split('&').find_map(|kv| kv.strip_prefix("build=")).and_then(|v| v.parse().ok());
    let mut rx = builds().subscribe();
    if seen == Some(*rx.borrow_and_update()) {
        let _ = tokio::time::timeout(Duration::from_secs(25), rx.changed()).await;
    }
    let current = *rx.borrow();
    let mut res = http::Response::new(Bytes::from(current.to_string()));
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, navigate: bool) -> Request {
        let mut b = http::Request::builder().uri(path);
        if navigate {
            b = b.header("sec-fetch-mode", "navigate");
        }
        b.body(Bytes::new()).unwrap()
    }

    #[tokio::test]
    async fn built_files_single_page_apps_and_404() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), "<h1>app</h1>").unwrap();
        std::fs::write(dir.path().join("404.html"), "<h1>gone</h1>").unwrap();
        let mut assets = StaticAssets::new(dir.path().to_path_buf(), true);
        let built = BTreeMap::from([("client.js".to_string(), Bytes::from_static(b"console.log(1)"))]);
        assets.set_built(&dir.path().join("dist"), built);
        let res = assets.serve(&get("/dist/client.js", false)).await.unwrap();
        assert_eq!(res.body().as_ref(), b"console.log(1)");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
        assert_eq!(assets.serve(&get("/", false)).await.unwrap().body().as_ref(), b"<h1>app</h1>");
        // A navigation to an app route gets the page; a fetch of an API path does not.
        assert_eq!(assets.serve(&get("/rooms/42", true)).await.unwrap().body().as_ref(), b"<h1>app</h1>");
        assert!(assets.serve(&get("/api/x", false)).await.is_none());
        // A room's path with a file type is left to the room, as on PartyKit.
        assert!(assets.serve(&get("/parties/main/r1/x.png", true)).await.is_none());
        assert!(assets.serve(&get("/../etc/passwd", false)).await.is_none());
        let nf = assets.not_found(false).await.unwrap();
        assert_eq!((nf.status(), nf.body().as_ref()), (StatusCode::NOT_FOUND, &b"<h1>gone</h1>"[..]));
    }
}
