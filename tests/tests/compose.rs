//! deploy/docker-compose.yml, run without Docker: every service's command, environment,
//! healthcheck and dependency order come from `docker compose config` (the real compose v2
//! binary that deploy/verify.sh installs), and run here as processes on loopback, each service
//! on its own 127.x.y.z address so every port stays as written in the file. Service host names
//! become those addresses and paths in named volumes a directory of the test; nothing else
//! changes. Then the chat works through both gateways and through the load balancer (HAProxy
//! with deploy/haproxy.cfg), so the compose file cannot drift from the code; and the `init`
//! service, run again as every `up` does, finds the cluster, and refuses once Redis lost it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use partyline_test_macros::timed_test;
use partyline_tests::deploy::{partyline_bin, wait_ok, Proc};
use partyline_tests::{http, repo_root, within, Client};
use serde_json::Value;

/// The compose v2 binary deploy/verify.sh installs.
fn compose_bin() -> PathBuf {
    let tools = std::env::var_os("PARTYLINE_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/deploy-tools"));
    let bin = tools.join("bin/docker-compose");
    assert!(bin.exists(), "{} is missing: run deploy/verify.sh --install-only (scripts/test.sh does)", bin.display());
    bin
}

/// `docker compose config` of deploy/docker-compose.yml, with a throwaway env file as
/// deploy/partyline.env.
fn compose_config(env_file: &std::path::Path) -> Value {
    let out = std::process::Command::new(compose_bin())
        .args(["-f", "docker-compose.yml", "config", "--format", "json"])
        .current_dir(repo_root().join("deploy"))
        .env("PARTYLINE_ENV_FILE", env_file)
        .output()
        .expect("run docker compose config");
    assert!(out.status.success(), "docker compose config failed:\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("compose config JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

/// Rewrites host names in one value: `0.0.0.0`, `127.0.0.1` and `localhost` (inside a
/// container: the container itself) become the service's own address, other services' names
/// their addresses, and a bare `:port` binds the service's own address.
fn rewrite(value: &str, own: &str, ips: &BTreeMap<String, String>) -> String {
    if value == "0.0.0.0" {
        return own.to_string();
    }
    if value.starts_with(':') {
        return format!("{own}{value}");
    }
    let mut out = value.to_string();
    for local in ["0.0.0.0:", "127.0.0.1:", "localhost:"] {
        out = out.replace(local, &format!("{own}:"));
    }
    // Longest names first, so `node-10` is never read as `node-1`.
    let mut names: Vec<&String> = ips.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        // `name:<port>` at the start, or after `//` or `@` (a URL's host).
        for prefix in ["", "//", "@"] {
            let from = format!("{prefix}{name}:");
            let mut at = 0;
            while let Some(i) = out[at..].find(&from).map(|i| i + at) {
                let starts_host = !prefix.is_empty() || i == 0;
                let port_follows = out[i + from.len()..].starts_with(|c: char| c.is_ascii_digit());
                if starts_host && port_follows {
                    let to = format!("{prefix}{}:", ips[name]);
                    out.replace_range(i..i + from.len(), &to);
                    at = i + to.len();
                } else {
                    at = i + from.len();
                }
            }
        }
    }
    out
}

#[test]
fn host_names_become_addresses_and_nothing_else_changes() {
    let ips: BTreeMap<String, String> = [("redis", "10.0.0.1"), ("node-1", "10.0.0.2"), ("node-10", "10.0.0.3")]
        .map(|(a, b)| (a.into(), b.into()))
        .into();
    assert_eq!(rewrite("redis://redis:6379", "10.0.0.9", &ips), "redis://10.0.0.1:6379");
    assert_eq!(rewrite("node-10:7001", "10.0.0.9", &ips), "10.0.0.3:7001");
    assert_eq!(rewrite("node-1:7001", "10.0.0.9", &ips), "10.0.0.2:7001");
    assert_eq!(rewrite("0.0.0.0:9090", "10.0.0.9", &ips), "10.0.0.9:9090");
    assert_eq!(rewrite("http://127.0.0.1:9090/readyz", "10.0.0.9", &ips), "http://10.0.0.9:9090/readyz");
    assert_eq!(rewrite(":1999", "10.0.0.9", &ips), "10.0.0.9:1999");
    assert_eq!(rewrite("0.0.0.0", "10.0.0.9", &ips), "10.0.0.9");
    assert_eq!(rewrite("node", "10.0.0.9", &ips), "node");
    assert_eq!(rewrite("10s", "10.0.0.9", &ips), "10s");
}

/// How a service runs here: program, arguments, environment.
struct Plan {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    health: Option<(PathBuf, Vec<String>)>,
    depends_on: Vec<(String, String)>,
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.exists()))
        .unwrap_or_else(|| panic!("{program} is not installed (scripts/test.sh installs it)"))
}

fn plan(name: &str, svc: &Value, ips: &BTreeMap<String, String>, data: &std::path::Path) -> Plan {
    let own = &ips[name];
    let image = svc["image"].as_str().unwrap_or_default();
    let command: Vec<String> = strings(&svc["command"]).iter().map(|a| rewrite(a, own, ips)).collect();
    // A named volume of a service is `data` here: paths into it move along.
    let volumes: Vec<String> = svc["volumes"]
        .as_array()
        .map(|vs| {
            vs.iter().filter(|v| v["type"] == "volume").filter_map(|v| v["target"].as_str().map(String::from)).collect()
        })
        .unwrap_or_default();
    let in_volume = |value: String| -> String {
        for target in &volumes {
            if let Some(rest) = value.strip_prefix(target.as_str()).filter(|r| r.is_empty() || r.starts_with('/')) {
                return format!("{}{rest}", data.display());
            }
        }
        value
    };
    let env: Vec<(String, String)> = svc["environment"]
        .as_object()
        .map(|m| {
            m.iter().map(|(k, v)| (k.clone(), in_volume(rewrite(v.as_str().unwrap_or_default(), own, ips)))).collect()
        })
        .unwrap_or_default();
    let test = strings(&svc["healthcheck"]["test"]);
    let depends_on = svc["depends_on"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v["condition"].as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    let (program, args, health) = if image.starts_with("partyline") {
        // The image's entrypoint is the partyline binary; `command` is its arguments.
        let health = test.first().filter(|t| *t == "CMD").map(|_| {
            assert_eq!(test[1], "/usr/local/bin/partyline", "{name}: healthchecks use the image's binary");
            (partyline_bin(), test[2..].iter().map(|a| rewrite(a, own, ips)).collect())
        });
        (partyline_bin(), command, health)
    } else if image.starts_with("redis") {
        assert_eq!(command.first().map(String::as_str), Some("redis-server"), "{name}: runs redis-server");
        let mut args = command[1..].to_vec();
        // Inside the container Redis listens on every address of its own, at the default port,
        // with its data in the volume.
        args.extend(["--bind", own, "--port", "6379", "--dir"].map(String::from));
        args.push(data.display().to_string());
        assert_eq!(&test[..2], ["CMD", "redis-cli"], "{name}: healthcheck");
        let mut check = vec!["-h".to_string(), own.clone()];
        check.extend(test[2..].iter().cloned());
        (which("redis-server"), args, Some((which("redis-cli"), check)))
    } else if image.starts_with("haproxy") {
        // The official image runs `haproxy -f /usr/local/etc/haproxy/haproxy.cfg`: the file
        // mounted there is ours.
        let cfg = svc["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["target"] == "/usr/local/etc/haproxy/haproxy.cfg"))
            .and_then(|v| v["source"].as_str())
            .expect("haproxy.cfg is mounted into the lb service");
        (which("haproxy"), vec!["-db".to_string(), "-f".to_string(), cfg.to_string()], None)
    } else {
        panic!("{name}: no way to run image {image} here");
    };
    Plan { name: name.to_string(), program, args, env, health, depends_on }
}

async fn healthy(plan: &Plan, procs: &mut HashMap<String, Proc>) {
    let Some((program, args)) = &plan.health else { return };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        procs.get_mut(&plan.name).unwrap().assert_running();
        let ok = tokio::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{} never became healthy:\n{}", plan.name, procs[&plan.name].log_tail());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `text` from `from` and waits for it at `to` (skipping other chat frames).
async fn relayed(from: &mut Client, to: &mut Client, text: &str) {
    from.send_text(text).await;
    within(20, "a chat message to cross gateways", async { while to.recv_text().await != text {} }).await;
}

// Each service may take up to 90 s to become healthy (`healthy`): more than the default limit.
#[timed_test(secs = 110)]
async fn the_compose_cluster_runs_on_loopback_and_chats_through_both_gateways_and_the_balancer() {
    let raw = std::fs::read_to_string(repo_root().join("deploy/docker-compose.yml")).unwrap();
    assert!(!raw.contains("PARTYLINE_CLUSTER_SECRET:"), "the secret must come from the env file only");
    let work = tempfile::tempdir().unwrap();
    let env_file = work.path().join("partyline.env");
    std::fs::write(&env_file, "PARTYLINE_CLUSTER_SECRET=compose-test-secret-0123456789\n").unwrap();
    let config = compose_config(&env_file);
    let services = config["services"].as_object().expect("services");

    // Durability and shutdown settings the deployment promises.
    let redis_cmd = strings(&services["redis"]["command"]).join(" ");
    assert!(redis_cmd.contains("--appendonly yes"), "{redis_cmd}");
    for (name, svc) in services.iter().filter(|(n, _)| n.starts_with("node-")) {
        let grace =
            partyline_server::values::parse_duration(svc["stop_grace_period"].as_str().expect("grace")).unwrap();
        let drain = svc["environment"]["PARTYLINE_DRAIN_TIMEOUT"].as_str().unwrap_or("10s");
        let drain = partyline_server::values::parse_duration(drain).unwrap();
        assert!(grace > drain, "{name}: stop_grace_period {grace:?} must exceed the drain time {drain:?}");
        assert_eq!(svc["ulimits"]["nofile"]["soft"].as_u64().map(|n| n >= 65536), Some(true), "{name}: nofile");
        // Nodes never create the cluster themselves: they start once `partyline init` ran.
        assert_eq!(
            svc["depends_on"]["init"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name}: waits for the init service"
        );
    }
    assert_eq!(strings(&services["init"]["command"]), ["init"], "the init service runs `partyline init`");
    // It records the cluster in a named volume of its own, so a later `up` on a Redis that lost
    // the cluster's data refuses instead of starting over (run below).
    let record = services["init"]["environment"]["PARTYLINE_INIT_RECORD"].as_str().expect("init keeps a record");
    let record_volume = services["init"]["volumes"]
        .as_array()
        .and_then(|vs| {
            vs.iter().find(|v| v["type"] == "volume" && record.starts_with(v["target"].as_str().unwrap_or("-")))
        })
        .unwrap_or_else(|| panic!("the init record {record} is not in a named volume"));
    assert_ne!(
        record_volume["source"], services["redis"]["volumes"][0]["source"],
        "the record lives apart from Redis's data"
    );

    // One loopback address per service.
    let pid = std::process::id();
    let (a, b) = (200 + pid % 50, 1 + (pid / 50) % 250);
    let ips: BTreeMap<String, String> =
        services.keys().enumerate().map(|(i, n)| (n.clone(), format!("127.{a}.{b}.{}", i + 2))).collect();
    let mut plans: Vec<Plan> = services
        .iter()
        .map(|(n, s)| {
            let data = work.path().join(format!("{n}-data"));
            std::fs::create_dir_all(&data).unwrap();
            plan(n, s, &ips, &data)
        })
        .collect();

    // Start in dependency order, each after its dependencies met their conditions.
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut procs: HashMap<String, Proc> = HashMap::new();
    let mut order = Vec::new();
    while !plans.is_empty() {
        let i = plans
            .iter()
            .position(|p| p.depends_on.iter().all(|(d, _)| procs.contains_key(d)))
            .expect("depends_on has no cycle");
        let plan = plans.remove(i);
        for (dep, condition) in &plan.depends_on {
            let dep_plan = order.iter().find(|p: &&Plan| p.name == *dep).unwrap();
            match condition.as_str() {
                "service_healthy" => {
                    within(120, "a dependency to become healthy", healthy(dep_plan, &mut procs)).await;
                }
                "service_completed_successfully" => {
                    procs.get_mut(dep).expect("a started dependency").wait_success(60).await;
                }
                other => panic!("{}: depends_on condition {other:?} is not run here", plan.name),
            }
        }
        let proc = Proc::spawn(&plan.name, &plan.program, &plan.args, &plan.env, &logs);
        procs.insert(plan.name.clone(), proc);
        order.push(plan);
    }
    for plan in &order {
        within(120, "every service to become healthy", healthy(plan, &mut procs)).await;
    }

    // The chat through each gateway, in one room.
    let gw1: SocketAddr = format!("{}:1999", ips["gateway-1"]).parse().unwrap();
    let gw2: SocketAddr = format!("{}:1999", ips["gateway-2"]).parse().unwrap();
    let lb: SocketAddr = format!("{}:1999", ips["lb"]).parse().unwrap();
    let mut one = Client::connect(&format!("ws://{gw1}/parties/main/compose")).await.expect("connect to gateway-1");
    let mut two = Client::connect(&format!("ws://{gw2}/parties/main/compose")).await.expect("connect to gateway-2");
    one.recv_text().await; // the history
    two.recv_text().await;
    relayed(&mut one, &mut two, "from gateway-1").await;
    relayed(&mut two, &mut one, "from gateway-2").await;

    // And through the load balancer: the page, HTTP to a room, and a WebSocket.
    // The balancer has no healthcheck of its own: wait until it serves the page.
    wait_ok(lb, "/", 60, &mut [procs.get_mut("lb").expect("an lb service")]).await;
    let page = http(lb, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200, "{}", procs["lb"].log_tail());
    assert!(page.text().contains("<html"), "the chat page");
    let mut three = Client::connect(&format!("ws://{lb}/parties/main/compose")).await.expect("connect through lb");
    let history = three.recv_text().await;
    assert!(history.contains("from gateway-1") && history.contains("from gateway-2"), "{history}");
    relayed(&mut three, &mut one, "through the balancer").await;
    let res = http(lb, "GET", "/parties/main/compose", &[], b"").await;
    assert!(res.text().contains("through the balancer"), "{}", res.text());

    // The next `up` runs `init` again: it finds the cluster. After Redis lost its data it
    // fails (and the nodes, waiting for it, would not start) instead of starting over.
    let init = order.iter().find(|p| p.name == "init").expect("an init service");
    let run_init = || async {
        let out = tokio::process::Command::new(&init.program)
            .args(&init.args)
            .env_clear()
            .envs(init.env.iter().cloned())
            .output()
            .await
            .expect("run the init service");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, again) = run_init().await;
    assert!(ok && again.contains("already initialized"), "{again}");
    let flushed = std::process::Command::new(which("redis-cli"))
        .args(["-h", &ips["redis"], "FLUSHALL"])
        .output()
        .expect("redis-cli FLUSHALL");
    assert!(flushed.status.success());
    let (ok, refused) = run_init().await;
    assert!(
        !ok && refused.contains("LOST the data of cluster"),
        "init started over after Redis lost its data:\n{refused}"
    );

    // Stop in reverse order, as `docker compose down` does (SIGTERM, then wait).
    for plan in order.iter().rev() {
        if let Some(p) = procs.get_mut(&plan.name) {
            p.terminate().await;
        }
    }
}
