//! Conversions between the link protocol (`partyline::runtime::link`) and its gRPC encoding
//! (`partyline_proto::pb`), and between HTTP requests/responses and their proto form.

use bytes::Bytes;
use partyline::runtime::link::{FromRoom, ToRoom};
use partyline::{Message, Request, Response, RoomKey, Text};
use partyline_proto::pb::{self, link_in, link_out};

/// A proto message was missing a field or held invalid data.
#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct Malformed(pub &'static str);

/// Encodes a frame.
pub fn frame(sid: u64, msg: Message) -> pb::Frame {
    match msg {
        Message::Text(t) => pb::Frame { sid, binary: false, data: t.into_bytes() },
        Message::Binary(b) => pb::Frame { sid, binary: true, data: b },
    }
}

/// Decodes a frame payload; text must be UTF-8.
pub fn message(binary: bool, data: Bytes) -> Result<Message, Malformed> {
    if binary {
        Ok(Message::Binary(data))
    } else {
        Text::from_utf8(data).map(Message::Text).map_err(|_| Malformed("text frame is not UTF-8"))
    }
}

/// The proto room reference.
pub fn room_ref(key: &RoomKey) -> pb::RoomRef {
    pb::RoomRef { party: key.party.clone(), room: key.room.clone() }
}

/// The room key of a proto reference.
pub fn room_key(r: Option<pb::RoomRef>) -> Result<RoomKey, Malformed> {
    let r = r.ok_or(Malformed("room missing"))?;
    Ok(RoomKey::new(r.party, r.room))
}

/// Encodes an HTTP request head.
pub fn head(req: &http::request::Parts) -> pb::HttpHead {
    pb::HttpHead {
        method: req.method.to_string(),
        uri: req.uri.to_string(),
        headers: req
            .headers
            .iter()
            .map(|(k, v)| pb::Header { name: k.to_string(), value: Bytes::copy_from_slice(v.as_bytes()) })
            .collect(),
    }
}

/// Decodes an HTTP request.
pub fn request(head: Option<pb::HttpHead>, body: Bytes) -> Result<Request, Malformed> {
    let head = head.ok_or(Malformed("request head missing"))?;
    let mut req = http::Request::new(body);
    *req.method_mut() = head.method.parse().map_err(|_| Malformed("bad method"))?;
    *req.uri_mut() = head.uri.parse().map_err(|_| Malformed("bad uri"))?;
    for h in head.headers {
        let name: http::HeaderName = h.name.parse().map_err(|_| Malformed("bad header name"))?;
        let value = http::HeaderValue::from_maybe_shared(h.value).map_err(|_| Malformed("bad header value"))?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

/// Encodes an HTTP response.
pub fn response(res: Response) -> pb::HttpResponse {
    let (parts, body) = res.into_parts();
    pb::HttpResponse {
        status: parts.status.as_u16() as u32,
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| pb::Header { name: k.to_string(), value: Bytes::copy_from_slice(v.as_bytes()) })
            .collect(),
        body,
    }
}

/// Decodes an HTTP response.
pub fn http_response(res: pb::HttpResponse) -> Result<Response, Malformed> {
    let mut out = http::Response::new(res.body);
    *out.status_mut() = http::StatusCode::from_u16(res.status as u16).map_err(|_| Malformed("bad status"))?;
    for h in res.headers {
        let name: http::HeaderName = h.name.parse().map_err(|_| Malformed("bad header name"))?;
        let value = http::HeaderValue::from_maybe_shared(h.value).map_err(|_| Malformed("bad header value"))?;
        out.headers_mut().append(name, value);
    }
    Ok(out)
}

/// Encodes a gateway event for the stream.
pub fn link_in(msg: ToRoom) -> pb::LinkIn {
    let kind = match msg {
        ToRoom::Connect { sid, id, uri, request } => {
            let (parts, _) = (*request).into_parts();
            link_in::Kind::Connect(pb::Connect { sid, id, uri, request: Some(head(&parts)) })
        }
        ToRoom::Message { sid, msg } => link_in::Kind::Frame(frame(sid, msg)),
        ToRoom::Closed { sid, error } => link_in::Kind::Closed(pb::Closed { sid, error }),
        ToRoom::Paused => link_in::Kind::Paused(pb::Empty {}),
        ToRoom::Adopt { sid, id, uri, tags, state } => link_in::Kind::Adopt(pb::Adopt { sid, id, uri, tags, state }),
        ToRoom::Adopted { links } => link_in::Kind::Adopted(pb::Adopted { links }),
    };
    pb::LinkIn { kind: Some(kind) }
}

/// Decodes a gateway event (not `Open`, which the service handles itself).
pub fn to_room(kind: link_in::Kind) -> Result<ToRoom, Malformed> {
    Ok(match kind {
        link_in::Kind::Connect(c) => {
            ToRoom::Connect { sid: c.sid, id: c.id, uri: c.uri, request: Box::new(request(c.request, Bytes::new())?) }
        }
        link_in::Kind::Frame(f) => ToRoom::Message { sid: f.sid, msg: message(f.binary, f.data)? },
        link_in::Kind::Closed(c) => ToRoom::Closed { sid: c.sid, error: c.error },
        link_in::Kind::Paused(_) => ToRoom::Paused,
        link_in::Kind::Adopt(a) => ToRoom::Adopt { sid: a.sid, id: a.id, uri: a.uri, tags: a.tags, state: a.state },
        link_in::Kind::Adopted(a) => ToRoom::Adopted { links: a.links },
        link_in::Kind::Open(_) => return Err(Malformed("open after the first message")),
    })
}

/// Encodes a room message for the stream.
pub fn link_out(msg: FromRoom) -> pb::LinkOut {
    let kind = match msg {
        FromRoom::Joined { sid } => link_out::Kind::Joined(pb::Sid { sid }),
        FromRoom::Accepted { sid, tags } => link_out::Kind::Accepted(pb::Accepted { sid, tags }),
        FromRoom::Refused { sid, status, reason } => {
            link_out::Kind::Refused(pb::Refused { sid, status: status as u32, reason })
        }
        FromRoom::Failed { sid, reason } => link_out::Kind::Failed(pb::Failed { sid, reason }),
        FromRoom::Send { sid, msg } => link_out::Kind::Send(frame(sid, msg)),
        FromRoom::Broadcast { msg, except } => {
            let f = frame(0, msg);
            link_out::Kind::Broadcast(pb::Broadcast { binary: f.binary, data: f.data, except })
        }
        FromRoom::Close { sid, code, reason } => link_out::Kind::Close(pb::Close { sid, code: code as u32, reason }),
        FromRoom::State { sid, state } => link_out::Kind::State(pb::State { sid, state }),
        FromRoom::Gone { code, reason } => link_out::Kind::Gone(pb::Gone { code: code as u32, reason }),
        FromRoom::Pause => link_out::Kind::Pause(pb::Empty {}),
        FromRoom::Moved { links } => link_out::Kind::Moved(pb::Moved { links }),
    };
    pb::LinkOut { kind: Some(kind), valid_until_ms: 0 }
}

/// Decodes a room message (not `Opened`/`NotOwner`, which the client handles itself).
pub fn from_room(kind: link_out::Kind) -> Result<FromRoom, Malformed> {
    Ok(match kind {
        link_out::Kind::Joined(s) => FromRoom::Joined { sid: s.sid },
        link_out::Kind::Accepted(a) => FromRoom::Accepted { sid: a.sid, tags: a.tags },
        link_out::Kind::Refused(r) => FromRoom::Refused { sid: r.sid, status: r.status as u16, reason: r.reason },
        link_out::Kind::Failed(f) => FromRoom::Failed { sid: f.sid, reason: f.reason },
        link_out::Kind::Send(f) => FromRoom::Send { sid: f.sid, msg: message(f.binary, f.data)? },
        link_out::Kind::Broadcast(b) => FromRoom::Broadcast { msg: message(b.binary, b.data)?, except: b.except },
        link_out::Kind::Close(c) => FromRoom::Close { sid: c.sid, code: c.code as u16, reason: c.reason },
        link_out::Kind::State(s) => FromRoom::State { sid: s.sid, state: s.state },
        link_out::Kind::Gone(g) => FromRoom::Gone { code: g.code as u16, reason: g.reason },
        link_out::Kind::Pause(_) => FromRoom::Pause,
        link_out::Kind::Moved(m) => FromRoom::Moved { links: m.links },
        link_out::Kind::Opened(_) | link_out::Kind::NotOwner(_) => {
            return Err(Malformed("stream control message in the middle of a link"))
        }
    })
}

/// Largest gRPC message for the given limits: a frame (either way) or an HTTP body plus headers.
pub fn max_grpc_message_bytes(limits: &partyline::Limits) -> usize {
    limits.max_message_bytes.max(limits.max_request_body_bytes).max(limits.max_outbound_message_bytes) + (64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_messages_round_trip() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://h/parties/main/r?_pk=a")
            .header("x-user", "alice")
            .body(Bytes::new())
            .unwrap();
        let msgs = vec![
            ToRoom::Connect {
                sid: 7,
                id: "a".into(),
                uri: "http://h/parties/main/r?_pk=a".into(),
                request: Box::new(req),
            },
            ToRoom::Message { sid: 7, msg: Message::from("héllo") },
            ToRoom::Message { sid: 7, msg: Message::from(vec![0u8, 255]) },
            ToRoom::Closed { sid: 7, error: Some("reset".into()) },
            ToRoom::Paused,
            ToRoom::Adopt {
                sid: 7,
                id: "a".into(),
                uri: "http://h/parties/main/r?_pk=a".into(),
                tags: vec!["a".into(), "t".into()],
                state: Some(Bytes::from_static(b"{\"n\":1}")),
            },
            ToRoom::Adopted { links: 2 },
        ];
        for m in msgs {
            let before = format!("{m:?}");
            let back = to_room(link_in(m).kind.unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), before);
        }
        let outs = vec![
            FromRoom::Joined { sid: 1 },
            FromRoom::Accepted { sid: 1, tags: vec!["a".into(), "t".into()] },
            FromRoom::Refused { sid: 1, status: 503, reason: "full".into() },
            FromRoom::Failed { sid: 1, reason: "nope".into() },
            FromRoom::Send { sid: 1, msg: Message::from("x") },
            FromRoom::Broadcast { msg: Message::from(vec![1u8]), except: vec![2, 3] },
            FromRoom::Close { sid: 1, code: 4000, reason: "bye".into() },
            FromRoom::State { sid: 1, state: Some(Bytes::from_static(b"{}")) },
            FromRoom::State { sid: 1, state: None },
            FromRoom::Gone { code: 1012, reason: "moved".into() },
            FromRoom::Pause,
            FromRoom::Moved { links: 3 },
        ];
        for m in outs {
            let before = format!("{m:?}");
            let back = from_room(link_out(m).kind.unwrap()).unwrap();
            assert_eq!(format!("{back:?}"), before);
        }
    }

    #[test]
    fn invalid_text_is_refused() {
        assert!(message(false, Bytes::from_static(&[0xc3, 0x28])).is_err());
    }

    #[test]
    fn http_round_trips() {
        let res = partyline::web::json(http::StatusCode::CREATED, &serde_json::json!({"a": 1}));
        let back = http_response(response(res)).unwrap();
        assert_eq!(back.status(), 201);
        assert_eq!(back.headers()["content-type"], "application/json");
        assert_eq!(back.body().as_ref(), br#"{"a":1}"#);
    }
}
