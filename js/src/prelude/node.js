// ---- Node.js globals a bundle may expect: `global`, `process` and `Buffer`, as PartyKit's build
// injects them (unenv's shims). `process.env` is filled by the bundle itself, from `.env` and
// `vars`, before any of its modules runs (js/src/project.rs, `env_banner`).

globalThis.global = globalThis;

globalThis.process = {
  env: {},
  argv: [],
  version: "v20.0.0",
  versions: {},
  platform: "linux",
  browser: false,
  title: "partyline",
  cwd() { return "/"; },
  nextTick(fn, ...args) { queueMicrotask(() => fn(...args)); },
  on() { return this; },
  off() { return this; },
  once() { return this; },
  emit() { return false; },
  hrtime: Object.assign(function hrtime(prev) {
    const t = performance.now();
    let s = Math.floor(t / 1000), ns = Math.floor((t % 1000) * 1e6);
    if (prev) { s -= prev[0]; ns -= prev[1]; if (ns < 0) { s -= 1; ns += 1e9; } }
    return [s, ns];
  }, { bigint() { return BigInt(Math.floor(performance.now() * 1e6)); } }),
};

// A Buffer for what bundled packages commonly do with it: make one from a string (utf8, hex,
// base64, base64url, latin1), an array or bytes, turn it back into a string, slice, compare and
// concatenate. It is a Uint8Array, as Node's is.
class Buffer extends Uint8Array {
  static from(value, encodingOrOffset, length) {
    if (typeof value === "string") return Buffer.#fromString(value, encodingOrOffset);
    if (value instanceof ArrayBuffer) {
      return new Buffer(value, encodingOrOffset || 0, length ?? value.byteLength - (encodingOrOffset || 0));
    }
    if (ArrayBuffer.isView(value)) {
      return new Buffer(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength));
    }
    if (value && value.type === "Buffer" && Array.isArray(value.data)) return Buffer.from(value.data);
    const out = new Buffer(value.length);
    for (let i = 0; i < value.length; i++) out[i] = value[i];
    return out;
  }
  static #fromString(s, encoding = "utf8") {
    switch (String(encoding).toLowerCase()) {
      case "utf8": case "utf-8": return Buffer.from(new TextEncoder().encode(s));
      case "hex": {
        const out = new Buffer(s.length >> 1);
        for (let i = 0; i < out.length; i++) out[i] = parseInt(s.substr(i * 2, 2), 16);
        return out;
      }
      case "base64": case "base64url": {
        const b = atob(s.replace(/-/g, "+").replace(/_/g, "/").replace(/[^A-Za-z0-9+/]/g, "")
          .padEnd(Math.ceil(s.length / 4) * 4, "="));
        return Buffer.#fromString(b, "latin1");
      }
      case "latin1": case "binary": case "ascii": {
        const out = new Buffer(s.length);
        for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0xff;
        return out;
      }
      default: throw new TypeError(`Unknown encoding: ${encoding}`);
    }
  }
  static alloc(size, fill = 0) { return new Buffer(size).fill(typeof fill === "number" ? fill : 0); }
  static allocUnsafe(size) { return new Buffer(size); }
  static isBuffer(b) { return b instanceof Buffer; }
  static isEncoding(e) {
    return ["utf8", "utf-8", "hex", "base64", "base64url", "latin1", "binary", "ascii"].includes(String(e).toLowerCase());
  }
  static byteLength(s, encoding) { return typeof s === "string" ? Buffer.from(s, encoding).length : s.byteLength; }
  static concat(list, total) {
    const length = total ?? list.reduce((n, b) => n + b.length, 0);
    const out = Buffer.alloc(length);
    let at = 0;
    for (const b of list) { if (at >= length) break; out.set(b.subarray(0, length - at), at); at += b.length; }
    return out;
  }
  static compare(a, b) { return a.compare(b); }
  toString(encoding = "utf8", start = 0, end = this.length) {
    const bytes = this.subarray(start, end);
    switch (String(encoding).toLowerCase()) {
      case "utf8": case "utf-8": return new TextDecoder().decode(bytes);
      case "hex": return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      case "base64": return btoa(Buffer.prototype.toString.call(bytes, "latin1"));
      case "base64url":
        return Buffer.prototype.toString.call(bytes, "base64").replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
      case "latin1": case "binary": case "ascii": {
        let s = "";
        for (let i = 0; i < bytes.length; i += 8192) s += String.fromCharCode(...bytes.subarray(i, i + 8192));
        return s;
      }
      default: throw new TypeError(`Unknown encoding: ${encoding}`);
    }
  }
  toJSON() { return { type: "Buffer", data: Array.from(this) }; }
  equals(other) { return this.compare(other) === 0; }
  compare(other) {
    const n = Math.min(this.length, other.length);
    for (let i = 0; i < n; i++) if (this[i] !== other[i]) return this[i] < other[i] ? -1 : 1;
    return this.length === other.length ? 0 : this.length < other.length ? -1 : 1;
  }
  slice(start, end) { return this.subarray(start, end); }
  subarray(start, end) {
    const u = Uint8Array.prototype.subarray.call(this, start, end);
    return new Buffer(u.buffer, u.byteOffset, u.length);
  }
  write(s, offset = 0, length, encoding = "utf8") {
    const b = Buffer.from(s, encoding).subarray(0, length ?? this.length - offset);
    this.set(b, offset);
    return b.length;
  }
  readUInt8(o = 0) { return this[o]; }
  readUInt16BE(o = 0) { return (this[o] << 8) | this[o + 1]; }
  readUInt32BE(o = 0) { return ((this[o] << 24) >>> 0) + ((this[o + 1] << 16) | (this[o + 2] << 8) | this[o + 3]); }
  writeUInt8(v, o = 0) { this[o] = v; return o + 1; }
}
globalThis.Buffer = Buffer;
