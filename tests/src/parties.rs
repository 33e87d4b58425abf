//! Parties that misbehave on purpose, for fault and limit tests.
//!
//! `faulty` answers text commands:
//! - `panic`: panics in `on_message`;
//! - `hang`: never returns (the handler time limit must end it);
//! - `error`: returns an error (it reaches `on_error`, which sends `error: <message>` back);
//! - `count`: replies with the number of connections in the room;
//! - `ids`: replies with the ids of the connections, comma-separated, in join order;
//! - `state <n>`: sets a state of about n bytes; replies `ok` or the error text;
//! - `close`: closes the sender with 4000 `bye`;
//! - `put <bytes>`: puts a value of that many bytes; replies `ok` or the error text;
//! - `putkey <key> <bytes>`: the same under that key;
//! - `send <bytes>`: sends the sender a frame of that many bytes with `try_send`; replies the
//!   error text if it was refused;
//! - `slow <ms> <text>`: a handler still running when its room moves: sleeps ms (or until
//!   [`wake_slow`] in this process), then sends `<text>` back and puts `slow` = text (the frame
//!   goes first, so that no write holds it back; a failed write reaches `on_error`);
//! - anything else is echoed.
//!
//! Query parameters at connect: `tags=a,b,c` become tags; `fail=1` makes `on_connect` fail;
//! `hang=1` makes `on_connect` hang; `whoami=1` makes `on_connect` send
//! `<client ip>|<x-forwarded-for>|<x-real-ip>` as the connection's first frame. HTTP
//! `GET /parties/faulty/<room>/panic` panics in `on_request`, `/hang` hangs, `/error` returns a
//! 418 `HttpError`, `/whoami` answers like `whoami=1`, `/big` answers 8 MiB, anything else answers `200 ok`.
//! `on_close` broadcasts `closed <id>` to the others.
//!
//! `yjs-auth` is a party that authenticates and then is a Yjs room ([`partyline_yjs::YjsRoom`]):
//! `on_before_connect` refuses a connection without `?token=` (401) and passes the role on in
//! the `x-role` header; a token starting with `view-` makes a read-only connection.

use partyline::prelude::*;
use partyline::web::query_param;
use partyline_yjs::{YjsOptions, YjsRoom};

/// Registers the test parties on top of `registry`.
pub fn register(registry: PartyRegistry) -> PartyRegistry {
    registry.with::<Faulty>("faulty").with::<YjsAuth>("yjs-auth")
}

/// A Yjs room behind a token check.
pub struct YjsAuth {
    yjs: YjsRoom,
}

impl Party for YjsAuth {
    fn new(room: Room) -> Self {
        let options = YjsOptions::default()
            .read_only(|_conn, ctx| ctx.request.headers().get("x-role").is_some_and(|r| r == "viewer"));
        YjsAuth { yjs: YjsRoom::new(room, options) }
    }

    async fn on_before_connect(mut req: Request, _lobby: Lobby) -> anyhow::Result<Before> {
        let token = query_param(req.uri(), "token").unwrap_or_default();
        if token.is_empty() {
            return Ok(Before::Respond(web::text(StatusCode::UNAUTHORIZED, "a token is required")));
        }
        let role = if token.starts_with("view-") { "viewer" } else { "editor" };
        req.headers_mut().insert("x-role", http::HeaderValue::from_static(role));
        Ok(Before::Continue(req))
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        self.yjs.on_connect(conn, ctx).await
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        self.yjs.on_message(message, sender).await
    }

    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.yjs.on_close(conn).await
    }
}

/// How many times `faulty`'s `/slow-write` request ran in this process.
pub static SLOW_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many `slow` handlers started sleeping in this process.
pub static SLOW_SLEEPERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

static SLOW_WAKE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Ends the sleep of every `slow` handler sleeping in this process now (each then sends its
/// text and writes): a test picks the moment a moved room's old instance would act.
pub fn wake_slow() {
    SLOW_WAKE.notify_waiters();
}

/// The misbehaving party.
pub struct Faulty {
    room: Room,
}

fn query(conn: &Connection, name: &str) -> Option<String> {
    let uri: http::Uri = conn.uri().parse().ok()?;
    query_param(&uri, name)
}

impl Party for Faulty {
    fn new(room: Room) -> Self {
        Faulty { room }
    }

    async fn get_connection_tags(
        &mut self,
        conn: &Connection,
        _ctx: &ConnectionContext,
    ) -> anyhow::Result<Vec<String>> {
        Ok(query(conn, "tags").map(|t| t.split(',').map(str::to_string).collect()).unwrap_or_default())
    }

    async fn on_connect(&mut self, conn: &Connection, ctx: &ConnectionContext) -> anyhow::Result<()> {
        if query(conn, "whoami").is_some() {
            conn.send(whoami(&ctx.request));
        }
        if query(conn, "fail").is_some() {
            anyhow::bail!("on_connect refused this connection");
        }
        if query(conn, "hang").is_some() {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn on_message(&mut self, message: Message, sender: &Connection) -> anyhow::Result<()> {
        let text = message.as_text().unwrap_or("").to_string();
        let (cmd, arg) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        match cmd {
            "panic" => panic!("asked to panic"),
            "hang" => std::future::pending::<()>().await,
            "error" => anyhow::bail!("asked to fail"),
            "count" => sender.send(self.room.connection_count().to_string()),
            "ids" => {
                let ids: Vec<String> = self.room.get_connections(None).iter().map(|c| c.id().to_string()).collect();
                sender.send(ids.join(","));
            }
            "tagged" => {
                let ids: Vec<String> =
                    self.room.get_connections(Some(arg)).iter().map(|c| c.id().to_string()).collect();
                sender.send(ids.join(","));
            }
            "state" => {
                let n: usize = arg.parse().unwrap_or(0);
                match sender.set_state(&"x".repeat(n)) {
                    Ok(()) => sender.send("ok"),
                    Err(e) => sender.send(e.to_string()),
                }
            }
            "put" => {
                let n: usize = arg.parse().unwrap_or(0);
                match self.room.storage().put_bytes("big", vec![0u8; n]).await {
                    Ok(()) => sender.send("ok"),
                    Err(e) => sender.send(e.to_string()),
                }
            }
            "putkey" => {
                let (key, n) = arg.split_once(' ').unwrap_or((arg, "0"));
                match self.room.storage().put_bytes(key, vec![0u8; n.parse().unwrap_or(0)]).await {
                    Ok(()) => sender.send("ok"),
                    Err(e) => sender.send(e.to_string()),
                }
            }
            "send" => {
                if let Err(e) = sender.try_send(vec![b'x'; arg.parse().unwrap_or(0)]) {
                    sender.send(e.to_string());
                }
            }
            "slow" => {
                let (ms, text) = arg.split_once(' ').unwrap_or((arg, ""));
                // Registered before it is counted, so that a wake after the count reaches it.
                let woken = SLOW_WAKE.notified();
                SLOW_SLEEPERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let sleep = tokio::time::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
                tokio::select! {
                    _ = woken => {}
                    _ = sleep => {}
                }
                sender.send(text.to_string());
                self.room.storage().put("slow", &text).await?;
            }
            "close" => sender.close(4000, "bye"),
            _ => sender.send(message),
        }
        Ok(())
    }

    async fn on_error(&mut self, conn: &Connection, error: &anyhow::Error) -> anyhow::Result<()> {
        conn.send(format!("error: {error}"));
        Ok(())
    }

    async fn on_close(&mut self, conn: &Connection) -> anyhow::Result<()> {
        self.room.broadcast_without(format!("closed {}", conn.id()), &[conn.id()]);
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        let path = req.uri().path().to_string();
        if path.ends_with("/slow-write") {
            // Counts every run, writes, and takes its time before the write is committed.
            SLOW_WRITES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.room.storage().put("slow", &true).await?;
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            return Ok(web::text(StatusCode::OK, "written"));
        }
        if path.ends_with("/panic") {
            panic!("asked to panic in on_request");
        }
        if path.ends_with("/whoami") {
            return Ok(web::text(StatusCode::OK, whoami(&req)));
        }
        if path.ends_with("/big") {
            return Ok(web::with_type(StatusCode::OK, "application/octet-stream", Bytes::from(vec![b'x'; 8 << 20])));
        }
        if path.ends_with("/hang") {
            std::future::pending::<()>().await;
        }
        if path.ends_with("/error") {
            return Err(HttpError::new(StatusCode::IM_A_TEAPOT, "asked to fail").into());
        }
        Ok(web::text(StatusCode::OK, "ok"))
    }
}

/// `<client ip>|<x-forwarded-for>|<x-real-ip>` of a request, as the gateway passed it on.
fn whoami(req: &Request) -> String {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ip = web::client_ip(req).map(|ip| ip.to_string()).unwrap_or_default();
    format!("{ip}|{}|{}", header("x-forwarded-for"), header("x-real-ip"))
}
