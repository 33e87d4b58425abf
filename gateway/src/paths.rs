//! Request paths: which party and room a request URL names, following PartyKit's facade: room
//! ids are raw path segments (never percent-decoded), `/party/:room` is party `main`, and
//! everything else goes to `on_fetch`.

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A party's room: `/parties/:party/:room[/*rest]` or `/party/:room[/*rest]`.
    Room {
        /// Party name (case-sensitive).
        party: &'a str,
        /// Room id, the raw path segment.
        room: &'a str,
    },
    /// `/parties//...`: a party URL without a party name.
    MissingParty,
    /// Anything else: the `main` party's `on_fetch`, else 404.
    Fetch,
}

/// Parses a request path.
pub fn parse(path: &str) -> Target<'_> {
    if let Some(rest) = path.strip_prefix("/parties/") {
        let mut segs = rest.splitn(3, '/');
        let party = segs.next().unwrap_or("");
        let room = segs.next().unwrap_or("");
        if party.is_empty() {
            return if room.is_empty() { Target::Fetch } else { Target::MissingParty };
        }
        if room.is_empty() {
            return Target::Fetch;
        }
        return Target::Room { party, room };
    }
    if let Some(rest) = path.strip_prefix("/party/") {
        let room = rest.split('/').next().unwrap_or("");
        if !room.is_empty() {
            return Target::Room { party: "main", room };
        }
    }
    Target::Fetch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room<'a>(party: &'a str, room: &'a str) -> Target<'a> {
        Target::Room { party, room }
    }

    #[test]
    fn parses_like_partykit() {
        assert_eq!(parse("/parties/main/r1"), room("main", "r1"));
        assert_eq!(parse("/parties/main/r1/"), room("main", "r1"));
        assert_eq!(parse("/parties/main/r1/sub/path"), room("main", "r1"));
        assert_eq!(parse("/parties/MAIN/x"), room("MAIN", "x"));
        assert_eq!(parse("/parties/main/%61bc"), room("main", "%61bc"));
        assert_eq!(parse("/party/r1"), room("main", "r1"));
        assert_eq!(parse("/party/r1/more"), room("main", "r1"));
        assert_eq!(parse("/parties//r"), Target::MissingParty);
        assert_eq!(parse("/parties/main"), Target::Fetch);
        assert_eq!(parse("/parties/main/"), Target::Fetch);
        assert_eq!(parse("/party/"), Target::Fetch);
        assert_eq!(parse("/"), Target::Fetch);
        assert_eq!(parse("/Parties/main/r"), Target::Fetch);
        assert_eq!(parse("/partiesx/main/r"), Target::Fetch);
    }
}
