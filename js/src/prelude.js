// partyline:prelude: the Web APIs party code uses and PartyKit's Party API, on top of the
// natives the Rust host installs as `globalThis.__partyline_native` (removed here). Evaluated
// first in every room's context (and in the gateway's hook context).

const N = globalThis.__partyline_native;
delete globalThis.__partyline_native;

// ---------------------------------------------------------------- bytes

const CHUNK = 8192;
function toLatin1(u8) {
  if (u8.length <= CHUNK) return String.fromCharCode.apply(null, u8);
  let s = "";
  for (let i = 0; i < u8.length; i += CHUNK) s += String.fromCharCode.apply(null, u8.subarray(i, i + CHUNK));
  return s;
}
function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return null;
}
function copyBytes(u8) {
  const out = new Uint8Array(u8.length);
  out.set(u8);
  return out;
}

// ---------------------------------------------------------------- console

function inspect(v, depth = 0) {
  if (typeof v === "string") return depth ? JSON.stringify(v) : v;
  if (v instanceof Error) return v.stack ? `${v.name}: ${v.message}\n${v.stack}` : `${v.name}: ${v.message}`;
  if (typeof v === "function") return `[Function ${v.name || "anonymous"}]`;
  if (typeof v === "bigint") return `${v}n`;
  if (typeof v !== "object" || v === null) return String(v);
  if (depth > 3) return "[Object]";
  if (Array.isArray(v)) return `[ ${v.map((x) => inspect(x, depth + 1)).join(", ")} ]`;
  if (v instanceof Map) return `Map(${v.size}) { ${[...v].map(([k, x]) => `${inspect(k, depth + 1)} => ${inspect(x, depth + 1)}`).join(", ")} }`;
  if (v instanceof Set) return `Set(${v.size}) { ${[...v].map((x) => inspect(x, depth + 1)).join(", ")} }`;
  if (ArrayBuffer.isView(v)) return `${v.constructor.name}(${v.length}) [ ${Array.from(v.slice(0, 32)).join(", ")}${v.length > 32 ? ", ..." : ""} ]`;
  try {
    const keys = Object.keys(v);
    const name = v.constructor && v.constructor !== Object ? `${v.constructor.name} ` : "";
    return `${name}{ ${keys.map((k) => `${k}: ${inspect(v[k], depth + 1)}`).join(", ")} }`;
  } catch {
    return "[Object]";
  }
}
function format(args) {
  return args.map((a) => inspect(a)).join(" ");
}
const counts = new Map();
const timersLabels = new Map();
globalThis.console = {
  log: (...a) => N.log(2, format(a)),
  info: (...a) => N.log(2, format(a)),
  debug: (...a) => N.log(1, format(a)),
  trace: (...a) => N.log(0, format(a)),
  warn: (...a) => N.log(3, format(a)),
  error: (...a) => N.log(4, format(a)),
  assert: (c, ...a) => { if (!c) N.log(4, "Assertion failed: " + format(a)); },
  dir: (v) => N.log(2, inspect(v)),
  table: (v) => N.log(2, inspect(v)),
  count: (l = "default") => { const n = (counts.get(l) || 0) + 1; counts.set(l, n); N.log(2, `${l}: ${n}`); },
  time: (l = "default") => timersLabels.set(l, N.now()),
  timeEnd: (l = "default") => { const t = timersLabels.get(l); if (t !== undefined) N.log(2, `${l}: ${(N.now() - t).toFixed(3)}ms`); timersLabels.delete(l); },
  timeLog: (l = "default", ...a) => { const t = timersLabels.get(l); if (t !== undefined) N.log(2, `${l}: ${(N.now() - t).toFixed(3)}ms ${format(a)}`); },
  group: () => {},
  groupEnd: () => {},
};

// ---------------------------------------------------------------- timers

const timers = new Map();
let nextTimer = 1;
function addTimer(fn, ms, args, repeat) {
  if (typeof fn !== "function") throw new TypeError("the callback must be a function");
  const id = nextTimer++;
  const delay = Math.max(0, Number(ms) || 0);
  timers.set(id, { fn, args, repeat, delay });
  N.setTimer(id, delay);
  return id;
}
function clearTimer(id) {
  if (timers.delete(id)) N.clearTimer(id);
}
globalThis.setTimeout = (fn, ms, ...args) => addTimer(fn, ms, args, false);
globalThis.setInterval = (fn, ms, ...args) => addTimer(fn, ms, args, true);
globalThis.clearTimeout = (id) => clearTimer(id);
globalThis.clearInterval = (id) => clearTimer(id);
if (typeof globalThis.queueMicrotask !== "function") {
  globalThis.queueMicrotask = (fn) => { Promise.resolve().then(fn); };
}
function fireTimers(ids) {
  for (const id of ids) {
    const t = timers.get(id);
    if (!t) continue;
    if (t.repeat) N.setTimer(id, Math.max(t.delay, 1));
    else timers.delete(id);
    try {
      t.fn(...t.args);
    } catch (e) {
      console.error("Uncaught error in a timer:", e);
    }
  }
}

// ---------------------------------------------------------------- globals of workers

globalThis.self = globalThis;
globalThis.performance = globalThis.performance || { now: () => N.now(), timeOrigin: Date.now() - N.now() };
globalThis.navigator = globalThis.navigator || { userAgent: "Partyline" };

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const B64I = new Map([...B64].map((c, i) => [c, i]));
globalThis.btoa = function btoa(s) {
  s = String(s);
  let out = "";
  for (let i = 0; i < s.length; i += 3) {
    const a = s.charCodeAt(i), b = s.charCodeAt(i + 1), c = s.charCodeAt(i + 2);
    if (a > 255 || b > 255 || c > 255) throw new DOMException("The string contains characters outside of the Latin1 range.", "InvalidCharacterError");
    const n = (a << 16) | ((b || 0) << 8) | (c || 0);
    out += B64[n >> 18] + B64[(n >> 12) & 63] + (i + 1 < s.length ? B64[(n >> 6) & 63] : "=") + (i + 2 < s.length ? B64[n & 63] : "=");
  }
  return out;
};
globalThis.atob = function atob(s) {
  s = String(s).replace(/[\t\n\f\r ]/g, "");
  if (s.length % 4 === 0) s = s.replace(/==?$/, "");
  if (s.length % 4 === 1 || /[^A-Za-z0-9+/]/.test(s)) throw new DOMException("The string to be decoded is not correctly encoded.", "InvalidCharacterError");
  let out = "";
  let bits = 0, acc = 0;
  for (const c of s) {
    acc = (acc << 6) | B64I.get(c);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += String.fromCharCode((acc >> bits) & 255);
    }
  }
  return out;
};

class DOMException extends Error {
  constructor(message = "", name = "Error") {
    super(message);
    this.name = name;
  }
}
globalThis.DOMException = globalThis.DOMException || DOMException;

class TextEncoder {
  get encoding() { return "utf-8"; }
  encode(s = "") { return new Uint8Array(N.utf8Encode(String(s))); }
  encodeInto(s, dest) {
    const bytes = this.encode(s);
    const n = Math.min(bytes.length, dest.length);
    dest.set(bytes.subarray(0, n));
    return { read: String(s).length, written: n };
  }
}
class TextDecoder {
  constructor(label = "utf-8", options = {}) {
    const l = String(label).toLowerCase();
    if (l !== "utf-8" && l !== "utf8" && l !== "unicode-1-1-utf-8") throw new RangeError(`The encoding "${label}" is not supported`);
    this.fatal = !!options.fatal;
    this.ignoreBOM = !!options.ignoreBOM;
  }
  get encoding() { return "utf-8"; }
  decode(data) {
    if (data === undefined) return "";
    const u8 = asBytes(data);
    if (!u8) throw new TypeError("TextDecoder.decode takes an ArrayBuffer or a view of one");
    let s = N.utf8Decode(toLatin1(u8), this.fatal);
    if (!this.ignoreBOM && s.charCodeAt(0) === 0xfeff) s = s.slice(1);
    return s;
  }
}
globalThis.TextEncoder = TextEncoder;
globalThis.TextDecoder = TextDecoder;

// ---------------------------------------------------------------- events

class Event {
  constructor(type, init = {}) {
    this.type = String(type);
    this.bubbles = !!init.bubbles;
    this.cancelable = !!init.cancelable;
    this.defaultPrevented = false;
    this.timeStamp = N.now();
    this.target = null;
    this.currentTarget = null;
  }
  preventDefault() { if (this.cancelable) this.defaultPrevented = true; }
  stopPropagation() {}
  stopImmediatePropagation() { this._stop = true; }
}
class MessageEvent extends Event {
  constructor(type, init = {}) { super(type, init); this.data = init.data; this.origin = init.origin || ""; this.lastEventId = ""; this.ports = []; }
}
class CloseEvent extends Event {
  constructor(type, init = {}) { super(type, init); this.code = init.code || 0; this.reason = init.reason || ""; this.wasClean = !!init.wasClean; }
}
class ErrorEvent extends Event {
  constructor(type, init = {}) { super(type, init); this.error = init.error; this.message = init.message || (init.error && init.error.message) || ""; }
}
const listenersOf = new WeakMap();
class EventTarget {
  addEventListener(type, listener, options) {
    if (!listener) return;
    let map = listenersOf.get(this);
    if (!map) listenersOf.set(this, (map = new Map()));
    let list = map.get(type);
    if (!list) map.set(type, (list = []));
    if (list.some((l) => l.listener === listener)) return;
    const once = typeof options === "object" && options !== null && !!options.once;
    const signal = typeof options === "object" && options !== null ? options.signal : undefined;
    const entry = { listener, once };
    list.push(entry);
    if (signal) signal.addEventListener("abort", () => this.removeEventListener(type, listener));
  }
  removeEventListener(type, listener) {
    const list = listenersOf.get(this)?.get(type);
    if (!list) return;
    const i = list.findIndex((l) => l.listener === listener);
    if (i >= 0) list.splice(i, 1);
  }
  dispatchEvent(event) {
    const list = listenersOf.get(this)?.get(event.type);
    event.target = event.currentTarget = this;
    const handler = this["on" + event.type];
    const all = list ? list.slice() : [];
    const results = [];
    if (typeof handler === "function") results.push(handler.call(this, event));
    for (const l of all) {
      if (l.once) this.removeEventListener(event.type, l.listener);
      const fn = typeof l.listener === "function" ? l.listener : l.listener.handleEvent;
      results.push(fn.call(typeof l.listener === "function" ? this : l.listener, event));
      if (event._stop) break;
    }
    this._lastResults = results;
    return !event.defaultPrevented;
  }
}
Object.assign(globalThis, { Event, MessageEvent, CloseEvent, ErrorEvent, EventTarget });

class AbortSignal extends EventTarget {
  constructor() { super(); this.aborted = false; this.reason = undefined; this.onabort = null; }
  throwIfAborted() { if (this.aborted) throw this.reason; }
  static abort(reason) { const c = new AbortController(); c.abort(reason); return c.signal; }
  static timeout(ms) {
    const c = new AbortController();
    setTimeout(() => c.abort(new DOMException("The operation timed out.", "TimeoutError")), ms);
    return c.signal;
  }
  static any(signals) {
    const c = new AbortController();
    for (const s of signals) {
      if (s.aborted) { c.abort(s.reason); break; }
      s.addEventListener("abort", () => c.abort(s.reason));
    }
    return c.signal;
  }
}
class AbortController {
  constructor() { this.signal = new AbortSignal(); }
  abort(reason = new DOMException("This operation was aborted", "AbortError")) {
    const s = this.signal;
    if (s.aborted) return;
    s.aborted = true;
    s.reason = reason;
    s.dispatchEvent(new Event("abort"));
  }
}
Object.assign(globalThis, { AbortSignal, AbortController });

// ---------------------------------------------------------------- structuredClone

function clone(v, seen) {
  if (typeof v !== "object" || v === null) {
    if (typeof v === "function" || typeof v === "symbol") throw new DOMException(`${String(v)} could not be cloned.`, "DataCloneError");
    return v;
  }
  if (seen.has(v)) return seen.get(v);
  let out;
  if (Array.isArray(v)) {
    out = new Array(v.length);
    seen.set(v, out);
    for (let i = 0; i < v.length; i++) out[i] = clone(v[i], seen);
    return out;
  }
  if (v instanceof Date) return new Date(v.getTime());
  if (v instanceof RegExp) return new RegExp(v.source, v.flags);
  if (v instanceof ArrayBuffer) { out = v.slice(0); seen.set(v, out); return out; }
  if (ArrayBuffer.isView(v)) {
    const buf = clone(v.buffer, seen);
    return v instanceof DataView ? new DataView(buf, v.byteOffset, v.byteLength) : new v.constructor(buf, v.byteOffset, v.length);
  }
  if (v instanceof Map) { out = new Map(); seen.set(v, out); for (const [k, x] of v) out.set(clone(k, seen), clone(x, seen)); return out; }
  if (v instanceof Set) { out = new Set(); seen.set(v, out); for (const x of v) out.add(clone(x, seen)); return out; }
  if (v instanceof Error) { out = new Error(v.message); out.name = v.name; out.stack = v.stack; return out; }
  if (v instanceof Boolean || v instanceof Number || v instanceof String) return Object(v.valueOf());
  out = {};
  seen.set(v, out);
  for (const k of Object.keys(v)) out[k] = clone(v[k], seen);
  return out;
}
globalThis.structuredClone = (v) => clone(v, new Map());

// ---------------------------------------------------------------- crypto

const HASHES = { "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };
globalThis.crypto = {
  getRandomValues(ta) {
    const u8 = asBytes(ta);
    if (!u8 || ta instanceof Float32Array || ta instanceof Float64Array) throw new TypeError("getRandomValues takes an integer typed array");
    if (u8.length > 65536) throw new DOMException("The requested length exceeds 65,536 bytes", "QuotaExceededError");
    u8.set(new Uint8Array(N.randomBytes(u8.length)));
    return ta;
  },
  randomUUID: () => N.uuid(),
  subtle: {
    async digest(alg, data) {
      const name = (typeof alg === "string" ? alg : alg.name).toUpperCase();
      if (!HASHES[name]) throw new DOMException(`Unrecognized algorithm name: ${name}`, "NotSupportedError");
      const u8 = asBytes(data);
      if (!u8) throw new TypeError("digest takes an ArrayBuffer or a view of one");
      return N.digest(HASHES[name], toLatin1(u8));
    },
  },
};

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

// ---------------------------------------------------------------- async host operations

const ops = new Map();
function op(r) {
  // r is [true, value] when the host finished at once, else [false, id].
  if (r[0]) return Promise.resolve(r[1]);
  return new Promise((resolve, reject) => ops.set(r[1], { resolve, reject }));
}
function completeOp(id, ok, value) {
  const p = ops.get(id);
  if (!p) return;
  ops.delete(id);
  if (ok) p.resolve(value);
  else p.reject(typeof value === "string" ? new Error(value) : value);
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

// ---------------------------------------------------------------- storage

// Values are kept as JSON when they are plain JSON data (readable by Rust parties too), bytes as
// tagged raw bytes, anything else structured-clonable as tagged JSON.
const TAG = "\u0000t";
function tagged(v, seen) {
  if (v === undefined) return { [TAG]: "undefined" };
  if (typeof v === "number") {
    if (Number.isNaN(v)) return { [TAG]: "NaN" };
    if (!Number.isFinite(v)) return { [TAG]: v > 0 ? "Infinity" : "-Infinity" };
    if (Object.is(v, -0)) return { [TAG]: "-0" };
    return v;
  }
  if (typeof v === "bigint") return { [TAG]: "BigInt", v: v.toString() };
  if (typeof v === "function" || typeof v === "symbol") throw new DOMException(`${String(v)} could not be cloned.`, "DataCloneError");
  if (typeof v !== "object" || v === null) return v;
  if (seen.has(v)) throw new DOMException("storage values with cycles are not supported by Partyline", "DataCloneError");
  seen.add(v);
  try {
    if (Array.isArray(v)) return v.map((x) => tagged(x, seen));
    if (v instanceof Date) return { [TAG]: "Date", v: v.getTime() };
    if (v instanceof RegExp) return { [TAG]: "RegExp", v: [v.source, v.flags] };
    if (v instanceof Map) return { [TAG]: "Map", v: [...v].map(([k, x]) => [tagged(k, seen), tagged(x, seen)]) };
    if (v instanceof Set) return { [TAG]: "Set", v: [...v].map((x) => tagged(x, seen)) };
    if (v instanceof ArrayBuffer) return { [TAG]: "ArrayBuffer", v: btoa(toLatin1(new Uint8Array(v))) };
    if (ArrayBuffer.isView(v)) return { [TAG]: v.constructor.name, v: btoa(toLatin1(asBytes(v))) };
    if (v instanceof Error) return { [TAG]: "Error", v: [v.name, v.message] };
    const out = {};
    for (const k of Object.keys(v)) out[k] = tagged(v[k], seen);
    return TAG in v ? { [TAG]: "Object", v: out } : out;
  } finally {
    seen.delete(v);
  }
}
function untagged(v) {
  if (typeof v !== "object" || v === null) return v;
  if (Array.isArray(v)) return v.map(untagged);
  const t = v[TAG];
  if (t === undefined) { for (const k of Object.keys(v)) v[k] = untagged(v[k]); return v; }
  switch (t) {
    case "undefined": return undefined;
    case "NaN": return NaN;
    case "Infinity": return Infinity;
    case "-Infinity": return -Infinity;
    case "-0": return -0;
    case "BigInt": return BigInt(v.v);
    case "Date": return new Date(v.v);
    case "RegExp": return new RegExp(v.v[0], v.v[1]);
    case "Map": return new Map(v.v.map(([k, x]) => [untagged(k), untagged(x)]));
    case "Set": return new Set(v.v.map(untagged));
    case "ArrayBuffer": return latin1Bytes(atob(v.v)).buffer;
    case "Error": { const e = new Error(v.v[1]); e.name = v.v[0]; return e; }
    case "Object": return untagged(v.v);
    default: {
      const C = globalThis[t];
      const bytes = latin1Bytes(atob(v.v));
      return typeof C === "function" ? new C(bytes.buffer, 0, bytes.byteLength / (C.BYTES_PER_ELEMENT || 1)) : bytes;
    }
  }
}
function latin1Bytes(s) {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
function isPlainJson(v, depth) {
  if (v === null || typeof v === "string" || typeof v === "boolean") return true;
  if (typeof v === "number") return Number.isFinite(v) && !Object.is(v, -0);
  if (typeof v !== "object" || depth > 64) return false;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) if (!isPlainJson(v[i], depth + 1)) return false;
    return true;
  }
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return false;
  if (TAG in v) return false;
  for (const k in v) if (!isPlainJson(v[k], depth + 1)) return false;
  return true;
}
// [kind, payload]: 0 JSON text, 1 Uint8Array bytes (latin1), 2 tagged JSON text.
function encodeValue(v) {
  if (v instanceof Uint8Array && v.constructor === Uint8Array) return [1, toLatin1(v)];
  if (isPlainJson(v, 0)) return [0, JSON.stringify(v)];
  return [2, JSON.stringify(tagged(v, new Set()))];
}
// The host hands values back as [kind, payload]: payload is text (0, 2) or an ArrayBuffer (1).
function decodeValue(kind, payload) {
  if (kind === 1) return new Uint8Array(payload);
  const v = JSON.parse(payload);
  return kind === 2 ? untagged(v) : v;
}
function entriesMap(list) {
  const m = new Map();
  for (const [k, kind, payload] of list) m.set(k, decodeValue(kind, payload));
  return m;
}
function keyOf(k) {
  if (typeof k !== "string") throw new TypeError("storage keys must be strings");
  return k;
}

class Storage {
  async get(keys) {
    if (Array.isArray(keys)) return entriesMap(await op(N.storageGet(keys.map(keyOf))));
    const list = await op(N.storageGet([keyOf(keys)]));
    return list.length ? decodeValue(list[0][1], list[0][2]) : undefined;
  }
  async put(key, value) {
    if (typeof key === "object" && key !== null) {
      const entries = Object.keys(key).map((k) => [k, ...encodeValue(key[k])]);
      N.storagePut(entries);
      return;
    }
    if (value === undefined) throw new TypeError("put() needs a value (use delete() to remove a key)");
    N.storagePut([[keyOf(key), ...encodeValue(value)]]);
  }
  async delete(keys) {
    if (Array.isArray(keys)) return op(N.storageDelete(keys.map(keyOf)));
    return (await op(N.storageDelete([keyOf(keys)]))) === 1;
  }
  async deleteAll() { N.storageDeleteAll(); }
  async list(options = {}) {
    const o = options || {};
    const n = (x) => (x === undefined || x === null ? undefined : String(x));
    if (o.limit !== undefined && !(o.limit > 0)) throw new RangeError("list() limit must be positive");
    return entriesMap(await op(N.storageList(n(o.start), n(o.startAfter), n(o.end), n(o.prefix), !!o.reverse, o.limit === undefined ? undefined : Number(o.limit))));
  }
  async getAlarm() { return op(N.getAlarm()); }
  async setAlarm(time) {
    const ms = time instanceof Date ? time.getTime() : Number(time);
    if (!Number.isFinite(ms)) throw new TypeError("setAlarm() takes a Date or a number of milliseconds");
    N.setAlarm(Math.floor(ms));
  }
  async deleteAlarm() { N.deleteAlarm(); }
  async sync() { return op(N.storageSync()); }
  async transaction(fn) {
    const txn = Object.create(this);
    txn.rollback = () => { throw new Error("transaction rollback is not supported by Partyline"); };
    return fn(txn);
  }
  transactionSync() { throw new Error("transactionSync() needs the SQLite storage backend, which Partyline does not have"); }
}

// ---------------------------------------------------------------- connections and rooms

const OPEN = 1, CLOSED = 3;
const conns = new Map();
class Connection extends EventTarget {
  constructor(id, uri) {
    super();
    this.id = id;
    this.uri = uri;
    this._open = true;
    this._stateLoaded = false;
    this._state = null;
    this.binaryType = "arraybuffer";
  }
  get readyState() { return this._open ? OPEN : CLOSED; }
  get socket() { return this; }
  get url() { return this.uri; }
  get tags() { return N.connTags(this.id) || [this.id]; }
  get state() {
    if (!this._stateLoaded) {
      const json = N.connState(this.id);
      this._state = json === null || json === undefined ? null : JSON.parse(json);
      this._stateLoaded = true;
    }
    return this._state;
  }
  setState(next) {
    const value = typeof next === "function" ? next(this.state) : next;
    N.setConnState(this.id, value === null || value === undefined ? null : JSON.stringify(value));
    this._state = value === undefined ? null : value;
    this._stateLoaded = true;
    return this._state;
  }
  serializeAttachment(v) { this.setState(v); }
  deserializeAttachment() { return this.state; }
  send(data) {
    if (!this._open) return;
    if (typeof data === "string") return N.send(this.id, data, false);
    const u8 = asBytes(data);
    if (u8) return N.send(this.id, toLatin1(u8), true);
    N.send(this.id, String(data), false);
  }
  close(code, reason) {
    if (!this._open) return;
    this._open = false;
    N.close(this.id, code === undefined ? 1000 : Number(code), reason === undefined ? "" : String(reason));
  }
  accept() {}
}
Connection.prototype.CONNECTING = 0;
Connection.prototype.OPEN = OPEN;
Connection.prototype.CLOSING = 2;
Connection.prototype.CLOSED = CLOSED;

function connFor(id, uri) {
  let c = conns.get(id);
  if (!c) {
    c = new Connection(id, uri === undefined ? N.connUri(id) : uri);
    conns.set(id, c);
  }
  return c;
}

function messageData(data) {
  return typeof data === "string" ? data : data;
}

function partiesFor() {
  return new Proxy({}, {
    get(_, name) {
      if (typeof name !== "string") return undefined;
      return {
      get(roomId) {
        const base = "http://partyline.internal";
        return {
          async fetch(pathOrInit, maybeInit) {
            let path = "";
            let init = maybeInit;
            if (typeof pathOrInit === "string") path = pathOrInit;
            else if (pathOrInit instanceof Request) { path = new URL(pathOrInit.url).pathname; init = pathOrInit; }
            else init = pathOrInit;
            if (path && !path.startsWith("/")) throw new Error("the path of a room fetch must start with /");
            const req = new Request(base + path, init || {});
            const out = requestOut(req);
            return responseIn(await op(N.partyFetch(name, String(roomId), out)));
          },
          socket() { throw new Error("room.parties.<name>.get(id).socket() is not supported by Partyline yet"); },
          connect() { throw new Error("room.parties.<name>.get(id).connect() is not supported by Partyline yet"); },
        };
      },
      };
    },
  });
}

function makeRoom(info) {
  const storage = new Storage();
  const parties = partiesFor();
  const room = {
    id: info.id,
    internalID: info.internalID,
    name: info.party,
    env: info.env,
    storage,
    parties,
    context: { parties, ai: {}, vectorize: {}, bindings: { r2: {}, kv: {} }, assets: { fetch: () => { throw new Error("room.context.assets is not supported by Partyline"); } } },
    analytics: { writeDataPoint() {} },
    broadcast(msg, without) {
      const ex = Array.isArray(without) ? without.map(String) : undefined;
      if (typeof msg === "string") return N.broadcast(msg, false, ex);
      const u8 = asBytes(msg);
      if (u8) return N.broadcast(toLatin1(u8), true, ex);
      N.broadcast(String(msg), false, ex);
    },
    getConnection(id) {
      const c = conns.get(id);
      if (c) return c;
      const uri = N.connUri(String(id));
      return uri === null || uri === undefined ? undefined : connFor(String(id), uri);
    },
    *getConnections(tag) {
      for (const [id, uri] of N.connList(tag === undefined ? undefined : String(tag))) yield connFor(id, uri);
    },
    get connections() {
      const m = new Map();
      for (const [id, uri] of N.connList(undefined)) m.set(id, connFor(id, uri));
      return m;
    },
    async blockConcurrencyWhile(fn) { return fn(); },
  };
  return room;
}

// ---------------------------------------------------------------- dispatch from the host

let party = null;
let Party = null;
let room = null;

function errorText(e) {
  if (e instanceof Error) return e.message || String(e);
  return String(e);
}

const handlers = {
  // Creates the party instance: the module's default export, a class (or a PartyKitServer object).
  init(info) {
    Party = globalThis.__partyline_module.default;
    delete globalThis.__partyline_module;
    room = makeRoom(info);
    if (typeof Party === "function") party = new Party(room);
    else if (Party && typeof Party === "object") party = legacy(Party, room);
    else throw new TypeError("the party module must export a class as its default export");
    return null;
  },
  start() { return party.onStart ? party.onStart() : null; },
  async tags(id, uri, req) {
    const conn = connFor(id, uri);
    if (!party.getConnectionTags) return [];
    const tags = await party.getConnectionTags(conn, { request: requestIn(req) });
    return Array.isArray(tags) ? tags.map(String) : [];
  },
  connect(id, uri, req) {
    const conn = connFor(id, uri);
    return party.onConnect ? party.onConnect(conn, { request: requestIn(req) }) : null;
  },
  async message(id, data) {
    const conn = connFor(id);
    const message = messageData(data);
    if (party.onMessage) await party.onMessage(message, conn);
    if (listenersOf.has(conn)) {
      conn.dispatchEvent(new MessageEvent("message", { data: message }));
      await Promise.all(conn._lastResults || []);
    }
  },
  async close(id) {
    const conn = connFor(id);
    conn._open = false;
    try {
      if (party.onClose) await party.onClose(conn);
      if (listenersOf.has(conn)) {
        conn.dispatchEvent(new CloseEvent("close", { code: 1005, reason: "", wasClean: true }));
        await Promise.all(conn._lastResults || []);
      }
    } finally {
      conns.delete(id);
    }
  },
  async error(id, message) {
    const conn = connFor(id);
    const err = new Error(message);
    if (party.onError) await party.onError(conn, err);
    if (listenersOf.has(conn)) conn.dispatchEvent(new ErrorEvent("error", { error: err, message }));
  },
  async request(req) {
    if (!party.onRequest) return { status: 500, headers: [["content-type", "text/plain;charset=UTF-8"]], text: "No onRequest handler", latin1: null };
    return responseOut(await party.onRequest(requestIn(req)));
  },
  alarm() { return party.onAlarm ? party.onAlarm() : null; },

  // Static hooks (the gateway's context).
  hooksInit() {
    Party = globalThis.__partyline_module.default;
    delete globalThis.__partyline_module;
    const has = (n) => !!(Party && typeof Party[n] === "function");
    const opts = Party && (Party.options || (typeof Party === "function" && Party.prototype && Party.prototype.options));
    return { hibernate: !!(opts && opts.hibernate), onBeforeConnect: has("onBeforeConnect"), onBeforeRequest: has("onBeforeRequest"), onFetch: has("onFetch") };
  },
  async before(kind, req, lobby) {
    const fn = kind === "connect" ? Party.onBeforeConnect : Party.onBeforeRequest;
    const input = requestIn(req);
    const result = await fn.call(Party, input, lobbyFor(lobby), executionContext());
    if (result instanceof Response) return { respond: responseOut(result) };
    if (result instanceof Request) return { request: requestOut(result) };
    return { request: requestOut(input) };
  },
  async fetch(req, lobby) {
    const result = await Party.onFetch.call(Party, requestIn(req), lobbyFor(lobby), executionContext());
    if (result === null || result === undefined) return null;
    return responseOut(result);
  },
};

function lobbyFor(info) {
  const parties = partiesFor();
  return { id: info.id, env: info.env, parties, ai: {}, vectorize: {}, analytics: { writeDataPoint() {} }, bindings: { r2: {}, kv: {} }, assets: { fetch: () => { throw new Error("lobby.assets is not supported by Partyline"); } } };
}
function executionContext() {
  return { waitUntil(p) { Promise.resolve(p).catch((e) => console.error("waitUntil promise failed:", e)); }, passThroughOnException() {} };
}

// The legacy module API: `export default { onConnect(conn, room), onMessage(msg, conn, room), ... }`.
function legacy(mod, room) {
  return {
    onConnect: mod.onConnect && ((c, ctx) => mod.onConnect(c, room, ctx)),
    onMessage: mod.onMessage && ((m, c) => mod.onMessage(m, c, room)),
    onClose: mod.onClose && ((c) => mod.onClose(c, room)),
    onError: mod.onError && ((c, e) => mod.onError(c, e, room)),
    onRequest: mod.onRequest && ((r) => mod.onRequest(r, room)),
    onAlarm: mod.onAlarm && (() => mod.onAlarm(room)),
  };
}

// ---------------------------------------------------------------- CommonJS

const cjsCache = new Map();
function requireFile(path) {
  const cached = cjsCache.get(path);
  if (cached) return cached.exports;
  const module = { exports: {}, id: path, filename: path, loaded: false };
  cjsCache.set(path, module);
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  const fn = N.commonjs(path);
  const require = (spec) => requireFile(N.requireResolve(dir, String(spec)));
  require.resolve = (spec) => N.requireResolve(dir, String(spec));
  fn.call(module.exports, module.exports, require, module, path, dir);
  module.loaded = true;
  return module.exports;
}

// Calls from the host: results (or errors) are kept until the host collects them.
const results = new Map();
function settle(id, value) {
  if (value && typeof value.then === "function") {
    value.then((v) => results.set(id, [true, v === undefined ? null : v]), (e) => results.set(id, [false, e]));
  } else {
    results.set(id, [true, value === undefined ? null : value]);
  }
}
globalThis.__partyline = {
  dispatch(id, kind, a, b, c) {
    try {
      settle(id, handlers[kind](a, b, c));
    } catch (e) {
      results.set(id, [false, e]);
    }
  },
  // The result of call `id`: undefined while pending, else [ok, value or error text].
  take(id) {
    const r = results.get(id);
    if (r === undefined) return undefined;
    results.delete(id);
    if (!r[0]) {
      const e = r[1];
      return [false, errorText(e), e instanceof Error && e.stack ? String(e.stack) : ""];
    }
    return r;
  },
  requireFile,
  complete: completeOp,
  timers: fireTimers,
};
