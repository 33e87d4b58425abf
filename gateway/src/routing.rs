//! Which party and room a request URL names, following PartyKit's facade: room ids are raw path
//! segments (never percent-decoded), `/party/:room` is party `main`, and everything else goes to
//! `on_fetch`.

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
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

/// Routes a request path.
pub fn route(path: &str) -> Route<'_> {
    if let Some(rest) = path.strip_prefix("/parties/") {
        let mut segs = rest.splitn(3, '/');
        let party = segs.next().unwrap_or("");
        let room = segs.next().unwrap_or("");
        if party.is_empty() {
            return if room.is_empty() { Route::Fetch } else { Route::MissingParty };
        }
        if room.is_empty() {
            return Route::Fetch;
        }
        return Route::Room { party, room };
    }
    if let Some(rest) = path.strip_prefix("/party/") {
        let room = rest.split('/').next().unwrap_or("");
        if !room.is_empty() {
            return Route::Room { party: "main", room };
        }
    }
    Route::Fetch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room<'a>(party: &'a str, room: &'a str) -> Route<'a> {
        Route::Room { party, room }
    }

    #[test]
    fn routes_like_partykit() {
        assert_eq!(route("/parties/main/r1"), room("main", "r1"));
        assert_eq!(route("/parties/main/r1/"), room("main", "r1"));
        assert_eq!(route("/parties/main/r1/sub/path"), room("main", "r1"));
        assert_eq!(route("/parties/MAIN/x"), room("MAIN", "x"));
        assert_eq!(route("/parties/main/%61bc"), room("main", "%61bc"));
        assert_eq!(route("/party/r1"), room("main", "r1"));
        assert_eq!(route("/party/r1/more"), room("main", "r1"));
        assert_eq!(route("/parties//r"), Route::MissingParty);
        assert_eq!(route("/parties/main"), Route::Fetch);
        assert_eq!(route("/parties/main/"), Route::Fetch);
        assert_eq!(route("/party/"), Route::Fetch);
        assert_eq!(route("/"), Route::Fetch);
        assert_eq!(route("/Parties/main/r"), Route::Fetch);
        assert_eq!(route("/partiesx/main/r"), Route::Fetch);
    }
}
