//! The alarm index: each shard's rooms with an alarm, in time order (`pl:{s<shard>}:alarms`),
//! written by the commit script together with the room's alarm key, so setting an alarm stays
//! one script on one hash slot (on a Redis Cluster, one primary).
//!
//! **Finding due alarms.** A node looks after the alarms of the shards it owns (and of those it
//! should own, to pick up a crashed owner's). Reading 4096 indexes every 250 ms poll would be
//! 16,000 commands a second for nothing, so a node keeps a [`Hints`] entry per shard: the
//! earliest alarm time the index may hold, learnt from its last read. A shard's index is read
//! again only when
//!
//! - that time has come (an alarm is due, or still due because its room did not run it yet);
//! - this node's commits may have added an earlier alarm ([`Hints::wrote`], called by the store
//!   for every commit with a `SetAlarm` that Redis did not refuse);
//! - the shard was acquired under another epoch since, or given up (another node may have
//!   written it meanwhile: only the lease holder writes a shard, so while the epoch stays the
//!   same, this node's own commits are the only writes);
//! - the last read is 10 to 20 s old (spread over the shards). This is also how a node learns
//!   the alarms of a shard it should own but does not: whoever holds that shard polls it
//!   itself, and when that holder crashes, its due alarms are found here within 20 s.
//!
//! A read and a commit can race (the read leaves Redis before the commit's alarm lands, its
//! answer is processed after the commit's hint): every hint carries a version that commits
//! bump, and a read only records what it learnt if no commit bumped the version meanwhile.
//!
//! Reads of several shards are one pipeline on one Redis server, one pipeline per primary on a
//! Redis Cluster (see [`super::conn::Connection::each`]). A node that looks after all 4096
//! shards and has no due alarm thus reads at most about 400 indexes a second (4096 every
//! 10 s), not 16,000 (4096 every 250 ms).
//!
//! **Upgrading.** Earlier versions kept one index for all shards (`pl:alarms`). At most every
//! 30 s, a node moves whatever that index still holds into the shards' indexes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ::redis::Value;
use partyline::runtime::placement::SHARDS;
use partyline::store::{RoomKey, StoreError};
use partyline::sync::Lock;

use super::conn::Connection;
use super::keys::{self, Keys};

/// Entries read from one shard's index per request.
const PAGE: usize = 16;
/// Most further pages read per poll for shards whose first page was all due and skipped.
const MAX_ROUNDS: usize = 8;
/// Longest a shard's hint is trusted without a read (plus a per-shard spread of up to 10 s, so
/// the reads of many shards do not come all at once).
const REFRESH: Duration = Duration::from_secs(10);
/// How often the obsolete global index is checked for entries to move.
const LEGACY_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Hint {
    /// The epoch the shard was owned under when read (`None`: read while not owned).
    epoch: Option<u64>,
    /// The earliest alarm time the index may hold (`i64::MAX`: none).
    next: i64,
    /// Bumped by every commit that may have set an alarm in the shard.
    version: u64,
    /// When the index was last read (`None`: never).
    read_at: Option<Instant>,
}

impl Default for Hint {
    fn default() -> Self {
        Hint { epoch: None, next: i64::MIN, version: 0, read_at: None }
    }
}

/// What this process knows about each shard's alarm index; see the module docs. Shared by the
/// stores of one [`super::Redis`].
#[derive(Debug)]
pub struct Hints {
    shards: Mutex<Vec<Hint>>,
    legacy_checked: Mutex<Option<Instant>>,
}

impl Default for Hints {
    fn default() -> Self {
        Hints { shards: Mutex::new(vec![Hint::default(); SHARDS as usize]), legacy_checked: Mutex::new(None) }
    }
}

impl Hints {
    /// A commit to `shard` may have set an alarm at `earliest` (the smallest `SetAlarm` time).
    pub fn wrote(&self, shard: u16, earliest: i64) {
        let mut shards = self.shards.locked();
        let h = &mut shards[shard as usize];
        h.version += 1;
        h.next = h.next.min(earliest);
    }

    /// Whether `shard` must be read now, and the version to record the read under.
    fn needs_read(&self, shard: u16, epoch: Option<u64>, now_ms: i64, now: Instant) -> Option<u64> {
        let h = self.shards.locked()[shard as usize];
        let Some(read_at) = h.read_at else { return Some(h.version) };
        let age = now.saturating_duration_since(read_at);
        let spread = REFRESH.mul_f64(f64::from(shard % 64) / 64.0);
        let stale = h.epoch != epoch || h.next <= now_ms || age >= REFRESH + spread;
        stale.then_some(h.version)
    }

    /// Records a read of `shard` (earliest alarm `next`) unless a commit came in between.
    fn read(&self, shard: u16, epoch: Option<u64>, version: u64, next: i64, at: Instant) {
        let mut shards = self.shards.locked();
        let h = &mut shards[shard as usize];
        if h.version == version {
            *h = Hint { epoch, next, version, read_at: Some(at) };
        }
    }

    /// Whether the obsolete global index is due for a check (and notes the check).
    fn legacy_due(&self, now: Instant) -> bool {
        let mut last = self.legacy_checked.locked();
        if last.is_some_and(|t| now.saturating_duration_since(t) < LEGACY_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// One alarm as the index holds it.
struct Entry {
    room: RoomKey,
    at: i64,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// Parses a `ZRANGEBYSCORE … WITHSCORES` answer.
fn parse_page(value: Value, shard: u16) -> Result<Vec<Entry>, StoreError> {
    let pairs: Vec<(Vec<u8>, f64)> = ::redis::from_redis_value(value).map_err(backend)?;
    pairs
        .into_iter()
        .map(|(member, score)| match keys::parse_alarm_member(&member) {
            Some((s, room)) if s == shard => Ok(Entry { room, at: score as i64 }),
            _ => Err(StoreError::Backend(format!(
                "corrupt member {:?} in the alarm index of shard {shard}",
                String::from_utf8_lossy(&member)
            ))),
        })
        .collect()
}

fn page_cmd(keys: &Keys, shard: u16, max: &str, offset: usize, count: usize) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("ZRANGEBYSCORE");
    cmd.arg(keys.shard_alarms(shard)).arg("-inf").arg(max).arg("WITHSCORES").arg("LIMIT").arg(offset).arg(count);
    cmd
}

/// The earliest `limit` due alarms of every shard (no hints): what [`partyline::store::Store::due_alarms`]
/// answers. One command per shard; meant for tests and tools, not for a poll loop.
pub(crate) async fn due_everywhere(
    conn: &Connection,
    keys: &Keys,
    now_ms: i64,
    limit: usize,
) -> Result<Vec<(RoomKey, i64)>, StoreError> {
    let now = now_ms.to_string();
    let cmds = (0..SHARDS).map(|s| page_cmd(keys, s, &now, 0, limit)).collect();
    let mut out = Vec::new();
    for (shard, answer) in (0..SHARDS).zip(conn.each(cmds).await) {
        out.extend(parse_page(answer.map_err(backend)?, shard)?);
    }
    Ok(sorted(out, limit))
}

fn sorted(mut entries: Vec<Entry>, limit: usize) -> Vec<(RoomKey, i64)> {
    entries.sort_by(|a, b| (a.at, &a.room.party, &a.room.room).cmp(&(b.at, &b.room.party, &b.room.room)));
    entries.truncate(limit);
    entries.into_iter().map(|e| (e.room, e.at)).collect()
}

/// Up to `limit` due alarms (earliest first) of `shards` — each with the epoch this node owns
/// it under, `None` if it does not — leaving out rooms `skip` says to, reading only the indexes
/// the hints say may hold due alarms. A shard whose read fails is left out of this answer (and
/// read again next time); only when every read fails is it an error.
pub(crate) async fn due_in(
    conn: &Connection,
    keys: &Keys,
    hints: &Hints,
    now_ms: i64,
    limit: usize,
    shards: &[(u16, Option<u64>)],
    skip: impl Fn(&RoomKey) -> bool,
) -> Result<Vec<(RoomKey, i64)>, StoreError> {
    let now = Instant::now();
    if hints.legacy_due(now) {
        if let Err(e) = move_legacy(conn, keys, hints).await {
            tracing::warn!(error = %e, "could not move the obsolete alarm index into the shards' indexes");
        }
    }
    // (shard, epoch, version, offset)
    let mut pending: Vec<(u16, Option<u64>, u64, usize)> = shards
        .iter()
        .filter_map(|&(shard, epoch)| hints.needs_read(shard, epoch, now_ms, now).map(|v| (shard, epoch, v, 0)))
        .collect();
    let mut out: Vec<Entry> = Vec::new();
    let mut rounds = 0;
    while !pending.is_empty() && rounds < MAX_ROUNDS && out.len() < limit {
        rounds += 1;
        let cmds = pending.iter().map(|&(shard, _, _, offset)| page_cmd(keys, shard, "+inf", offset, PAGE)).collect();
        let answers = conn.each(cmds).await;
        if answers.iter().all(|a| a.is_err()) {
            let e = answers.into_iter().find_map(|a| a.err()).expect("at least one answer");
            return Err(backend(e));
        }
        let mut next_round = Vec::new();
        for ((shard, epoch, version, offset), answer) in pending.into_iter().zip(answers) {
            let page = match answer {
                Ok(value) => parse_page(value, shard)?,
                Err(e) => {
                    tracing::debug!(shard, error = %e, "could not read a shard's alarm index");
                    continue;
                }
            };
            if offset == 0 {
                // The index is in time order: its first entry is the earliest alarm.
                hints.read(shard, epoch, version, page.first().map_or(i64::MAX, |e| e.at), now);
            }
            let full_of_due = page.len() == PAGE && page.last().is_some_and(|e| e.at <= now_ms);
            out.extend(page.into_iter().filter(|e| e.at <= now_ms && !skip(&e.room)));
            if full_of_due {
                next_round.push((shard, epoch, version, offset + PAGE));
            }
        }
        pending = next_round;
    }
    Ok(sorted(out, limit))
}

/// Moves the entries of the obsolete global index (`pl:alarms`) into their shards' indexes.
/// Every step is a command on one key, so this works on a Redis Cluster too. Returns how many
/// entries were moved.
pub(crate) async fn move_legacy(conn: &Connection, keys: &Keys, hints: &Hints) -> Result<usize, StoreError> {
    let legacy = keys.legacy_alarms();
    let mut moved = 0;
    loop {
        let batch: Vec<(Vec<u8>, f64)> = ::redis::cmd("ZRANGE")
            .arg(&legacy)
            .arg(0)
            .arg(499)
            .arg("WITHSCORES")
            .query_async(&mut conn.clone())
            .await
            .map_err(backend)?;
        if batch.is_empty() {
            return Ok(moved);
        }
        let mut adds = Vec::new();
        for (member, score) in &batch {
            let Some((shard, _)) = keys::parse_alarm_member(member) else {
                tracing::warn!(member = %String::from_utf8_lossy(member), "dropping a corrupt entry of the obsolete alarm index");
                continue;
            };
            // NX: an entry the shard's index already has was written by a newer commit.
            let mut cmd = ::redis::cmd("ZADD");
            cmd.arg(keys.shard_alarms(shard)).arg("NX").arg(*score as i64).arg(member.as_slice());
            adds.push((shard, *score as i64, cmd));
        }
        let shards: Vec<(u16, i64)> = adds.iter().map(|(s, t, _)| (*s, *t)).collect();
        for answer in conn.each(adds.into_iter().map(|(_, _, c)| c).collect()).await {
            answer.map_err(backend)?;
        }
        for (shard, at) in shards {
            hints.wrote(shard, at);
        }
        let members: Vec<&[u8]> = batch.iter().map(|(m, _)| m.as_slice()).collect();
        let _: i64 =
            ::redis::cmd("ZREM").arg(&legacy).arg(members).query_async(&mut conn.clone()).await.map_err(backend)?;
        moved += batch.len();
        tracing::info!(entries = batch.len(), "moved alarms from the obsolete global index into the shards' indexes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_ask_for_reads_only_when_something_may_be_due() {
        let hints = Hints::default();
        let t0 = Instant::now();
        // Never read: read.
        let v = hints.needs_read(5, Some(1), 1_000, t0).expect("first read");
        hints.read(5, Some(1), v, i64::MAX, t0);
        assert_eq!(hints.needs_read(5, Some(1), 1_000, t0), None, "empty and owned: nothing to read");
        // A commit sets an alarm for later: still nothing due; once it is due, read.
        hints.wrote(5, 2_000);
        assert_eq!(hints.needs_read(5, Some(1), 1_999, t0), None);
        let v = hints.needs_read(5, Some(1), 2_000, t0).expect("due");
        // Another epoch (the shard changed hands in between): read.
        hints.read(5, Some(1), v, 3_000, t0);
        assert!(hints.needs_read(5, Some(2), 1_000, t0).is_some());
        // Given up (another node may write it now): read; then trusted like an owned one, but
        // read again after the refresh period (its holder may crash and leave alarms due).
        let v = hints.needs_read(5, None, 1_000, t0).unwrap();
        hints.read(5, None, v, 3_000, t0);
        assert_eq!(hints.needs_read(5, None, 1_000, t0 + Duration::from_secs(5)), None);
        assert!(hints.needs_read(5, None, 3_000, t0).is_some(), "its alarm is due");
        assert!(hints.needs_read(5, None, 1_000, t0 + REFRESH * 2).is_some());
        // Owned and quiet: read again after the refresh period at the latest.
        let v = hints.needs_read(6, Some(1), 0, t0).unwrap();
        hints.read(6, Some(1), v, i64::MAX, t0);
        assert!(hints.needs_read(6, Some(1), 0, t0 + REFRESH * 2).is_some());
    }

    #[test]
    fn a_read_that_raced_a_commit_does_not_hide_its_alarm() {
        let hints = Hints::default();
        let t0 = Instant::now();
        let v = hints.needs_read(9, Some(1), 1_000, t0).unwrap();
        // The commit lands after the read left, and its hint is noted before the read's answer
        // is processed: the read (which saw no alarm) must not overwrite it.
        hints.wrote(9, 1_500);
        hints.read(9, Some(1), v, i64::MAX, t0);
        assert!(hints.needs_read(9, Some(1), 1_500, t0).is_some(), "the alarm at 1500 is found");
        // The other order: the read's answer first, then the commit's hint.
        let v = hints.needs_read(10, Some(1), 1_000, t0).unwrap();
        hints.read(10, Some(1), v, i64::MAX, t0);
        hints.wrote(10, 1_500);
        assert!(hints.needs_read(10, Some(1), 1_500, t0).is_some());
    }
}
