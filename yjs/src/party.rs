//! The built-in `yjs` party: every room is one Yjs document, persisted in snapshot mode, open
//! to anyone (`/parties/yjs/<room>`), the server side y-partykit's docs show.
//!
//! HTTP: `GET /parties/yjs/<room>` answers the whole document as one Yjs update
//! (`application/octet-stream`; `Y.applyUpdate(doc, new Uint8Array(body))` rebuilds it); other
//! methods answer 405.

use partyline::prelude::*;

use crate::room::{YjsOptions, YjsRoom};

/// The party's name.
pub const NAME: &str = "yjs";

/// The built-in Yjs party.
pub struct YjsParty {
    yjs: YjsRoom,
}

impl Party for YjsParty {
    fn new(room: Room) -> Self {
        YjsParty { yjs: YjsRoom::new(room, YjsOptions::default()) }
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

    async fn on_error(&mut self, conn: &Connection, error: &anyhow::Error) -> anyhow::Result<()> {
        // A dropped socket (on_close follows and removes its awareness states) or a failed write.
        tracing::info!(conn = conn.id(), error = %format!("{error:#}"), "Yjs connection failed");
        Ok(())
    }

    async fn on_request(&mut self, req: Request) -> anyhow::Result<Response> {
        if req.method() != Method::GET {
            return Ok(web::text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed"));
        }
        let state = self.yjs.encode_state().await?;
        self.yjs.unload_if_idle().await?;
        Ok(web::with_type(StatusCode::OK, "application/octet-stream", Bytes::from(state)))
    }
}
