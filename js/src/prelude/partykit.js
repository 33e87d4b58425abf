// partyline:prelude, part 3 of 4 (partykit.js): PartyKit's Party API: storage (with how values
// are encoded for it), connections, the room, calls to other rooms, the lobby and execution
// context of the static hooks, and the legacy module API.

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

// ---------------------------------------------------------------- lobby and the legacy API

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
