//! How a gateway reaches rooms: the [`RoomRouter`] interface, which opens a room link (the
//! sending half, a [`RoomLink`], and the stream of the room's messages, together an
//! [`OpenLink`]) and forwards HTTP requests, and the [`RouteError`] it fails with. The cluster's
//! router is [`GrpcRouter`](crate::grpc::GrpcRouter); `partyline dev` routes in-process.

use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::stream::BoxStream;
use partyline::runtime::link::{FromRoom, ToRoom};
use partyline::{Request, Response, RoomKey};
use tokio::sync::mpsc;

/// Depth of a link's queue of room messages, for routers that deliver through a channel.
pub const LINK_QUEUE: usize = 1024;

/// Why a room could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// No party of that name exists.
    #[error("Party {0} not found")]
    UnknownParty(String),
    /// The room's owner could not be reached.
    #[error("room unavailable: {0}")]
    Unavailable(String),
    /// The room or its node is at a limit (its queue stayed full, or the node hosts as many
    /// rooms as it may): 503 or close 1013, try again later.
    #[error("{0}")]
    Busy(String),
}

/// How a gateway reaches rooms: in-process for `dev`, over gRPC in a cluster.
#[async_trait]
pub trait RoomRouter: Send + Sync + 'static {
    /// Opens this gateway's link into a room.
    async fn open_link(&self, key: &RoomKey) -> Result<OpenLink, RouteError>;
    /// Sends an HTTP request to a room.
    async fn request(&self, key: &RoomKey, req: Request) -> Result<Response, RouteError>;
    /// The room moved away from where its link went (a hint to forget cached placement).
    fn moved(&self, _key: &RoomKey) {}
}

/// An open link: the sending half, and the room's messages in order. The stream ends when the
/// room closes the link; a link that breaks must end with [`FromRoom::Gone`] so its sockets are
/// closed.
pub struct OpenLink {
    /// Socket events go here.
    pub sender: Box<dyn RoomLink>,
    /// The room's messages for this gateway's sockets.
    pub events: BoxStream<'static, FromRoom>,
}

/// A room's messages arriving on a channel, as [`OpenLink::events`]: a link within the process,
/// as `partyline dev` opens them. Made here so that receiving, which runs for every message the
/// room sends, is compiled with the gateway's per-frame code (a stream made where it is boxed is
/// compiled there, and the command-line crate is built for compile time, not speed).
pub fn channel_events(rx: mpsc::Receiver<FromRoom>) -> BoxStream<'static, FromRoom> {
    Box::pin(ChannelEvents(rx))
}

struct ChannelEvents(mpsc::Receiver<FromRoom>);

impl futures::Stream for ChannelEvents {
    type Item = FromRoom;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<FromRoom>> {
        self.0.poll_recv(cx)
    }
}

/// The sending half of a link.
#[async_trait]
pub trait RoomLink: Send + Sync + 'static {
    /// Passes one socket event to the room.
    async fn send(&self, msg: ToRoom) -> Result<(), RouteError>;
    /// Passes one socket event to the room if that needs no waiting (the link's queue has
    /// space), else gives it back for [`send`](Self::send). The gateway tries this first for
    /// every frame: it allocates nothing and arms no timer. By default it always gives back.
    fn try_send(&self, msg: ToRoom) -> Result<Result<(), RouteError>, ToRoom> {
        Err(msg)
    }
    /// Closes the link: the room runs `on_close` for this gateway's sockets still in it.
    async fn close(&self);
}
