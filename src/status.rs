//! `partyline status`: what a cluster looks like right now, read from Redis (members, leases)
//! and from each node (rooms running).

use std::collections::BTreeMap;

use anyhow::Context;
use partyline::runtime::placement::{shard_of, SHARDS};
use partyline::RoomKey;
use partyline_cluster::client::Auth;
use partyline_cluster::redis::{Redis, RedisConfig};
use partyline_cluster::tls::ClusterTls;
use partyline_proto::pb;

/// Prints the cluster's members with their shards and rooms; with `room` (`party/room`), that
/// room's shard and owner.
pub async fn run(
    redis: RedisConfig,
    secret: String,
    tls: Option<ClusterTls>,
    room: Option<String>,
) -> anyhow::Result<()> {
    let redis = Redis::connect(redis).await?;
    match redis.cluster_primaries() {
        Some(primaries) => println!("Redis Cluster, {} primaries: {}", primaries.len(), primaries.join(" ")),
        None => println!("Redis: one server"),
    }
    let nodes = redis.membership().live().await.context("reading members")?;
    let shards: Vec<u16> = (0..SHARDS).collect();
    let owners = redis.leases().owners(&shards).await.context("reading leases")?;
    let mut per_owner: BTreeMap<String, usize> = BTreeMap::new();
    for o in owners.iter().flatten() {
        *per_owner.entry(o.owner.clone()).or_default() += 1;
    }
    println!("{} live node(s); {} of {} shards leased", nodes.len(), owners.iter().flatten().count(), SHARDS);
    println!("{:<20} {:<22} {:>7} {:>7}  state", "node", "address", "shards", "rooms");
    for n in &nodes {
        let rooms = match info(&n.addr, &secret, tls.as_ref()).await {
            Ok(i) => i.rooms.to_string(),
            Err(e) => format!("? ({e})"),
        };
        let state = if n.draining { "draining" } else { "live" };
        let shards = per_owner.get(&n.id).copied().unwrap_or(0);
        println!("{:<20} {:<22} {:>7} {:>7}  {state}", n.id, n.addr, shards, rooms);
    }
    let orphans: Vec<&String> = per_owner.keys().filter(|id| !nodes.iter().any(|n| &&n.id == id)).collect();
    if !orphans.is_empty() {
        println!("leases still held by nodes that are not live (they expire on their own): {orphans:?}");
    }
    let deploys = partyline_cluster::redis::deploys::Deploys::of(&redis);
    if let Some(v) = deploys.current().await.context("reading the deployed version")? {
        println!("deployed version: {v} (partyline deploy --list shows them all)");
        #[cfg(feature = "partykit")]
        crate::deploy::print_served(&deploys).await?;
    }
    if let Some(spec) = room {
        let (party, id) = spec.split_once('/').context("--room must look like party/room")?;
        let key = RoomKey::new(party, id);
        let shard = shard_of(&key);
        match owners.get(shard as usize).cloned().flatten() {
            Some(o) => println!("room {key}: shard {shard}, owned by {} ({}) at epoch {}", o.owner, o.addr, o.epoch),
            None => println!("room {key}: shard {shard}, not owned by any node (it is placed on first use)"),
        }
    }
    Ok(())
}

async fn info(addr: &str, secret: &str, tls: Option<&ClusterTls>) -> anyhow::Result<pb::InfoReply> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client())?;
    }
    let channel = endpoint.connect_timeout(std::time::Duration::from_secs(2)).connect().await?;
    let mut client = pb::node_client::NodeClient::with_interceptor(channel, Auth::new(secret)?);
    Ok(client.info(pb::InfoRequest {}).await?.into_inner())
}
