//! The checks behind the fuzz targets in `fuzz/` (the path and query parser, client
//! addresses), kept in the library so the regular test suite replays the fuzz corpus and every
//! crash found (`tests/tests/fuzz_corpus.rs`). Each check panics when a property fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue};
use partyline::web;

use crate::clients::{client_ip, set_client_headers, TrustedProxies};
use crate::paths::{parse, Target};

/// A request target (`path?query`): where its path goes, and what its query parameters decode to.
pub fn route_and_query(data: &[u8]) {
    let target = String::from_utf8_lossy(data);
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    match parse(path) {
        Target::Room { party, room } => {
            assert!(!party.is_empty() && !room.is_empty(), "{path:?}");
            assert!(!room.contains('/') && !party.contains('/'), "{path:?}");
            assert!(path.starts_with("/parties/") || path.starts_with("/party/"), "{path:?}");
            if path.starts_with("/party/") {
                assert_eq!(party, "main");
            }
        }
        Target::MissingParty => assert!(path.starts_with("/parties//"), "{path:?}"),
        Target::Fetch => {}
    }
    for name in ["_pk", "token", ""] {
        if let Some(raw) = web::query_param_raw(query, name) {
            let lossy = web::percent_decode(raw);
            match web::percent_decode_utf8(raw) {
                Some(strict) => assert_eq!(strict, lossy),
                None => assert!(lossy.contains('\u{FFFD}'), "{raw:?}"),
            }
        }
    }
    if let Ok(uri) = format!("http://h{path}?{query}").parse::<http::Uri>() {
        let _ = web::query_param(&uri, "_pk");
    }
}

/// Client addresses: the first line lists trusted proxies, the rest are `X-Forwarded-For` and
/// `X-Real-IP` values. A peer that is not trusted is the client whatever the headers say, and
/// the headers parties read always name the client found.
pub fn addresses(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let trusted: TrustedProxies = lines.next().unwrap_or("").parse().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for (i, line) in lines.enumerate() {
        if let Ok(v) = HeaderValue::from_str(line) {
            headers.append(if i % 2 == 0 { "x-forwarded-for" } else { "x-real-ip" }, v);
        }
    }
    let peers = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
    ];
    for peer in peers {
        let ip = client_ip(peer, &headers, &trusted);
        if !trusted.contains(peer) {
            let plain = match peer {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
                v4 => v4,
            };
            assert_eq!(ip, plain, "an untrusted peer is the client");
        }
        let mut out = headers.clone();
        set_client_headers(&mut out, peer, ip, &trusted);
        assert_eq!(out["cf-connecting-ip"], ip.to_string().as_str());
        assert_eq!(out["x-real-ip"], ip.to_string().as_str());
        if !trusted.contains(peer) {
            assert_eq!(out.get_all("x-forwarded-for").iter().count(), 1);
        }
    }
}
