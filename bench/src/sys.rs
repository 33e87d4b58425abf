//! Process plumbing: the file limit, server memory from /proc, and the connection ramp.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Raises the soft open-file limit to the hard limit; returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(1024),
    }
}

/// Memory of a process, from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Mem {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size so far (`VmHWM`).
    pub hwm_kib: u64,
}

/// Reads `/proc/<pid>/status`; `None` if the process is gone or not readable.
pub fn read_mem(pid: u32) -> Option<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<Mem> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Mem { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:").unwrap_or(0) })
}

/// Clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux).
pub const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU time of a process in clock ticks, from `/proc/<pid>/stat`.
pub fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after "(comm) ": state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(") ")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The command name of a process (`/proc/<pid>/comm`).
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim().to_string())
}

/// Spaces events (connection attempts) at most `per_second` apart overall; 0 = no limit.
pub struct Ramp {
    interval: Option<Duration>,
    next: Mutex<Option<Instant>>,
}

impl Ramp {
    /// A ramp of `per_second` events per second (0: unlimited).
    pub fn new(per_second: f64) -> Ramp {
        let interval = (per_second > 0.0).then(|| Duration::from_secs_f64(1.0 / per_second));
        Ramp { interval, next: Mutex::new(None) }
    }

    /// Waits for this caller's slot.
    pub async fn wait(&self) {
        let Some(interval) = self.interval else { return };
        let slot = {
            let mut next = self.next.lock().expect("ramp lock");
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parses() {
        let s = "Name:\tpartyline\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_status(s), Some(Mem { rss_kib: 10240, hwm_kib: 20480 }));
        assert_eq!(parse_status("Name: x\n"), None);
        assert!(read_mem(std::process::id()).unwrap().rss_kib > 0);
        let stat = "42 (a (weird) name) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0 12345 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert!(read_cpu_ticks(std::process::id()).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_spaces_slots() {
        let ramp = Ramp::new(10.0);
        let start = Instant::now();
        for _ in 0..5 {
            ramp.wait().await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(500), "{took:?}");
        let free = Ramp::new(0.0);
        let start = Instant::now();
        free.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
