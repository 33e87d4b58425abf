// partyline:prelude/wasm, a part of the prelude loaded on first use of `globalThis.WebAssembly`
// (wasm.js): `WebAssembly` on the wasmi interpreter, over the natives of js/src/wasm.rs (whose
// module docs tell the design: one store per room, time and memory bounds, JS imports as
// resumable calls, and `memory.buffer` as a copy synchronized at every crossing between JS and
// wasm). js/src/modules.rs wraps it in `export default function (N, asBytes) { ... }`: it sees
// the natives and the bytes helper of the prelude, and assigns `globalThis.WebAssembly`.

class CompileError extends Error {
  constructor(message) { super(message); this.name = "CompileError"; }
}
class LinkError extends Error {
  constructor(message) { super(message); this.name = "LinkError"; }
}
class RuntimeError extends Error {
  constructor(message) { super(message); this.name = "RuntimeError"; }
}

// The extern id of a Module, Memory, Global, Table or exported function (private to the prelude).
const WASM_ID = Symbol("wasm id");
const WASM_BUFFER = Symbol("wasm buffer");
const WASM_TYPE = Symbol("wasm type");

// Bytes cross to the host as base64: `toBase64` is native, the fastest way out of an ArrayBuffer.
function wasmSource(source) {
  const u8 = asBytes(source);
  if (!u8) throw new TypeError("WebAssembly: expected the module's bytes as an ArrayBuffer or a typed array");
  return u8.toBase64();
}

function hide(obj, key, value) {
  Object.defineProperty(obj, key, { value, writable: true });
}

function wasmId(value, cls, what) {
  if (!(value instanceof cls) || value[WASM_ID] === undefined) throw new TypeError(`WebAssembly: ${what} expected`);
  return value[WASM_ID];
}

// A JS value as the wasm type `t` wants it (ToInt32, ToBigInt64, ToNumber).
function toWasm(v, t) {
  switch (t) {
    case "i32": return v | 0;
    case "i64": return BigInt.asIntN(64, BigInt(v));
    case "f32": return Math.fround(+v);
    case "f64": return +v;
    default:
      if (v === null || v === undefined) return null;
      throw new TypeError(`WebAssembly: ${t} values cannot cross from JS`);
  }
}

// The JS functions modules import, by index (the host calls them through `wasmIo.call`).
const wasmImports = [];
const wasmImportIndex = new Map();
// Memories whose buffer JS holds: their buffer is synchronized at every crossing.
const liveMemories = new Map();
// The JS object of each extern id (so an export is the same object each time).
const wasmObjects = new Map();

// How the host reaches the JS side during a call (see js/src/wasm.rs, `sync_in` / `sync_out` /
// `call`).
const wasmIo = {
  // The buffers JS holds, to copy into wasm memory before wasm runs.
  sync() {
    const out = [];
    for (const [id, mem] of liveMemories) out.push([id, new Uint8Array(mem[WASM_BUFFER]).toBase64()]);
    return out;
  },
  // A fresh copy of memory `id` after wasm ran: into the buffer JS holds, or as its new buffer
  // when the memory grew (the old one is detached, as in a browser).
  out(id, copy) {
    const mem = liveMemories.get(id);
    if (!mem) return;
    const buf = mem[WASM_BUFFER];
    if (buf.byteLength === copy.byteLength) {
      new Uint8Array(buf).set(new Uint8Array(copy));
    } else {
      N.wasmDetach(buf);
      mem[WASM_BUFFER] = copy;
    }
  },
  // Wasm calls the imported JS function `index`.
  call(index, args, types) {
    const r = wasmImports[index](...args);
    if (types.length === 0) return [];
    if (types.length === 1) return [toWasm(r, types[0])];
    const values = Array.from(r);
    if (values.length !== types.length) throw new TypeError(`WebAssembly: an import must return ${types.length} values`);
    return values.map((v, i) => toWasm(v, types[i]));
  },
};

function exportedFunction(id, params, results, name) {
  const f = function (...args) {
    const out = N.wasmCall(id, params.map((t, i) => toWasm(args[i], t)), wasmIo);
    return results.length === 0 ? undefined : results.length === 1 ? out[0] : out;
  };
  Object.defineProperty(f, "name", { value: String(name) });
  Object.defineProperty(f, "length", { value: params.length });
  hide(f, WASM_ID, id);
  return f;
}

// The JS object of extern `id` whose type is `[kind, ...]` (as js/src/wasm.rs `type_value`).
function wasmObject(id, type, name) {
  let obj = wasmObjects.get(id);
  if (obj) return obj;
  switch (type[0]) {
    case "function": obj = exportedFunction(id, type[1], type[2], name); break;
    case "memory": obj = Object.create(Memory.prototype); break;
    case "global": obj = Object.create(Global.prototype); hide(obj, WASM_TYPE, type[1]); break;
    default: obj = Object.create(Table.prototype); break;
  }
  if (type[0] !== "function") hide(obj, WASM_ID, id);
  if (type[0] === "memory") hide(obj, WASM_BUFFER, null);
  wasmObjects.set(id, obj);
  return obj;
}

class Module {
  constructor(bytes) {
    hide(this, WASM_ID, N.wasmCompile(wasmSource(bytes)));
  }
  static imports(module) {
    const [imports] = N.wasmModuleInfo(wasmId(module, Module, "a WebAssembly.Module"));
    return imports.map(([module, name, type]) => ({ module, name, kind: type[0] }));
  }
  static exports(module) {
    const [, exports] = N.wasmModuleInfo(wasmId(module, Module, "a WebAssembly.Module"));
    return exports.map(([name, type]) => ({ name, kind: type[0] }));
  }
  static customSections(module) {
    wasmId(module, Module, "a WebAssembly.Module");
    return [];
  }
}

// The module's imports resolved from `importObject`: an extern id, or `[index]` of a JS function.
function resolveImports(imports, importObject) {
  if (imports.length > 0 && (importObject === null || typeof importObject !== "object")) {
    throw new TypeError("WebAssembly.Instance: the module has imports: an import object is required");
  }
  return imports.map(([module, name, type]) => {
    const ns = importObject[module];
    if (ns === null || (typeof ns !== "object" && typeof ns !== "function")) {
      throw new TypeError(`WebAssembly.Instance: import module "${module}" must be an object`);
    }
    const v = ns[name];
    const what = `WebAssembly.Instance: import ${module}.${name}`;
    switch (type[0]) {
      case "function": {
        if (typeof v !== "function") throw new LinkError(`${what} must be a function`);
        if (v[WASM_ID] !== undefined) return v[WASM_ID];
        let index = wasmImportIndex.get(v);
        if (index === undefined) {
          index = wasmImports.length;
          wasmImports.push(v);
          wasmImportIndex.set(v, index);
        }
        return [index];
      }
      case "memory":
        if (!(v instanceof Memory)) throw new LinkError(`${what} must be a WebAssembly.Memory`);
        return v[WASM_ID];
      case "table":
        if (!(v instanceof Table)) throw new LinkError(`${what} must be a WebAssembly.Table`);
        return v[WASM_ID];
      default:
        if (v instanceof Global) return v[WASM_ID];
        if (typeof v === "number" || typeof v === "bigint") {
          return new Global({ value: type[1], mutable: false }, v)[WASM_ID];
        }
        throw new LinkError(`${what} must be a WebAssembly.Global or a number`);
    }
  });
}

class Instance {
  constructor(module, importObject) {
    const id = wasmId(module, Module, "a WebAssembly.Module");
    const [imports] = N.wasmModuleInfo(id);
    const made = N.wasmInstantiate(id, resolveImports(imports, importObject), wasmIo);
    const exports = Object.create(null);
    for (const [name, eid, type] of made) exports[name] = wasmObject(eid, type, name);
    Object.defineProperty(this, "exports", { value: Object.freeze(exports), enumerable: true });
  }
}

function pageCount(v, what) {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new TypeError(`WebAssembly.Memory: ${what} must be a page count`);
  return n;
}

class Memory {
  constructor(descriptor) {
    if (descriptor === null || typeof descriptor !== "object") throw new TypeError("WebAssembly.Memory: a descriptor is required");
    if (descriptor.shared) throw new TypeError("WebAssembly.Memory: shared memories are not supported");
    const initial = pageCount(descriptor.initial ?? descriptor.minimum, "initial");
    const maximum = descriptor.maximum === undefined ? null : pageCount(descriptor.maximum, "maximum");
    const id = N.wasmMemoryNew(initial, maximum);
    hide(this, WASM_ID, id);
    hide(this, WASM_BUFFER, null);
    wasmObjects.set(id, this);
  }
  // A copy of the memory, kept in sync with it at every call into wasm (js/src/wasm.rs).
  get buffer() {
    const id = wasmId(this, Memory, "a WebAssembly.Memory");
    let buf = this[WASM_BUFFER];
    if (buf === null) {
      buf = N.wasmMemoryBuffer(id);
      this[WASM_BUFFER] = buf;
      liveMemories.set(id, this);
    }
    return buf;
  }
  grow(delta) {
    const id = wasmId(this, Memory, "a WebAssembly.Memory");
    const buf = this[WASM_BUFFER];
    if (buf !== null) N.wasmMemoryWrite(id, new Uint8Array(buf).toBase64());
    const old = N.wasmMemoryGrow(id, pageCount(delta, "delta"));
    if (buf !== null) {
      N.wasmDetach(buf);
      this[WASM_BUFFER] = null;
      liveMemories.delete(id);
    }
    return old;
  }
}

class Global {
  constructor(descriptor, value) {
    if (descriptor === null || typeof descriptor !== "object") throw new TypeError("WebAssembly.Global: a descriptor is required");
    const type = descriptor.value;
    if (!["i32", "i64", "f32", "f64"].includes(type)) throw new TypeError(`WebAssembly.Global: unsupported type ${type}`);
    const v = value === undefined ? (type === "i64" ? 0n : 0) : toWasm(value, type);
    const id = N.wasmGlobal("new", type, !!descriptor.mutable, v);
    hide(this, WASM_ID, id);
    hide(this, WASM_TYPE, type);
    wasmObjects.set(id, this);
  }
  get value() {
    return N.wasmGlobal("get", wasmId(this, Global, "a WebAssembly.Global"));
  }
  set value(v) {
    N.wasmGlobal("set", wasmId(this, Global, "a WebAssembly.Global"), toWasm(v, this[WASM_TYPE]));
  }
  valueOf() {
    return this.value;
  }
}

class Table {
  constructor(descriptor) {
    if (descriptor === null || typeof descriptor !== "object") throw new TypeError("WebAssembly.Table: a descriptor is required");
    if (descriptor.element !== "anyfunc" && descriptor.element !== "funcref") {
      throw new TypeError("WebAssembly.Table: only tables of functions (anyfunc) are supported");
    }
    const initial = pageCount(descriptor.initial ?? descriptor.minimum, "initial");
    const id = N.wasmTable("new", initial, descriptor.maximum ?? null);
    hide(this, WASM_ID, id);
    wasmObjects.set(id, this);
  }
  get length() {
    return N.wasmTable("size", wasmId(this, Table, "a WebAssembly.Table"));
  }
  get(index) {
    const r = N.wasmTable("get", wasmId(this, Table, "a WebAssembly.Table"), index >>> 0);
    return r === null ? null : wasmObject(r[0], r[1], String(r[0]));
  }
  set(index, value) {
    let f = null;
    if (value !== null && value !== undefined) {
      if (typeof value !== "function" || value[WASM_ID] === undefined) {
        throw new TypeError("WebAssembly.Table.set: only functions exported by wasm can be stored");
      }
      f = value[WASM_ID];
    }
    N.wasmTable("set", wasmId(this, Table, "a WebAssembly.Table"), index >>> 0, f);
  }
  grow(delta) {
    return N.wasmTable("grow", wasmId(this, Table, "a WebAssembly.Table"), delta >>> 0);
  }
}

async function wasmBytesOf(response) {
  const r = await response;
  return r.arrayBuffer();
}

globalThis.WebAssembly = {
  Module,
  Instance,
  Memory,
  Global,
  Table,
  CompileError,
  LinkError,
  RuntimeError,
  validate(bytes) {
    return N.wasmValidate(wasmSource(bytes));
  },
  async compile(bytes) {
    return new Module(bytes);
  },
  async instantiate(source, importObject) {
    if (source instanceof Module) return new Instance(source, importObject);
    const module = new Module(source);
    return { module, instance: new Instance(module, importObject) };
  },
  async compileStreaming(response) {
    return new Module(await wasmBytesOf(response));
  },
  async instantiateStreaming(response, importObject) {
    const module = new Module(await wasmBytesOf(response));
    return { module, instance: new Instance(module, importObject) };
  },
};
Object.defineProperty(globalThis.WebAssembly, Symbol.toStringTag, { value: "WebAssembly" });
