// partyline:prelude, part 1 of 4 (web.js): the Web APIs of a worker that need no HTTP: bytes
// helpers, console, timers, base64, DOMException, TextEncoder/TextDecoder, events,
// AbortController, structuredClone and crypto. The four parts are joined in this order into one
// module (js/src/modules.rs, `PRELUDE_SOURCE`), evaluated first in every room's context (and in
// the gateway's hook context), so they share one scope.

// The natives the Rust host installs (js/src/host.rs; their names are `HostCall` in
// js/src/bridge.rs), taken off the global object: every part of the prelude calls them on `N`.
const N = globalThis.__partyline_native;
delete globalThis.__partyline_native;
// Loads a part of the prelude kept in a module of its own (js/src/modules.rs, `LAZY_PARTS`) and
// returns its default export; installed by js/src/engine.rs.
const loadPart = globalThis.__partyline_part;
delete globalThis.__partyline_part;

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

// A global built on first use by `make` (which may assign it itself): until then only an
// accessor, so a room that never uses it does not pay for its classes and functions. Assigning
// the global first replaces it, as for any global.
function lazyGlobal(name, make) {
  const define = (value) => Object.defineProperty(globalThis, name, { value, writable: true, enumerable: true, configurable: true });
  Object.defineProperty(globalThis, name, {
    get() {
      const value = make();
      define(value);
      return value;
    },
    set: define,
    enumerable: true,
    configurable: true,
  });
}
// WebAssembly (prelude/wasm.js) is rarely used: its part loads on first use.
lazyGlobal("WebAssembly", () => loadPart("partyline:prelude/wasm")(N, asBytes));

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

// `crypto.subtle` and `CryptoKey` (prelude/crypto.js: digests, HMAC, ECDSA, Ed25519, RSA
// verification over the natives of js/src/crypto.rs) load on first use.
let cryptoPart = null;
const subtlePart = () => (cryptoPart ??= loadPart("partyline:prelude/crypto")(N, asBytes, toLatin1));
lazyGlobal("CryptoKey", () => subtlePart().CryptoKey);
globalThis.crypto = {
  getRandomValues(ta) {
    const u8 = asBytes(ta);
    if (!u8 || ta instanceof Float32Array || ta instanceof Float64Array) throw new TypeError("getRandomValues takes an integer typed array");
    if (u8.length > 65536) throw new globalThis.DOMException("The requested length exceeds 65,536 bytes", "QuotaExceededError");
    u8.set(new Uint8Array(N.randomBytes(u8.length)));
    return ta;
  },
  randomUUID: () => N.uuid(),
  get subtle() {
    const subtle = subtlePart().subtle;
    Object.defineProperty(this, "subtle", { value: subtle, writable: true, enumerable: true, configurable: true });
    return subtle;
  },
};
