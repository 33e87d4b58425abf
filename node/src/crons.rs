//! Cron schedules (PartyKit's `crons` in partykit.json, the `main` party's static `onCron`):
//! the scheduler that fires [`PartyFactory::on_cron`] at each due time.
//!
//! Every process that runs it (each node of a cluster, or `partyline dev`) computes the same
//! due times from the `main` party's [`PartyFactory::crons`] (parsed by
//! [`partyline::cron::Schedule`], UTC). At each due time it first *claims* the firing
//! ([`CronClaims`]); only the process that won the claim runs the hook, in a task of its own so a
//! slow hook delays no other schedule. In a cluster the claim is a Redis key per schedule and due
//! time (`SET NX`, see [`partyline_cluster::redis::crons`]); in `dev`, one process, every claim
//! is won ([`LocalClaims`]).
//!
//! **Guarantee.** At most once per due time in the whole cluster: a firing runs only where its
//! claim in Redis was won, and a claim that fails (Redis unreachable) runs nothing. At least once
//! while some node is up and Redis reachable: every node tries every firing. Firings missed
//! while no node could run them (every node down, Redis unreachable) are not replayed, and a
//! node that finds itself more than [`MAX_LATE`] past a due time (the process was paused, the
//! clock jumped) skips it with a warning rather than running it late; other nodes that were on
//! time will have claimed it. A hook that fails is logged, not retried.
//!
//! Gateways do not run crons: nodes do.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use partyline::cron::Schedule;
use partyline::storage::now_ms;
use partyline::{CronEvent, CronSchedule, Env, Lobby, Parties, PartyFactory, PartyRegistry};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::metrics::NodeMetrics;

/// A firing this far past its due time when the scheduler gets to it is skipped, not run late.
pub const MAX_LATE: Duration = Duration::from_secs(60);

/// Longest sleep between looks at the clock, so a wall clock that jumps is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long a stop waits for hooks under way before abandoning them.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Who runs a firing: a firing runs where [`CronClaims::claim`] answered `true`.
#[async_trait]
pub trait CronClaims: Send + Sync + 'static {
    /// Claims the firing of schedule `name` due at `scheduled_ms`: `Ok(true)` if this process is
    /// to run it, `Ok(false)` if another one does. An error runs nothing.
    async fn claim(&self, name: &str, scheduled_ms: i64) -> anyhow::Result<bool>;
}

/// Claims of a process alone (`partyline dev`): every claim is won.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalClaims;

#[async_trait]
impl CronClaims for LocalClaims {
    async fn claim(&self, _name: &str, _scheduled_ms: i64) -> anyhow::Result<bool> {
        Ok(true)
    }
}

/// Claims in Redis, shared by the nodes of a cluster.
#[async_trait]
impl CronClaims for partyline_cluster::redis::crons::CronClaims {
    async fn claim(&self, name: &str, scheduled_ms: i64) -> anyhow::Result<bool> {
        Ok(partyline_cluster::redis::crons::CronClaims::claim(self, name, scheduled_ms).await?)
    }
}

/// What became of one firing, as counted by the `partyline_node_cron_runs_total` metric
/// (label `outcome`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The hook ran here and succeeded.
    Ran,
    /// The hook ran here and failed (or panicked).
    Failed,
    /// Skipped: found more than [`MAX_LATE`] past its due time.
    SkippedLate,
    /// Another process claimed it.
    ClaimedElsewhere,
    /// The claim failed (Redis unreachable): not run.
    ClaimFailed,
}

impl Outcome {
    /// Every outcome (the metric exports each from the start).
    pub const ALL: [Outcome; 5] =
        [Outcome::Ran, Outcome::Failed, Outcome::SkippedLate, Outcome::ClaimedElsewhere, Outcome::ClaimFailed];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ran => "ran",
            Outcome::Failed => "failed",
            Outcome::SkippedLate => "skipped_late",
            Outcome::ClaimedElsewhere => "claimed_elsewhere",
            Outcome::ClaimFailed => "claim_failed",
        }
    }
}

/// The cron scheduler of one process; see the module docs.
pub struct Crons {
    factory: Arc<dyn PartyFactory>,
    schedules: Vec<(CronSchedule, Schedule)>,
    lobby: Lobby,
    claims: Arc<dyn CronClaims>,
    metrics: Option<Arc<NodeMetrics>>,
}

impl Crons {
    /// The scheduler of the `main` party's crons in `registry`, claiming through `claims`; its
    /// hooks get a lobby with `env` and `parties` (how this process reaches rooms). A schedule
    /// whose expression does not parse is logged and left out. `None` when there is no `main`
    /// party or it has no (valid) schedule: nothing to run.
    pub fn new(registry: &PartyRegistry, env: Env, parties: Parties, claims: Arc<dyn CronClaims>) -> Option<Crons> {
        Self::of(registry.get("main")?, env, parties, claims)
    }

    /// The scheduler of the crons of `factory` (the `main` party).
    fn of(factory: Arc<dyn PartyFactory>, env: Env, parties: Parties, claims: Arc<dyn CronClaims>) -> Option<Crons> {
        let mut schedules = Vec::new();
        for cron in factory.crons() {
            match Schedule::parse(&cron.definition) {
                Ok(s) => schedules.push((cron, s)),
                Err(e) => tracing::error!(cron = %cron.name, error = %e, "cron schedule left out: it does not parse"),
            }
        }
        if schedules.is_empty() {
            return None;
        }
        let lobby = Lobby { id: None, party: "main".into(), env, parties };
        Some(Crons { factory, schedules, lobby, claims, metrics: None })
    }

    /// Counts firings in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs the crons of whatever `main` party `registry` has, until `stop` is cancelled: when
    /// the party changes (a deployed version replaced it, [`partyline::LiveParties`]) the
    /// scheduler starts over with the new one's schedules.
    pub async fn supervise(
        registry: PartyRegistry,
        env: Env,
        parties: Parties,
        claims: Arc<dyn CronClaims>,
        metrics: Arc<NodeMetrics>,
        stop: CancellationToken,
    ) {
        fn same(a: &Arc<dyn PartyFactory>, b: &Arc<dyn PartyFactory>) -> bool {
            std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
        }
        /// The `main` party the scheduler runs for, its stop, and the scheduler (when it has crons).
        type Running = (Arc<dyn PartyFactory>, CancellationToken, Option<tokio::task::JoinHandle<()>>);
        let mut running: Option<Running> = None;
        loop {
            let main = registry.get("main");
            let changed = match (&main, &running) {
                (Some(m), Some((r, _, _))) => !same(m, r),
                (None, None) => false,
                _ => true,
            };
            if changed {
                if let Some((_, token, task)) = running.take() {
                    token.cancel();
                    if let Some(task) = task {
                        let _ = task.await;
                    }
                }
                if let Some(main) = main {
                    let token = stop.child_token();
                    let task = Self::of(main.clone(), env.clone(), parties.clone(), claims.clone())
                        .map(|c| tokio::spawn(c.with_metrics(metrics.clone()).run(token.clone())));
                    running = Some((main, token, task));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        if let Some((_, _, Some(task))) = running {
            let _ = task.await;
        }
    }

    /// The names of the schedules it runs.
    pub fn names(&self) -> Vec<String> {
        self.schedules.iter().map(|(c, _)| c.name.clone()).collect()
    }

    /// Runs the schedules until `stop` is cancelled; then waits a little for hooks under way
    /// and abandons the rest.
    #[inline(never)]
    pub fn run(self, stop: CancellationToken) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.run_unboxed(stop))
    }

    async fn run_unboxed(self, stop: CancellationToken) {
        let shared =
            Arc::new(Firing { factory: self.factory, lobby: self.lobby, claims: self.claims, metrics: self.metrics });
        let started = now_ms();
        let mut next: Vec<(CronSchedule, Schedule, Option<i64>)> =
            self.schedules.into_iter().map(|(c, s)| (c, s.clone(), s.next_after(started))).collect();
        for (cron, _, due) in &next {
            if due.is_none() {
                tracing::warn!(cron = %cron.name, definition = %cron.definition, "cron schedule is never due");
            }
        }
        let names: Vec<&str> = next.iter().filter(|n| n.2.is_some()).map(|n| n.0.name.as_str()).collect();
        tracing::info!(crons = %names.join(", "), "cron scheduler started");
        let mut hooks = JoinSet::new();
        loop {
            let Some(first) = next.iter().filter_map(|n| n.2).min() else {
                // Nothing will ever be due: wait for the stop.
                stop.cancelled().await;
                break;
            };
            let now = now_ms();
            if first > now {
                let wait = Duration::from_millis((first - now) as u64).min(MAX_SLEEP);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    Some(_) = hooks.join_next(), if !hooks.is_empty() => {}
                    _ = stop.cancelled() => break,
                }
                continue;
            }
            for (cron, schedule, due) in &mut next {
                let Some(at) = *due else { continue };
                if at > now {
                    continue;
                }
                let late = now - at;
                if late > MAX_LATE.as_millis() as i64 {
                    // Every firing up to now is skipped, with one warning.
                    tracing::warn!(
                        cron = %cron.name,
                        scheduled_ms = at,
                        late_ms = late,
                        "cron firing skipped: found too late (the process was paused or the clock jumped); \
                         firings due meanwhile are skipped too"
                    );
                    shared.count(Outcome::SkippedLate);
                    *due = schedule.next_after(now);
                    continue;
                }
                *due = schedule.next_after(at);
                let event =
                    CronEvent { name: cron.name.clone(), definition: cron.definition.clone(), scheduled_ms: at };
                hooks.spawn(shared.clone().fire(event));
            }
        }
        if !hooks.is_empty()
            && tokio::time::timeout(STOP_GRACE, async { while hooks.join_next().await.is_some() {} }).await.is_err()
        {
            tracing::warn!(hooks = hooks.len(), "cron hooks still running at shutdown were abandoned");
            hooks.abort_all();
        }
    }
}

/// What every firing needs.
struct Firing {
    factory: Arc<dyn PartyFactory>,
    lobby: Lobby,
    claims: Arc<dyn CronClaims>,
    metrics: Option<Arc<NodeMetrics>>,
}

impl Firing {
    fn count(&self, outcome: Outcome) {
        if let Some(m) = &self.metrics {
            m.cron_runs.get_or_create(&[("outcome", outcome.label())]).inc();
        }
    }

    /// Claims the firing and, if won, runs the hook.
    async fn fire(self: Arc<Self>, event: CronEvent) -> Outcome {
        let outcome = match self.claims.claim(&event.name, event.scheduled_ms).await {
            Ok(true) => {
                tracing::debug!(cron = %event.name, scheduled_ms = event.scheduled_ms, "cron firing");
                let name = event.name.clone();
                let scheduled_ms = event.scheduled_ms;
                // A panicking hook is a failure of this firing, not of the scheduler.
                let hook = tokio::spawn(self.factory.on_cron(event, self.lobby.clone()));
                match hook.await {
                    Ok(Ok(())) => Outcome::Ran,
                    Ok(Err(e)) => {
                        tracing::warn!(cron = %name, scheduled_ms, error = %format!("{e:#}"), "onCron failed");
                        Outcome::Failed
                    }
                    Err(e) => {
                        tracing::warn!(cron = %name, scheduled_ms, error = %e, "onCron panicked");
                        Outcome::Failed
                    }
                }
            }
            Ok(false) => Outcome::ClaimedElsewhere,
            Err(e) => {
                tracing::warn!(
                    cron = %event.name,
                    scheduled_ms = event.scheduled_ms,
                    error = %format!("{e:#}"),
                    "cron firing not run: could not claim it"
                );
                Outcome::ClaimFailed
            }
        };
        self.count(outcome);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use futures::FutureExt;
    use partyline::sync::Lock;
    use partyline::{Before, DynParty, MemoryStore, Party, PartyOptions, Request, Response, Room};
    use partyline_cluster::redis::testing::{self, RedisServer};

    use super::*;
    use crate::{HostConfig, RoomHost};

    struct Quiet;

    impl Party for Quiet {
        fn new(_room: Room) -> Self {
            Quiet
        }
    }

    /// A `main` party with crons that records its firings (by node, for the cluster test).
    struct CronParty {
        inner: Arc<dyn PartyFactory>,
        crons: Vec<CronSchedule>,
        node: &'static str,
        fired: Arc<Mutex<Vec<(&'static str, CronEvent)>>>,
    }

    impl PartyFactory for CronParty {
        fn create(&self, room: Room) -> Box<dyn DynParty> {
            self.inner.create(room)
        }
        fn options(&self) -> PartyOptions {
            self.inner.options()
        }
        fn on_before_connect(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
            self.inner.on_before_connect(req, lobby)
        }
        fn on_before_request(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<Before>> {
            self.inner.on_before_request(req, lobby)
        }
        fn on_fetch(&self, req: Request, lobby: Lobby) -> BoxFuture<'static, Option<Response>> {
            self.inner.on_fetch(req, lobby)
        }
        fn crons(&self) -> Vec<CronSchedule> {
            self.crons.clone()
        }
        fn on_cron(&self, cron: CronEvent, lobby: Lobby) -> BoxFuture<'static, anyhow::Result<()>> {
            assert_eq!((lobby.id.as_deref(), lobby.party.as_str()), (None, "main"));
            let (fired, node) = (self.fired.clone(), self.node);
            async move {
                let failing = cron.name == "failing";
                fired.locked().push((node, cron));
                if failing {
                    anyhow::bail!("this one fails");
                }
                Ok(())
            }
            .boxed()
        }
    }

    type Fired = Arc<Mutex<Vec<(&'static str, CronEvent)>>>;

    fn registry(node: &'static str, crons: &[(&str, &str)], fired: &Fired) -> PartyRegistry {
        let crons =
            crons.iter().map(|(n, d)| CronSchedule { name: n.to_string(), definition: d.to_string() }).collect();
        let inner = PartyRegistry::new().with::<Quiet>("main").get("main").unwrap().clone();
        PartyRegistry::new().with_factory("main", Arc::new(CronParty { inner, crons, node, fired: fired.clone() }))
    }

    fn parties(registry: &PartyRegistry) -> Parties {
        RoomHost::new(HostConfig {
            parties: registry.clone(),
            store: Arc::new(MemoryStore::new()),
            limits: Arc::default(),
            env: Env::default(),
            parties_client: None,
            observer: None,
            on_fenced: None,
        })
        .client()
    }

    /// Waits (generously: a busy 2-core machine) until `done` holds for the firings.
    async fn wait_for(fired: &Fired, what: &str, done: impl Fn(&[(&'static str, CronEvent)]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !done(&fired.locked()) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {:?}", fired.locked());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A deployed version's `main` replaces the one the scheduler ran: its crons run from then
    /// on, the old party's no more.
    #[tokio::test]
    async fn a_deployed_main_party_brings_its_crons() {
        let fired = Fired::default();
        let live = partyline::LiveParties::new();
        let registry = PartyRegistry::new().with_live(live.clone());
        let stop = CancellationToken::new();
        let metrics = Arc::new(NodeMetrics::default());
        let env = Env::new(BTreeMap::new());
        let task = tokio::spawn(Crons::supervise(
            registry.clone(),
            env,
            parties(&registry),
            Arc::new(LocalClaims),
            metrics,
            stop.clone(),
        ));
        live.replace(&self::registry("v1", &[("first", "* * * * * *")], &fired));
        wait_for(&fired, "a firing of v1", |f| f.iter().any(|(n, _)| *n == "v1")).await;
        live.replace(&self::registry("v2", &[("second", "* * * * * *")], &fired));
        wait_for(&fired, "a firing of v2", |f| f.iter().any(|(n, _)| *n == "v2")).await;
        let switched = fired.locked().len();
        wait_for(&fired, "two more firings", |f| f.len() >= switched + 2).await;
        let after: Vec<(&str, String)> = fired.locked()[switched..].iter().map(|(n, e)| (*n, e.name.clone())).collect();
        assert!(after.iter().all(|(n, name)| *n == "v2" && name == "second"), "{after:?}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the supervisor stops").unwrap();
    }

    #[tokio::test]
    async fn fires_every_second_in_process_and_counts() {
        let fired = Fired::default();
        let registry =
            registry("dev", &[("tick", "* * * * * *"), ("failing", "* * * * * *"), ("bad", "61 * * * *")], &fired);
        let crons =
            Crons::new(&registry, Env::new(BTreeMap::new()), parties(&registry), Arc::new(LocalClaims)).unwrap();
        assert_eq!(crons.names(), ["tick", "failing"], "the bad one is left out");
        let metrics = Arc::new(NodeMetrics::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(crons.with_metrics(metrics.clone()).run(stop.clone()));
        let ticks = |f: &[(&str, CronEvent)]| f.iter().filter(|(_, e)| e.name == "tick").count();
        wait_for(&fired, "3 ticks", |f| ticks(f) >= 3).await;
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("the scheduler stops").unwrap();
        let fired = fired.locked().clone();
        let mut times: Vec<i64> = fired.iter().filter(|(_, e)| e.name == "tick").map(|(_, e)| e.scheduled_ms).collect();
        assert!(times.iter().all(|t| t % 1000 == 0), "{times:?}");
        let n = times.len();
        times.dedup();
        assert_eq!(times.len(), n, "each due time once");
        assert!(fired.iter().any(|(_, e)| e.name == "failing" && e.definition == "* * * * * *"));
        let text = metrics.render();
        assert!(text.contains("partyline_node_cron_runs_total{outcome=\"ran\"}"), "{text}");
        assert!(text.contains("partyline_node_cron_runs_total{outcome=\"failed\"}"), "{text}");
    }

    #[test]
    fn nothing_to_run_without_crons_or_main() {
        let fired = Fired::default();
        let none = registry("dev", &[], &fired);
        assert!(Crons::new(&none, Env::default(), parties(&none), Arc::new(LocalClaims)).is_none());
        let bad = registry("dev", &[("bad", "* * * *")], &fired);
        assert!(Crons::new(&bad, Env::default(), parties(&bad), Arc::new(LocalClaims)).is_none());
        let other = PartyRegistry::new().with::<Quiet>("other");
        assert!(Crons::new(&other, Env::default(), parties(&other), Arc::new(LocalClaims)).is_none());
    }

    struct Down;

    #[async_trait]
    impl CronClaims for Down {
        async fn claim(&self, _: &str, _: i64) -> anyhow::Result<bool> {
            anyhow::bail!("Redis unreachable")
        }
    }

    #[tokio::test]
    async fn a_failed_claim_runs_nothing() {
        let fired = Fired::default();
        let registry = registry("n", &[("tick", "* * * * * *")], &fired);
        let metrics = Arc::new(NodeMetrics::default());
        let crons = Crons::new(&registry, Env::default(), parties(&registry), Arc::new(Down)).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(crons.with_metrics(metrics.clone()).run(stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let failed = || metrics.cron_runs.get_or_create(&[("outcome", "claim_failed")]).get();
        while failed() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{}", metrics.render());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        task.await.unwrap();
        assert!(fired.locked().is_empty());
    }

    /// Two nodes with the same schedule on one real Redis: every due time runs exactly once
    /// between them.
    #[tokio::test]
    async fn two_nodes_fire_each_due_time_exactly_once() {
        let server = RedisServer::start();
        let redis = testing::connect(&server.url(), "crons").await;
        let fired = Fired::default();
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for node in ["node-a", "node-b"] {
            let registry = registry(node, &[("tick", "* * * * * *")], &fired);
            let claims = Arc::new(partyline_cluster::redis::crons::CronClaims::of(&redis, node));
            let crons = Crons::new(&registry, Env::default(), parties(&registry), claims).unwrap();
            tasks.push(tokio::spawn(crons.run(stop.clone())));
        }
        wait_for(&fired, "5 firings", |f| f.len() >= 5).await;
        stop.cancel();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(30), task).await.expect("the scheduler stops").unwrap();
        }
        let fired = fired.locked().clone();
        let mut by_time: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
        for (node, e) in &fired {
            by_time.entry(e.scheduled_ms).or_default().push(node);
        }
        for (t, nodes) in &by_time {
            assert_eq!(nodes.len(), 1, "due time {t} ran on {nodes:?}");
        }
        // Both nodes tried every due time: each claim is in Redis, held by the node that ran it.
        let claims = partyline_cluster::redis::crons::CronClaims::of(&redis, "reader");
        for (t, nodes) in &by_time {
            assert_eq!(claims.holder("tick", *t).await.unwrap().as_deref(), Some(nodes[0]));
        }
    }
}
