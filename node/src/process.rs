//! This process's CPU time and resident memory, for the node's `Info` (the console shows them
//! per node). Read from `/proc/self` on Linux, without `unsafe` (the workspace forbids it);
//! 0 where `/proc` is not there or does not parse (other platforms).

/// Clock ticks per second of the CPU times in `/proc/self/stat` (`sysconf(_SC_CLK_TCK)`). It
/// is 100 on every Linux architecture Partyline runs on (the kernel's `USER_HZ`, fixed by its
/// ABI whatever `CONFIG_HZ` is); reading it would take `libc::sysconf`, an `unsafe` call.
pub const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user plus system) this process has used since it started, in seconds; 0 when
/// unknown.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| cpu_seconds_from_stat(&s)).unwrap_or(0.0)
}

/// Resident memory of this process, in bytes; 0 when unknown.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| rss_bytes_from_status(&s)).unwrap_or(0)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The fields after the command
/// name (which is in parentheses and may itself hold spaces and parentheses, hence the last
/// `)`) start with the state, field 3: utime and stime are fields 14 and 15.
fn cpu_seconds_from_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / CLOCK_TICKS_PER_SECOND)
}

/// The `VmRSS:` line of a `/proc/<pid>/status`, which is in kB (KiB), in bytes.
fn rss_bytes_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(kib * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_times_and_the_resident_size() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 9 0 \
                    123456 987654321 2345 18446744073709551615";
        assert_eq!(cpu_seconds_from_stat(stat), Some(3.25));
        assert_eq!(cpu_seconds_from_stat("nonsense"), None);
        let status = "Name:\tpartyline\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t9\n";
        assert_eq!(rss_bytes_from_status(status), Some(12345 * 1024));
        assert_eq!(rss_bytes_from_status("Name:\tx\n"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_uses_memory() {
        assert!(rss_bytes() > 0);
        // Burn a little CPU so the figure is not 0 on a fresh process.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() > 0.0);
    }
}
