//! Who a client is and how much it may do: its address (the TCP peer, or what a trusted proxy
//! says), the headers parties read it from (`cf-connecting-ip`, `x-real-ip`,
//! `x-forwarded-for`), and per-address limits on open and new WebSockets.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

/// Address ranges of reverse proxies whose forwarded headers are believed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Whether `ip` is one of the trusted proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, bits)| in_net(ip, *net, *bits))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of addresses and CIDR ranges: `10.0.0.0/8,192.168.1.5,fd00::/8`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (addr, bits) = match part.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (part, None),
            };
            let ip = IpAddr::from_str(addr).map_err(|_| format!("{part:?} is not an IP address or CIDR range"))?;
            let ip = canonical(ip);
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("bad prefix length in {part:?}"))?,
                None => max,
            };
            nets.push((ip, bits));
        }
        Ok(TrustedProxies(nets))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Parses one entry of a forwarded-for list: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:80` or `::1`.
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = IpAddr::from_str(s) {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']').and_then(|(a, _)| IpAddr::from_str(a).ok()).map(canonical);
    }
    s.rsplit_once(':').and_then(|(a, _)| IpAddr::from_str(a).ok()).map(canonical)
}

/// The client's address. From a trusted proxy: the right-most `X-Forwarded-For` entry that is
/// not itself a trusted proxy (the left ones could be forged by the client), else `X-Real-IP`,
/// else the proxy. From anyone else: the TCP peer.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_forwarded)
        .collect();
    if let Some(ip) = forwarded.iter().rev().find(|ip| !trusted.contains(**ip)) {
        return *ip;
    }
    if let Some(first) = forwarded.first() {
        return *first;
    }
    headers.get("x-real-ip").and_then(|v| v.to_str().ok()).and_then(parse_forwarded).unwrap_or(peer)
}

/// Sets the headers PartyKit code reads the client's address from: `cf-connecting-ip` and
/// `x-real-ip` to `client`, and `x-forwarded-for` to the chain a trusted proxy sent plus the
/// peer (otherwise to the peer alone). What an untrusted client wrote there is dropped.
pub fn set_client_headers(headers: &mut HeaderMap, peer: IpAddr, client: IpAddr, trusted: &TrustedProxies) {
    let peer = canonical(peer);
    let chain = if trusted.contains(peer) {
        let sent: Vec<&str> =
            headers.get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).map(str::trim).collect();
        let sent = sent.join(", ");
        if sent.is_empty() {
            peer.to_string()
        } else {
            format!("{sent}, {peer}")
        }
    } else {
        peer.to_string()
    };
    let client = HeaderValue::from_str(&client.to_string()).expect("an IP address is a header value");
    headers.insert("cf-connecting-ip", client.clone());
    headers.insert("x-real-ip", client);
    match HeaderValue::from_str(&chain) {
        Ok(v) => {
            headers.insert("x-forwarded-for", v);
        }
        Err(_) => {
            headers.remove("x-forwarded-for");
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: u32) -> Self {
        Bucket { tokens: f64::from(burst), at: Instant::now() }
    }

    /// Takes one token if there is one. The refill is computed only when the bucket runs dry,
    /// so a socket within its rate reads no clock per message; the bound is the same (at most
    /// `burst + rate * t` tokens over any time `t`), since a refill is capped at the burst.
    pub fn take(&mut self, rate: u32, burst: u32) -> bool {
        if self.tokens < 1.0 {
            self.refill(rate, burst);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, rate: u32, burst: u32) {
        let now = Instant::now();
        let add = now.duration_since(self.at).as_secs_f64() * f64::from(rate);
        self.tokens = (self.tokens + add).min(f64::from(burst.max(1)));
        self.at = now;
    }

    /// Whether the bucket is full again (nothing to remember).
    fn is_full(&mut self, rate: u32, burst: u32) -> bool {
        self.refill(rate, burst);
        self.tokens >= f64::from(burst.max(1))
    }
}

/// What one client address may do.
#[derive(Clone, Copy, Debug)]
pub struct PerClient {
    /// Most open WebSockets (0: no limit).
    pub max_open: usize,
    /// New WebSockets per second (0: no limit).
    pub rate: u32,
    /// Burst above the rate.
    pub burst: u32,
}

/// Why a client address may not open another WebSocket now.
#[derive(Debug, PartialEq, Eq)]
pub enum TooMany {
    /// It has as many open as it may.
    Open(usize),
    /// It opened too many too fast.
    Rate,
}

/// Open WebSockets and recent connects per client address (IPv6 per /64, since one host
/// usually has a whole /64).
pub struct ClientTable {
    limits: PerClient,
    entries: Mutex<Entries>,
}

struct Entries {
    map: HashMap<IpAddr, Entry>,
    /// Size at which forgotten entries are swept out next.
    sweep_at: usize,
}

struct Entry {
    open: usize,
    bucket: Bucket,
}

const SWEEP_MIN: usize = 1024;

impl ClientTable {
    /// A table enforcing `limits`.
    pub fn new(limits: PerClient) -> Arc<Self> {
        Arc::new(ClientTable { limits, entries: Mutex::new(Entries { map: HashMap::new(), sweep_at: SWEEP_MIN }) })
    }

    /// Counts a new WebSocket from `ip`, or says why it may not open one. The slot is given
    /// back when the returned guard drops.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ClientSlot, TooMany> {
        let key = group(ip);
        let PerClient { max_open, rate, burst } = self.limits;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.map.len() >= entries.sweep_at {
            entries.map.retain(|_, e| e.open > 0 || !e.bucket.is_full(rate, burst));
            entries.sweep_at = (entries.map.len() * 2).max(SWEEP_MIN);
        }
        let entry = entries.map.entry(key).or_insert_with(|| Entry { open: 0, bucket: Bucket::full(burst) });
        if max_open > 0 && entry.open >= max_open {
            return Err(TooMany::Open(max_open));
        }
        if rate > 0 && !entry.bucket.take(rate, burst) {
            return Err(TooMany::Rate);
        }
        entry.open += 1;
        Ok(ClientSlot { table: self.clone(), key })
    }

    /// Open WebSockets from `ip` (its group), for tests and metrics.
    pub fn open(&self, ip: IpAddr) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.map.get(&group(ip)).map_or(0, |e| e.open)
    }
}

/// The group an address is counted in: itself for IPv4, its /64 for IPv6.
fn group(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// One open WebSocket of a client address; counted until dropped.
pub struct ClientSlot {
    table: Arc<ClientTable>,
    key: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut entries = self.table.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.map.get_mut(&self.key) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// How long a bucket takes to fill again, for `Retry-After`.
pub fn retry_after(rate: u32) -> Duration {
    if rate == 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_secs_f64((1.0 / f64::from(rate)).max(1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.5,fd00::/8".parse().unwrap();
        assert!(t.contains(ip("10.1.2.3")));
        assert!(t.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped addresses count as IPv4");
        assert!(t.contains(ip("192.168.1.5")));
        assert!(!t.contains(ip("192.168.1.6")));
        assert!(t.contains(ip("fd12::1")));
        assert!(!t.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nonsense".parse::<TrustedProxies>().is_err());
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let trusted: TrustedProxies = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6, 1.2.3.4"));
        // From the proxy: the right-most address that is not a proxy.
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        // From anyone else: the peer, whatever it wrote.
        assert_eq!(client_ip(ip("5.5.5.5"), &h, &trusted), ip("5.5.5.5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4:5555, 127.0.0.1"));
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("[2001:db8::7]:443"));
        assert_eq!(client_ip(ip("127.0.0.1"), &h, &trusted), ip("2001:db8::7"));
        assert_eq!(client_ip(ip("127.0.0.1"), &HeaderMap::new(), &trusted), ip("127.0.0.1"));
    }

    #[test]
    fn client_headers_are_rewritten() {
        let trusted: TrustedProxies = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("9.9.9.9"));
        h.insert("cf-connecting-ip", HeaderValue::from_static("9.9.9.9"));
        set_client_headers(&mut h, ip("5.5.5.5"), ip("5.5.5.5"), &trusted);
        assert_eq!(h["x-forwarded-for"], "5.5.5.5");
        assert_eq!(h["cf-connecting-ip"], "5.5.5.5");
        assert_eq!(h["x-real-ip"], "5.5.5.5");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        set_client_headers(&mut h, ip("127.0.0.1"), ip("1.2.3.4"), &trusted);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["cf-connecting-ip"], "1.2.3.4");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_burst_then_its_rate() {
        let (rate, burst) = (10, 5);
        let mut b = Bucket::full(burst);
        for _ in 0..burst {
            assert!(b.take(rate, burst));
        }
        assert!(!b.take(rate, burst), "the burst is spent");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(b.take(rate, burst), "one token after 1/rate s");
        assert!(!b.take(rate, burst));
        // A long pause refills to the burst, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        let taken = (0..100).take_while(|_| b.take(rate, burst)).count();
        assert_eq!(taken, burst as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn per_client_limits_open_and_rate() {
        let table = ClientTable::new(PerClient { max_open: 2, rate: 1, burst: 3 });
        let a = ip("1.1.1.1");
        let s1 = table.admit(a).unwrap();
        let s2 = table.admit(a).unwrap();
        assert_eq!(table.admit(a).err(), Some(TooMany::Open(2)));
        drop(s1);
        let _s3 = table.admit(a).unwrap();
        drop(s2);
        assert_eq!(table.admit(a).err(), Some(TooMany::Rate), "three in a burst, then one a second");
        tokio::time::advance(Duration::from_millis(1100)).await;
        let _s4 = table.admit(a).unwrap();
        // IPv6 addresses of one /64 share their limits; another /64 has its own.
        let table = ClientTable::new(PerClient { max_open: 1, rate: 0, burst: 0 });
        let _x = table.admit(ip("2001:db8::1")).unwrap();
        assert!(table.admit(ip("2001:db8::2")).is_err());
        assert!(table.admit(ip("2001:db8:0:1::1")).is_ok());
    }
}
