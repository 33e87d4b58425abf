// partyline:prelude, part 3 of 4 (partykit.js): PartyKit's Party API: storage (with how values
// are encoded for it), connections, the room, calls to other rooms, the lobby and execution
// context of the static hooks, and the legacy module API.

// ---------------------------------------------------------------- storage

// Rooms of a party share this realm (one QuickJS context per party and process, as a Workers
// isolate holds many Durable Objects): what is a room's own is kept on its scope (`s`, made by
// `newScope` in host.js), which the room's objects hold as a hidden `_s`: its natives (`s.R`),
// connections, results, and the tail of its storage operations.
function setHidden(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true, configurable: true });
}

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

// Storage operations apply in the order they were made, as on Cloudflare, awaited or not. Puts
// go into the write buffer at once; a delete must first learn whether its keys exist, which can
// take a read of the store: while one is unfinished, the operations made after it wait for it.
function inOrder(s, fn) {
  if (s.storageTail === null) return fn();
  const p = s.storageTail.then(fn);
  holdStorage(s, p);
  return p;
}
function holdStorage(s, p) {
  const tail = p.then(() => {}, () => {});
  s.storageTail = tail;
  tail.then(() => { if (s.storageTail === tail) s.storageTail = null; });
}
function storageDelete(s, keys) {
  const r = s.R.storageDelete(keys);
  if (r[0]) return Promise.resolve(r[1]);
  const p = op(r);
  // Run in order behind others (`s.storageTail` set), it is already what they wait for.
  if (s.storageTail === null) holdStorage(s, p);
  return p;
}

// Keys compared as the store orders them (by UTF-8 bytes, which is code point order).
function compareKeys(a, b) {
  for (let i = 0, j = 0; i < a.length && j < b.length;) {
    const x = a.codePointAt(i), y = b.codePointAt(j);
    if (x !== y) return x < y ? -1 : 1;
    i += x > 0xffff ? 2 : 1;
    j += y > 0xffff ? 2 : 1;
  }
  return a.length === b.length ? 0 : (a.length < b.length ? -1 : 1);
}
// Whether `k` is in the range of list() options `o`.
function inListRange(k, o) {
  const n = (x) => (x === undefined || x === null ? undefined : String(x));
  const start = n(o.start), startAfter = n(o.startAfter), end = n(o.end), prefix = n(o.prefix);
  if (start !== undefined && compareKeys(k, start) < 0) return false;
  if (startAfter !== undefined && compareKeys(k, startAfter) <= 0) return false;
  if (end !== undefined && compareKeys(k, end) >= 0) return false;
  return prefix === undefined || k.startsWith(prefix);
}
// Values the host takes in a put ([kind, payload]) decoded back, for reads of a transaction.
function decodeEncoded(kind, payload) {
  return kind === 1 ? latin1Bytes(payload) : decodeValue(kind, payload);
}
// The most keys one host call takes (Cloudflare's limit, and Partyline's default).
const MAX_BATCH_KEYS = 128;
function chunks(list) {
  const out = [];
  for (let i = 0; i < list.length; i += MAX_BATCH_KEYS) out.push(list.slice(i, i + MAX_BATCH_KEYS));
  return out;
}

// The `txn` of `storage.transaction(fn)`. Its writes are kept here, as the key's encoded value or
// `null` for a deleted key, and its reads see them over the room's storage. When `fn` resolves
// they are applied at once, all in the same write buffer (so they are committed together);
// when it throws, or after `rollback()`, they are dropped.
class Transaction {
  constructor(storage) {
    this._storage = storage;
    setHidden(this, "_s", storage._s);
    this._writes = new Map();
    this._rolledBack = false;
    this._over = false;
  }
  _check() {
    if (this._rolledBack) throw new Error("this transaction was rolled back");
    if (this._over) throw new Error("this transaction is over: use it only inside its callback");
  }
  async get(keys) {
    this._check();
    const list = (Array.isArray(keys) ? keys : [keys]).map(keyOf);
    const found = new Map();
    const missing = [];
    for (const k of list) {
      if (!this._writes.has(k)) missing.push(k);
      else if (this._writes.get(k) !== null) found.set(k, decodeEncoded(...this._writes.get(k)));
    }
    for (const part of chunks(missing)) {
      const read = await inOrder(this._s, async () => op(this._s.R.storageGet(part)));
      // A write of the transaction made while the read was in flight wins over what it saw.
      for (const [k, kind, payload] of read) if (!this._writes.has(k)) found.set(k, decodeValue(kind, payload));
    }
    if (!Array.isArray(keys)) return found.get(list[0]);
    return new Map([...found].sort((a, b) => compareKeys(a[0], b[0])));
  }
  async put(key, value) {
    this._check();
    let entries;
    if (typeof key === "object" && key !== null) entries = Object.keys(key).map((k) => [k, encodeValue(key[k])]);
    else if (value === undefined) throw new TypeError("put() needs a value (use delete() to remove a key)");
    else entries = [[keyOf(key), encodeValue(value)]];
    for (const [k, v] of entries) this._writes.set(k, v);
  }
  async delete(keys) {
    this._check();
    const list = (Array.isArray(keys) ? keys : [keys]).map(keyOf);
    const existing = await this.get(list);
    for (const k of list) this._writes.set(k, null);
    return Array.isArray(keys) ? existing.size : existing.size === 1;
  }
  async deleteAll() {
    throw new Error("deleteAll() is not available in a transaction: call it on storage");
  }
  async list(options = {}) {
    this._check();
    const o = options || {};
    if (o.limit !== undefined && !(o.limit > 0)) throw new RangeError("list() limit must be positive");
    const limit = o.limit === undefined ? undefined : Number(o.limit);
    const mine = [...this._writes].filter(([k]) => inListRange(k, o));
    // The transaction's deletes may hide entries of the storage: ask for that many more.
    const hidden = mine.filter(([, v]) => v === null).length;
    const base = await this._storage.list({ ...o, limit: limit === undefined ? undefined : limit + hidden });
    const out = [];
    for (const [k, v] of base) if (!this._writes.has(k)) out.push([k, v]);
    for (const [k, v] of mine) if (v !== null) out.push([k, decodeEncoded(...v)]);
    out.sort((a, b) => (o.reverse ? -compareKeys(a[0], b[0]) : compareKeys(a[0], b[0])));
    return new Map(limit === undefined ? out : out.slice(0, limit));
  }
  rollback() {
    this._check();
    this._rolledBack = true;
    this._writes.clear();
  }
  async getAlarm(options) { this._check(); return this._storage.getAlarm(options); }
  async setAlarm(time, options) { this._check(); return this._storage.setAlarm(time, options); }
  async deleteAlarm(options) { this._check(); return this._storage.deleteAlarm(options); }
  // Applies the writes in order after the storage operations made before, and before those made
  // after. The deleted keys are read first, so that the deletes find them cached and land in the
  // write buffer in the same step as the puts: no commit of the room can come between them.
  _commit() {
    const puts = [], dels = [];
    for (const [k, v] of this._writes) {
      if (v === null) dels.push(k);
      else puts.push([k, ...v]);
    }
    if (!puts.length && !dels.length) return Promise.resolve();
    const apply = async () => {
      for (const part of chunks(dels)) await op(this._s.R.storageGet(part));
      for (const part of chunks(puts)) this._s.R.storagePut(part);
      for (const part of chunks(dels)) await storageDelete(this._s, part);
    };
    const p = this._s.storageTail === null ? apply() : this._s.storageTail.then(apply);
    holdStorage(this._s, p);
    return p;
  }
}

class Storage {
  constructor(s) { setHidden(this, "_s", s); }
  async get(keys) {
    return inOrder(this._s, async () => {
      if (Array.isArray(keys)) return entriesMap(await op(this._s.R.storageGet(keys.map(keyOf))));
      const list = await op(this._s.R.storageGet([keyOf(keys)]));
      return list.length ? decodeValue(list[0][1], list[0][2]) : undefined;
    });
  }
  async put(key, value) {
    let entries;
    if (typeof key === "object" && key !== null) entries = Object.keys(key).map((k) => [k, ...encodeValue(key[k])]);
    else if (value === undefined) throw new TypeError("put() needs a value (use delete() to remove a key)");
    else entries = [[keyOf(key), ...encodeValue(value)]];
    return inOrder(this._s, () => { this._s.R.storagePut(entries); });
  }
  async delete(keys) {
    if (Array.isArray(keys)) {
      const list = keys.map(keyOf);
      return inOrder(this._s, () => storageDelete(this._s, list));
    }
    const key = keyOf(keys);
    return (await inOrder(this._s, () => storageDelete(this._s, [key]))) === 1;
  }
  async deleteAll() { return inOrder(this._s, () => { this._s.R.storageDeleteAll(); }); }
  async list(options = {}) {
    const o = options || {};
    const n = (x) => (x === undefined || x === null ? undefined : String(x));
    if (o.limit !== undefined && !(o.limit > 0)) throw new RangeError("list() limit must be positive");
    return inOrder(this._s, async () => entriesMap(await op(this._s.R.storageList(n(o.start), n(o.startAfter), n(o.end), n(o.prefix), !!o.reverse, o.limit === undefined ? undefined : Number(o.limit)))));
  }
  async getAlarm() { return inOrder(this._s, () => op(this._s.R.getAlarm())); }
  async setAlarm(time) {
    const ms = time instanceof Date ? time.getTime() : Number(time);
    if (!Number.isFinite(ms)) throw new TypeError("setAlarm() takes a Date or a number of milliseconds");
    return inOrder(this._s, () => { this._s.R.setAlarm(Math.floor(ms)); });
  }
  async deleteAlarm() { return inOrder(this._s, () => { this._s.R.deleteAlarm(); }); }
  async sync() { return inOrder(this._s, () => op(this._s.R.storageSync())); }
  async transaction(fn) {
    const txn = new Transaction(this);
    let result;
    try {
      result = await fn(txn);
    } finally {
      txn._over = true;
    }
    if (!txn._rolledBack) await txn._commit();
    return result;
  }
  transactionSync() { throw new Error("transactionSync() needs the SQLite storage backend, which Partyline does not have"); }
}

// ---------------------------------------------------------------- connections and rooms

const OPEN = 1, CLOSED = 3;
class Connection extends EventTarget {
  constructor(s, id, uri) {
    super();
    setHidden(this, "_s", s);
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
  get tags() { return this._s.R.connTags(this.id) || [this.id]; }
  get state() {
    if (!this._stateLoaded) {
      const json = this._s.R.connState(this.id);
      this._state = json === null || json === undefined ? null : JSON.parse(json);
      this._stateLoaded = true;
    }
    return this._state;
  }
  setState(next) {
    const value = typeof next === "function" ? next(this.state) : next;
    this._s.R.setConnState(this.id, value === null || value === undefined ? null : JSON.stringify(value));
    this._state = value === undefined ? null : value;
    this._stateLoaded = true;
    return this._state;
  }
  serializeAttachment(v) { this.setState(v); }
  deserializeAttachment() { return this.state; }
  send(data) {
    if (!this._open) return;
    if (typeof data === "string") return this._s.R.send(this.id, data, false);
    const u8 = asBytes(data);
    if (u8) return this._s.R.send(this.id, toLatin1(u8), true);
    this._s.R.send(this.id, String(data), false);
  }
  close(code, reason) {
    if (!this._open) return;
    this._open = false;
    this._closeCode = code === undefined ? 1000 : Number(code);
    this._closeReason = reason === undefined ? "" : String(reason);
    this._s.R.close(this.id, code === undefined ? 1000 : Number(code), reason === undefined ? "" : String(reason));
  }
  accept() {}
}
Connection.prototype.CONNECTING = 0;
Connection.prototype.OPEN = OPEN;
Connection.prototype.CLOSING = 2;
Connection.prototype.CLOSED = CLOSED;

function connFor(s, id, uri) {
  let c = s.conns.get(id);
  if (!c) {
    c = new Connection(s, id, uri === undefined ? s.R.connUri(id) : uri);
    s.conns.set(id, c);
  }
  return c;
}

function messageData(data) {
  return typeof data === "string" ? data : data;
}

// A socket a room opened to another room (`stub.socket()`): a WebSocket as a client sees it.
// The room's frames and its close arrive one at a time as host operations, so its listeners run
// between the room's other events. The same class is the server side of an `onSocket` socket
// (`accepted`: already open, no "open" event, as a Workers socket after `accept()`).
class PartySocket extends EventTarget {
  constructor(s, n, url, accepted) {
    super();
    setHidden(this, "_s", s);
    this._n = n;
    this.url = url;
    this.readyState = OPEN;
    this.binaryType = "arraybuffer";
    this.protocol = "";
    this.extensions = "";
    // Listeners added right after `await stub.socket()` still see "open" and every frame.
    setTimeout(() => {
      if (this.readyState !== OPEN) return;
      if (!accepted) this._dispatch(new Event("open"));
      this._receive();
    }, 0);
  }
  async _receive() {
    for (;;) {
      let e;
      try {
        e = await op(this._s.R.socketRecv(this._n));
      } catch (err) {
        // Closed by this side meanwhile: its close event comes from close().
        if (this.readyState !== OPEN) return;
        this._dispatch(new ErrorEvent("error", { error: err }));
        return this._closed(1006, "", false);
      }
      if (this.readyState !== OPEN) return;
      if (e[0] === 2) return this._closed(e[1], e[2], e[1] !== 1006);
      const data = e[0] === 0 ? e[1] : (this.binaryType === "blob" ? new Blob([e[1]]) : e[1]);
      this._dispatch(new MessageEvent("message", { data }));
    }
  }
  _closed(code, reason, wasClean) {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this._s.R.socketClose(this._n, code, reason);
    this._dispatch(new CloseEvent("close", { code, reason, wasClean }));
  }
  // A listener that throws does not stop the socket: its error is reported as unhandled.
  _dispatch(event) {
    try {
      this.dispatchEvent(event);
    } catch (err) {
      Promise.reject(err);
    }
  }
  accept() {}
  send(data) {
    if (this.readyState !== OPEN) return;
    if (typeof data === "string") return this._s.R.socketSend(this._n, data, false);
    const u8 = asBytes(data);
    if (u8) return this._s.R.socketSend(this._n, toLatin1(u8), true);
    this._s.R.socketSend(this._n, String(data), false);
  }
  close(code, reason) {
    if (this.readyState !== OPEN) return;
    const c = code === undefined ? 1000 : Number(code);
    if (c !== 1000 && !(c >= 3000 && c <= 4999)) throw new DOMException(`close code ${c} is not 1000 or in 3000-4999`, "InvalidAccessError");
    this.readyState = 2;
    const r = reason === undefined ? "" : String(reason);
    this._s.R.socketClose(this._n, c, r);
    // The close event follows, after what this handler does next.
    setTimeout(() => this._closed(c, r, true), 0);
  }
}
PartySocket.prototype.CONNECTING = 0;
PartySocket.prototype.OPEN = OPEN;
PartySocket.prototype.CLOSING = 2;
PartySocket.prototype.CLOSED = CLOSED;

function partiesFor(s) {
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
            else if (pathOrInit instanceof Request) { const u = new URL(pathOrInit.url); path = u.pathname + u.search; init = pathOrInit; }
            else if (pathOrInit instanceof URL) { path = pathOrInit.pathname + pathOrInit.search; }
            else init = pathOrInit;
            if (path && !path.startsWith("/")) throw new Error("the path of a room fetch must start with /");
            const req = new Request(base + path, init || {});
            const out = requestOut(req);
            return responseIn(await op(s.R.partyFetch(name, String(roomId), out)));
          },
          // A WebSocket to the room, as one of its clients (its id: the path's `_pk`, or new).
          async socket(pathOrInit, maybeInit) {
            let path = "";
            let init = maybeInit;
            if (typeof pathOrInit === "string") path = pathOrInit;
            else if (pathOrInit instanceof URL) path = pathOrInit.pathname + pathOrInit.search;
            else init = pathOrInit;
            if (path && !path.startsWith("/")) throw new Error("the path of a room socket must start with /");
            const url = new URL(base + path);
            const id = url.searchParams.get("_pk") || crypto.randomUUID();
            const req = new Request(url.href, { headers: (init && init.headers) || {} });
            const n = await op(s.R.partySocket(name, String(roomId), id, requestOut(req)));
            return new PartySocket(s, n, url.href);
          },
          connect(pathOrInit, maybeInit) { return this.socket(pathOrInit, maybeInit); },
        };
      },
      };
    },
  });
}

function makeRoom(s, info) {
  const storage = new Storage(s);
  const parties = partiesFor(s);
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
      if (typeof msg === "string") return s.R.broadcast(msg, false, ex);
      const u8 = asBytes(msg);
      if (u8) return s.R.broadcast(toLatin1(u8), true, ex);
      s.R.broadcast(String(msg), false, ex);
    },
    getConnection(id) {
      const c = s.conns.get(id);
      if (c) return c;
      const uri = s.R.connUri(String(id));
      return uri === null || uri === undefined ? undefined : connFor(s, String(id), uri);
    },
    *getConnections(tag) {
      for (const [id, uri] of s.R.connList(tag === undefined ? undefined : String(tag))) yield connFor(s, id, uri);
    },
    get connections() {
      const m = new Map();
      for (const [id, uri] of s.R.connList(undefined)) m.set(id, connFor(s, id, uri));
      return m;
    },
    // No other event of the room starts until `fn`'s promise settles (the host holds the
    // room's input gate while a block is open).
    async blockConcurrencyWhile(fn) {
      const token = s.R.blockBegin();
      try {
        return await fn();
      } finally {
        s.R.blockEnd(token);
      }
    },
  };
  return room;
}

// ---------------------------------------------------------------- lobby and the legacy API

function lobbyFor(s, info) {
  const parties = partiesFor(s);
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
