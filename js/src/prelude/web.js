// partyline:prelude, part 1 of 4 (web.js): the Web APIs of a worker that need no HTTP: bytes
// helpers, console, timers, base64, DOMException, TextEncoder/TextDecoder, events,
// AbortController, structuredClone and crypto. The four parts are joined in this order into one
// module (js/src/modules.rs, `PRELUDE_SOURCE`), evaluated first in every room's context (and in
// the gateway's hook context), so they share one scope.

// The natives the Rust host installs (js/src/host.rs; their names are `HostCall` in
// js/src/bridge.rs), taken off the global object: every part of the prelude calls them on `N`.
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

// `crypto.subtle` over the natives of js/src/crypto.rs: digests, HMAC, ECDSA (P-256, P-384),
// Ed25519 (sign and verify), RSASSA-PKCS1-v1_5 and RSA-PSS (verify only); keys as raw, jwk, spki
// and pkcs8. A key's material stays in `keyMaterial` (bytes as Latin-1 strings), out of reach of
// the party's code.
const HASHES = { "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };
const ALGORITHMS = { HMAC: "HMAC", ECDSA: "ECDSA", ED25519: "Ed25519", "NODE-ED25519": "Ed25519", "RSASSA-PKCS1-V1_5": "RSASSA-PKCS1-v1_5", "RSA-PSS": "RSA-PSS" };
const HMAC_BLOCK_BITS = { "SHA-1": 512, "SHA-256": 512, "SHA-384": 1024, "SHA-512": 1024 };
// Errors are the global DOMException (QuickJS has its own, which the prelude's class above does
// not replace), so that `e instanceof DOMException` holds in the party's code.
const CryptoError = globalThis.DOMException;
const keyMaterial = new WeakMap();
const KEY_TOKEN = Symbol("CryptoKey");
class CryptoKey {
  constructor(token, type, extractable, algorithm, usages, material) {
    if (token !== KEY_TOKEN) throw new TypeError("Illegal constructor");
    this.type = type;
    this.extractable = extractable;
    this.algorithm = algorithm;
    this.usages = usages;
    keyMaterial.set(this, material);
  }
}
globalThis.CryptoKey = CryptoKey;
function subtleCall(fn) {
  try {
    return fn();
  } catch (e) {
    if (e instanceof CryptoError || e instanceof TypeError) throw e;
    throw new CryptoError(e.message, e.name && e.name !== "Error" ? e.name : "OperationError");
  }
}
function hashName(h) {
  const name = String(typeof h === "string" ? h : h && h.name).toUpperCase();
  if (!HASHES[name]) throw new CryptoError(`Unrecognized hash: ${name}`, "NotSupportedError");
  return name;
}
function normalizeAlgorithm(alg) {
  const a = typeof alg === "string" ? { name: alg } : { ...alg };
  const name = ALGORITHMS[String(a.name).toUpperCase()];
  if (!name) throw new CryptoError(`Unrecognized algorithm name: ${a.name}`, "NotSupportedError");
  a.name = name;
  if (a.hash !== undefined) a.hash = hashName(a.hash);
  return a;
}
function bytesOf(data, what) {
  const u8 = asBytes(data);
  if (!u8) throw new TypeError(`${what} must be an ArrayBuffer or a view of one`);
  return u8;
}
function b64url(s) { return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
function unb64url(s, what) {
  if (typeof s !== "string") throw new CryptoError(`The JWK has no ${what}`, "DataError");
  try { return atob(s.replace(/-/g, "+").replace(/_/g, "/")); } catch { throw new CryptoError(`The JWK's ${what} is not base64url`, "DataError"); }
}
const latin1Buffer = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0)).buffer;
const CURVE_BYTES = { "P-256": 32, "P-384": 48 };
function checkUsages(usages, allowed, type) {
  usages = [...usages];
  for (const u of usages) if (!allowed.includes(u)) throw new CryptoError(`Cannot create a ${type} key with usage ${u}`, "SyntaxError");
  if (usages.length === 0 && type !== "public") throw new CryptoError("Usages cannot be empty when creating a key.", "SyntaxError");
  return usages;
}
function makeKey(type, alg, extractable, usages, material) {
  let algorithm;
  if (alg.name === "HMAC") algorithm = { name: "HMAC", hash: { name: alg.hash }, length: material.secret.length * 8 };
  else if (alg.name === "ECDSA") algorithm = { name: "ECDSA", namedCurve: alg.namedCurve };
  else if (alg.name === "Ed25519") algorithm = { name: "Ed25519" };
  else {
    const [n, e] = N.cryptoKey("rsaParts", alg.name, "", material.pub, "");
    algorithm = { name: alg.name, hash: { name: alg.hash }, modulusLength: new Uint8Array(n).length * 8, publicExponent: new Uint8Array(e) };
  }
  const allowed = type === "secret" ? ["sign", "verify"] : type === "private" ? ["sign"] : ["verify"];
  return new CryptoKey(KEY_TOKEN, type, !!extractable, algorithm, checkUsages(usages, allowed, type), material);
}
function importKey(format, data, alg, extractable, usages) {
  alg = normalizeAlgorithm(alg);
  const curve = alg.name === "ECDSA" ? String(alg.namedCurve) : "";
  if (alg.name === "ECDSA" && !CURVE_BYTES[curve]) throw new CryptoError(`Unrecognized namedCurve: ${curve}`, "NotSupportedError");
  if ((alg.name === "HMAC" || alg.name.startsWith("RSA")) && !alg.hash) throw new TypeError(`${alg.name} needs a hash`);
  const key = (type, material) => makeKey(type, alg, extractable, usages, material);
  if (format === "raw") {
    const bytes = toLatin1(bytesOf(data, "keyData"));
    if (alg.name === "HMAC") {
      if (!bytes.length) throw new CryptoError("HMAC key data must not be empty", "DataError");
      return key("secret", { secret: bytes });
    }
    if (alg.name.startsWith("RSA")) throw new CryptoError(`${alg.name} keys cannot be imported as raw`, "NotSupportedError");
    N.cryptoKey("checkPublic", alg.name, curve, bytes, "");
    return key("public", { pub: bytes });
  }
  if (format === "spki") {
    if (alg.name === "HMAC") throw new CryptoError("HMAC keys cannot be imported as spki", "NotSupportedError");
    const pub = N.cryptoKey("fromSpki", alg.name, curve, toLatin1(bytesOf(data, "keyData")), "");
    return key("public", { pub: toLatin1(new Uint8Array(pub)) });
  }
  if (format === "pkcs8") {
    if (alg.name !== "ECDSA" && alg.name !== "Ed25519") throw new CryptoError(`${alg.name} keys cannot be imported as pkcs8`, "NotSupportedError");
    const [d, pub] = N.cryptoKey("fromPkcs8", alg.name, curve, toLatin1(bytesOf(data, "keyData")), "");
    return key("private", { priv: toLatin1(new Uint8Array(d)), pub: toLatin1(new Uint8Array(pub)) });
  }
  if (format !== "jwk") throw new CryptoError(`Unsupported key format: ${format}`, "NotSupportedError");
  const jwk = data;
  if (!jwk || typeof jwk !== "object") throw new TypeError("A jwk key must be an object");
  const kty = { HMAC: "oct", ECDSA: "EC", Ed25519: "OKP" }[alg.name] || "RSA";
  if (jwk.kty !== kty) throw new CryptoError(`The JWK's kty must be ${kty}`, "DataError");
  if (jwk.ext === false && extractable) throw new CryptoError("The JWK is not extractable", "DataError");
  if (alg.name === "HMAC") return key("secret", { secret: unb64url(jwk.k, "k") });
  if (alg.name.startsWith("RSA")) {
    if (jwk.d !== undefined) throw new CryptoError("RSA private keys are not supported", "NotSupportedError");
    const der = N.cryptoKey("rsaFromParts", alg.name, "", unb64url(jwk.n, "n"), unb64url(jwk.e, "e"));
    return key("public", { pub: toLatin1(new Uint8Array(der)) });
  }
  const wantCrv = alg.name === "ECDSA" ? curve : "Ed25519";
  if (jwk.crv !== wantCrv) throw new CryptoError(`The JWK's crv must be ${wantCrv}`, "DataError");
  const pub = alg.name === "ECDSA" ? "\x04" + unb64url(jwk.x, "x") + unb64url(jwk.y, "y") : unb64url(jwk.x, "x");
  N.cryptoKey("checkPublic", alg.name, curve, pub, "");
  if (jwk.d === undefined) return key("public", { pub });
  const priv = unb64url(jwk.d, "d");
  N.cryptoKey("checkPair", alg.name, curve, priv, pub);
  return key("private", { priv, pub });
}
function exportKey(format, key) {
  if (!(key instanceof CryptoKey)) throw new TypeError("exportKey takes a CryptoKey");
  if (!key.extractable) throw new CryptoError("The key is not extractable", "InvalidAccessError");
  const m = keyMaterial.get(key);
  const alg = key.algorithm;
  const curve = alg.namedCurve || "";
  if (format === "raw") {
    if (key.type === "private" || alg.name.startsWith("RSA")) throw new CryptoError(`${alg.name} ${key.type} keys cannot be exported as raw`, "InvalidAccessError");
    return latin1Buffer(key.type === "secret" ? m.secret : m.pub);
  }
  if (format === "spki") {
    if (key.type !== "public") throw new CryptoError("Only public keys export as spki", "InvalidAccessError");
    return N.cryptoKey("toSpki", alg.name, curve, m.pub, "");
  }
  if (format === "pkcs8") {
    if (key.type !== "private") throw new CryptoError("Only private keys export as pkcs8", "InvalidAccessError");
    return N.cryptoKey("toPkcs8", alg.name, curve, m.priv, m.pub);
  }
  if (format !== "jwk") throw new CryptoError(`Unsupported key format: ${format}`, "NotSupportedError");
  const jwk = { key_ops: [...key.usages], ext: true };
  if (key.type === "secret") {
    Object.assign(jwk, { kty: "oct", k: b64url(m.secret), alg: "HS" + alg.hash.name.slice(4) });
  } else if (alg.name === "ECDSA") {
    const n = CURVE_BYTES[curve];
    Object.assign(jwk, { kty: "EC", crv: curve, x: b64url(m.pub.slice(1, 1 + n)), y: b64url(m.pub.slice(1 + n)) });
    if (m.priv) jwk.d = b64url(m.priv);
  } else if (alg.name === "Ed25519") {
    Object.assign(jwk, { kty: "OKP", crv: "Ed25519", x: b64url(m.pub) });
    if (m.priv) jwk.d = b64url(m.priv);
  } else {
    const [n, e] = N.cryptoKey("rsaParts", alg.name, "", m.pub, "");
    Object.assign(jwk, { kty: "RSA", n: b64url(toLatin1(new Uint8Array(n))), e: b64url(toLatin1(new Uint8Array(e))) });
  }
  return jwk;
}
function generateKey(alg, extractable, usages) {
  alg = normalizeAlgorithm(alg);
  usages = [...usages];
  if (alg.name === "HMAC") {
    if (!alg.hash) throw new TypeError("HMAC needs a hash");
    const bits = alg.length === undefined ? HMAC_BLOCK_BITS[alg.hash] : Number(alg.length);
    if (!(bits > 0) || bits % 8) throw new CryptoError("HMAC key lengths must be a positive multiple of 8", "OperationError");
    return makeKey("secret", alg, extractable, usages, { secret: toLatin1(new Uint8Array(N.randomBytes(bits / 8))) });
  }
  if (alg.name !== "ECDSA" && alg.name !== "Ed25519") throw new CryptoError(`${alg.name} keys cannot be generated`, "NotSupportedError");
  const curve = alg.name === "ECDSA" ? String(alg.namedCurve) : "";
  if (alg.name === "ECDSA" && !CURVE_BYTES[curve]) throw new CryptoError(`Unrecognized namedCurve: ${curve}`, "NotSupportedError");
  for (const u of usages) if (u !== "sign" && u !== "verify") throw new CryptoError(`Cannot create a key with usage ${u}`, "SyntaxError");
  const [d, pub] = N.cryptoKey("generate", alg.name, curve, "", "");
  const material = { priv: toLatin1(new Uint8Array(d)), pub: toLatin1(new Uint8Array(pub)) };
  return {
    publicKey: makeKey("public", alg, true, usages.filter((u) => u === "verify"), { pub: material.pub }),
    privateKey: makeKey("private", alg, extractable, usages.filter((u) => u === "sign"), material),
  };
}
// The algorithm's parameters for a key: the hash and curve the natives take.
function keyParams(alg, key, usage) {
  alg = normalizeAlgorithm(alg);
  if (!(key instanceof CryptoKey)) throw new TypeError(`${usage} takes a CryptoKey`);
  if (alg.name !== key.algorithm.name) throw new CryptoError(`The key is for ${key.algorithm.name}, not ${alg.name}`, "InvalidAccessError");
  if (!key.usages.includes(usage)) throw new CryptoError(`The key cannot be used to ${usage}`, "InvalidAccessError");
  const hash = alg.name === "ECDSA" ? alg.hash : key.algorithm.hash ? key.algorithm.hash.name : "";
  if (alg.name === "ECDSA" && !hash) throw new TypeError("ECDSA needs a hash");
  return { name: alg.name, curve: key.algorithm.namedCurve || "", hash };
}
globalThis.crypto = {
  getRandomValues(ta) {
    const u8 = asBytes(ta);
    if (!u8 || ta instanceof Float32Array || ta instanceof Float64Array) throw new TypeError("getRandomValues takes an integer typed array");
    if (u8.length > 65536) throw new CryptoError("The requested length exceeds 65,536 bytes", "QuotaExceededError");
    u8.set(new Uint8Array(N.randomBytes(u8.length)));
    return ta;
  },
  randomUUID: () => N.uuid(),
  subtle: {
    async digest(alg, data) {
      const name = (typeof alg === "string" ? alg : alg.name).toUpperCase();
      if (!HASHES[name]) throw new CryptoError(`Unrecognized algorithm name: ${name}`, "NotSupportedError");
      const u8 = asBytes(data);
      if (!u8) throw new TypeError("digest takes an ArrayBuffer or a view of one");
      return N.digest(HASHES[name], toLatin1(u8));
    },
    async importKey(format, keyData, alg, extractable, usages) {
      return subtleCall(() => importKey(format, keyData, alg, extractable, usages));
    },
    async exportKey(format, key) {
      return subtleCall(() => exportKey(format, key));
    },
    async generateKey(alg, extractable, usages) {
      return subtleCall(() => generateKey(alg, extractable, usages));
    },
    async sign(alg, key, data) {
      return subtleCall(() => {
        const p = keyParams(alg, key, "sign");
        const m = keyMaterial.get(key);
        return N.cryptoSign(p.name, p.curve, p.hash, m.secret ?? m.priv, m.pub ?? "", toLatin1(bytesOf(data, "data")));
      });
    },
    async verify(alg, key, signature, data) {
      return subtleCall(() => {
        const p = keyParams(alg, key, "verify");
        const m = keyMaterial.get(key);
        return N.cryptoVerify(p.name, p.curve, p.hash, m.secret ?? m.pub, toLatin1(bytesOf(signature, "signature")), toLatin1(bytesOf(data, "data")));
      });
    },
  },
};
