//! What the room runtime reports about its own work, for whoever hosts it to turn into metrics:
//! how long each event took to handle (a message, a connect, a request, an alarm, ...) and how
//! many alarms fired; and when it traces.
//!
//! Tracing: the spans on the paths every frame takes (a room and its events, a client socket, a
//! gateway's link into a room) exist only while a trace is sampled. The process that exports
//! traces says how to tell ([`set_sampling`]); until it does, none of those spans is made and
//! a frame costs nothing for tracing. Spans of requests and calls are made as usual.

use std::sync::OnceLock;
use std::time::Duration;

use tracing::Span;

/// Receives the room runtime's reports. Called on the room's task: keep it cheap (an atomic
/// add, a histogram observation).
pub trait RoomObserver: Send + Sync + 'static {
    /// One event handled, and the time it took, party handlers and storage reads included.
    /// `event` is one of [`EVENTS`].
    fn event_handled(&self, event: &'static str, elapsed: Duration);
    /// A room's `on_alarm` ran (whatever its outcome).
    fn alarm_fired(&self);
}

/// Every event a room reports to [`RoomObserver::event_handled`]: an observer can make what it
/// keeps per event (a histogram) up front, from this list.
pub const EVENTS: [&str; 13] = [
    "message",
    "connect",
    "close",
    "request",
    "alarm",
    "flush",
    "open_link",
    "close_link",
    "handover",
    "move",
    "evict",
    "upgrade",
    "inspect",
];

static SAMPLED: OnceLock<fn(&Span) -> bool> = OnceLock::new();

/// Turns on the spans of the per-frame paths, for a process that exports traces: `sampled`
/// tells whether a span belongs to a sampled trace (with OpenTelemetry: its span context's
/// sampled flag, as head sampling decided it). The first call wins.
pub fn set_sampling(sampled: fn(&Span) -> bool) {
    let _ = SAMPLED.set(sampled);
}

/// Whether the process exports traces at all ([`set_sampling`] was called).
pub fn tracing_frames() -> bool {
    SAMPLED.get().is_some()
}

/// Whether `span` is part of a sampled trace (false when nothing exports traces).
pub fn sampled(span: &Span) -> bool {
    SAMPLED.get().is_some_and(|f| !span.is_none() && f(span))
}

/// A span for long-lived work on a per-frame path (a room, a socket, a link): `make()` when
/// traces are exported and the span it makes is sampled, otherwise a disabled span, which
/// costs nothing to enter. When nothing exports traces, `make` is not even called.
pub fn frame_span(make: impl FnOnce() -> Span) -> Span {
    if !tracing_frames() {
        return Span::none();
    }
    let span = make();
    if sampled(&span) {
        span
    } else {
        Span::none()
    }
}
