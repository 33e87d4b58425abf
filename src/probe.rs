//! `partyline probe URL`: a minimal HTTP/1.1 GET for container health checks, where the image
//! has no shell and no curl. Exit 0 on a 2xx answer within the timeout.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Options of `partyline probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The URL to GET (`http://host:port/path`; no TLS).
    url: String,
    /// Give up after this long (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = crate::values::parse_duration)]
    timeout: Duration,
}

/// Splits `http://host:port/path` into the address and the path.
fn parse(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").context("only http:// URLs can be probed")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    anyhow::ensure!(!authority.is_empty(), "no host in {url}");
    let addr = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok((addr, path.to_string()))
}

/// The status code of one GET.
async fn get(url: &str) -> anyhow::Result<(u16, String)> {
    let (addr, path) = parse(url)?;
    let mut tcp =
        tokio::net::TcpStream::connect(&addr).await.with_context(|| format!("could not connect to {addr}"))?;
    let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: partyline-probe\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    tcp.take(64 << 10).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line from {addr}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim().to_string();
    Ok((status, body))
}

/// Runs the probe: Ok on 2xx, an error (exit 1) otherwise.
pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let (status, body) = tokio::time::timeout(args.timeout, get(&args.url))
        .await
        .map_err(|_| anyhow::anyhow!("{} did not answer within {:?}", args.url, args.timeout))??;
    anyhow::ensure!((200..300).contains(&status), "{} answered {status}: {body}", args.url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_address_and_path() {
        assert_eq!(parse("http://127.0.0.1:9090/readyz").unwrap(), ("127.0.0.1:9090".into(), "/readyz".into()));
        assert_eq!(parse("http://localhost").unwrap(), ("localhost:80".into(), "/".into()));
        assert!(parse("https://x/").is_err());
        assert!(parse("http:///x").is_err());
    }
}
