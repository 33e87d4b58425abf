//! The Web runtime pieces a PartyKit project leans on, run through a real project: outbound
//! `fetch` over HTTPS with redirects (against TLS and plain servers on 127.0.0.1 started here,
//! with a certificate `openssl` makes at test time), `crypto.subtle` verifying JWTs Node's own
//! `crypto` produced, and Blob, FormData and ReadableStream bodies.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use partyline::testing::{request, Hooks, TestRoom};
use partyline::{Before, Limits, PartyFactory, PartyRegistry};
use partyline_js::{FetchPolicy, JsSettings, Project};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::rustls;

/// Keys and JWTs made with Node's `crypto` (`node:crypto` `createHmac`, `sign` with
/// `dsaEncoding: "ieee-p1363"` for ES256, Ed25519 and RS256), embedded so the test does not need
/// Node: HS256 with `hsSecret`, ES256 with `esJwk` (also as `esSpki`, and its private key as
/// `esPkcs8`), EdDSA with `edJwk` (private key `edPkcs8`), RS256 with `rsJwk` (also `rsSpki`).
const NODE_KEYS: &str = r#"{"hs":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.7yd5AtVWyZQuGrNmXotQdSjQ6SRKm3pl6DYvgCvhvIc","hsSecret":"partyline-test-secret","es":"eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.iSqXg66okXzlobQnZ7lp-dPfYCudJluK5xsKQJkZ0HFYKbY7kIx100TK5kkBN64iH74XXBuFMBr8a-MY-7nzCQ","esJwk":{"kty":"EC","x":"LfPVfUHYLeWTg9FSaIHIz1FOCaMKCUZR34LdEEjtAJo","y":"9UYha7MQb7AE6RD3jYZA6njCCBTCjM8vsPxNN13DHL0","crv":"P-256"},"esSpki":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAELfPVfUHYLeWTg9FSaIHIz1FOCaMKCUZR34LdEEjtAJr1RiFrsxBvsATpEPeNhkDqeMIIFMKMzy+w/E03XcMcvQ==","esPkcs8":"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjxd+YyyzrEjZw5fzIPQnLE7aBcj0CpWlHMoncuiQICOhRANCAAQt89V9Qdgt5ZOD0VJogcjPUU4JowoJRlHfgt0QSO0AmvVGIWuzEG+wBOkQ942GQOp4wggUwozPL7D8TTddwxy9","ed":"eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.lx5Fk2YpQ_OKP1sEEwdYajD7UQsPmj0OCOIOP3uCTBotsZ9Koe-EGX3fHF3TSUDfnOIwVXEXaBc-9kmOluVmDA","edJwk":{"crv":"Ed25519","x":"zmNym3XvcFi2hiN0m_uO3mYTbvnkCMIKbPMU9busJI8","kty":"OKP"},"edPkcs8":"MC4CAQAwBQYDK2VwBCIEIMVISZg8EDJJ+oUnDM2k640+tfA9a9zXJAywwvm8+kBl","rs":"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6NDEwMjQ0NDgwMH0.AblpTECt8RA96F5GPZOcCyLun6S2cbrbdMq78VnSwN4-chAyS784osv4VQ01TfG53rcae5b8_WvOh7IW5lrvJVe8hM2tfCequz-z0r7cgz7V6n18cyHeYqNqAj6Bk18PlxVGldWfleC4l4P8hLnqsZvv8CIWqLPiVjKE-kDCPxWLj-MGjdjL8uRhKEJI3JVXPU3OtgEnVTBK03usHYxj_gzVtmMHAH0aAcUTUsmb2E5bc_OUSkYoJLbL7WVLklOZRj52qa8DQIB0Ec2qcLzpRJP83ytTZrFPORgaz_Rt185A5yJeQCkz_Hx6CFQyPpzxSguSuYVvEK1cAw-qhTKZcw","rsJwk":{"kty":"RSA","n":"o5LC_Z-p7yct_qUw-UDsrvyjL4ZyomV-jI89_9IV2dF2FoH6PqqijmhfzbolCtP7QBqiGimTOrWpdIQ8rkB3c9qUT47cU9354XC9ZvEAJS1MmCyR5_LzogPJVsEsmrdTBK-BRF3PvY14i5-urPzKqoS5teIxD-YbLG1KTkfavXtQPGbekhC_YBy9DmypvgcE1voi-XOHH72UtvglLhI7IMbBkdWK4eBEB1fsCDZ2KMN_GFisCTsP7OTczVVx9DT14Rxoh-XstpvRZU9sEj8vdh8ivuLJCWjYfciLhEbfPKiFpIgsdCRURKfWFGi23QvqUwlpz--s6Yw0wcdzSznnkQ","e":"AQAB"},"rsSpki":"MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAo5LC/Z+p7yct/qUw+UDsrvyjL4ZyomV+jI89/9IV2dF2FoH6PqqijmhfzbolCtP7QBqiGimTOrWpdIQ8rkB3c9qUT47cU9354XC9ZvEAJS1MmCyR5/LzogPJVsEsmrdTBK+BRF3PvY14i5+urPzKqoS5teIxD+YbLG1KTkfavXtQPGbekhC/YBy9DmypvgcE1voi+XOHH72UtvglLhI7IMbBkdWK4eBEB1fsCDZ2KMN/GFisCTsP7OTczVVx9DT14Rxoh+XstpvRZU9sEj8vdh8ivuLJCWjYfciLhEbfPKiFpIgsdCRURKfWFGi23QvqUwlpz++s6Yw0wcdzSznnkQIDAQAB"}"#;

const SERVER: &str = r#"
const KEYS = NODE_KEYS_JSON;

const enc = new TextEncoder();
function b64u(s: string): Uint8Array {
  return Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
}
function b64(s: string): Uint8Array {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}
function hex(buf: ArrayBuffer): string {
  return [...new Uint8Array(buf)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function verifyJwt(token: string): Promise<any> {
  const [h, p, s] = token.split(".");
  const header = JSON.parse(new TextDecoder().decode(b64u(h)));
  let key: CryptoKey;
  let alg: any;
  switch (header.alg) {
    case "HS256":
      alg = "HMAC";
      key = await crypto.subtle.importKey("raw", enc.encode(KEYS.hsSecret), { name: "HMAC", hash: "SHA-256" }, false, ["verify"]);
      break;
    case "ES256":
      alg = { name: "ECDSA", hash: "SHA-256" };
      key = await crypto.subtle.importKey("jwk", KEYS.esJwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      break;
    case "EdDSA":
      alg = "Ed25519";
      key = await crypto.subtle.importKey("jwk", KEYS.edJwk, "Ed25519", false, ["verify"]);
      break;
    case "RS256":
      alg = "RSASSA-PKCS1-v1_5";
      key = await crypto.subtle.importKey("jwk", KEYS.rsJwk, { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, false, ["verify"]);
      break;
    default:
      throw new Error(`unexpected alg ${header.alg}`);
  }
  if (!(await crypto.subtle.verify(alg, key, b64u(s), enc.encode(`${h}.${p}`)))) throw new Error("bad signature");
  return JSON.parse(new TextDecoder().decode(b64u(p)));
}

// Runs each check; the result is true or what went wrong.
async function checks(list: Record<string, () => Promise<unknown>>): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(list)) {
    try {
      out[name] = await fn();
    } catch (e: any) {
      out[name] = `threw ${e && e.name}: ${e && e.message}`;
    }
  }
  return out;
}
async function rejects(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return "resolved";
  } catch (e: any) {
    return `${e instanceof DOMException ? "DOMException" : "other"} ${e.name}`;
  }
}

async function cryptoChecks() {
  const data = enc.encode("some data");
  return checks({
    hs256: async () => (await verifyJwt(KEYS.hs)).sub === "alice",
    es256: async () => (await verifyJwt(KEYS.es)).sub === "alice",
    eddsa: async () => (await verifyJwt(KEYS.ed)).sub === "alice",
    rs256: async () => (await verifyJwt(KEYS.rs)).sub === "alice",
    tampered: async () => {
      const [h, p, s] = KEYS.es.split(".");
      const other = btoa(JSON.stringify({ sub: "mallory", exp: 4102444800 })).replace(/=+$/, "");
      return (await rejects(verifyJwt(`${h}.${other}.${s}`))) === "other Error";
    },
    esSpki: async () => {
      const key = await crypto.subtle.importKey("spki", b64(KEYS.esSpki), { name: "ECDSA", namedCurve: "P-256" }, true, ["verify"]);
      const [h, p, s] = KEYS.es.split(".");
      const jwk: any = await crypto.subtle.exportKey("jwk", key);
      return (await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, key, b64u(s), enc.encode(`${h}.${p}`))) && jwk.x === KEYS.esJwk.x && jwk.y === KEYS.esJwk.y;
    },
    rsSpki: async () => {
      const key = await crypto.subtle.importKey("spki", b64(KEYS.rsSpki), { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" }, true, ["verify"]);
      const [h, p, s] = KEYS.rs.split(".");
      const jwk: any = await crypto.subtle.exportKey("jwk", key);
      return (await crypto.subtle.verify("RSASSA-PKCS1-v1_5", key, b64u(s), enc.encode(`${h}.${p}`))) && jwk.n === KEYS.rsJwk.n && (key.algorithm as any).modulusLength === 2048;
    },
    esPkcs8: async () => {
      const priv = await crypto.subtle.importKey("pkcs8", b64(KEYS.esPkcs8), { name: "ECDSA", namedCurve: "P-256" }, false, ["sign"]);
      const pub = await crypto.subtle.importKey("jwk", KEYS.esJwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, priv, data);
      return sig.byteLength === 64 && (await crypto.subtle.verify({ name: "ECDSA", hash: "SHA-256" }, pub, sig, data));
    },
    edPkcs8: async () => {
      const priv = await crypto.subtle.importKey("pkcs8", b64(KEYS.edPkcs8), "Ed25519", false, ["sign"]);
      const pub = await crypto.subtle.importKey("jwk", KEYS.edJwk, "Ed25519", false, ["verify"]);
      const sig = await crypto.subtle.sign("Ed25519", priv, data);
      return sig.byteLength === 64 && (await crypto.subtle.verify("Ed25519", pub, sig, data));
    },
    hmacGenerated: async () => {
      const key = (await crypto.subtle.generateKey({ name: "HMAC", hash: "SHA-512" }, true, ["sign", "verify"])) as CryptoKey;
      const sig = await crypto.subtle.sign("HMAC", key, data);
      const jwk: any = await crypto.subtle.exportKey("jwk", key);
      const raw = await crypto.subtle.exportKey("raw", key);
      return sig.byteLength === 64 && (await crypto.subtle.verify("HMAC", key, sig, data)) && jwk.kty === "oct" && jwk.alg === "HS512" && raw.byteLength === 128 && !(await crypto.subtle.verify("HMAC", key, sig, enc.encode("other")));
    },
    p384Generated: async () => {
      const pair = (await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, ["sign", "verify"])) as CryptoKeyPair;
      const sig = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, pair.privateKey, data);
      const jwk: any = await crypto.subtle.exportKey("jwk", pair.privateKey);
      const again = await crypto.subtle.importKey("jwk", jwk, { name: "ECDSA", namedCurve: "P-384" }, true, ["sign"]);
      const sig2 = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, again, data);
      const pkcs8 = await crypto.subtle.exportKey("pkcs8", again);
      const third = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "ECDSA", namedCurve: "P-384" }, false, ["sign"]);
      const spki = await crypto.subtle.exportKey("spki", pair.publicKey);
      const pub = await crypto.subtle.importKey("spki", spki, { name: "ECDSA", namedCurve: "P-384" }, false, ["verify"]);
      const sig3 = await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-384" }, third, data);
      const v = async (s: ArrayBuffer) => crypto.subtle.verify({ name: "ECDSA", hash: "SHA-384" }, pub, s, data);
      return sig.byteLength === 96 && (await v(sig)) && (await v(sig2)) && (await v(sig3)) && jwk.crv === "P-384" && typeof jwk.d === "string";
    },
    ed25519Generated: async () => {
      const pair = (await crypto.subtle.generateKey("Ed25519", true, ["sign", "verify"])) as CryptoKeyPair;
      const sig = await crypto.subtle.sign("Ed25519", pair.privateKey, data);
      const raw = await crypto.subtle.exportKey("raw", pair.publicKey);
      const pub = await crypto.subtle.importKey("raw", raw, "Ed25519", false, ["verify"]);
      return raw.byteLength === 32 && (await crypto.subtle.verify("Ed25519", pub, sig, data));
    },
    digest: async () => hex(await crypto.subtle.digest("SHA-256", enc.encode("abc"))) === "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    notSupported: async () => rejects(crypto.subtle.importKey("raw", new Uint8Array(16), { name: "AES-GCM" }, false, ["encrypt"])),
    dataError: async () => rejects(crypto.subtle.importKey("jwk", KEYS.esJwk, { name: "ECDSA", namedCurve: "P-384" }, false, ["verify"])),
    badPoint: async () => rejects(crypto.subtle.importKey("raw", new Uint8Array(10), { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"])),
    wrongUsage: async () => {
      const key = await crypto.subtle.importKey("jwk", KEYS.esJwk, { name: "ECDSA", namedCurve: "P-256" }, false, ["verify"]);
      return rejects(crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, key, data));
    },
    notExtractable: async () => {
      const key = await crypto.subtle.importKey("raw", data, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      return rejects(crypto.subtle.exportKey("raw", key));
    },
  });
}

async function bodyChecks() {
  return checks({
    blob: async () => {
      const blob = new Blob(["hello ", new Uint8Array([119, 111]), new Blob(["rld"])], { type: "Text/Plain" });
      return [blob.size, blob.type, await blob.text(), await blob.slice(6).text(), await blob.slice(-3, -1).text(), (await blob.arrayBuffer()).byteLength];
    },
    formData: async () => {
      const form = new FormData();
      form.append("name", "alice");
      form.append("file", new Blob(["file body"], { type: "text/plain" }), "a.txt");
      form.append("tag", "x");
      form.append("tag", "y");
      form.set("name", "bob");
      form.delete("nothing");
      const req = new Request("http://x/", { method: "POST", body: form });
      const type = req.headers.get("content-type")!;
      const parsed = await req.formData();
      const file = parsed.get("file") as File;
      return [type.startsWith("multipart/form-data; boundary="), parsed.get("name"), parsed.getAll("tag"), file.name, file.type, await file.text(), parsed.has("nothing"), [...parsed.keys()]];
    },
    urlencoded: async () => {
      const form = await new Request("http://x/", { method: "POST", body: new URLSearchParams("a=1&b=two+words") }).formData();
      return [form.get("a"), form.get("b")];
    },
    streamBody: async () => {
      const stream = new ReadableStream({
        start(c) {
          c.enqueue(enc.encode("chunk1 "));
          c.enqueue(enc.encode("chunk2"));
          c.close();
        },
      });
      return new Response(stream).text();
    },
    asyncStreamBody: async () => {
      let n = 0;
      const stream = new ReadableStream({
        async pull(c) {
          await new Promise((r) => setTimeout(r, 1));
          if (n < 3) c.enqueue(enc.encode(`part${n++} `));
          else c.close();
        },
      });
      return new Request("http://x/", { method: "POST", body: stream }).text();
    },
    bodyReader: async () => {
      const res = new Response("streamed body");
      const reader = res.body!.getReader();
      let text = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += new TextDecoder().decode(value);
      }
      return [text, res.bodyUsed, await rejects(res.text())];
    },
    iterate: async () => {
      let s = "";
      for await (const chunk of new Response("iterate me").body as any) s += new TextDecoder().decode(chunk);
      return s;
    },
    blobBody: async () => {
      const blob = await new Response("blobby", { headers: { "content-type": "text/x-test" } }).blob();
      const req = new Request("http://x/", { method: "POST", body: new Blob(["b"], { type: "application/x-b" }) });
      return [blob.type, await blob.text(), req.headers.get("content-type"), await req.text()];
    },
    cloneStream: async () => {
      const res = new Response(new ReadableStream({ async start(c) { await null; c.enqueue(enc.encode("tee")); c.close(); } }));
      const copy = res.clone();
      return [await res.text(), await copy.text()];
    },
    proxyBody: async () => {
      const first = new Response("passed along");
      return new Response(first.body).text();
    },
  });
}

export default class Server {
  static async onBeforeConnect(req: Request) {
    const token = new URL(req.url).searchParams.get("token") ?? "";
    try {
      const claims = await verifyJwt(token);
      req.headers.set("x-user", claims.sub);
      return req;
    } catch (e: any) {
      return new Response(`unauthorized: ${e.message}`, { status: 401 });
    }
  }

  async onRequest(req: Request) {
    const url = new URL(req.url);
    const path = url.pathname.slice(url.pathname.lastIndexOf("/"));
    if (path === "/crypto") return Response.json(await cryptoChecks());
    if (path === "/bodies") return Response.json(await bodyChecks());
    if (path === "/form") {
      const form = await req.formData();
      const file = form.get("upload") as File;
      return Response.json({ field: form.get("field"), name: file.name, type: file.type, size: file.size, text: await file.text() });
    }
    if (path === "/stream") {
      return new Response(new ReadableStream({ start(c) { c.enqueue(enc.encode("from ")); c.enqueue(enc.encode("a stream")); c.close(); } }));
    }
    if (path === "/fetch") {
      const q = url.searchParams;
      const method = q.get("method") ?? "GET";
      const init: RequestInit = { method, redirect: (q.get("redirect") ?? "follow") as RequestRedirect };
      if (q.get("form")) {
        const form = new FormData();
        form.append("greeting", "hi");
        form.append("doc", new Blob(["%PDF"], { type: "application/pdf" }), "doc.pdf");
        init.body = form;
      } else if (method !== "GET") {
        init.body = "payload";
        init.headers = { "content-type": "text/plain", authorization: "Bearer secret" };
      }
      try {
        const res = await fetch(q.get("url")!, init);
        const out: any = { status: res.status, url: res.url, redirected: res.redirected, location: res.headers.get("location"), method: res.headers.get("x-method") };
        if (q.get("form")) {
          const echoed = await res.formData();
          out.form = [echoed.get("greeting"), (echoed.get("doc") as File).name, await (echoed.get("doc") as File).text()];
        } else {
          out.body = await res.text();
        }
        return Response.json(out);
      } catch (e: any) {
        return Response.json({ error: `${e.name}: ${e.message}` });
      }
    }
    return new Response("not found", { status: 404 });
  }
}
"#;

/// A project of `server.ts` in a temporary directory, loaded with `fetch` as the policy.
async fn load(fetch: FetchPolicy) -> (tempfile::TempDir, Arc<dyn PartyFactory>) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("partykit.json"), r#"{ "main": "server.ts" }"#).expect("partykit.json");
    std::fs::write(dir.path().join("server.ts"), SERVER.replace("NODE_KEYS_JSON", NODE_KEYS)).expect("server.ts");
    let settings = JsSettings { fetch, ..JsSettings::default() };
    let project = Project::load(&dir.path().join("partykit.json"), &Limits::default(), &settings)
        .await
        .unwrap_or_else(|e| panic!("the project loads: {e:#}"));
    let registry = project.registry(PartyRegistry::new()).expect("the registry");
    let factory = registry.get("main").expect("the main party").clone();
    (dir, factory)
}

/// GET of `path_and_query` in room `r` of the party; the response parsed as JSON.
async fn get_json(room: &TestRoom, path_and_query: &str) -> Value {
    let res = room.request(request("GET", &format!("http://partyline.test/parties/main/r{path_and_query}"), "")).await;
    let body = std::str::from_utf8(res.body()).expect("UTF-8");
    assert_eq!(res.status(), 200, "{body}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

/// Asserts every check of a `checks()` result is `true`.
fn all_true(results: &Value) {
    let map = results.as_object().expect("an object of checks");
    let failed: Vec<_> = map.iter().filter(|(_, v)| **v != Value::Bool(true)).collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}

#[tokio::test]
async fn crypto_subtle_verifies_node_made_jwts_and_throws_as_webcrypto() {
    let (_dir, factory) = load(FetchPolicy::default()).await;
    let room = TestRoom::with_factory("main", "r", factory.clone()).start();
    let mut results = get_json(&room, "/crypto").await;
    let map = results.as_object_mut().expect("an object");
    for (check, want) in [
        ("notSupported", "DOMException NotSupportedError"),
        ("dataError", "DOMException DataError"),
        ("badPoint", "DOMException DataError"),
        ("wrongUsage", "DOMException InvalidAccessError"),
        ("notExtractable", "DOMException InvalidAccessError"),
    ] {
        assert_eq!(map.remove(check), Some(Value::String(want.into())), "{check}");
    }
    all_true(&results);

    // The common case: a JWT checked in the static onBeforeConnect.
    let hooks = Hooks::with_factory("main", factory);
    let keys: Value = serde_json::from_str(NODE_KEYS).expect("the keys");
    for alg in ["hs", "es", "ed", "rs"] {
        let token = keys[alg].as_str().expect("a token");
        let req = request("GET", &format!("http://partyline.test/parties/main/r?token={token}"), "");
        match hooks.before_connect("r", req).await.expect("the hook runs") {
            Before::Continue(req) => assert_eq!(req.headers()["x-user"], "alice", "{alg}"),
            Before::Respond(res) => panic!("{alg} refused: {:?}", res.body()),
        }
    }
    let forged = format!("{}x", keys["es"].as_str().expect("a token").trim_end_matches(|c| c != '.'));
    let req = request("GET", &format!("http://partyline.test/parties/main/r?token={forged}"), "");
    match hooks.before_connect("r", req).await.expect("the hook runs") {
        Before::Respond(res) => assert_eq!(res.status(), 401),
        Before::Continue(_) => panic!("a forged token was let through"),
    }
}

#[tokio::test]
async fn blob_formdata_and_readablestream_bodies_behave_as_the_standard_apis() {
    let (_dir, factory) = load(FetchPolicy::default()).await;
    let room = TestRoom::with_factory("main", "r", factory).start();
    let mut results = get_json(&room, "/bodies").await;
    let map = results.as_object_mut().expect("an object");
    let expect = serde_json::json!({
        "blob": [11, "text/plain", "hello world", "world", "rl", 11],
        "formData": [true, "bob", ["x", "y"], "a.txt", "text/plain", "file body", false, ["name", "file", "tag", "tag"]],
        "urlencoded": ["1", "two words"],
        "streamBody": "chunk1 chunk2",
        "asyncStreamBody": "part0 part1 part2 ",
        "bodyReader": ["streamed body", true, "other TypeError"],
        "iterate": "iterate me",
        "blobBody": ["text/x-test", "blobby", "application/x-b", "b"],
        "cloneStream": ["tee", "tee"],
        "proxyBody": "passed along",
    });
    assert_eq!(Value::Object(map.clone()), expect);

    // A multipart body from outside, parsed by request.formData().
    let boundary = "XyZzy";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"field\"\r\n\r\nvalue one\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"notes.bin\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n\x01\x02 three\r\n--{boundary}--\r\n"
    );
    let mut req = request("POST", "http://partyline.test/parties/main/r/form", body);
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        format!("multipart/form-data; boundary={boundary}").parse().expect("a header value"),
    );
    let res = room.request(req).await;
    let form: Value = serde_json::from_slice(res.body()).expect("JSON");
    assert_eq!(
        form,
        serde_json::json!({ "field": "value one", "name": "notes.bin", "type": "application/octet-stream", "size": 8, "text": "\u{1}\u{2} three" })
    );

    // A response made from a ReadableStream.
    let res = room.request(request("GET", "http://partyline.test/parties/main/r/stream", "")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(std::str::from_utf8(res.body()).expect("UTF-8"), "from a stream");
}

/// A certificate for 127.0.0.1 and localhost made by `openssl` in `dir`: (cert.pem, key.pem).
fn make_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "2"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl must be installed");
    assert!(out.status.success(), "openssl failed: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// The ports of the test servers.
#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    https: u16,
}

/// Answers one HTTP/1.1 request on `io` (the connection closes after it). Routes: `/hello`;
/// `/r1` → `/r2` → https `/hello` (302s); `/loop` (302 to itself); `/to-https` (301 from http to
/// https); `/see-other` (303 to `/echo`); `/temp` (307 to `/echo`); `/away` (302 to
/// localhost, not on the allow-list); `/echo` (the method in `x-method`, the body and its type
/// sent back; `authorization` in `x-auth`).
async fn serve_one<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, https: bool, ports: Ports) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, path) = (first.next().unwrap_or_default().to_string(), first.next().unwrap_or_default().to_string());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = io.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let tls = format!("https://127.0.0.1:{}", ports.https);
    let (status, extra, out): (&str, Vec<(String, String)>, Vec<u8>) = match path.as_str() {
        "/hello" => ("200 OK", vec![], format!("hello over {}", if https { "https" } else { "http" }).into_bytes()),
        "/r1" => ("302 Found", vec![("location".into(), "/r2".into())], vec![]),
        "/r2" => ("302 Found", vec![("location".into(), format!("{tls}/hello"))], vec![]),
        "/loop" => ("302 Found", vec![("location".into(), "/loop".into())], vec![]),
        "/to-https" => ("301 Moved Permanently", vec![("location".into(), format!("{tls}/hello"))], vec![]),
        "/see-other" => ("303 See Other", vec![("location".into(), "/echo".into())], vec![]),
        "/temp" => ("307 Temporary Redirect", vec![("location".into(), "/echo".into())], vec![]),
        "/away" => ("302 Found", vec![("location".into(), format!("http://localhost:{}/hello", ports.http))], vec![]),
        "/echo" => {
            let mut extra = vec![("x-method".to_string(), method.clone())];
            if let Some(t) = header("content-type") {
                extra.push(("content-type".into(), t));
            }
            extra.push(("x-auth".into(), header("authorization").unwrap_or_else(|| "none".into())));
            ("200 OK", extra, body)
        }
        _ => ("404 Not Found", vec![], b"not found".to_vec()),
    };
    let mut res = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n", out.len());
    for (k, v) in extra {
        res.push_str(&format!("{k}: {v}\r\n"));
    }
    res.push_str("\r\n");
    let _ = io.write_all(res.as_bytes()).await;
    let _ = io.write_all(&out).await;
    let _ = io.shutdown().await;
}

/// Starts the plain and the TLS test servers on 127.0.0.1.
async fn start_servers(cert: &Path, key: &Path) -> Ports {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_file(cert).expect("the certificate")];
    let key = PrivateKeyDer::from_pem_file(key).expect("the key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the server certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let tls = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let ports = Ports {
        http: plain.local_addr().expect("an address").port(),
        https: tls.local_addr().expect("an address").port(),
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = plain.accept().await {
            tokio::spawn(serve_one(stream, false, ports));
        }
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(stream).await {
                    serve_one(stream, true, ports).await;
                }
            });
        }
    });
    ports
}

#[tokio::test]
async fn fetch_goes_over_https_and_follows_redirects_within_the_allow_list() {
    let certs = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = make_certificate(certs.path());
    let ports = start_servers(&cert, &key).await;
    let policy = FetchPolicy {
        allow: vec!["127.0.0.1".into()],
        timeout: Duration::from_secs(20),
        extra_roots: vec![cert.clone()],
    };
    let (_dir, factory) = load(policy).await;
    let room = TestRoom::with_factory("main", "r", factory).start();
    let https = format!("https://127.0.0.1:{}", ports.https);
    let http = format!("http://127.0.0.1:{}", ports.http);
    let fetch = |url: String, extra: &'static str| {
        let room = &room;
        async move { get_json(room, &format!("/fetch?url={url}{extra}")).await }
    };

    let res = fetch(format!("{https}/hello"), "").await;
    assert_eq!(res["status"], 200, "{res}");
    assert_eq!(res["body"], "hello over https");
    assert_eq!(res["redirected"], false);

    // https → https, 302 (relative Location) then 302 (absolute) then 200.
    let res = fetch(format!("{https}/r1"), "").await;
    assert_eq!((res["status"].clone(), res["body"].clone()), (200.into(), "hello over https".into()), "{res}");
    assert_eq!(res["url"], format!("{https}/hello"));
    assert_eq!(res["redirected"], true);

    // http → https.
    let res = fetch(format!("{http}/to-https"), "").await;
    assert_eq!(res["body"], "hello over https", "{res}");

    // A loop ends after 20 redirects with a TypeError.
    let res = fetch(format!("{https}/loop"), "").await;
    let err = res["error"].as_str().unwrap_or_else(|| panic!("an error: {res}"));
    assert!(err.contains("too many redirects"), "{err}");

    // redirect: "manual" hands the 3xx back; "error" fails.
    let res = fetch(format!("{https}/r1"), "&redirect=manual").await;
    assert_eq!((res["status"].clone(), res["location"].clone()), (302.into(), "/r2".into()), "{res}");
    let res = fetch(format!("{https}/r1"), "&redirect=error").await;
    assert!(res["error"].as_str().is_some_and(|e| e.contains("redirect mode is \"error\"")), "{res}");

    // 303 turns a POST into a GET without its body; 307 keeps both.
    let res = fetch(format!("{https}/see-other"), "&method=POST").await;
    assert_eq!((res["method"].clone(), res["body"].clone()), ("GET".into(), "".into()), "{res}");
    let res = fetch(format!("{https}/temp"), "&method=POST").await;
    assert_eq!((res["method"].clone(), res["body"].clone()), ("POST".into(), "payload".into()), "{res}");

    // Every hop is checked against the allow-list: localhost is not on it.
    let res = fetch(format!("{https}/away"), "").await;
    assert!(res["error"].as_str().is_some_and(|e| e.contains("localhost") && e.contains("allow-list")), "{res}");

    // A FormData body goes as multipart/form-data (echoed back and parsed again).
    let res = fetch(format!("{https}/echo"), "&method=POST&form=1").await;
    assert_eq!(res["form"], serde_json::json!(["hi", "doc.pdf", "%PDF"]), "{res}");

    // Without the extra root the certificate is not trusted.
    let (_dir2, factory) = load(FetchPolicy { allow: vec!["127.0.0.1".into()], ..FetchPolicy::default() }).await;
    let untrusted = TestRoom::with_factory("main", "r", factory).start();
    let res = get_json(&untrusted, &format!("/fetch?url={https}/hello")).await;
    assert!(res["error"].as_str().is_some_and(|e| e.contains("certificate")), "{res}");
}
