//! The outbound HTTP client behind JS `fetch`: plain HTTP and HTTPS (rustls with ring; Mozilla's
//! roots from `webpki-roots` plus the policy's extra CA certificates), HTTP/1.1, one connection
//! per request, redirects followed as the Fetch standard says, the allow-list checked on every
//! hop and one time limit over the whole chain.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{self, pki_types};

use crate::host::{FetchPolicy, OpResult};

/// Largest response body `fetch` reads.
const MAX_FETCH_BODY: usize = 32 << 20;

/// Most redirects one `fetch` follows (the Fetch standard's limit).
const MAX_REDIRECTS: usize = 20;

/// A request's `redirect` mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RedirectMode {
    /// Follow redirects (the default).
    Follow,
    /// Return a redirect response as it is (as Cloudflare Workers do: the 3xx with its
    /// `Location`, not an opaque response).
    Manual,
    /// Fail on a redirect.
    Error,
}

impl RedirectMode {
    /// The mode named `name` (`follow`, `manual` or `error`).
    pub(crate) fn parse(name: &str) -> Result<Self, String> {
        match name {
            "follow" => Ok(RedirectMode::Follow),
            "manual" => Ok(RedirectMode::Manual),
            "error" => Ok(RedirectMode::Error),
            other => Err(format!("invalid redirect mode {other:?} (follow, manual or error)")),
        }
    }
}

/// Marks a response `fetch` reached through at least one redirect (`response.redirected`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Redirected;

/// Sends `req` under the policy's allow-list and time limit, following redirects per `mode`.
pub(crate) async fn fetch(policy: Arc<FetchPolicy>, req: partyline::Request, mode: RedirectMode) -> OpResult {
    let url = req.uri().to_string();
    let timeout = policy.timeout;
    match tokio::time::timeout(timeout, follow(&policy, req, mode)).await {
        Ok(Ok((res, url))) => OpResult::Response(Box::new(res), url),
        Ok(Err(e)) => OpResult::Error(format!("fetch {url} failed: {e}")),
        Err(_) => OpResult::Error(format!("fetch {url} timed out after {timeout:?}")),
    }
}

/// Sends `req` and the requests its redirects lead to; the final response and its URL.
async fn follow(
    policy: &FetchPolicy,
    req: partyline::Request,
    mode: RedirectMode,
) -> Result<(http::Response<Bytes>, String), String> {
    let (mut parts, mut body) = req.into_parts();
    let mut redirects = 0;
    loop {
        let url = parts.uri.clone();
        let mut res = send(policy, &parts, body.clone()).await?;
        let status = res.status();
        let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let location = res.headers().get(http::header::LOCATION).cloned();
        let (true, Some(location)) = (is_redirect, location) else {
            if redirects > 0 {
                res.extensions_mut().insert(Redirected);
            }
            return Ok((res, url.to_string()));
        };
        match mode {
            RedirectMode::Manual => return Ok((res, url.to_string())),
            RedirectMode::Error => {
                return Err(format!("redirect mode is \"error\" and the server redirected ({status})"))
            }
            RedirectMode::Follow => {}
        }
        if redirects == MAX_REDIRECTS {
            return Err(format!("too many redirects (more than {MAX_REDIRECTS})"));
        }
        redirects += 1;
        let next = resolve(&url, &location)?;
        // 301/302 turn a POST into a GET, 303 anything but GET/HEAD; the body and the headers
        // describing it go.
        let to_get = (status == StatusCode::SEE_OTHER && parts.method != Method::GET && parts.method != Method::HEAD)
            || (matches!(status.as_u16(), 301 | 302) && parts.method == Method::POST);
        if to_get {
            parts.method = Method::GET;
            body = Bytes::new();
            for name in ["content-encoding", "content-language", "content-location", "content-type", "content-length"] {
                parts.headers.remove(name);
            }
        }
        // Credentials do not follow a redirect to another origin; `Host` is the new one's.
        if origin(&next) != origin(&url) {
            parts.headers.remove(http::header::AUTHORIZATION);
        }
        parts.headers.remove(http::header::HOST);
        parts.uri = next;
    }
}

/// The URL `location` points to from `base`, if it is an http(s) URL.
fn resolve(base: &Uri, location: &HeaderValue) -> Result<Uri, String> {
    let location = location.to_str().map_err(|_| "the redirect's Location is not text".to_string())?;
    let base = url::Url::parse(&base.to_string()).map_err(|e| format!("invalid URL {base}: {e}"))?;
    let mut next = base.join(location).map_err(|e| format!("invalid redirect Location {location:?}: {e}"))?;
    if next.scheme() != "http" && next.scheme() != "https" {
        return Err(format!("a redirect to {next} (only http and https are followed)"));
    }
    // A fragment does not go on the wire.
    next.set_fragment(None);
    next.as_str().parse().map_err(|e| format!("invalid redirect Location {location:?}: {e}"))
}

/// Scheme, host and port of `uri`.
fn origin(uri: &Uri) -> (Option<&str>, Option<&str>, Option<u16>) {
    (uri.scheme_str(), uri.host(), uri.port_u16())
}

/// One request and its response (no redirects), checked against the allow-list.
async fn send(
    policy: &FetchPolicy,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<http::Response<Bytes>, String> {
    let uri = &parts.uri;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(format!("unsupported scheme {other:?} (http or https)")),
    };
    let host = uri.host().ok_or("the URL has no host")?.trim_matches(|c| c == '[' || c == ']').to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    if !policy.allows(&host, port) {
        return Err(format!("{host}:{port} is not on the fetch allow-list (--fetch-allow)"));
    }
    let mut req = http::Request::new(http_body_util::Full::new(body));
    *req.method_mut() = parts.method.clone();
    *req.headers_mut() = parts.headers.clone();
    if !req.headers().contains_key(http::header::HOST) {
        let value = match uri.port_u16() {
            Some(p) => format!("{}:{p}", uri.host().unwrap_or_default()),
            None => uri.host().unwrap_or_default().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            req.headers_mut().insert(http::header::HOST, v);
        }
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    *req.uri_mut() = path.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await.map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    if !tls {
        return exchange(stream, req).await;
    }
    let config = client_config(&policy.extra_roots)?;
    let name =
        pki_types::ServerName::try_from(host.clone()).map_err(|e| format!("invalid TLS server name {host:?}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    exchange(stream, req).await
}

/// Sends `req` over `io` (HTTP/1.1) and reads the whole response.
async fn exchange<IO>(io: IO, req: http::Request<http_body_util::Full<Bytes>>) -> Result<http::Response<Bytes>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = res.into_parts();
    let body = http_body_util::Limited::new(body, MAX_FETCH_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// TLS client configurations by their extra roots, built once per process (the files are read
/// the first time a fetch needs them; a failure is not kept, so a fixed file is read again).
static CONFIGS: Mutex<Option<HashMap<Vec<PathBuf>, Arc<rustls::ClientConfig>>>> = Mutex::new(None);

/// The TLS client configuration trusting Mozilla's roots and the certificates in `extra`.
fn client_config(extra: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut configs = CONFIGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let configs = configs.get_or_insert_with(HashMap::new);
    if let Some(config) = configs.get(extra) {
        return Ok(config.clone());
    }
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for path in extra {
        use pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|e| format!("reading CA certificates {}: {e}", path.display()))?;
        let mut found = 0;
        for cert in pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("CA certificates {}: {e}", path.display()))?;
            roots.add(cert).map_err(|e| format!("CA certificate in {}: {e}", path.display()))?;
            found += 1;
        }
        if found == 0 {
            return Err(format!("{} has no PEM certificate", path.display()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    configs.insert(extra.to_vec(), config.clone());
    Ok(config)
}
