// partyline:prelude, part 2 of 4 (fetch.js): URL and URLSearchParams, the Fetch API (Headers,
// Request, Response, `fetch`), and the plain forms of requests and responses handed to and from
// the host.

// ---------------------------------------------------------------- URL

class URLSearchParams {
  constructor(init = "") {
    this._list = [];
    this._url = null;
    if (typeof init === "string") this._parse(init);
    else if (init instanceof URLSearchParams) this._list = init._list.map((p) => [...p]);
    else if (init && typeof init[Symbol.iterator] === "function") for (const [k, v] of init) this._list.push([String(k), String(v)]);
    else if (init && typeof init === "object") for (const k of Object.keys(init)) this._list.push([k, String(init[k])]);
  }
  _parse(s) {
    this._list = [];
    if (s.startsWith("?")) s = s.slice(1);
    for (const part of s.split("&")) {
      if (!part) continue;
      const i = part.indexOf("=");
      const k = i < 0 ? part : part.slice(0, i);
      const v = i < 0 ? "" : part.slice(i + 1);
      this._list.push([decodeForm(k), decodeForm(v)]);
    }
  }
  _update() { if (this._url) this._url._setSearch(this.toString()); }
  get size() { return this._list.length; }
  append(k, v) { this._list.push([String(k), String(v)]); this._update(); }
  delete(k, v) { this._list = this._list.filter(([a, b]) => a !== String(k) || (v !== undefined && b !== String(v))); this._update(); }
  get(k) { const p = this._list.find(([a]) => a === String(k)); return p ? p[1] : null; }
  getAll(k) { return this._list.filter(([a]) => a === String(k)).map((p) => p[1]); }
  has(k, v) { return this._list.some(([a, b]) => a === String(k) && (v === undefined || b === String(v))); }
  set(k, v) {
    k = String(k);
    const i = this._list.findIndex(([a]) => a === k);
    if (i < 0) this._list.push([k, String(v)]);
    else { this._list[i][1] = String(v); this._list = this._list.filter(([a], j) => a !== k || j === i); }
    this._update();
  }
  sort() { this._list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); this._update(); }
  forEach(fn, self) { for (const [k, v] of this._list) fn.call(self, v, k, this); }
  keys() { return this._list.map((p) => p[0])[Symbol.iterator](); }
  values() { return this._list.map((p) => p[1])[Symbol.iterator](); }
  entries() { return this._list.map((p) => [p[0], p[1]])[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
  toString() { return this._list.map(([k, v]) => `${encodeForm(k)}=${encodeForm(v)}`).join("&"); }
}
function decodeForm(s) {
  try { return decodeURIComponent(s.replace(/\+/g, " ")); } catch { return s; }
}
function encodeForm(s) {
  return encodeURIComponent(s).replace(/%20/g, "+").replace(/[!'()~]/g, (c) => "%" + c.charCodeAt(0).toString(16).toUpperCase());
}
const URL_PARTS = ["href", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash", "origin"];
class URL {
  constructor(input, base) {
    const parts = N.parseUrl(String(input), base === undefined ? undefined : String(base));
    if (!parts) throw new TypeError(`Invalid URL: ${input}`);
    this._set(parts);
  }
  static canParse(input, base) { return !!N.parseUrl(String(input), base === undefined ? undefined : String(base)); }
  static parse(input, base) { try { return new URL(input, base); } catch { return null; } }
  _set(parts) {
    this._p = parts;
    if (this._sp) this._sp._parse(parts[8]);
  }
  _setSearch(s) { this._set(N.setUrl(this._p[0], "search", s)); }
  get searchParams() {
    if (!this._sp) { this._sp = new URLSearchParams(this._p[8]); this._sp._url = this; }
    return this._sp;
  }
  toString() { return this._p[0]; }
  toJSON() { return this._p[0]; }
}
URL_PARTS.forEach((name, i) => {
  Object.defineProperty(URL.prototype, name, {
    get() { return this._p[i]; },
    set(v) {
      if (name === "origin") return;
      const parts = name === "href" ? N.parseUrl(String(v)) : N.setUrl(this._p[0], name, String(v));
      if (!parts) throw new TypeError(`Invalid URL: ${v}`);
      this._set(parts);
    },
    enumerable: true,
  });
});
globalThis.URL = URL;
globalThis.URLSearchParams = URLSearchParams;

// ---------------------------------------------------------------- Headers, Request, Response

class Headers {
  constructor(init) {
    this._map = new Map();
    if (init instanceof Headers) for (const [k, v] of init) this.append(k, v);
    else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
    else if (init && typeof init === "object") for (const k of Object.keys(init)) this.append(k, init[k]);
  }
  append(k, v) {
    k = String(k).toLowerCase();
    v = String(v).trim();
    const cur = this._map.get(k);
    this._map.set(k, cur ? [...cur, v] : [v]);
  }
  set(k, v) { this._map.set(String(k).toLowerCase(), [String(v).trim()]); }
  get(k) { const v = this._map.get(String(k).toLowerCase()); return v ? v.join(", ") : null; }
  getAll(k) { return this._map.get(String(k).toLowerCase()) || []; }
  getSetCookie() { return this.getAll("set-cookie"); }
  has(k) { return this._map.has(String(k).toLowerCase()); }
  delete(k) { this._map.delete(String(k).toLowerCase()); }
  forEach(fn, self) { for (const [k, v] of this) fn.call(self, v, k, this); }
  *entries() { for (const k of [...this._map.keys()].sort()) yield [k, this.get(k)]; }
  *keys() { for (const [k] of this.entries()) yield k; }
  *values() { for (const [, v] of this.entries()) yield v; }
  [Symbol.iterator]() { return this.entries(); }
  _pairs() { const out = []; for (const [k, vs] of this._map) for (const v of vs) out.push([k, v]); return out; }
}
globalThis.Headers = Headers;

// A body is kept as given (string or bytes) and read once.
function bodyBytes(b) {
  if (b === null || b === undefined) return null;
  if (typeof b === "string") return new TextEncoder().encode(b);
  return b;
}
function initBody(target, body, headers) {
  target._bodyUsed = false;
  if (body === undefined || body === null) { target._body = null; return; }
  if (typeof body === "string") {
    target._body = body;
    if (!headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
  } else if (body instanceof URLSearchParams) {
    target._body = body.toString();
    if (!headers.has("content-type")) headers.set("content-type", "application/x-www-form-urlencoded;charset=UTF-8");
  } else if (asBytes(body)) {
    target._body = copyBytes(asBytes(body));
  } else if (body && typeof body._bytes === "function") {
    target._body = body._bytes();
  } else {
    target._body = String(body);
    if (!headers.has("content-type")) headers.set("content-type", "text/plain;charset=UTF-8");
  }
}
const BodyMixin = {
  get body() { return this._body; },
  get bodyUsed() { return this._bodyUsed; },
  _take() {
    if (this._bodyUsed) throw new TypeError("Body has already been used");
    this._bodyUsed = true;
    return this._body;
  },
  async text() {
    const b = this._take();
    if (b === null) return "";
    return typeof b === "string" ? b : new TextDecoder().decode(b);
  },
  async json() { return JSON.parse(await this.text()); },
  async arrayBuffer() { const b = bodyBytes(this._take()); return b ? copyBytes(b).buffer : new ArrayBuffer(0); },
  async bytes() { const b = bodyBytes(this._take()); return b ? copyBytes(b) : new Uint8Array(0); },
  async formData() { throw new TypeError("formData() is not supported by Partyline"); },
  async blob() { throw new TypeError("blob() is not supported by Partyline"); },
};

class Request {
  constructor(input, init = {}) {
    let src = null;
    if (input instanceof Request) src = input;
    const url = src ? src.url : String(input instanceof URL ? input.href : input);
    const parsed = N.parseUrl(url, undefined);
    this.url = parsed ? parsed[0] : url;
    this.method = String(init.method || (src ? src.method : "GET")).toUpperCase();
    this.headers = new Headers(init.headers || (src ? src.headers : undefined));
    this.signal = init.signal || (src ? src.signal : new AbortController().signal);
    this.redirect = init.redirect || "follow";
    this.cf = init.cf || (src ? src.cf : undefined);
    const body = init.body !== undefined ? init.body : src ? src._body : null;
    if (body !== null && body !== undefined && (this.method === "GET" || this.method === "HEAD")) throw new TypeError("Request with GET/HEAD method cannot have body.");
    initBody(this, body, this.headers);
  }
  clone() { return new Request(this); }
}
Object.defineProperties(Request.prototype, Object.getOwnPropertyDescriptors(BodyMixin));
globalThis.Request = Request;

const STATUS_TEXT = { 200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable" };
class Response {
  constructor(body = null, init = {}) {
    this.status = init.status === undefined ? 200 : Number(init.status);
    if (!(this.status >= 200 && this.status <= 599) && this.status !== 101) throw new RangeError(`Responses may only be constructed with status codes in the range 200 to 599, got ${this.status}`);
    this.statusText = init.statusText !== undefined ? String(init.statusText) : STATUS_TEXT[this.status] || "";
    this.headers = new Headers(init.headers);
    this.type = "default";
    this.url = "";
    this.redirected = false;
    this.webSocket = init.webSocket || null;
    initBody(this, body, this.headers);
  }
  get ok() { return this.status >= 200 && this.status < 300; }
  clone() { const r = new Response(this._body, this); r.url = this.url; return r; }
  static json(data, init = {}) {
    const headers = new Headers(init.headers);
    if (!headers.has("content-type")) headers.set("content-type", "application/json");
    return new Response(JSON.stringify(data), { ...init, headers });
  }
  static redirect(url, status = 302) { return new Response(null, { status, headers: { location: String(url) } }); }
  static error() { const r = new Response(null, { status: 200 }); r.status = 0; r.type = "error"; return r; }
}
Object.defineProperties(Response.prototype, Object.getOwnPropertyDescriptors(BodyMixin));
globalThis.Response = Response;

// Plain forms of requests and responses for the host.
function requestOut(req) {
  const b = req._body;
  return { method: req.method, url: req.url, headers: req.headers._pairs(), text: typeof b === "string" ? b : null, latin1: b && typeof b !== "string" ? toLatin1(b) : null };
}
function requestIn(r) {
  const init = { method: r.method, headers: r.headers };
  if (r.body !== null && r.method !== "GET" && r.method !== "HEAD") init.body = new Uint8Array(r.body);
  const req = new Request(r.url, init);
  if (r.body !== null && (r.method === "GET" || r.method === "HEAD") && r.body.byteLength) req._body = new Uint8Array(r.body);
  return req;
}
function responseOut(res) {
  if (!(res instanceof Response)) {
    if (res && typeof res.status === "number" && res.headers) res = new Response(res._body ?? res.body ?? null, res);
    else throw new TypeError("onRequest must return a Response");
  }
  const b = res._body;
  return { status: res.status, headers: res.headers._pairs(), text: typeof b === "string" ? b : null, latin1: b && typeof b !== "string" ? toLatin1(b) : null };
}
function responseIn(r) {
  const res = new Response(r.body === null ? null : new Uint8Array(r.body), { status: r.status, statusText: r.statusText, headers: r.headers });
  res.url = r.url || "";
  return res;
}

globalThis.fetch = async function fetch(input, init = {}) {
  const req = input instanceof Request && Object.keys(init).length === 0 ? input : new Request(input, init);
  const signal = init.signal || req.signal;
  if (signal && signal.aborted) throw signal.reason;
  const out = requestOut(req);
  const pending = op(N.fetch(out));
  const res = signal
    ? await Promise.race([pending, new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)))])
    : await pending;
  return responseIn(res);
};
