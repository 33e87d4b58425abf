//! What operators see of a cluster and what they can do to it, shared by the console
//! ([`crate::console`]) and the command line (`partyline status`, `partyline room`,
//! `partyline drain`): one [`Overview`] (nodes, gateways, Redis, the lease profile, the shard
//! map, counters for rates), a room's lookup ([`RoomLookup`]), and the actions (drain a node,
//! move a shard, close a room's connections).
//!
//! Everything is read from Redis (members, leases, gateways' records) and from the nodes
//! themselves over gRPC (`Info`, `Inspect`), with the cluster secret; the actions are node RPCs
//! (`Drain`, `MoveShard`, `CloseRoom`) that name who asked, and the node records them in the
//! cluster's events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use partyline::runtime::placement::{shard_of, SHARDS};
use partyline::storage::unix_ms;
use partyline::sync::Lock;
use partyline::RoomKey;
use partyline_cluster::client::{Auth, Client, ClusterClient};
use partyline_cluster::redis::events::Event;
use partyline_cluster::redis::gateways::GatewayRecord;
use partyline_cluster::redis::{LeaseTiming, NodeInfo, Redis};
use partyline_cluster::tls::ClusterTls;
use partyline_proto::pb;
use serde::{Deserialize, Serialize};

/// How long one node may take to answer `Info` or `Inspect` before it is shown as unreachable.
const NODE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A gateway's record older than this is not listed (gateways write theirs every 2 s).
pub const GATEWAY_RECORD_AGE: Duration = Duration::from_secs(10);

/// The operator's view of a cluster and its actions.
#[derive(Clone)]
pub struct Ops {
    redis: Redis,
    secret: String,
    tls: Option<ClusterTls>,
    channels: Arc<Mutex<HashMap<String, Client>>>,
    /// A gateway's view of the nodes (the suspects it routes around), when there is one.
    view: Option<ClusterClient>,
}

/// Redis as the cluster sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RedisView {
    /// `single` or `cluster`.
    pub mode: String,
    /// A Redis Cluster's primaries, as last seen.
    pub primaries: Vec<String>,
    pub reachable: bool,
    /// The cluster marker is present (`partyline init` ran and Redis kept its data).
    pub marker: bool,
    pub error: Option<String>,
}

/// The lease profile nodes run with.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LeaseView {
    /// `standard`, `fast` or `custom` (`unknown` while no node answered).
    pub profile: String,
    pub ttl_ms: u64,
    pub fence_after_ms: u64,
}

/// Counters of a node since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeCounters {
    pub messages_in: u64,
    pub messages_out: u64,
    pub commits: u64,
    pub commit_failures: u64,
    pub leases_lost: u64,
    pub rooms_refused: u64,
    pub requests: u64,
    pub alarms: u64,
}

/// One node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub addr: String,
    pub inc: String,
    /// What the node says (`ready`, `draining`, `drained`, `refusing`, `uninitialized`,
    /// `cut_from_redis`, `starting`), or `suspect` (a member that does not answer, or that the
    /// answering gateway routes around) or `gone` (not a member, but still holding leases).
    pub state: String,
    pub reachable: bool,
    pub error: Option<String>,
    /// Shard leases held (from Redis).
    pub shards: u64,
    pub rooms: u64,
    pub connections: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub started_unix_ms: u64,
    pub counters: NodeCounters,
}

/// The shard map: `map[shard]` is an index into `owners`, or -1 for no lease.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardMap {
    pub owners: Vec<String>,
    pub map: Vec<i32>,
}

impl ShardMap {
    /// Shards held by each owner.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for &i in &self.map {
            if let Some(owner) = usize::try_from(i).ok().and_then(|i| self.owners.get(i)) {
                *counts.entry(owner.clone()).or_default() += 1;
            }
        }
        counts
    }
}

/// The cluster at a glance.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Overview {
    pub unix_ms: u64,
    /// The gateway that answered (empty from the command line).
    pub gateway: String,
    pub redis: RedisView,
    pub lease: LeaseView,
    pub nodes: Vec<NodeView>,
    pub gateways: Vec<GatewayRecord>,
    pub shards: ShardMap,
}

/// A room's owner.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OwnerView {
    pub id: String,
    pub addr: String,
    pub epoch: u64,
}

/// One connection of a room.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnView {
    pub id: String,
    pub tags: Vec<String>,
    pub gateway: String,
    /// Held by a gateway while the room is out of memory (hibernation).
    pub hibernating: bool,
}

/// A room's storage against its quota.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StorageView {
    pub keys: u64,
    pub bytes: u64,
    /// 0: no quota.
    pub quota_bytes: u64,
    pub first_keys: Vec<String>,
}

/// A room by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomLookup {
    pub party: String,
    pub room: String,
    pub shard: u16,
    /// The shard's lease holder (`None`: no node holds it; the room starts on first use).
    pub owner: Option<OwnerView>,
    /// Running on its owner now.
    pub running: bool,
    pub hibernates: bool,
    /// The node that answered the lookup (the owner, else any live node, for storage).
    pub answered_by: Option<String>,
    pub connections: Vec<ConnView>,
    pub storage: StorageView,
    /// ms since the Unix epoch.
    pub next_alarm_ms: Option<i64>,
    /// Why the lookup is incomplete, if it is.
    pub error: Option<String>,
}

/// What an action did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActionReply {
    pub ok: bool,
    pub message: String,
}

/// The storage keys a room lookup lists.
const LOOKUP_KEYS: u32 = 50;

/// The name of a lease profile.
fn profile_name(ttl_ms: u64, fence_after_ms: u64) -> &'static str {
    let is = |t: LeaseTiming| t.ttl.as_millis() as u64 == ttl_ms && t.fence_after.as_millis() as u64 == fence_after_ms;
    if is(LeaseTiming::STANDARD) {
        "standard"
    } else if is(LeaseTiming::FAST) {
        "fast"
    } else {
        "custom"
    }
}

impl Ops {
    /// Operations over `redis`, calling nodes with `secret` (and cluster TLS when given).
    pub fn new(redis: Redis, secret: String, tls: Option<ClusterTls>) -> anyhow::Result<Self> {
        Auth::new(&secret)?;
        Ok(Ops { redis, secret, tls, channels: Arc::default(), view: None })
    }

    /// The same, with a gateway's view of the nodes: members it routes around show as suspect.
    pub fn with_view(mut self, view: ClusterClient) -> Self {
        self.view = Some(view);
        self
    }

    /// The Redis this reads.
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    fn node(&self, addr: &str) -> anyhow::Result<Client> {
        if let Some(view) = &self.view {
            return view.node(addr).map_err(|e| anyhow::anyhow!("{e}"));
        }
        if let Some(c) = self.channels.locked().get(addr) {
            return Ok(c.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .with_context(|| format!("bad node address {addr}"))?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.client())?;
        }
        let channel = endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy();
        let client = pb::node_client::NodeClient::with_interceptor(channel, Auth::new(&self.secret)?);
        self.channels.locked().insert(addr.to_string(), client.clone());
        Ok(client)
    }

    async fn info(&self, addr: &str) -> anyhow::Result<pb::InfoReply> {
        let mut client = self.node(addr)?;
        let reply = tokio::time::timeout(NODE_TIMEOUT, client.info(pb::InfoRequest {}))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {NODE_TIMEOUT:?}"))??;
        Ok(reply.into_inner())
    }

    async fn redis_view(&self) -> RedisView {
        let mut view = RedisView {
            mode: if self.redis.is_cluster() { "cluster" } else { "single" }.into(),
            primaries: self.redis.cluster_primaries().unwrap_or_default(),
            ..RedisView::default()
        };
        match tokio::time::timeout(NODE_TIMEOUT, self.redis.marker().get()).await {
            Ok(Ok(marker)) => {
                view.reachable = true;
                view.marker = marker.is_some();
            }
            Ok(Err(e)) => view.error = Some(e.to_string()),
            Err(_) => view.error = Some(format!("no answer within {NODE_TIMEOUT:?}")),
        }
        view
    }

    /// The shard map from the leases in Redis, and the holder of each shard.
    async fn shard_map(&self) -> anyhow::Result<(ShardMap, Vec<Option<partyline_cluster::redis::LeaseInfo>>)> {
        let shards: Vec<u16> = (0..SHARDS).collect();
        let leases = self.redis.leases().owners(&shards).await.context("reading the shard leases")?;
        let mut map = ShardMap { owners: Vec::new(), map: Vec::with_capacity(leases.len()) };
        let mut index: HashMap<&str, i32> = HashMap::new();
        for lease in &leases {
            map.map.push(match lease {
                Some(l) => *index.entry(&l.owner).or_insert_with(|| {
                    map.owners.push(l.owner.clone());
                    map.owners.len() as i32 - 1
                }),
                None => -1,
            });
        }
        Ok((map, leases))
    }

    /// The cluster now. Fails only when Redis cannot be read; a node that does not answer is
    /// listed as suspect, with why.
    pub async fn overview(&self, gateway: &str) -> anyhow::Result<Overview> {
        let members = self.redis.membership().live().await.context("reading the members from Redis")?;
        let (shards, leases) = self.shard_map().await?;
        let counts = shards.counts();
        let infos = futures::future::join_all(members.iter().map(|m| self.info(&m.addr))).await;
        let avoided: HashMap<String, String> = match &self.view {
            Some(view) => view.unusable().into_iter().map(|(id, why)| (id, why.to_string())).collect(),
            None => HashMap::new(),
        };
        let mut lease = LeaseView { profile: "unknown".into(), ..LeaseView::default() };
        let mut nodes: Vec<NodeView> =
            members.iter().zip(infos).map(|(m, info)| node_view(m, info, &counts, &avoided, &mut lease)).collect();
        // Lease holders that are no longer members: gone, their leases running out.
        let mut gone: BTreeMap<&str, &partyline_cluster::redis::LeaseInfo> = BTreeMap::new();
        for l in leases.iter().flatten() {
            if !members.iter().any(|m| m.id == l.owner) {
                gone.entry(&l.owner).or_insert(l);
            }
        }
        for (id, l) in gone {
            nodes.push(NodeView {
                id: id.to_string(),
                addr: l.addr.clone(),
                inc: l.inc.clone(),
                state: "gone".into(),
                error: Some("not a member any more; its leases run out by themselves".into()),
                shards: counts.get(id).copied().unwrap_or(0),
                ..NodeView::default()
            });
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let gateways = match self.redis.gateways().live(GATEWAY_RECORD_AGE).await {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the gateways' records");
                Vec::new()
            }
        };
        Ok(Overview {
            unix_ms: unix_ms(),
            gateway: gateway.to_string(),
            redis: self.redis_view().await,
            lease,
            nodes,
            gateways,
            shards,
        })
    }

    async fn member(&self, id: &str) -> anyhow::Result<NodeInfo> {
        let members = self.redis.membership().live().await.context("reading the members from Redis")?;
        members.into_iter().find(|m| m.id == id).with_context(|| format!("no live node {id:?}"))
    }

    /// Room `party/room`: its shard and owner, and what the owner (or, for storage, any live
    /// node) says of it.
    pub async fn room(&self, party: &str, room: &str) -> anyhow::Result<RoomLookup> {
        let key = RoomKey::new(party, room);
        let shard = shard_of(&key);
        let owner = self.redis.leases().owners(&[shard]).await.context("reading the room's lease")?.pop().flatten();
        let members = self.redis.membership().live().await.context("reading the members from Redis")?;
        let mut lookup = RoomLookup {
            party: party.into(),
            room: room.into(),
            shard,
            owner: owner.as_ref().map(|o| OwnerView { id: o.owner.clone(), addr: o.addr.clone(), epoch: o.epoch }),
            ..RoomLookup::default()
        };
        // The owner first (it knows the connections), then any other live node (storage).
        let mut ask: Vec<&str> = Vec::new();
        if let Some(o) = owner.as_ref().filter(|o| members.iter().any(|m| m.id == o.owner)) {
            ask.push(&o.addr);
        }
        for m in &members {
            if !ask.contains(&m.addr.as_str()) {
                ask.push(&m.addr);
            }
        }
        let req = pb::InspectRequest {
            room: Some(pb::RoomRef { party: party.into(), room: room.into() }),
            max_keys: LOOKUP_KEYS,
        };
        let mut errors = Vec::new();
        for addr in ask {
            let answer = async {
                let mut client = self.node(addr)?;
                let r = tokio::time::timeout(NODE_TIMEOUT, client.inspect(req.clone()))
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {NODE_TIMEOUT:?}"))??;
                anyhow::Ok(r.into_inner())
            };
            match answer.await {
                Ok(view) => {
                    fill_lookup(&mut lookup, view);
                    break;
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        if lookup.answered_by.is_none() {
            lookup.error = Some(if errors.is_empty() { "no live node to ask".into() } else { errors.join("; ") });
        }
        Ok(lookup)
    }

    /// Asks node `id` to drain (it stays up, draining, until stopped).
    pub async fn drain(&self, id: &str, who: &str) -> anyhow::Result<ActionReply> {
        let node = self.member(id).await?;
        let mut client = self.node(&node.addr)?;
        let r = client.drain(pb::DrainRequest { who: who.into() }).await.context("the drain call failed")?.into_inner();
        let message = if r.already {
            format!("{id} was already draining")
        } else {
            format!("{id} is draining: {} shards and {} rooms to move", r.shards, r.rooms)
        };
        tracing::info!(node = id, who, "{message}");
        Ok(ActionReply { ok: true, message })
    }

    /// Asks `shard`'s owner to hand it over now.
    pub async fn move_shard(&self, shard: u16, who: &str) -> anyhow::Result<ActionReply> {
        anyhow::ensure!(shard < SHARDS, "shard {shard} does not exist (0 to {})", SHARDS - 1);
        let Some(owner) = self.redis.leases().owners(&[shard]).await?.pop().flatten() else {
            return Ok(ActionReply { ok: false, message: format!("no node holds shard {shard}: nothing to move") });
        };
        let mut client = self.node(&owner.addr)?;
        let r = client
            .move_shard(pb::MoveShardRequest { shard: shard.into(), who: who.into() })
            .await
            .context("the move call failed")?
            .into_inner();
        let message = if r.held {
            format!("{} handed shard {shard} over ({} rooms moved)", owner.owner, r.rooms)
        } else {
            format!("{} no longer held shard {shard}: nothing moved", owner.owner)
        };
        tracing::info!(shard, who, "{message}");
        Ok(ActionReply { ok: r.held, message })
    }

    /// Moves the shard room `party/room` is in.
    pub async fn move_room(&self, party: &str, room: &str, who: &str) -> anyhow::Result<ActionReply> {
        let shard = shard_of(&RoomKey::new(party, room));
        let mut reply = self.move_shard(shard, who).await?;
        reply.message = format!("room {party}/{room} is in shard {shard}: {}", reply.message);
        Ok(reply)
    }

    /// Stops room `party/room` on its owner, closing its connections (1012).
    pub async fn close_room(&self, party: &str, room: &str, who: &str) -> anyhow::Result<ActionReply> {
        let key = RoomKey::new(party, room);
        let shard = shard_of(&key);
        let Some(owner) = self.redis.leases().owners(&[shard]).await?.pop().flatten() else {
            return Ok(ActionReply {
                ok: false,
                message: format!("room {key} is not running (no node holds its shard)"),
            });
        };
        let mut client = self.node(&owner.addr)?;
        let r = client
            .close_room(pb::CloseRoomRequest {
                room: Some(pb::RoomRef { party: party.into(), room: room.into() }),
                who: who.into(),
                code: 0,
                reason: String::new(),
            })
            .await
            .context("the close call failed")?
            .into_inner();
        let message = if r.running {
            format!("room {key} stopped on {}: {} connections closed", owner.owner, r.connections)
        } else {
            format!("room {key} was not running on {}", owner.owner)
        };
        tracing::info!(room = %key, who, "{message}");
        Ok(ActionReply { ok: r.running, message })
    }

    /// The newest `n` events of the cluster.
    pub async fn events(&self, n: usize) -> anyhow::Result<Vec<Event>> {
        Ok(self.redis.events().recent(n).await?)
    }

    /// Node `id`'s state as it reports it (`None`: not a member any more).
    pub async fn node_state(&self, id: &str) -> anyhow::Result<Option<(String, u32)>> {
        let Ok(node) = self.member(id).await else { return Ok(None) };
        let info = self.info(&node.addr).await?;
        Ok(Some((info.state, info.shards_owned)))
    }
}

fn node_view(
    member: &NodeInfo,
    info: anyhow::Result<pb::InfoReply>,
    counts: &BTreeMap<String, u64>,
    avoided: &HashMap<String, String>,
    lease: &mut LeaseView,
) -> NodeView {
    let mut view = NodeView {
        id: member.id.clone(),
        addr: member.addr.clone(),
        inc: member.inc.clone(),
        shards: counts.get(&member.id).copied().unwrap_or(0),
        ..NodeView::default()
    };
    match info {
        Ok(i) => {
            view.reachable = true;
            view.state = if i.state.is_empty() { "ready".into() } else { i.state };
            view.rooms = i.rooms.into();
            view.connections = i.connections;
            view.cpu_seconds = i.cpu_seconds;
            view.rss_bytes = i.rss_bytes;
            view.started_unix_ms = i.started_unix_ms;
            if let Some(c) = i.counters {
                view.counters = NodeCounters {
                    messages_in: c.messages_in,
                    messages_out: c.messages_out,
                    commits: c.commits,
                    commit_failures: c.commit_failures,
                    leases_lost: c.leases_lost,
                    rooms_refused: c.rooms_refused,
                    requests: c.requests,
                    alarms: c.alarms,
                };
            }
            if lease.ttl_ms == 0 && i.lease_ttl_ms > 0 {
                *lease = LeaseView {
                    profile: profile_name(i.lease_ttl_ms, i.fence_after_ms).into(),
                    ttl_ms: i.lease_ttl_ms,
                    fence_after_ms: i.fence_after_ms,
                };
            }
        }
        Err(e) => {
            view.state = "suspect".into();
            view.error = Some(format!("does not answer: {e:#}"));
        }
    }
    if let Some(why) = avoided.get(&member.id) {
        view.state = "suspect".into();
        view.error = Some(format!("routed around: {why}"));
    }
    view
}

fn fill_lookup(lookup: &mut RoomLookup, view: pb::RoomView) {
    lookup.answered_by = Some(view.node_id);
    lookup.running = view.running;
    lookup.hibernates = view.hibernates;
    lookup.connections = view
        .connections
        .into_iter()
        .map(|c| ConnView { id: c.id, tags: c.tags, gateway: c.gateway, hibernating: false })
        .collect();
    lookup.storage = StorageView {
        keys: view.storage_keys,
        bytes: view.storage_bytes,
        quota_bytes: view.quota_bytes,
        first_keys: view.keys,
    };
    lookup.next_alarm_ms = (view.next_alarm_ms > 0).then_some(view.next_alarm_ms);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_map_counts_each_owner() {
        let map = ShardMap { owners: vec!["a".into(), "b".into()], map: vec![0, 1, 1, -1, 0, 1] };
        let counts = map.counts();
        assert_eq!(counts.get("a"), Some(&2));
        assert_eq!(counts.get("b"), Some(&3));
        assert_eq!(counts.len(), 2);
    }

    #[test]
    fn lease_profiles_are_named() {
        let ms = |d: Duration| d.as_millis() as u64;
        assert_eq!(profile_name(ms(LeaseTiming::FAST.ttl), ms(LeaseTiming::FAST.fence_after)), "fast");
        assert_eq!(profile_name(ms(LeaseTiming::STANDARD.ttl), ms(LeaseTiming::STANDARD.fence_after)), "standard");
        assert_eq!(profile_name(1, 2), "custom");
    }
}
