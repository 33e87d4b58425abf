//! Where the load goes: the `--url` base, the loopback check, and local source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{bail, Context};

/// A parsed `--url`: `ws://host:port` or `http://host:port` (a path, if any, is ignored: the
/// tester builds `/parties/<party>/<room>` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host as written (an IP literal, without brackets, or a name).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
}

impl Target {
    /// Parses `url`. Only plain `ws://` and `http://` are supported (no TLS).
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = if let Some(r) = url.strip_prefix("ws://").or_else(|| url.strip_prefix("http://")) {
            r
        } else if url.starts_with("wss://") || url.starts_with("https://") {
            bail!("{url}: TLS is not supported by the load tester; aim it at the plain ws:// or http:// port")
        } else if url.contains("://") {
            bail!("{url}: the URL must start with ws:// or http://")
        } else {
            url
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            bail!("{url}: no host");
        }
        if authority.contains('@') {
            bail!("{url}: user info in the URL is not supported");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').with_context(|| format!("{url}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("{url}: bad port {p:?}"))?,
                None if after.is_empty() => 80,
                None => bail!("{url}: unexpected {after:?} after the host"),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().with_context(|| format!("{url}: bad port {p:?}"))?),
                None => (authority.to_string(), 80),
            }
        };
        Ok(Target { host, port })
    }

    /// True when the host is a loopback address (127.0.0.0/8, ::1) or `localhost`.
    pub fn is_loopback(&self) -> bool {
        if self.host.eq_ignore_ascii_case("localhost") {
            return true;
        }
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => ip.is_loopback(),
            Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
            Err(_) => false,
        }
    }

    /// Refuses a non-loopback target unless `allow_remote`.
    pub fn check(&self, allow_remote: bool) -> anyhow::Result<()> {
        if !allow_remote && !self.is_loopback() {
            bail!(
                "refusing to send load to {}: only loopback targets (127.0.0.0/8, ::1, localhost) are allowed without --allow-remote",
                self.host
            );
        }
        Ok(())
    }

    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Resolves to one socket address (`localhost` is 127.0.0.1).
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        if self.host.eq_ignore_ascii_case("localhost") {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port));
        }
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("could not resolve {}", self.host))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.host))
    }
}

/// Roughly how many connections one source address can open to one server port (Linux's
/// default ephemeral range is 32768-60999).
pub const PER_SOURCE_IP: usize = 25_000;

/// The local source addresses to spread `clients` connections over when the target is
/// `127.0.0.1`: `None` (let the kernel choose) while one address suffices, else 127.0.0.1,
/// 127.0.0.2, ... (all of 127.0.0.0/8 is loopback on Linux). `forced` overrides the count.
pub fn source_ips(target: SocketAddr, clients: usize, forced: Option<usize>) -> Option<Vec<IpAddr>> {
    let n = forced.unwrap_or_else(|| clients.div_ceil(PER_SOURCE_IP));
    if n <= 1 || !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    Some((0..n.min(250)).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let t = Target::parse("ws://127.0.0.1:1999").unwrap();
        assert_eq!(t, Target { host: "127.0.0.1".into(), port: 1999 });
        assert_eq!(Target::parse("http://localhost/parties/x").unwrap().port, 80);
        assert_eq!(Target::parse("127.0.0.1:2999").unwrap().port, 2999);
        let v6 = Target::parse("ws://[::1]:1999/").unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.authority(), "[::1]:1999");
        assert!(Target::parse("wss://127.0.0.1:1999").is_err());
        assert!(Target::parse("ftp://127.0.0.1").is_err());
        assert!(Target::parse("ws://127.0.0.1:notaport").is_err());
        assert!(Target::parse("ws://").is_err());
    }

    #[test]
    fn only_loopback_without_the_flag() {
        for ok in ["ws://127.0.0.1:1", "ws://127.8.9.10:1", "ws://localhost:1", "ws://LOCALHOST:1", "ws://[::1]:1"] {
            let t = Target::parse(ok).unwrap();
            assert!(t.is_loopback(), "{ok}");
            t.check(false).unwrap();
        }
        for bad in [
            "ws://10.0.0.1:1",
            "ws://192.168.1.1:1",
            "ws://8.8.8.8:1",
            "ws://0.0.0.0:1",
            "ws://example.com:1",
            "ws://localhost.example.com:1",
            "ws://127.0.0.1.nip.io:1",
            "ws://[::2]:1",
            "ws://[::]:1",
        ] {
            let t = Target::parse(bad).unwrap();
            assert!(!t.is_loopback(), "{bad}");
            let err = t.check(false).unwrap_err().to_string();
            assert!(err.contains("--allow-remote"), "{err}");
            t.check(true).unwrap();
        }
        assert!(Target::parse("ws://[::ffff:127.0.0.1]:1").unwrap().is_loopback());
    }

    #[test]
    fn source_addresses_spread_only_when_needed() {
        let lo: SocketAddr = "127.0.0.1:1999".parse().unwrap();
        assert_eq!(source_ips(lo, 19_000, None), None);
        let ips = source_ips(lo, 60_000, None).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(source_ips(lo, 10, Some(2)).unwrap().len(), 2);
        assert_eq!(source_ips("[::1]:1".parse().unwrap(), 60_000, None), None);
    }
}
