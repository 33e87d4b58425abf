//! The calls into the party: starting it, a connection's arrival, its messages and its close, an
//! HTTP request, the alarm (with its retries) and background work. Each call runs with the time
//! limit. A failure (an error, a panic, the time limit) goes to the log; the client sees a fixed
//! text with a reference to that log line ([`crate::client_text`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures::FutureExt;
use http::StatusCode;
use tokio::time::Instant;
use tracing::Instrument;

use crate::client_text::{self, ErrorRef};
use crate::connection::{ConnShared, Connection};
use crate::party::ConnectionContext;
use crate::room::{LinkId, Outbound};
use crate::runtime::actor::Actor;
use crate::runtime::handle::Answer;
use crate::runtime::link::{close_code, FromRoom, SocketId};
use crate::storage::now_ms;
use crate::sync::Lock;
use crate::web::{self, Request, Response};

/// Alarm retries after a failing `on_alarm`, and the first backoff.
const ALARM_RETRIES: u32 = 6;
const ALARM_BACKOFF: Duration = Duration::from_secs(2);

/// Closes a socket whose handler failed: 1011 with a fixed text, the failure in the log under
/// the same reference.
fn close_failed(conn: &Connection, what: &str, error: &dyn std::fmt::Display) {
    let r = ErrorRef::new();
    tracing::warn!(conn = conn.id(), error_ref = %r, error = %error, "{what}");
    conn.close(close_code::INTERNAL_ERROR, &r.tag(client_text::INTERNAL_ERROR));
}

/// The 500 for a request whose handler failed: a fixed text, the failure in the log under the
/// same reference.
fn failed_response(what: &str, error: &dyn std::fmt::Display) -> Response {
    let r = ErrorRef::new();
    tracing::warn!(error_ref = %r, error = %error, "{what}");
    web::text(StatusCode::INTERNAL_SERVER_ERROR, r.tag(client_text::INTERNAL_SERVER_ERROR))
}

/// The answer to an error of `on_request`: the party's own answer (an `HttpError`) goes to the
/// client as it is, any other error is a 500 with a reference to the log.
fn request_error(e: anyhow::Error) -> Response {
    if e.downcast_ref::<web::HttpError>().is_some() {
        return web::error_response(&e, StatusCode::INTERNAL_SERVER_ERROR);
    }
    failed_response("onRequest failed", &Failure::Error(e))
}

/// How a guarded handler call went wrong.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0:#}")]
    Error(anyhow::Error),
    #[error("party panicked: {0}")]
    Panic(String),
    #[error("party handler timed out")]
    Timeout,
}

/// Runs a handler with the time limit, turning panics into failures. Most handlers finish on
/// their first poll: the timer is only set up for one that has to wait (its deadline still
/// counted from the start).
async fn guarded<T>(limit: Duration, fut: impl Future<Output = anyhow::Result<T>>) -> Result<T, Failure> {
    let deadline = Instant::now() + limit;
    let mut fut = std::pin::pin!(AssertUnwindSafe(fut).catch_unwind());
    let first = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
    let done = match first {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout_at(deadline, fut).await,
    };
    match done {
        Err(_) => Err(Failure::Timeout),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::Panic(msg))
        }
        Ok(Ok(Err(e))) => Err(Failure::Error(e)),
        Ok(Ok(Ok(v))) => Ok(v),
    }
}

/// Why the party could not be started.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("party constructor panicked")]
    ConstructorPanicked,
    #[error("onStart failed: {0}")]
    OnStart(Failure),
}

/// Why a connection could not join the room.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("getConnectionTags failed: {0}")]
    Tags(Failure),
    #[error("{count} tags (the id included), the limit is {limit}")]
    TooManyTags { count: usize, limit: usize },
    #[error("a tag must be 1 to {max} bytes, got {len}")]
    TagSize { max: usize, len: usize },
    #[error(transparent)]
    OnConnect(Failure),
}

impl Actor {
    /// Creates the party value and runs `on_start` if the room is not started.
    async fn ensure_started(&mut self) -> Result<(), StartError> {
        if self.party.is_some() {
            return Ok(());
        }
        let room = self.room.clone();
        let factory = self.factory.clone();
        let created = std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(room)));
        let mut party = created.map_err(|_| StartError::ConstructorPanicked)?;
        guarded(self.limits.handler_timeout, party.on_start()).await.map_err(StartError::OnStart)?;
        self.party = Some(party);
        if self.storage().known_alarm().is_none() {
            if let Err(e) = self.storage().get_alarm().await {
                tracing::warn!(error = %e, "could not read the alarm");
            }
        }
        Ok(())
    }

    fn connection(&self, shared: Arc<ConnShared>) -> Connection {
        Connection { shared, room: self.shared().clone() }
    }

    pub(super) async fn connect(
        &mut self,
        link: LinkId,
        sid: SocketId,
        id: String,
        uri: String,
        request: Box<Request>,
    ) {
        // A client reconnecting with its id replaces its own slot, so it is not refused.
        let full = self.room.connection_count() >= self.limits.max_connections_per_room;
        let refusal = if full && self.room.get_connection(&id).is_none() {
            FromRoom::Refused { sid, status: 503, reason: client_text::ROOM_FULL.into() }
        } else {
            match self.try_connect(link, sid, id, uri, request).await {
                Ok(()) => return,
                Err(e) => {
                    let r = ErrorRef::new();
                    tracing::warn!(error_ref = %r, error = %e, "connection failed");
                    FromRoom::Failed { sid, reason: r.tag(client_text::INTERNAL_ERROR) }
                }
            }
        };
        self.shared().emit_link(link, refusal);
    }

    async fn try_connect(
        &mut self,
        link: LinkId,
        sid: SocketId,
        id: String,
        uri: String,
        request: Box<Request>,
    ) -> Result<(), ConnectError> {
        self.ensure_started().await?;
        // Newest wins: an older socket with the same id leaves the room before this one joins,
        // so get_connections never yields both.
        let older = self.room.get_connection(&id);
        if let Some(older) = older {
            older.close(close_code::REPLACED, client_text::REPLACED);
            self.after_handler().await;
        }
        let order = {
            let mut t = self.shared().conns.locked();
            t.next_order += 1;
            t.next_order
        };
        let shared = Arc::new(ConnShared {
            key: (link, sid),
            id: id.clone(),
            uri,
            tags: Mutex::new(vec![id.clone()]),
            state: Mutex::new(None),
            open: AtomicBool::new(true),
            order,
        });
        let conn = self.connection(shared.clone());
        let ctx = ConnectionContext { request: *request };
        let limit = self.limits.handler_timeout;
        let party = self.party.as_mut().expect("started");
        let extra = guarded(limit, party.get_connection_tags(&conn, &ctx)).await.map_err(ConnectError::Tags)?;
        let tags = self.validate_tags(&id, extra)?;
        *shared.tags.locked() = tags.clone();
        self.shared().conns.locked().insert(shared.clone());
        self.shared().emit_link(link, FromRoom::Joined { sid });
        let party = self.party.as_mut().expect("started");
        if let Err(f) = guarded(limit, party.on_connect(&conn, &ctx)).await {
            self.shared().conns.locked().remove(&(link, sid));
            return Err(ConnectError::OnConnect(f));
        }
        self.shared().emit_link(link, FromRoom::Accepted { sid, tags });
        Ok(())
    }

    fn validate_tags(&self, id: &str, extra: Vec<String>) -> Result<Vec<String>, ConnectError> {
        let mut tags = vec![id.to_string()];
        tags.extend(extra);
        if tags.len() > self.limits.max_tags {
            return Err(ConnectError::TooManyTags { count: tags.len(), limit: self.limits.max_tags });
        }
        for t in &tags[1..] {
            if t.is_empty() || t.len() > self.limits.max_tag_bytes {
                return Err(ConnectError::TagSize { max: self.limits.max_tag_bytes, len: t.len() });
            }
        }
        Ok(tags)
    }

    pub(super) async fn message(&mut self, link: LinkId, sid: SocketId, msg: crate::message::Message) {
        let Some(shared) = self.shared().conns.locked().by_key.get(&(link, sid)).cloned() else {
            return;
        };
        let conn = self.connection(shared);
        if let Err(e) = self.ensure_started().await {
            close_failed(&conn, "the room could not start", &e);
            return;
        }
        let limit = self.limits.handler_timeout;
        let party = self.party.as_mut().expect("started");
        match guarded(limit, party.on_message(msg, &conn)).await {
            Ok(()) => {}
            Err(Failure::Error(e)) => {
                let party = self.party.as_mut().expect("started");
                if let Err(f) = guarded(limit, party.on_error(&conn, &e)).await {
                    close_failed(&conn, "onError failed", &f);
                }
            }
            Err(f) => close_failed(&conn, "onMessage failed", &f),
        }
    }

    pub(super) async fn run_on_close(&mut self, shared: Arc<ConnShared>, error: Option<String>) {
        let conn = self.connection(shared);
        // A hibernated room wakes to run on_close (as PartyKit does since partykit#709).
        if self.ensure_started().await.is_err() {
            return;
        }
        let limit = self.limits.handler_timeout;
        if let Some(err) = error {
            let err = anyhow::anyhow!(err);
            let party = self.party.as_mut().expect("started");
            if let Err(f) = guarded(limit, party.on_error(&conn, &err)).await {
                tracing::warn!(error = %f, "onError failed");
            }
        }
        let party = self.party.as_mut().expect("started");
        if let Err(f) = guarded(limit, party.on_close(&conn)).await {
            tracing::warn!(error = %f, "onClose failed");
        }
    }

    pub(super) async fn request(&mut self, req: Request) -> Response {
        if let Err(e) = self.ensure_started().await {
            return failed_response("the room could not start", &e);
        }
        let party = self.party.as_mut().expect("started");
        match guarded(self.limits.handler_timeout, party.on_request(req)).await {
            Ok(res) => res,
            Err(Failure::Error(e)) => request_error(e),
            Err(f) => failed_response("onRequest failed", &f),
        }
    }

    /// Answers a request whose `on_request` deferred its response ([`web::deferred`]): a task
    /// waits for the answer (within the handler time limit) and sends it through the output
    /// gate, while the room goes on with its next events.
    pub(super) fn answer_later(
        &self,
        answer: tokio::sync::oneshot::Receiver<anyhow::Result<Response>>,
        reply: tokio::sync::oneshot::Sender<Answer>,
    ) {
        let shared = self.shared().clone();
        let limit = self.limits.handler_timeout;
        let task = async move {
            let res = match tokio::time::timeout(limit, answer).await {
                Ok(Ok(Ok(res))) => res,
                Ok(Ok(Err(e))) => request_error(e),
                Ok(Err(_)) => failed_response("onRequest failed", &"the party dropped the request without an answer"),
                Err(_) => failed_response("onRequest failed", &Failure::Timeout),
            };
            shared.emit(Outbound::Response(reply, Box::new(res)));
        };
        tokio::spawn(task.instrument(tracing::Span::current()));
    }

    pub(super) async fn fire_alarm(&mut self, as_of: Option<i64>) {
        if self.alarm_not_before.is_some_and(|nb| Instant::now() < nb) {
            return;
        }
        if let Err(reason) = self.ensure_started().await {
            // Counts as a failed on_alarm: back off instead of restarting the room in a loop.
            self.alarm_failures += 1;
            let backoff = ALARM_BACKOFF * 2u32.pow(self.alarm_failures.min(ALARM_RETRIES) - 1);
            self.alarm_not_before = Some(Instant::now() + backoff);
            tracing::warn!(%reason, retry_in = ?backoff, "alarm could not start the room");
            return;
        }
        self.alarm_not_before = None;
        let due = match self.storage().get_alarm().await {
            Ok(Some(at)) if at <= as_of.unwrap_or_else(now_ms) => at,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the alarm");
                return;
            }
        };
        let party = self.party.as_mut().expect("started");
        let result = guarded(self.limits.handler_timeout, party.on_alarm()).await;
        if let Some(o) = &self.observer {
            o.alarm_fired();
        }
        let storage = self.storage().clone();
        let unchanged = storage.known_alarm() == Some(Some(due));
        match result {
            Ok(()) => {
                self.alarm_failures = 0;
                if unchanged {
                    if let Err(e) = storage.delete_alarm().await {
                        tracing::warn!(error = %e, "could not delete the alarm that fired");
                    }
                }
            }
            Err(f) => {
                self.alarm_failures += 1;
                if !unchanged {
                    // on_alarm set a new alarm before failing; that one stands.
                } else if self.alarm_failures > ALARM_RETRIES {
                    tracing::warn!(error = %f, "onAlarm failed; giving up after retries");
                    self.alarm_failures = 0;
                    if let Err(e) = storage.delete_alarm().await {
                        tracing::warn!(error = %e, "could not delete the alarm given up on");
                    }
                } else {
                    let backoff = ALARM_BACKOFF * 2u32.pow(self.alarm_failures - 1);
                    tracing::warn!(error = %f, retry_in = ?backoff, "onAlarm failed; retrying");
                    if let Err(e) = storage.set_alarm(now_ms() + backoff.as_millis() as i64).await {
                        tracing::warn!(error = %e, "could not set the alarm's retry");
                    }
                }
            }
        }
    }

    /// Runs the party's background work (timers, finished I/O of a script runtime).
    pub(super) async fn wakeup(&mut self) {
        let Some(party) = self.party.as_mut() else { return };
        if let Err(f) = guarded(self.limits.handler_timeout, party.on_wakeup()).await {
            tracing::warn!(error = %f, "background work of the party failed");
        }
    }
}
