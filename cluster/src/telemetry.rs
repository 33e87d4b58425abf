//! Trace context across gRPC: callers put the current span's context into the request
//! metadata (W3C `traceparent`, through the process's OpenTelemetry propagator) and the node
//! opens each call's span as its child, so one trace covers gateway -> node -> room. Without a
//! configured exporter the propagator is a no-op and nothing is added.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(&value)) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Adds the current span's trace context to outgoing call metadata.
pub fn inject(metadata: &mut MetadataMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut MetadataInjector(metadata)));
}

/// The span of one incoming gRPC call, a child of the caller's span when the call carries a
/// trace context (for tonic's `Server::trace_fn`).
pub fn grpc_server_span(req: &http::Request<()>) -> tracing::Span {
    let name = req.uri().path().trim_start_matches('/');
    let span = tracing::info_span!("grpc", otel.name = %name, otel.kind = "server");
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let _ = span.set_parent(parent);
    span
}

/// Metadata keys carried (for tests and debugging).
pub fn keys(metadata: &MetadataMap) -> Vec<String> {
    metadata
        .keys()
        .map(|k| match k {
            KeyRef::Ascii(k) => k.as_str().to_string(),
            KeyRef::Binary(k) => k.as_str().to_string(),
        })
        .collect()
}
