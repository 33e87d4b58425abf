// partyline:prelude, part 2 of 4 (fetch.js): URL and URLSearchParams, the Fetch API (Headers,
// Request, Response, `fetch`), bodies (Blob, File, FormData, ReadableStream), and the plain forms of requests and responses handed to and from
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

// ---------------------------------------------------------------- Blob, File, FormData, ReadableStream

function concatBytes(chunks) {
  let len = 0;
  for (const c of chunks) len += c.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}
// A chunk of a body stream as bytes (strings are taken as UTF-8, more leniently than the standard).
function chunkBytes(chunk) {
  const u8 = asBytes(chunk);
  if (u8) return u8;
  if (typeof chunk === "string") return new TextEncoder().encode(chunk);
  throw new TypeError("A body stream's chunks must be Uint8Arrays");
}

class Blob {
  constructor(parts = [], options = {}) {
    const chunks = [];
    for (const p of parts) {
      if (p instanceof Blob) chunks.push(p._data);
      else if (asBytes(p)) chunks.push(asBytes(p));
      else chunks.push(new TextEncoder().encode(String(p)));
    }
    this._data = concatBytes(chunks);
    const type = options.type === undefined ? "" : String(options.type);
    this._type = /^[\x20-\x7e]*$/.test(type) ? type.toLowerCase() : "";
  }
  get size() { return this._data.length; }
  get type() { return this._type; }
  slice(start = 0, end = this._data.length, type = "") {
    const len = this._data.length;
    const at = (i) => (i < 0 ? Math.max(len + i, 0) : Math.min(i, len));
    const b = new Blob([], { type });
    b._data = this._data.slice(at(Math.trunc(start)), Math.max(at(Math.trunc(end)), at(Math.trunc(start))));
    return b;
  }
  async text() { return new TextDecoder().decode(this._data); }
  async arrayBuffer() { return copyBytes(this._data).buffer; }
  async bytes() { return copyBytes(this._data); }
  stream() { return bytesStream(this._data); }
  get [Symbol.toStringTag]() { return "Blob"; }
}
class File extends Blob {
  constructor(parts, name, options = {}) {
    super(parts, options);
    this.name = String(name);
    this.lastModified = options.lastModified === undefined ? Date.now() : Number(options.lastModified);
  }
  get [Symbol.toStringTag]() { return "File"; }
}
globalThis.Blob = Blob;
globalThis.File = File;

class FormData {
  constructor(form) {
    if (form !== undefined) throw new TypeError("FormData takes no form element here");
    this._list = [];
  }
  static _entry(name, value, filename) {
    name = String(name);
    if (!(value instanceof Blob)) return [name, String(value)];
    if (!(value instanceof File) || filename !== undefined) {
      const fname = filename !== undefined ? String(filename) : value instanceof File ? value.name : "blob";
      value = new File([value], fname, { type: value.type, lastModified: value.lastModified });
    }
    return [name, value];
  }
  append(name, value, filename) { this._list.push(FormData._entry(name, value, filename)); }
  set(name, value, filename) {
    const entry = FormData._entry(name, value, filename);
    const i = this._list.findIndex(([k]) => k === entry[0]);
    if (i < 0) this._list.push(entry);
    else this._list = this._list.filter(([k], j) => k !== entry[0] || j === i).map((e, j) => (j === i ? entry : e));
  }
  get(name) { const e = this._list.find(([k]) => k === String(name)); return e ? e[1] : null; }
  getAll(name) { return this._list.filter(([k]) => k === String(name)).map((e) => e[1]); }
  has(name) { return this._list.some(([k]) => k === String(name)); }
  delete(name) { this._list = this._list.filter(([k]) => k !== String(name)); }
  forEach(fn, self) { for (const [k, v] of this._list) fn.call(self, v, k, this); }
  keys() { return this._list.map((e) => e[0])[Symbol.iterator](); }
  values() { return this._list.map((e) => e[1])[Symbol.iterator](); }
  entries() { return this._list.map((e) => [e[0], e[1]])[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
  get [Symbol.toStringTag]() { return "FormData"; }
}
globalThis.FormData = FormData;

// multipart/form-data (RFC 7578): the bytes of a form and its content type.
function encodeMultipart(form) {
  const boundary = "----PartylineFormBoundary" + Array.from(new Uint8Array(N.randomBytes(12)), (b) => b.toString(16).padStart(2, "0")).join("");
  const escape = (s) => s.replace(/\r/g, "%0D").replace(/\n/g, "%0A").replace(/"/g, "%22");
  const enc = new TextEncoder();
  const chunks = [];
  for (const [name, value] of form._list) {
    let head = `--${boundary}\r\nContent-Disposition: form-data; name="${escape(name)}"`;
    if (typeof value === "string") {
      chunks.push(enc.encode(`${head}\r\n\r\n${value}\r\n`));
    } else {
      head += `; filename="${escape(value.name)}"\r\nContent-Type: ${value.type || "application/octet-stream"}\r\n\r\n`;
      chunks.push(enc.encode(head), value._data, enc.encode("\r\n"));
    }
  }
  chunks.push(enc.encode(`--${boundary}--\r\n`));
  return { bytes: concatBytes(chunks), type: `multipart/form-data; boundary=${boundary}` };
}
// The parameters of a header value such as `form-data; name="a"; filename="b"` (names lowercased).
function headerParams(value) {
  const params = {};
  const re = /;\s*([^=;\s]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;]*))/g;
  let m;
  while ((m = re.exec(value))) params[m[1].toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3].trim();
  return params;
}
function parseMultipart(bytes, boundary) {
  const s = toLatin1(bytes);
  const delim = "--" + boundary;
  const bad = () => new TypeError("The body is not valid multipart/form-data");
  const form = new FormData();
  let pos = s.indexOf(delim);
  if (pos < 0) throw bad();
  for (;;) {
    pos += delim.length;
    if (s.startsWith("--", pos)) return form;
    const lineEnd = s.indexOf("\r\n", pos);
    if (lineEnd < 0) throw bad();
    pos = lineEnd + 2;
    let headEnd = pos;
    const headers = {};
    if (!s.startsWith("\r\n", pos)) {
      headEnd = s.indexOf("\r\n\r\n", pos);
      if (headEnd < 0) throw bad();
      for (const line of s.slice(pos, headEnd).split("\r\n")) {
        const i = line.indexOf(":");
        if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = N.utf8Decode(line.slice(i + 1).trim(), false);
      }
      headEnd += 2;
    }
    const start = headEnd + 2;
    const next = s.indexOf("\r\n" + delim, start);
    if (next < 0) throw bad();
    const disposition = headers["content-disposition"] || "";
    const params = headerParams(disposition);
    if (!/^form-data\b/i.test(disposition) || params.name === undefined) throw bad();
    const content = bytes.subarray(start, next);
    if (params.filename !== undefined) form.append(params.name, new File([content], params.filename, { type: headers["content-type"] || "" }));
    else form.append(params.name, new TextDecoder().decode(content));
    pos = next + 2;
  }
}

// ReadableStream: the default (not byte) stream of the Streams standard with its default
// reader, for bodies. Partyline buffers bodies whole: a stream given as a body is read to its
// end before the request or response goes anywhere, and `body` of a request or response is a
// stream over bytes already in memory.
class ReadableStreamDefaultController {
  constructor(stream) { this._stream = stream; }
  get desiredSize() {
    const s = this._stream;
    return s._state === "errored" ? null : s._state === "closed" ? 0 : s._hwm - s._queue.length;
  }
  enqueue(chunk) {
    const s = this._stream;
    if (s._state !== "readable" || s._closeRequested) throw new TypeError("Cannot enqueue into a closed stream");
    const waiter = s._waiting.shift();
    if (waiter) waiter.resolve({ value: chunk, done: false });
    else s._queue.push(chunk);
    s._callPull();
  }
  close() {
    const s = this._stream;
    if (s._state !== "readable" || s._closeRequested) throw new TypeError("The stream is already closed");
    s._closeRequested = true;
    if (!s._queue.length) s._finishClose();
  }
  error(e) { this._stream._fail(e); }
}
class ReadableStream {
  constructor(source = {}, strategy = {}) {
    if (source && source.type === "bytes") throw new TypeError("Byte streams are not supported");
    this._source = source || {};
    this._hwm = strategy.highWaterMark === undefined ? 1 : Number(strategy.highWaterMark);
    this._queue = [];
    this._waiting = [];
    this._state = "readable";
    this._closeRequested = false;
    this._disturbed = false;
    this._reader = null;
    this._started = false;
    this._pulling = false;
    this._pullAgain = false;
    this._closed = new Promise((resolve, reject) => { this._closedResolve = resolve; this._closedReject = reject; });
    this._closed.catch(() => {});
    this._controller = new ReadableStreamDefaultController(this);
    const started = this._source.start ? this._source.start(this._controller) : undefined;
    this._syncStart = !(started && typeof started.then === "function");
    Promise.resolve(started).then(
      () => { this._started = true; this._callPull(); },
      (e) => this._fail(e),
    );
  }
  static from(iterable) {
    const it = iterable[Symbol.asyncIterator] ? iterable[Symbol.asyncIterator]() : iterable[Symbol.iterator]();
    return new ReadableStream({
      async pull(c) {
        const { value, done } = await it.next();
        if (done) c.close();
        else c.enqueue(value);
      },
      async cancel(reason) { if (it.return) await it.return(reason); },
    });
  }
  get locked() { return this._reader !== null; }
  _callPull() {
    if (!this._started || this._state !== "readable" || this._closeRequested || !this._source.pull) return;
    if (this._waiting.length === 0 && this._queue.length >= this._hwm) return;
    if (this._pulling) { this._pullAgain = true; return; }
    this._pulling = true;
    let pulled;
    try { pulled = this._source.pull(this._controller); } catch (e) { this._fail(e); return; }
    Promise.resolve(pulled).then(
      () => {
        this._pulling = false;
        if (this._pullAgain) { this._pullAgain = false; this._callPull(); }
      },
      (e) => this._fail(e),
    );
  }
  _finishClose() {
    this._state = "closed";
    for (const w of this._waiting.splice(0)) w.resolve({ value: undefined, done: true });
    this._closedResolve();
  }
  _fail(e) {
    if (this._state !== "readable") return;
    this._state = "errored";
    this._error = e;
    this._queue = [];
    for (const w of this._waiting.splice(0)) w.reject(e);
    this._closedReject(e);
  }
  _read() {
    this._disturbed = true;
    if (this._queue.length) {
      const value = this._queue.shift();
      if (this._closeRequested && !this._queue.length) this._finishClose();
      else this._callPull();
      return Promise.resolve({ value, done: false });
    }
    if (this._state === "closed") return Promise.resolve({ value: undefined, done: true });
    if (this._state === "errored") return Promise.reject(this._error);
    return new Promise((resolve, reject) => { this._waiting.push({ resolve, reject }); this._callPull(); });
  }
  _cancel(reason) {
    this._disturbed = true;
    if (this._state === "closed") return Promise.resolve();
    if (this._state === "errored") return Promise.reject(this._error);
    this._queue = [];
    this._finishClose();
    return Promise.resolve(this._source.cancel ? this._source.cancel(reason) : undefined).then(() => undefined);
  }
  cancel(reason) {
    if (this.locked) return Promise.reject(new TypeError("Cannot cancel a locked stream"));
    return this._cancel(reason);
  }
  getReader(options = {}) {
    if (options && options.mode === "byob") throw new TypeError("BYOB readers are not supported");
    return new ReadableStreamDefaultReader(this);
  }
  tee() {
    const reader = this.getReader();
    const controllers = [];
    const branch = () => new ReadableStream({ start(c) { controllers.push(c); } });
    const branches = [branch(), branch()];
    (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const c of controllers) c.enqueue(value);
        }
        for (const c of controllers) c.close();
      } catch (e) {
        for (const c of controllers) c.error(e);
      }
    })();
    return branches;
  }
  async *values(options = {}) {
    const reader = this.getReader();
    let finished = false;
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { finished = true; return; }
        yield value;
      }
    } finally {
      if (!finished && !options.preventCancel) await reader.cancel();
      reader.releaseLock();
    }
  }
  [Symbol.asyncIterator](options) { return this.values(options); }
  // The whole content when it is already there (a closed stream's queue, or a source that
  // enqueues and closes in `start` or in a `pull` that does not return a promise), else null.
  // The stream is then read (disturbed), as a body stream is.
  _drainNow() {
    if (this.locked || this._disturbed) throw new TypeError("The ReadableStream is locked or disturbed");
    while (this._syncStart && this._state === "readable" && !this._closeRequested && !this._pulling && this._source.pull) {
      const before = this._queue.length;
      this._started = true;
      this._pulling = true;
      let pulled;
      try { pulled = this._source.pull(this._controller); } catch (e) { this._fail(e); break; }
      if (pulled && typeof pulled.then === "function") {
        pulled.then(() => { this._pulling = false; this._callPull(); }, (e) => this._fail(e));
        return null;
      }
      this._pulling = false;
      if (this._queue.length === before && !this._closeRequested) return null;
    }
    if (this._state === "errored") throw this._error;
    if (this._state !== "closed" && !this._closeRequested) return null;
    const bytes = concatBytes(this._queue.map(chunkBytes));
    this._disturbed = true;
    this._queue = [];
    if (this._state === "readable") this._finishClose();
    return bytes;
  }
  // The whole content, read to the end.
  async _readAll() {
    const reader = this.getReader();
    const chunks = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(chunkBytes(value));
    }
    reader.releaseLock();
    return concatBytes(chunks);
  }
}
class ReadableStreamDefaultReader {
  constructor(stream) {
    if (!(stream instanceof ReadableStream)) throw new TypeError("ReadableStreamDefaultReader takes a ReadableStream");
    if (stream.locked) throw new TypeError("The ReadableStream is locked");
    stream._reader = this;
    this._stream = stream;
    this.closed = stream._closed;
  }
  read() {
    if (!this._stream) return Promise.reject(new TypeError("The reader has been released"));
    return this._stream._read();
  }
  cancel(reason) {
    if (!this._stream) return Promise.reject(new TypeError("The reader has been released"));
    return this._stream._cancel(reason);
  }
  releaseLock() {
    const s = this._stream;
    if (!s) return;
    for (const w of s._waiting.splice(0)) w.reject(new TypeError("The reader was released"));
    s._reader = null;
    this._stream = null;
  }
}
// A closed stream of `bytes` (one chunk).
function bytesStream(bytes) {
  return new ReadableStream({ start(c) { if (bytes.length) c.enqueue(copyBytes(bytes)); c.close(); } });
}
globalThis.ReadableStream = ReadableStream;
globalThis.ReadableStreamDefaultReader = ReadableStreamDefaultReader;
globalThis.ReadableStreamDefaultController = ReadableStreamDefaultController;

// A body is kept as given (a string, bytes, or a ReadableStream not yet read to its end) and read
// once; `body` is a ReadableStream over it.
function bodyBytes(b) {
  if (b === null || b === undefined) return null;
  if (typeof b === "string") return new TextEncoder().encode(b);
  return b;
}
function initBody(target, body, headers) {
  target._bodyUsed = false;
  target._stream = null;
  const type = (t) => { if (t && !headers.has("content-type")) headers.set("content-type", t); };
  if (body === undefined || body === null) { target._body = null; return; }
  if (typeof body === "string") {
    target._body = body;
    type("text/plain;charset=UTF-8");
  } else if (body instanceof URLSearchParams) {
    target._body = body.toString();
    type("application/x-www-form-urlencoded;charset=UTF-8");
  } else if (body instanceof FormData) {
    const encoded = encodeMultipart(body);
    target._body = encoded.bytes;
    type(encoded.type);
  } else if (body instanceof Blob) {
    target._body = copyBytes(body._data);
    type(body.type);
  } else if (body instanceof ReadableStream) {
    target._body = body._drainNow() || body;
  } else if (asBytes(body)) {
    target._body = copyBytes(asBytes(body));
  } else {
    target._body = String(body);
    type("text/plain;charset=UTF-8");
  }
}
// The body of `target` as a string or bytes for the host, when it is all there.
function settledBody(target) {
  const b = target._body;
  if (!(b instanceof ReadableStream)) return b;
  const bytes = b._drainNow();
  if (!bytes) throw new TypeError("A ReadableStream body must be complete by the time the request or response is handed on (Partyline buffers bodies)");
  target._body = bytes;
  return bytes;
}
// Reads a ReadableStream body to its end.
async function settleBody(target) {
  if (target._body instanceof ReadableStream) target._body = await target._body._readAll();
}
const BodyMixin = {
  get body() {
    if (this._body === null) return null;
    if (this._body instanceof ReadableStream) return this._body;
    if (!this._stream) this._stream = bytesStream(bodyBytes(this._body));
    return this._stream;
  },
  get bodyUsed() { return this._bodyUsed || !!(this._stream && this._stream._disturbed) || (this._body instanceof ReadableStream && this._body._disturbed); },
  async _take() {
    if (this.bodyUsed || (this._body instanceof ReadableStream && this._body.locked)) throw new TypeError("Body has already been used");
    this._bodyUsed = true;
    if (this._stream) this._stream._disturbed = true;
    const b = this._body;
    return b instanceof ReadableStream ? b._readAll() : b;
  },
  async text() {
    const b = await this._take();
    if (b === null) return "";
    return typeof b === "string" ? b : new TextDecoder().decode(b);
  },
  async json() { return JSON.parse(await this.text()); },
  async arrayBuffer() { const b = bodyBytes(await this._take()); return b ? copyBytes(b).buffer : new ArrayBuffer(0); },
  async bytes() { const b = bodyBytes(await this._take()); return b ? copyBytes(b) : new Uint8Array(0); },
  async formData() {
    const type = this.headers.get("content-type") || "";
    const bytes = bodyBytes(await this._take()) || new Uint8Array(0);
    const essence = type.split(";")[0].trim().toLowerCase();
    if (essence === "multipart/form-data") {
      const boundary = headerParams(type).boundary;
      if (!boundary) throw new TypeError("The multipart/form-data content type has no boundary");
      return parseMultipart(bytes, boundary);
    }
    if (essence === "application/x-www-form-urlencoded") {
      const form = new FormData();
      for (const [k, v] of new URLSearchParams(new TextDecoder().decode(bytes))) form.append(k, v);
      return form;
    }
    throw new TypeError(`Cannot parse a body of type ${JSON.stringify(type)} as FormData`);
  },
  async blob() {
    const b = bodyBytes(await this._take());
    return new Blob(b ? [b] : [], { type: this.headers.get("content-type") || "" });
  },
};
// A body for a copy of `target` (`clone()`): a ReadableStream body is teed.
function cloneBody(target) {
  if (target.bodyUsed) throw new TypeError("Cannot clone a body that has already been used");
  if (!(target._body instanceof ReadableStream)) return target._body;
  const [a, b] = target._body.tee();
  target._body = a;
  return b;
}

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
    this.redirect = String(init.redirect || (src ? src.redirect : "follow"));
    if (!["follow", "manual", "error"].includes(this.redirect)) throw new TypeError(`Invalid redirect mode: ${this.redirect}`);
    this.cf = init.cf || (src ? src.cf : undefined);
    const body = init.body !== undefined ? init.body : src ? src._body : null;
    if (src && init.body === undefined && src._body instanceof ReadableStream) src._bodyUsed = true;
    if (body !== null && body !== undefined && (this.method === "GET" || this.method === "HEAD")) throw new TypeError("Request with GET/HEAD method cannot have body.");
    initBody(this, body, this.headers);
  }
  clone() { return new Request(this, { body: cloneBody(this) }); }
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
  clone() {
    const r = new Response(cloneBody(this), this);
    r.url = this.url;
    r.redirected = this.redirected;
    return r;
  }
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
  const b = settledBody(req);
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
  const b = settledBody(res);
  return { status: res.status, headers: res.headers._pairs(), text: typeof b === "string" ? b : null, latin1: b && typeof b !== "string" ? toLatin1(b) : null };
}
function responseIn(r) {
  const res = new Response(r.body === null ? null : new Uint8Array(r.body), { status: r.status, statusText: r.statusText, headers: r.headers });
  res.url = r.url || "";
  res.redirected = !!r.redirected;
  return res;
}

globalThis.fetch = async function fetch(input, init = {}) {
  const req = input instanceof Request && Object.keys(init).length === 0 ? input : new Request(input, init);
  const signal = init.signal || req.signal;
  if (signal && signal.aborted) throw signal.reason;
  await settleBody(req);
  const out = requestOut(req);
  out.redirect = req.redirect;
  const pending = op(N.fetch(out));
  const res = signal
    ? await Promise.race([pending, new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason)))])
    : await pending;
  return responseIn(res);
};
