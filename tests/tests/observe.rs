//! The dashboards and alerts that ship with Partyline name only metrics that exist: every
//! `partyline_*` metric in deploy/prometheus (the rules, their unit tests, the scrape config),
//! the monitoring overlay's PrometheusRule and deploy/grafana's dashboards is exported by a
//! real node or gateway process (scraped on their admin listeners after some traffic, a cron
//! firing and a refused node). And the scrape jobs the rules and panels select on are the jobs
//! the compose scrape config and the Kubernetes PodMonitors define.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use partyline_cluster::redis::testing::RedisServer;
use partyline_test_macros::timed_test;
use partyline_tests::deploy::{free_port, get, partyline_bin, wait_ok, Proc};
use partyline_tests::{http, repo_root, within, Client};

const SECRET: &str = "observe-test-cluster-secret";

/// The files whose metric names must exist, relative to the repository root: every YAML file
/// of deploy/prometheus, the PrometheusRule made from them, every JSON file of deploy/grafana.
fn observability_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = Vec::new();
    for (dir, exts) in [("deploy/prometheus", &["yml", "yaml"][..]), ("deploy/grafana", &["json"][..])] {
        let entries = std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("read {dir}: {e}"));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.extension().and_then(|e| e.to_str()).is_some_and(|e| exts.contains(&e)) {
                files.push(path);
            }
        }
    }
    files.push(root.join("deploy/k8s/overlays/monitoring/prometheus-rule.yaml"));
    files.sort();
    files
}

/// Every `partyline_[a-z0-9_]+` identifier in `text` that does not continue a longer word
/// (`namespace:partyline_node_rooms:sum` names `partyline_node_rooms`).
fn metric_names(text: &str, out: &mut BTreeSet<String>) {
    const PREFIX: &str = "partyline_";
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find(PREFIX) {
        let start = at + found;
        let mut end = start + PREFIX.len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        let continues_a_word = start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !continues_a_word && end > start + PREFIX.len() {
            out.insert(text[start..end].to_string());
        }
        at = end;
    }
}

/// Every string in a JSON document (a dashboard's queries, legends, descriptions, variables).
fn json_strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match value {
        serde_json::Value::String(s) => out.push(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

/// The metric names `file` uses, loosely: in YAML every line but comments (expressions,
/// annotations, test series), in JSON every string.
fn names_used_in(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let mut names = BTreeSet::new();
    if file.extension().is_some_and(|e| e == "json") {
        let doc: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        let mut strings = Vec::new();
        json_strings(&doc, &mut strings);
        for s in strings {
            metric_names(s, &mut names);
        }
    } else {
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            metric_names(line, &mut names);
        }
    }
    names
}

/// The sample names an OpenMetrics exposition can have: every family of a `# TYPE` line with
/// the suffixes of its type (a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`),
/// whether or not it has samples yet (a labelled family before its first label set), and
/// every sample's name.
fn exported_names(text: &str, out: &mut BTreeSet<String>) {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
            out.insert(name.to_string());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count", "_gcount", "_gsum"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            out.insert(line[..end].to_string());
        }
    }
}

/// The fixture project the processes serve (instead of the examples): its `main` party keeps a
/// log in storage (commits), its static `onSocket` answers WebSockets outside any room, and one
/// of its crons fires every two seconds.
fn edge_hooks_project() -> PathBuf {
    let dir = repo_root().join("tests/partykit-projects");
    assert!(
        dir.join("node_modules").is_dir(),
        "the fixture projects need their npm packages: run scripts/test.sh (it runs `npm ci` in tests/partykit-projects)"
    );
    dir.join("edge-hooks/partykit.json")
}

/// A Redis, a node and a gateway (each with an admin listener) serving the edge-hooks project,
/// as real processes; more nodes join with [`Cluster::node`].
struct Cluster {
    redis: RedisServer,
    logs: tempfile::TempDir,
    procs: Vec<Proc>,
    client_addr: SocketAddr,
    node_admin: SocketAddr,
    gateway_admin: SocketAddr,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut c = Cluster {
            redis: RedisServer::start(),
            logs: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
            client_addr: format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap(),
            node_admin: format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap(),
            gateway_admin: format!("127.0.0.1:{}", free_port("127.0.0.1")).parse().unwrap(),
        };
        // The first node of a new cluster creates it.
        let admin = c.node_admin;
        c.node("node", &["--metrics-listen", &admin.to_string(), "--init-cluster"], &[]);
        let args =
            ["gateway", "--port", &c.client_addr.port().to_string(), "--admin-listen", &c.gateway_admin.to_string()]
                .map(String::from);
        let env = c.env(&[]);
        let gateway = Proc::spawn("gateway", &partyline_bin(), &args, &env, c.logs.path());
        c.procs.push(gateway);
        let mut procs: Vec<&mut Proc> = c.procs.iter_mut().collect();
        wait_ok(c.node_admin, "/readyz", 80, &mut procs).await;
        wait_ok(c.gateway_admin, "/readyz", 80, &mut procs).await;
        c
    }

    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = vec![
            ("PARTYLINE_REDIS_URL".to_string(), self.redis.url()),
            ("PARTYLINE_CLUSTER_SECRET".to_string(), SECRET.to_string()),
            ("PARTYLINE_WORKER_THREADS".to_string(), "2".to_string()),
            ("PARTYLINE_CONFIG".to_string(), edge_hooks_project().display().to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Starts a node named `id` with `args` and `env` besides the common ones.
    fn node(&mut self, id: &str, args: &[&str], env: &[(&str, &str)]) {
        let grpc = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let mut all = vec!["node", "--listen", &grpc, "--id", id, "--lease-profile", "fast"];
        all.extend(args);
        let all: Vec<String> = all.into_iter().map(String::from).collect();
        let env = self.env(env);
        let node = Proc::spawn(id, &partyline_bin(), &all, &env, self.logs.path());
        self.procs.push(node);
    }

    /// The OpenMetrics text at `/metrics` of an admin listener.
    async fn scrape(&mut self, addr: SocketAddr) -> String {
        for p in &mut self.procs {
            p.assert_running();
        }
        let res = get(addr, "/metrics").await;
        assert_eq!(res.status, 200, "GET http://{addr}/metrics");
        res.text()
    }

    /// Scrapes `addr` until a sample of the metric `name` shows up (its first event happened);
    /// fails with the processes' logs after `secs`.
    /// Waits for a sample of `series` (a metric name, or a name and its labels as exported)
    /// above 0.
    async fn wait_for_series(&mut self, addr: SocketAddr, series: &str, secs: u64) {
        let positive = |l: &str| {
            let rest = &l[series.len()..];
            let whole = if series.ends_with('}') { rest.starts_with(' ') } else { rest.starts_with([' ', '{']) };
            whole && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v != 0.0)
        };
        let found = tokio::time::timeout(Duration::from_secs(secs), async {
            loop {
                let text = self.scrape(addr).await;
                if text.lines().any(|l| l.starts_with(series) && positive(l)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        if found.is_err() {
            let logs: Vec<String> = self.procs.iter().map(|p| format!("--- {}\n{}", p.name, p.log_tail())).collect();
            panic!("no {series} sample above 0 at http://{addr}/metrics within {secs}s\n{}", logs.join("\n"));
        }
    }

    async fn stop(mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.terminate().await;
        }
    }
}

#[timed_test(secs = 110)]
async fn every_metric_the_rules_and_dashboards_name_is_exported() {
    // What the shipped files name, file by file (each must name some: a file whose names the
    // loose parse missed would pass for nothing).
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in observability_files() {
        let relative = file.strip_prefix(repo_root()).unwrap_or(&file).display().to_string();
        let names = names_used_in(&file);
        let must_name_metrics = !relative.ends_with("prometheus.yml");
        assert!(!must_name_metrics || !names.is_empty(), "{relative} names no partyline_* metric");
        for name in names {
            used.entry(name).or_default().insert(relative.clone());
        }
    }
    for expected in ["partyline_node_commit_duration_seconds_bucket", "partyline_gateway_live_nodes"] {
        assert!(used.contains_key(expected), "the parse missed {expected}: {:?}", used.keys());
    }

    let mut c = within(90, "the cluster to start", Cluster::start()).await;
    // Traffic, so that the families with labels have series too: WebSockets into a room (the
    // project's `main`, which answers no frame) and one outside any room (the static onSocket,
    // which echoes), HTTP requests to a room that writes its storage.
    let url = format!("ws://{}/parties/main/observe-room", c.client_addr);
    let mut a = Client::connect(&url).await.expect("connect a");
    let mut b = Client::connect(&url).await.expect("connect b");
    let mut edge = Client::connect(&format!("ws://{}/socket?name=observe", c.client_addr)).await.expect("onSocket");
    assert_eq!(edge.recv_text().await, "hello observe");
    for i in 0..3 {
        a.send_text(&format!("hello {i}")).await;
        b.send_text(&format!("hello {i}")).await;
        edge.send_text(&format!("hello {i}")).await;
        assert_eq!(edge.recv_text().await, format!("echo hello {i}"));
    }
    let res = http(c.client_addr, "POST", "/parties/main/observe-log", &[], br#"{"observed":true}"#).await;
    assert_eq!(res.status, 200, "{}", res.text());
    let res = http(c.client_addr, "GET", "/parties/main/observe-log", &[], b"").await;
    assert_eq!((res.status, res.text()), (200, r#"[{"observed":true}]"#.to_string()));

    // Cron firings and refused nodes are exported at 0 from the start; real ones all the same:
    // the project's fastest cron fires every two seconds, and a node whose clock runs 1.5 s
    // ahead (past the `fast` profile's bound) is refused. The clock offsets appear once the
    // gateway measured a node.
    let node_admin = c.node_admin;
    c.wait_for_series(node_admin, "partyline_node_cron_runs_total{outcome=\"ran\"}", 30).await;
    c.node("skewed-node", &[], &[(partyline_node::shards::TEST_CLOCK_SKEW_ENV, "1500")]);
    let gateway_admin = c.gateway_admin;
    c.wait_for_series(gateway_admin, "partyline_gateway_nodes_refused_total{reason=\"clock\"}", 40).await;
    c.wait_for_series(gateway_admin, "partyline_gateway_node_clock_offset_seconds", 40).await;

    let mut exported = BTreeSet::new();
    exported_names(&c.scrape(node_admin).await, &mut exported);
    exported_names(&c.scrape(gateway_admin).await, &mut exported);
    let missing: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, files)| format!("{name} (in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(
        missing.is_empty(),
        "{} metric(s) named by the rules or dashboards are exported by neither the node nor the gateway:\n  {}\n\
         exported:\n  {}",
        missing.len(),
        missing.join("\n  "),
        exported.iter().filter(|n| n.starts_with("partyline_")).cloned().collect::<Vec<_>>().join("\n  ")
    );

    a.close(1000).await;
    b.close(1000).await;
    edge.close(1000).await;
    c.stop().await;
}

/// The values of `key="..."` label matchers in `text`.
fn label_values(text: &str, key: &str, out: &mut BTreeSet<String>) {
    let needle = format!("{key}=\"");
    for (at, _) in text.match_indices(&needle) {
        let rest = &text[at + needle.len()..];
        if let Some(end) = rest.find('"') {
            out.insert(rest[..end].to_string());
        }
    }
}

#[test]
fn the_jobs_the_rules_and_dashboards_select_are_scraped_on_compose_and_kubernetes() {
    let root = repo_root();
    let read = |path: &str| std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let mut jobs = BTreeSet::new();
    label_values(&read("deploy/prometheus/partyline-rules.yml"), "job", &mut jobs);
    label_values(&read("deploy/grafana/partyline.json").replace("\\\"", "\""), "job", &mut jobs);
    assert_eq!(jobs, BTreeSet::from(["partyline-gateway".to_string(), "partyline-node".to_string()]));
    let scrape = read("deploy/prometheus/prometheus.yml");
    let monitors = read("deploy/k8s/overlays/monitoring/pod-monitors.yaml");
    for job in &jobs {
        assert!(
            scrape.contains(&format!("job_name: {job}\n")),
            "deploy/prometheus/prometheus.yml scrapes no job {job}"
        );
        assert!(
            monitors.contains(&format!("replacement: {job}\n")),
            "no PodMonitor of deploy/k8s/overlays/monitoring names its job {job}"
        );
    }
}
