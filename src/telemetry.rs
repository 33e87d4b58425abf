//! Logs and traces of a Partyline process.
//!
//! Logs go to stderr as text or JSON lines (`--log-format`, `PARTYLINE_LOG_FORMAT`), filtered
//! by `RUST_LOG` (default `info`). Traces are exported over OTLP only when the standard
//! variables ask for it: `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! turns export on; `OTEL_EXPORTER_OTLP_PROTOCOL` picks `http/protobuf` (the default) or
//! `grpc`; `OTEL_SERVICE_NAME` names the process (default `partyline-<subcommand>`);
//! `OTEL_SDK_DISABLED=true` turns it off again. Spans cover each HTTP request and WebSocket at
//! the gateway, each gRPC call at the node (a child of the gateway's span: the trace context
//! travels in the call's metadata), each room and each event a room handles. Head sampling
//! follows `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default: every trace); the spans
//! on the per-frame paths (a socket, a room and its events, a gateway's link) are made only for
//! sampled traces, and not at all when nothing is exported, so a frame pays nothing for tracing.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written on stderr (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text, coloured on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps trace export running; dropping it flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("warning: could not flush traces: {e}");
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Whether the environment asks for OTLP trace export.
pub fn otlp_enabled() -> bool {
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The log layer's filter: the `RUST_LOG` rules, and events only. Spans are not needed for log
/// lines, and a span that no layer wants costs nothing, which keeps the per-event room spans free
/// when traces are off. One filter, combined, not two nested: nested per-layer filters lost the
/// level hint (the outer one has none), so every `trace!` of every crate (h2 has several per
/// frame) reached a dynamic `enabled` check, 3-4 % of a node's CPU under echo. Combined, a
/// callsite the rules rule out is never looked at again.
fn log_events<S>(rules: EnvFilter) -> impl Filter<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    // The events-only half rules out no level: its hint says so (none would mean "unknown",
    // and the combination would have none either).
    let events = tracing_subscriber::filter::filter_fn(|meta| meta.is_event())
        .with_max_level_hint(tracing::level_filters::LevelFilter::TRACE);
    rules.and(events)
}

/// Sets up logging and, when configured, trace export. Call from inside the async runtime.
/// `format` is how log lines are written; `default_service` is the service name when
/// `OTEL_SERVICE_NAME` is unset.
pub fn init(format: LogFormat, default_service: &str) -> anyhow::Result<Telemetry> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let logs = logs.with_filter(log_events(log_filter()));

    let provider = if otlp_enabled() { Some(tracer_provider(default_service)?) } else { None };
    match &provider {
        Some(p) => {
            let traces = tracing_opentelemetry::layer().with_tracer(p.tracer("partyline")).with_filter(log_filter());
            tracing_subscriber::registry().with(logs).with(traces).try_init()
        }
        // No trace layer at all (not an absent `Option` one, which still lets every span of
        // every crate be built: h2's per-frame trace spans were a tenth of a node's CPU).
        None => tracing_subscriber::registry().with(logs).try_init(),
    }
    .context("could not set up logging")?;
    if provider.is_some() {
        // The per-frame paths (rooms, sockets, links) make their spans only for sampled traces;
        // head sampling follows OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (the SDK reads them).
        partyline::runtime::observe::set_sampling(|span| {
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            span.context().span().span_context().is_sampled()
        });
        tracing::info!(
            endpoint = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT")),
            protocol = env("OTEL_EXPORTER_OTLP_PROTOCOL").unwrap_or_else(|| "http/protobuf".into()),
            "exporting traces over OTLP"
        );
    }
    Ok(Telemetry { provider })
}

fn tracer_provider(default_service: &str) -> anyhow::Result<SdkTracerProvider> {
    for var in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(p) = env(var) {
            anyhow::ensure!(
                p == "http/protobuf" || p == "grpc",
                "{var}={p} is not supported: use http/protobuf (the default) or grpc"
            );
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder().build().context("could not set up the OTLP exporter")?;
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(default_service.to_string());
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build())
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;
    use tracing_subscriber::Registry;

    use super::*;

    #[test]
    fn the_log_filter_keeps_the_level_hint_of_its_rules() {
        // Without a hint the global maximum level is TRACE, and every disabled `trace!` and
        // `debug!` callsite of every crate is checked again on every call.
        let info = log_events::<Registry>(EnvFilter::new("info"));
        assert_eq!(Filter::<Registry>::max_level_hint(&info), Some(LevelFilter::INFO));
        let debug = log_events::<Registry>(EnvFilter::new("warn,partyline_node=debug"));
        assert_eq!(Filter::<Registry>::max_level_hint(&debug), Some(LevelFilter::DEBUG));
    }
}
