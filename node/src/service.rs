//! The node's gRPC service: link streams and HTTP requests for the rooms of the shards it owns
//! (acquiring a shard's lease on first use when it should own it), "not owner" answers for the
//! rest, what operators see and do (`Info`, `Inspect`, `Drain`, `MoveShard`, `CloseRoom`), and
//! the cluster-secret check on every call.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;

use partyline::runtime::handle::SendError;
use partyline::runtime::link::{close_code, close_reason, FromRoom, SocketId, ToRoom};
use partyline::runtime::placement::{shard_of, SHARDS};
use partyline::{Limits, PartyRegistry, RoomKey};
use partyline_proto::pb::{self, link_in, link_out, node_server, room_response};
use std::pin::Pin;
use tokio::sync::mpsc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::events::NodeEvents;
use crate::host::{HostError, RoomHost};
use crate::metrics::NodeMetrics;
use crate::server::NodeState;
use crate::shards::{Placement, ShardGuard, Shards};
use partyline_cluster::client::ClusterClient;
use partyline_cluster::redis::events::Kind;
use partyline_cluster::redis::{fence_for, LeaseInfo, Leases, Membership, NodeInfo, RedisStore};
use partyline_cluster::wire;
// What callers hear when a room's queue stays full, when this node hosts as many rooms as it may,
// when a room moved, and when an operator closed it: fixed client texts (the details are logged).
use partyline::client_text::{CLOSED_BY_OPERATOR, OVERLOADED, ROOM_MOVED, TOO_MANY_ROOMS};

/// Depth of a link's outbound queue.
const OUT_QUEUE: usize = 1024;

/// How long `Inspect` waits for a running room to answer (it answers when it takes the question
/// from its queue: after the handler it runs and the commands queued before).
pub const INSPECT_WAIT: Duration = Duration::from_secs(5);

/// The most storage key names one `Inspect` lists.
pub const MAX_INSPECT_KEYS: usize = 10_000;

/// Checks the cluster secret on every call (constant-time comparison).
#[derive(Clone)]
pub struct CheckSecret(Arc<Vec<Vec<u8>>>);

impl CheckSecret {
    /// The check for `secret`.
    pub fn new(secret: &str) -> Self {
        Self::any_of([secret])
    }

    /// A check that accepts any of `secrets` (while a secret is being rotated).
    pub fn any_of<S: AsRef<str>>(secrets: impl IntoIterator<Item = S>) -> Self {
        let accepted = secrets
            .into_iter()
            .filter(|s| !s.as_ref().is_empty())
            .map(|s| format!("Bearer {}", s.as_ref()).into_bytes())
            .collect();
        CheckSecret(Arc::new(accepted))
    }
}

/// Constant-time equality (`subtle`: the compiler may not turn it into an early exit).
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

impl tonic::service::Interceptor for CheckSecret {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        match req.metadata().get(partyline_proto::AUTH_HEADER) {
            // Every accepted secret is compared, so the time taken says nothing about which matched.
            Some(v) if self.0.iter().fold(false, |ok, s| same(v.as_bytes(), s) | ok) => Ok(req),
            Some(_) => Err(Status::unauthenticated("wrong cluster secret")),
            None => Err(Status::unauthenticated("missing cluster secret (authorization: Bearer <secret>)")),
        }
    }
}

/// What operators ask of the running node itself (implemented by the node process,
/// [`crate::server`]): its drain and its shard handovers.
#[tonic::async_trait]
pub trait NodeControl: Send + Sync + 'static {
    /// Starts an operator drain in the background (see `Drain` in proto/partyline.proto): the
    /// shards and rooms held as it began, and whether a drain was already under way or done.
    fn drain(&self, who: &str) -> pb::DrainReply;
    /// Hands `shard` to its next owner now, as a rebalance does; how many rooms moved, or
    /// `None` when this node does not hold the shard.
    async fn move_shard(&self, shard: u16, who: &str) -> Option<usize>;
}

/// The node's service.
pub struct NodeService {
    /// This node.
    pub me: NodeInfo,
    /// Its rooms.
    pub host: RoomHost,
    /// Its shards.
    pub shards: Arc<Shards>,
    /// The cluster view (for placement decisions).
    pub cluster: ClusterClient,
    /// Lease lookups (who owns a shard).
    pub leases: Leases,
    /// The parties this node runs.
    pub parties: PartyRegistry,
    /// Take over at once from a lease holder that is provably gone (see [`take_over_if_gone`])
    /// instead of waiting for its lease to expire.
    pub fast_failover: bool,
    /// Membership (whether a lease holder is still a member, and which incarnation).
    pub membership: Membership,
    /// Counters.
    pub metrics: Arc<NodeMetrics>,
    /// Room storage, read by `Inspect` (rooms write through the host's store).
    pub store: Arc<RedisStore>,
    /// Limits in force (the storage quota `Inspect` reports).
    pub limits: Arc<Limits>,
    /// What the node is doing (`Info.state`).
    pub state: Arc<NodeState>,
    /// The cluster's events, as this node writes them.
    pub events: Arc<NodeEvents>,
    /// Drains and shard handovers operators ask for.
    pub control: Arc<dyn NodeControl>,
    /// When the node started, in ms since the Unix epoch.
    pub started_unix_ms: u64,
}

/// Breaks the lease of `shard` if `owner` (not us) holds it and that holder is provably gone, by
/// compare-and-delete on its grant, so the shard can be taken now under a new epoch. True when
/// the lease was broken.
///
/// A refused connection alone proves nothing: a draining node that closed its listener looks
/// like that, and so does a node behind a REJECT rule that still reaches Redis and the gateways
/// and serves its rooms. So the holder must also be gone from the membership (see
/// [`HolderGone`]): its record expired or was withdrawn, or a new incarnation of it registered.
/// A holder whose record still carries the lease's incarnation is left alone: its lease expires
/// by itself if it is really gone.
///
/// A lease broken is recorded as a [`Kind::Failover`] event in `events`.
pub async fn take_over_if_gone(
    leases: &Leases,
    membership: &Membership,
    my_inc: &str,
    shard: u16,
    owner: &str,
    events: Option<&NodeEvents>,
) -> bool {
    let Ok(Some(lease)) = leases.owner(shard).await else { return false };
    if lease.owner != owner || lease.inc == my_inc {
        return false;
    }
    // The membership first: one Redis read, and no probe of a holder that is still a member.
    // A new incarnation under the holder's id is proof on its own (the node restarted, on the
    // same address or not); a missing record only with the port refusing too (a node cut from
    // Redis loses its record but may still serve until its self-fence deadline).
    let Some(proof) = holder_gone(membership, &lease).await else { return false };
    if proof == HolderGone::NoRecord && !process_gone(&lease.addr).await {
        return false;
    }
    match leases.break_lease(shard, &lease.inc, lease.epoch).await {
        Ok(true) => {
            tracing::warn!(
                shard, owner = %lease.owner, inc = %lease.inc, addr = %lease.addr, epoch = lease.epoch,
                proof = proof.as_str(),
                "the lease holder is gone ({}): took its lease over",
                proof.as_str()
            );
            if let Some(events) = events {
                let text = format!(
                    "took shard {shard} over from node {} before its lease ran out ({})",
                    lease.owner,
                    proof.as_str()
                );
                events.record(events.event(Kind::Failover, text).shard(shard));
            }
            true
        }
        _ => false,
    }
}

/// What proves a lease holder gone, besides its port refusing connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HolderGone {
    /// Its membership record expired (no heartbeat for the member TTL) or was withdrawn (it
    /// left after its drain).
    NoRecord,
    /// A new incarnation of the node registered under its id: the lease's process is not it.
    Restarted,
}

impl HolderGone {
    /// How the log says it.
    pub fn as_str(self) -> &'static str {
        match self {
            HolderGone::NoRecord => "its membership record expired or was withdrawn, and its port refuses connections",
            HolderGone::Restarted => "a new incarnation registered under its id",
        }
    }
}

/// Whether the membership proves the incarnation holding `lease` gone; `None` while its record
/// lives with the lease's incarnation (or cannot be read).
async fn holder_gone(membership: &Membership, lease: &LeaseInfo) -> Option<HolderGone> {
    match membership.record(&lease.owner).await {
        Ok(None) => Some(HolderGone::NoRecord),
        Ok(Some(record)) if record.inc != lease.inc => Some(HolderGone::Restarted),
        Ok(Some(_)) => None,
        Err(e) => {
            tracing::debug!(owner = %lease.owner, error = %e, "could not read a lease holder's membership record");
            None
        }
    }
}

/// Whether the process that listened at `addr` looks gone: its port refuses TCP connections
/// twice in a row, 50 ms apart. A paused or overloaded process still has its listening socket
/// (the kernel completes the handshake for it), and a silently partitioned one times out; but a
/// draining node that closed its listener refuses too, and so does a live node behind a REJECT
/// rule. So this is never proof on its own: [`take_over_if_gone`] also asks the membership.
pub async fn process_gone(addr: &str) -> bool {
    for attempt in 0..2 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            _ => return false,
        }
        if attempt == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    true
}

/// Where a room's call should be served.
enum Decision {
    Here(ShardGuard),
    Elsewhere(pb::NotOwner),
}

impl NodeService {
    /// Decides whether this node serves `shard`: it owns it, or the lease is free and this node
    /// is the preferred owner (among live, non-draining nodes the caller can reach), or the
    /// caller has already been redirected twice (views disagree: any free lease will do).
    /// Otherwise the caller is pointed at the holder or the preferred node, or told to retry
    /// when the shard is between owners.
    async fn place(&self, shard: u16, hops: u32, avoid: &[String]) -> Result<Decision, Status> {
        if let Some(g) = self.shards.get(shard) {
            return Ok(Decision::Here(g));
        }
        let preferred = self.cluster.preferred_avoiding(shard, avoid);
        let should_own = hops >= 2 || preferred.as_ref().is_none_or(|p| p.id == self.me.id);
        if !should_own {
            if let Ok(Some(l)) = self.leases.owner(shard).await {
                if l.inc != self.me.inc {
                    let retry = avoid.contains(&l.owner);
                    return Ok(Decision::Elsewhere(not_owner(shard, l.owner, l.addr, retry)));
                }
            }
            if let Some(p) = preferred {
                return Ok(Decision::Elsewhere(not_owner(shard, p.id, p.addr, false)));
            }
        }
        match self.shards.acquire(shard).await {
            Ok(Placement::Here(g)) => Ok(Decision::Here(g)),
            Ok(Placement::Held { owner, addr }) => {
                let retry = avoid.contains(&owner);
                if retry && self.fast_failover && self.take_over_from_crashed(shard, &owner).await {
                    if let Ok(Placement::Here(g)) = self.shards.acquire(shard).await {
                        return Ok(Decision::Here(g));
                    }
                }
                Ok(Decision::Elsewhere(not_owner(shard, owner, addr, retry)))
            }
            Ok(Placement::Leaving) => {
                self.refused("its shard is closed here (the node drains or refuses, or hands it over)");
                Ok(Decision::Elsewhere(self.between_owners(shard, avoid)))
            }
            Err(e) => {
                // Redis unreachable (or refusing): another node may do better.
                tracing::warn!(shard, error = %e, "could not acquire a shard");
                Ok(Decision::Elsewhere(self.between_owners(shard, avoid)))
            }
        }
    }

    /// The caller could not reach `owner`, which holds the shard's lease: if it is provably
    /// gone, take its lease over; see [`take_over_if_gone`].
    async fn take_over_from_crashed(&self, shard: u16, owner: &str) -> bool {
        take_over_if_gone(&self.leases, &self.membership, &self.me.inc, shard, owner, Some(&self.events)).await
    }

    /// Counts a room start this node refused, and reports it (rate-limited) in the events.
    fn refused(&self, why: &'static str) {
        self.metrics.rooms_refused.inc();
        self.events.room_refused(why);
    }

    /// [`host_status`], counting the host's refusals (see [`NodeService::refused`]).
    fn host_status(&self, e: HostError) -> Option<Status> {
        match &e {
            HostError::NotHere(_) => self.refused("its shard is being handed over"),
            HostError::Full(_) => self.refused("the node hosts as many rooms as it may"),
            _ => {}
        }
        host_status(e)
    }

    /// The answer for a shard that is between owners: retry shortly, at the preferred node
    /// other than this one.
    fn between_owners(&self, shard: u16, avoid: &[String]) -> pb::NotOwner {
        let mut avoid = avoid.to_vec();
        avoid.push(self.me.id.clone());
        match self.cluster.preferred_avoiding(shard, &avoid) {
            Some(p) => not_owner(shard, p.id, p.addr, true),
            None => not_owner(shard, String::new(), String::new(), true),
        }
    }

    fn check_party(&self, key: &RoomKey) -> Result<(), Status> {
        match self.parties.get(&key.party) {
            Some(_) => Ok(()),
            None => Err(Status::not_found(format!("Party {} not found", key.party))),
        }
    }
}

fn not_owner(shard: u16, node_id: String, addr: String, retry: bool) -> pb::NotOwner {
    pb::NotOwner { node_id, addr, shard: shard as u32, retry }
}

/// A host error as the gRPC answer, or `None` when the room is between owners here (the caller
/// retries elsewhere: the request did not run).
fn host_status(e: HostError) -> Option<Status> {
    match e {
        HostError::UnknownParty(p) => Some(Status::not_found(format!("Party {p} not found"))),
        HostError::NotHere(_) | HostError::Unavailable(_) => None,
        e @ HostError::Interrupted(_) => Some(Status::aborted(e.to_string())),
        HostError::Overloaded(_) => Some(Status::resource_exhausted(OVERLOADED)),
        HostError::Full(_) => Some(Status::resource_exhausted(TOO_MANY_ROOMS)),
    }
}

fn bad(e: wire::Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

/// The stream a link call answers with.
type LinkStream = Pin<Box<dyn Stream<Item = Result<pb::LinkOut, Status>> + Send>>;

fn link_answer(msg: pb::LinkOut) -> Response<LinkStream> {
    Response::new(Box::pin(futures::stream::once(async { Ok(msg) })))
}

#[tonic::async_trait]
impl node_server::Node for NodeService {
    type LinkStream = LinkStream;

    async fn link(&self, req: Request<Streaming<pb::LinkIn>>) -> Result<Response<Self::LinkStream>, Status> {
        let mut inbound = req.into_inner();
        let open = match inbound.message().await?.and_then(|m| m.kind) {
            Some(link_in::Kind::Open(o)) => o,
            _ => return Err(Status::invalid_argument("the first message of a link must be `open`")),
        };
        let key = wire::room_key(open.room).map_err(bad)?;
        self.check_party(&key)?;
        let shard = shard_of(&key);
        let guard = match self.place(shard, open.hops, &open.avoid).await? {
            Decision::Here(g) => g,
            Decision::Elsewhere(n) => {
                self.metrics.redirects.inc();
                return Ok(link_answer(pb::LinkOut { kind: Some(link_out::Kind::NotOwner(n)), valid_until_ms: 0 }));
            }
        };
        let (room_tx, room_rx) = mpsc::channel::<FromRoom>(OUT_QUEUE);
        // For the forwarder's own answers to work it shed (weak: the stream still ends when the
        // room lets go of the link).
        let shed_tx = room_tx.downgrade();
        let fence = fence_for(shard, &self.me.inc, guard.epoch);
        let admit = || guard.accepts();
        let gateway = Some(open.gateway.as_str()).filter(|g| !g.is_empty());
        let link = match self.host.open_link_fenced(&key, Some(fence), &admit, room_tx, gateway).await {
            Ok(link) => link,
            Err(e) => match self.host_status(e) {
                Some(status) => return Err(status),
                None => {
                    self.metrics.redirects.inc();
                    let n = self.between_owners(shard, &open.avoid);
                    return Ok(link_answer(pb::LinkOut { kind: Some(link_out::Kind::NotOwner(n)), valid_until_ms: 0 }));
                }
            },
        };
        let opened = pb::Opened { node_id: self.me.id.clone(), shard: shard as u32, epoch: guard.epoch };
        let opened = pb::LinkOut { kind: Some(link_out::Kind::Opened(opened)), valid_until_ms: 0 };
        tracing::debug!(room = %key, gateway = %open.gateway, shard, "link opened");
        self.metrics.links_opened.inc();
        let (metrics_in, metrics_out) = (self.metrics.clone(), self.metrics.clone());

        // Room -> gateway, encoded as the HTTP/2 stream polls it (no extra task). Nothing leaves
        // after the shard's self-fence deadline, and the link ends as soon as the shard is
        // dropped, even when the room sends nothing more (one stuck in a handler a handover gave
        // up on): its gateway then routes new sockets afresh instead of to this link.
        let out = futures::stream::unfold((room_rx, guard, false), |(mut rx, guard, done)| async move {
            if done {
                return None;
            }
            let gone = || FromRoom::Gone { code: close_code::SERVICE_RESTART, reason: ROOM_MOVED.into() };
            let msg = tokio::select! {
                biased;
                msg = rx.recv() => msg?,
                _ = guard.dropped() => return Some((Ok(wire::link_out(gone())), (rx, guard, true))),
            };
            // The deadline is read and checked in one step: past it on the monotonic or the
            // wall clock (a process that was stopped, a machine that was suspended), the
            // message is not relayed at all.
            let Some(valid_until_ms) = guard.valid_until_unix_ms() else {
                return Some((Ok(wire::link_out(gone())), (rx, guard, true)));
            };
            let end = matches!(msg, FromRoom::Gone { .. } | FromRoom::Moved { .. });
            let mut out = wire::link_out(msg);
            out.valid_until_ms = valid_until_ms;
            Some((Ok(out), (rx, guard, end)))
        })
        .inspect(move |_| {
            metrics_out.link_messages_out.inc();
        });
        // Gateway -> room, in order. The link closes when the gateway ends the stream. A frame or
        // connection the room's queue cannot take within the queue timeout is shed: the socket
        // is closed with 1013 (its later frames dropped, so none arrives after a gap), the
        // connection refused with 503.
        tokio::spawn(async move {
            let mut shed: HashSet<SocketId> = HashSet::new();
            loop {
                match inbound.message().await {
                    Ok(Some(pb::LinkIn { kind: Some(kind) })) => match wire::to_room(kind) {
                        Ok(msg) => {
                            metrics_in.link_messages_in.inc();
                            let (sid, connect) = match &msg {
                                ToRoom::Message { sid, .. } => (Some(*sid), false),
                                ToRoom::Connect { sid, .. } => (Some(*sid), true),
                                ToRoom::Closed { sid, .. } => {
                                    shed.remove(sid);
                                    (None, false)
                                }
                                _ => (None, false),
                            };
                            if sid.is_some_and(|s| !connect && shed.contains(&s)) {
                                continue;
                            }
                            match link.send(msg).await {
                                Ok(()) => {}
                                Err(SendError::Gone(_)) => break,
                                Err(SendError::Overloaded(room)) => {
                                    let Some(sid) = sid else { continue };
                                    tracing::warn!(room = %room, sid, "room queue full; shedding a client");
                                    let answer = if connect {
                                        FromRoom::Refused { sid, status: 503, reason: OVERLOADED.into() }
                                    } else {
                                        shed.insert(sid);
                                        FromRoom::Close {
                                            sid,
                                            code: close_code::TRY_AGAIN_LATER,
                                            reason: OVERLOADED.into(),
                                        }
                                    };
                                    if let Some(tx) = shed_tx.upgrade() {
                                        let _ = tx.send(answer).await;
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "dropping a malformed link message");
                        }
                    },
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            link.close().await;
        });
        Ok(Response::new(Box::pin(futures::stream::once(async { Ok(opened) }).chain(out))))
    }

    async fn request(&self, req: Request<pb::RoomRequest>) -> Result<Response<pb::RoomResponse>, Status> {
        let req = req.into_inner();
        let key = wire::room_key(req.room).map_err(bad)?;
        self.check_party(&key)?;
        let shard = shard_of(&key);
        let not_owner = |n| {
            self.metrics.redirects.inc();
            Ok(Response::new(pb::RoomResponse { kind: Some(room_response::Kind::NotOwner(n)) }))
        };
        let guard = match self.place(shard, req.hops, &req.avoid).await? {
            Decision::Here(g) => g,
            Decision::Elsewhere(n) => return not_owner(n),
        };
        self.metrics.requests.inc();
        let http = wire::request(req.head, req.body).map_err(bad)?;
        let admit = || guard.accepts();
        let fence = Some(fence_for(shard, &self.me.inc, guard.epoch));
        let res = match self.host.request_fenced(&key, fence, &admit, http).await {
            Ok(res) => res,
            Err(e) => match self.host_status(e) {
                Some(status) => return Err(status),
                None => return not_owner(self.between_owners(shard, &req.avoid)),
            },
        };
        if !guard.is_valid() {
            // It ran, but this node stopped being sure it owns the room meanwhile: the answer
            // may rest on stale reads. Not retried (it ran).
            return Err(Status::aborted("the room's shard moved while the request ran"));
        }
        Ok(Response::new(pb::RoomResponse { kind: Some(room_response::Kind::Response(wire::response(res))) }))
    }

    async fn ping(&self, _req: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        let timing = self.shards.timing();
        Ok(Response::new(pb::PingReply {
            node_id: self.me.id.clone(),
            inc: self.me.inc.clone(),
            unix_ms: crate::shards::wall_ms(),
            redis_age_ms: self.shards.redis_age().as_millis() as u64,
            lease_ttl_ms: timing.ttl.as_millis() as u64,
            fence_after_ms: timing.fence_after.as_millis() as u64,
        }))
    }

    async fn info(&self, _req: Request<pb::InfoRequest>) -> Result<Response<pb::InfoReply>, Status> {
        let m = &self.metrics;
        let timing = self.shards.timing();
        Ok(Response::new(pb::InfoReply {
            node_id: self.me.id.clone(),
            addr: self.me.addr.clone(),
            rooms: self.host.room_count() as u32,
            shards_owned: self.shards.count() as u32,
            inc: self.me.inc.clone(),
            state: self.state.name().to_string(),
            connections: self.host.connection_count() as u64,
            cpu_seconds: crate::process::cpu_seconds(),
            rss_bytes: crate::process::rss_bytes(),
            started_unix_ms: self.started_unix_ms,
            lease_ttl_ms: timing.ttl.as_millis() as u64,
            fence_after_ms: timing.fence_after.as_millis() as u64,
            counters: Some(pb::NodeCounters {
                messages_in: m.link_messages_in.get(),
                messages_out: m.link_messages_out.get(),
                commits: m.commit_seconds.count(),
                commit_failures: m.commit_failures.get(),
                leases_lost: m.lease_losses.get() + m.self_fences.get(),
                rooms_refused: m.rooms_refused.get(),
                requests: m.requests.get(),
                alarms: m.alarms_fired.get(),
            }),
        }))
    }

    async fn inspect(&self, req: Request<pb::InspectRequest>) -> Result<Response<pb::RoomView>, Status> {
        let req = req.into_inner();
        let key = wire::room_key(req.room).map_err(bad)?;
        let shard = shard_of(&key);
        let max_keys = (req.max_keys as usize).min(MAX_INSPECT_KEYS);
        let running = self.host.running(&key);
        let snapshot = async {
            match &running {
                Some(r) => Some(tokio::time::timeout(INSPECT_WAIT, r.handle.inspect()).await),
                None => None,
            }
        };
        let (storage, snapshot) = tokio::join!(self.store.inspect(&key, max_keys), snapshot);
        let storage =
            storage.map_err(|e| Status::unavailable(format!("could not read the storage of room {key}: {e}")))?;
        let mut view = pb::RoomView {
            node_id: self.me.id.clone(),
            running: false,
            shard: shard as u32,
            epoch: 0,
            hibernates: self.parties.get(&key.party).is_some_and(|f| f.options().hibernate),
            connections: Vec::new(),
            storage_keys: storage.keys,
            storage_bytes: storage.bytes,
            quota_bytes: self.limits.max_room_bytes,
            next_alarm_ms: storage.next_alarm_ms.unwrap_or(0),
            keys: storage.first_keys,
        };
        match (running, snapshot) {
            (Some(r), Some(Ok(Ok(snap)))) => {
                view.running = true;
                view.epoch = r.epoch.unwrap_or(0);
                view.hibernates = snap.hibernates;
                view.connections = snap
                    .connections
                    .into_iter()
                    .map(|c| pb::ConnView { id: c.id, tags: c.tags, gateway: c.gateway })
                    .collect();
            }
            // It stopped meanwhile: not running here.
            (_, Some(Ok(Err(_)))) | (None, _) => {}
            (_, Some(Err(_))) => {
                return Err(Status::deadline_exceeded(format!(
                    "room {key} runs here but did not answer within {} s (a long handler, or a full queue)",
                    INSPECT_WAIT.as_secs()
                )));
            }
            (Some(_), None) => unreachable!("a running room is asked"),
        }
        Ok(Response::new(view))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainReply>, Status> {
        let who = who(&req.into_inner().who);
        Ok(Response::new(self.control.drain(&who)))
    }

    async fn move_shard(&self, req: Request<pb::MoveShardRequest>) -> Result<Response<pb::MoveShardReply>, Status> {
        let req = req.into_inner();
        let who = who(&req.who);
        let shard = u16::try_from(req.shard)
            .ok()
            .filter(|s| *s < SHARDS)
            .ok_or_else(|| Status::invalid_argument(format!("shard {} is not in 0..{SHARDS}", req.shard)))?;
        let reply = match self.control.move_shard(shard, &who).await {
            Some(rooms) => pb::MoveShardReply { held: true, rooms: rooms as u32 },
            None => pb::MoveShardReply { held: false, rooms: 0 },
        };
        Ok(Response::new(reply))
    }

    async fn close_room(&self, req: Request<pb::CloseRoomRequest>) -> Result<Response<pb::CloseRoomReply>, Status> {
        let req = req.into_inner();
        let who = who(&req.who);
        let key = wire::room_key(req.room).map_err(bad)?;
        let (code, reason) = match req.code {
            0 => (close_code::SERVICE_RESTART, CLOSED_BY_OPERATOR.to_string()),
            c => match u16::try_from(c).ok().filter(|c| sendable_close_code(*c)) {
                Some(c) => (c, close_reason(&req.reason)),
                None => {
                    return Err(Status::invalid_argument(format!(
                        "close code {c} cannot be sent (use 1000-1003, 1007-1014 or 3000-4999)"
                    )))
                }
            },
        };
        let connections = self.host.running(&key).map_or(0, |r| r.handle.connection_count());
        let stopped = self.host.shutdown_rooms(|k| k == &key, code, &reason) > 0;
        tracing::info!(room = %key, who = %who, running = stopped, connections, code, "an operator closed a room");
        if stopped {
            let text = format!("closed room {key} ({connections} connections closed with {code})");
            let event = self.events.event(Kind::Action, text).by(who).shard(shard_of(&key));
            self.events.record(event.room(key.to_string()));
        }
        Ok(Response::new(pb::CloseRoomReply { running: stopped, connections: connections as u32 }))
    }
}

/// Who asked for an operator's action, as the request names them.
fn who(asked: &str) -> String {
    match asked.trim() {
        "" => "unknown".to_string(),
        w => w.chars().take(200).collect(),
    }
}

/// Whether a server may send `code` in a close frame (RFC 6455 section 7.4; 1004-1006 and 1015
/// are reserved, 1015 never sent; 2000-2999 for extensions).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use partyline_cluster::redis::testing::RedisServer;

    #[tokio::test]
    async fn only_a_process_that_exited_counts_as_gone() {
        let mut server = RedisServer::start();
        let addr = format!("127.0.0.1:{}", server.port());
        assert!(!process_gone(&addr).await, "a running process is not gone");
        // Paused (SIGSTOP): its kernel still completes connections, so it is never taken over
        // before its lease expires.
        server.pause();
        assert!(!process_gone(&addr).await, "a paused process is not gone");
        server.resume();
        server.stop();
        assert!(process_gone(&addr).await, "an exited process refuses connections");
    }

    #[tokio::test]
    async fn a_lease_is_broken_only_when_its_holder_is_provably_gone() {
        let server = RedisServer::start();
        let redis = partyline_cluster::redis::testing::connect(&server.url(), "pl").await;
        let (leases, members) = (redis.leases(), redis.membership());
        let ttl = Duration::from_secs(30);
        // A port that refuses connections: a node that exited, a draining node that closed its
        // listener, or a live node behind a REJECT rule.
        let refusing = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let answering = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let answering_addr = answering.local_addr().unwrap().to_string();
        let b1 = NodeInfo { id: "b".into(), inc: "b-1".into(), addr: refusing.clone(), ..NodeInfo::default() };
        let grant = |shard: u16, addr: String| {
            let leases = leases.clone();
            async move { leases.acquire(shard, "b", "b-1", &addr, ttl).await.unwrap() }
        };
        let held_by = |shard: u16| {
            let leases = leases.clone();
            async move { leases.owner(shard).await.unwrap().map(|l| l.inc) }
        };

        // Refused, but its record still carries the lease's incarnation: a live holder.
        grant(1, refusing.clone()).await;
        members.heartbeat(&b1, ttl).await.unwrap();
        assert!(!take_over_if_gone(&leases, &members, "a-1", 1, "b", None).await, "a live member is not deposed");
        assert_eq!(held_by(1).await.as_deref(), Some("b-1"));
        // Not for another owner than the one named, nor from our own incarnation.
        assert!(!take_over_if_gone(&leases, &members, "a-1", 1, "c", None).await);
        assert!(!take_over_if_gone(&leases, &members, "b-1", 1, "b", None).await);

        // A new incarnation registered under its id, and the old address refuses.
        let b2 = NodeInfo { inc: "b-2".into(), ..b1.clone() };
        members.heartbeat(&b2, ttl).await.unwrap();
        assert!(take_over_if_gone(&leases, &members, "a-1", 1, "b", None).await, "a restarted holder's old lease");
        assert_eq!(held_by(1).await, None);

        // Its record is gone, but its port answers: not gone (a node cut from Redis a while).
        grant(2, answering_addr.clone()).await;
        members.leave("b").await.unwrap();
        assert!(!take_over_if_gone(&leases, &members, "a-1", 2, "b", None).await, "its port answers");
        assert_eq!(held_by(2).await.as_deref(), Some("b-1"));

        // Its record is gone and its port refuses: gone.
        grant(3, refusing).await;
        assert!(take_over_if_gone(&leases, &members, "a-1", 3, "b", None).await, "no record and a refused port");
        assert_eq!(held_by(3).await, None);

        // Restarted on the same address (a pod that came back): its port answers, but the new
        // incarnation under its id proves the lease's process gone.
        grant(4, answering_addr.clone()).await;
        members.heartbeat(&b2, ttl).await.unwrap();
        assert!(take_over_if_gone(&leases, &members, "a-1", 4, "b", None).await, "a restart on the same address");
        assert_eq!(held_by(4).await, None);
        drop(answering);
    }
}
