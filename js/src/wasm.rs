//! WebAssembly for JS parties: the natives under the prelude's `globalThis.WebAssembly`
//! (`prelude/wasm.js`), on the [`wasmi`] interpreter.
//!
//! PartyKit (Cloudflare workers) lets a party `import mod from "./add.wasm"` and instantiate it
//! with `new WebAssembly.Instance(mod, imports)` or `await WebAssembly.instantiate(...)`. QuickJS
//! has no WebAssembly, so the prelude implements the JS API (`Module`, `Instance`, `Memory`,
//! `Global`, `Table`, `validate`, `compile`, `instantiate`, the error classes) over these natives.
//!
//! ## Engine: wasmi, not wasmtime
//!
//! wasmi is an interpreter in pure Rust. With `default-features = false` (plus `std`,
//! `validate`, and `auto-dispatch` so that builds without tail-call optimization use the portable
//! loop) it adds wasmparser, wasmi_ir, wasmi_core and wasmi: about 65 s of CPU on this project's
//! two-core CI box at the dev profile (wasmi ~37 s, wasmparser ~20 s, wasmi_ir ~6 s, libm ~3 s),
//! about a minute of wall time on the critical path. It meters execution with fuel, which is what
//! bounds a call by the handler time limit, and its calls can be suspended and resumed, which is
//! how wasm calls JS (below). Measured here (debug build of this crate, dependencies at
//! opt-level 1): a call from JS into wasm costs about 4 µs, and a loop runs at about 200 million
//! wasm instructions a second. wasmtime compiles to native code and runs an order of magnitude
//! faster, but brings cranelift and a runtime several times wasmi's size (minutes of build on two
//! cores, a much larger binary, more memory per engine; not measured here), and its epoch
//! interruption needs a thread to bump the epoch. Parties use WebAssembly for small, hot helpers
//! (a parser, a codec, a hash, AssemblyScript or Rust compiled to wasm), where an interpreter is
//! fast enough: wasmi it is.
//!
//! ## One store per realm, modules compiled once per process
//!
//! Every realm (the rooms of a party in this process, and its static hooks) gets its own
//! `wasmi::Store`, created on first use, holding every instance, memory, global and table its
//! rooms made (a module instantiated at the top level of the party's module is shared, as on
//! Workers; they live as long as the realm: wasmi frees nothing of a store before the store). JS refers to them by
//! index ("extern ids"); the prelude keeps those indexes behind a private symbol. One
//! `wasmi::Engine` serves the process, and modules are cached by the SHA-256 of their bytes, so
//! every room of a party compiles its `.wasm` once (function bodies are translated lazily, on
//! their first call). The engine keeps the code of every distinct module it compiled for the life
//! of the process (wasmi's code map only grows): a party that compiles ever-new modules (made at
//! run time) grows the process; the modules of a project's files are compiled once each.
//!
//! ## Bounds: memory and time
//!
//! The linear memories of a realm's store share a budget equal to the realm's JS heap limit
//! ([`Budget`], counted apart from the heap, and never given back: wasmi frees no memory before
//! its store): a `memory.grow` past it returns -1 in wasm (a `RangeError` from
//! `Memory.prototype.grow` in JS), and a memory or module whose initial size does not fit fails.
//! Wasm runs on fuel in slices of [`FUEL_SLICE`]; each time a slice is used up the call checks
//! the room's handler deadline (the one the QuickJS interrupt handler checks) and either goes on
//! or stops with a `RuntimeError` ("ran past the handler time limit"), so an infinite loop in
//! wasm ends at the handler time limit like one in JS (and the QuickJS interrupt handler then
//! stops the handler's JS too: the request fails with a 500, the socket closes with 1011). A module's `start` function cannot be resumed: it gets
//! [`START_FUEL`] and may not call JS imports.
//!
//! ## Calls from wasm into JS
//!
//! wasmi host functions cannot hold a QuickJS context (a `Ctx<'js>` is tied to the native call
//! that received it). So a JS function imported by a module becomes a host function that only
//! records its arguments and returns a [`JsImport`] host error; the call is a resumable call, and
//! [`call`] (which does have the `Ctx`) runs the JS function on that error, converts its result,
//! and resumes the wasm call with it. The store is not locked while JS runs, so an import may call
//! back into wasm (nested calls), grow memories, or throw: a JS exception abandons the wasm call
//! and propagates unchanged. Imports must be JS functions or functions exported by another
//! instance of the same room (those are linked directly, with no JS in between).
//!
//! ## `memory.buffer`: a synchronized copy
//!
//! In a browser `memory.buffer` aliases wasm linear memory. Here it cannot: a QuickJS
//! `ArrayBuffer` owns its bytes, and rquickjs 0.14 only reads or writes them through `unsafe`
//! (`ArrayBuffer::as_bytes`), which the workspace forbids. So `memory.buffer` is a copy kept in
//! sync at every crossing between JS and wasm:
//!
//! - The first read of `memory.buffer` returns an `ArrayBuffer` holding a copy of the memory; the
//!   same object is returned until the memory grows.
//! - Before every call into wasm (an export call, an instantiation, or the resumption after a JS
//!   import returned), the content of every buffer handed out is copied into wasm memory, so
//!   writes through any typed array or `DataView` on it are seen by wasm.
//! - After every call into wasm (when it returns, traps, or calls a JS import), wasm memory is
//!   copied back into those same buffers in place, so views made earlier (wasm-bindgen's cached
//!   `Uint8Array`, AssemblyScript's `DataView`) see what wasm wrote.
//! - When the memory grew, the old buffer is detached (its `byteLength` becomes 0, which is how
//!   wasm-bindgen and Emscripten notice) and the next read returns a new one.
//!
//! So the usual patterns work: write a string into memory, call, read the result (the tests run
//! the bindings AssemblyScript writes). What differs from a browser: each crossing costs time in
//! proportion to the size of the memories whose buffer JS holds (JS sends a buffer as base64,
//! `Uint8Array.prototype.toBase64` being native, and gets a copy back): about 3 ms per call for
//! a memory of 1.1 MiB (the 17 pages of a typical Rust module) in a debug build, nothing for a
//! memory whose buffer JS never read. The copy counts against the JS heap too. A write into a
//! buffer reaches wasm at the next call into wasm, not at once (nothing runs in between anyway).
//!
//! Not supported: `SharedArrayBuffer` memories and threads, memory64, SIMD values and reference
//! values (`externref`/`funcref` parameters, results and globals) across the JS boundary, tables
//! of `externref`, exception handling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use partyline::sync::Lock;
use rquickjs::function::Opt;
use rquickjs::{Array, ArrayBuffer, BigInt, Constructor, Ctx, Exception, Function, Object, Value};
use sha2::Digest;
use wasmi::{
    Extern, ExternType, Func, Global, Instance, Memory, MemoryType, Module, Mutability, Nullable, Ref, RefType,
    ResourceLimiter, ResumableCall, Store, Table, TableType, Val, ValType,
};
use wasmi_core::LimiterError;

use crate::bridge::HostCall;
use crate::engine::epoch;

/// Fuel of one slice: between two looks at the handler deadline. wasmi spends about one unit per
/// instruction, so a slice is a few milliseconds.
const FUEL_SLICE: u64 = 1 << 20;

/// Fuel of a module's `start` function (run at instantiation, which cannot be resumed).
const START_FUEL: u64 = 1 << 30;

/// Most instances, memories and tables one realm's store may hold.
const MAX_ENTITIES: usize = 10_000;

/// Most elements of one table.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Bytes from JS, which sends them as base64 (`Uint8Array.prototype.toBase64`, native in QuickJS,
/// is the fastest way out of an `ArrayBuffer` without `unsafe`).
fn from_base64(ctx: &Ctx<'_>, text: &str) -> rquickjs::Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| type_error(ctx, format!("WebAssembly: bad bytes from JS: {e}")))
}

/// The process's wasm engine: fuel metering on, lazy translation of function bodies.
fn engine() -> &'static wasmi::Engine {
    static ENGINE: OnceLock<wasmi::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmi::Config::default();
        config.consume_fuel(true);
        config.compilation_mode(wasmi::CompilationMode::Lazy);
        wasmi::Engine::new(&config)
    })
}

/// Compiles `bytes` (or finds them compiled): modules are cached by the SHA-256 of their bytes.
/// Nothing is evicted: the engine keeps the code of every module it compiled anyway (wasmi's code
/// map is append-only), so a module compiled again would only add a copy.
fn compile(bytes: &[u8]) -> Result<Module, String> {
    static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, Module>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = sha2::Sha256::digest(bytes).to_vec();
    if let Some(module) = cache.locked().get(&key) {
        return Ok(module.clone());
    }
    let module = Module::new(engine(), bytes).map_err(|e| e.to_string())?;
    Ok(cache.locked().entry(key).or_insert(module).clone())
}

/// The resource limiter of a realm's store: its memories share the realm's budget; tables and
/// entities are capped in number.
struct Budget {
    /// Bytes the memories may hold together.
    limit: usize,
    /// Bytes they hold.
    used: usize,
}

impl ResourceLimiter for Budget {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> Result<bool, LimiterError> {
        let more = desired.saturating_sub(current);
        if self.used.saturating_add(more) > self.limit {
            return Ok(false);
        }
        self.used += more;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> Result<bool, LimiterError> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_ENTITIES
    }

    fn tables(&self) -> usize {
        MAX_ENTITIES
    }

    fn memories(&self) -> usize {
        MAX_ENTITIES
    }
}

/// A call from wasm to the imported JS function `index` (of the prelude's list), with its
/// arguments: the host error that suspends the resumable call until [`call`] ran the function.
#[derive(Debug)]
struct JsImport {
    index: u32,
    params: Vec<Val>,
}

impl std::fmt::Display for JsImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a call to the imported JS function #{}", self.index)
    }
}

impl wasmi::errors::HostError for JsImport {}

/// A room's WebAssembly: its store and what JS refers to by index.
struct Wasm {
    store: Store<Budget>,
    modules: Vec<Module>,
    externs: Vec<Extern>,
}

impl Wasm {
    fn new(limit: usize) -> Self {
        let mut store = Store::new(engine(), Budget { limit, used: 0 });
        store.limiter(|budget| budget);
        Wasm { store, modules: Vec::new(), externs: Vec::new() }
    }

    /// Remembers `ext` and returns its id (a memory already known keeps its id, so that one
    /// memory has one `WebAssembly.Memory` and one buffer in JS).
    fn add(&mut self, ext: Extern) -> u32 {
        if let Extern::Memory(m) = ext {
            let ptr = m.data_ptr(&self.store);
            if m.data_size(&self.store) > 0 {
                let known = self.externs.iter().position(|e| match e {
                    Extern::Memory(k) => k.data_size(&self.store) > 0 && k.data_ptr(&self.store) == ptr,
                    _ => false,
                });
                if let Some(id) = known {
                    return id as u32;
                }
            }
        }
        self.externs.push(ext);
        (self.externs.len() - 1) as u32
    }

    /// Copies `bytes` (a buffer JS holds) into memory `id`, when their sizes still match (a buffer
    /// from before a grow is detached, so it never arrives here).
    fn write(&mut self, id: u32, bytes: &[u8]) {
        if let Some(m) = self.memory(id) {
            let data = m.data_mut(&mut self.store);
            if data.len() == bytes.len() {
                data.copy_from_slice(bytes);
            }
        }
    }

    fn get(&self, id: u32) -> Option<Extern> {
        self.externs.get(id as usize).cloned()
    }

    fn func(&self, id: u32) -> Option<Func> {
        self.get(id).and_then(Extern::into_func)
    }

    fn memory(&self, id: u32) -> Option<Memory> {
        self.get(id).and_then(Extern::into_memory)
    }

    fn global(&self, id: u32) -> Option<Global> {
        self.get(id).and_then(Extern::into_global)
    }

    fn table(&self, id: u32) -> Option<Table> {
        self.get(id).and_then(Extern::into_table)
    }
}

/// What the WebAssembly natives of a realm share.
struct Shared {
    realm: Arc<crate::engine::Shared>,
    /// Created on first use.
    wasm: Mutex<Option<Wasm>>,
}

impl Shared {
    /// Runs `f` on the realm's store (never while JS runs: `f` gets no `Ctx`).
    fn with<R>(&self, f: impl FnOnce(&mut Wasm) -> R) -> R {
        let mut wasm = self.wasm.locked();
        f(wasm.get_or_insert_with(|| Wasm::new(self.realm.memory_bytes)))
    }

    /// Whether the current call ran past the handler deadline.
    fn past_deadline(&self) -> bool {
        let now = epoch().elapsed().as_micros() as u64;
        now > self.realm.deadline.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Throws `WebAssembly.<kind>` (`CompileError`, `LinkError`, `RuntimeError`) with `msg`.
fn wasm_error(ctx: &Ctx<'_>, kind: &str, msg: impl std::fmt::Display) -> rquickjs::Error {
    let msg = msg.to_string();
    let made = (|| -> rquickjs::Result<Value<'_>> {
        let ns: Object = ctx.globals().get("WebAssembly")?;
        let class: Constructor = ns.get(kind)?;
        class.construct((msg.clone(),))
    })();
    match made {
        Ok(e) => ctx.throw(e),
        Err(_) => Exception::throw_message(ctx, &format!("{kind}: {msg}")),
    }
}

fn type_error(ctx: &Ctx<'_>, msg: impl std::fmt::Display) -> rquickjs::Error {
    Exception::throw_type(ctx, &msg.to_string())
}

fn val_type_name(t: ValType) -> &'static str {
    match t {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        ValType::V128 => "v128",
        ValType::FuncRef => "funcref",
        ValType::ExternRef => "externref",
    }
}

fn val_type(ctx: &Ctx<'_>, name: &str) -> rquickjs::Result<ValType> {
    Ok(match name {
        "i32" => ValType::I32,
        "i64" => ValType::I64,
        "f32" => ValType::F32,
        "f64" => ValType::F64,
        other => return Err(type_error(ctx, format!("WebAssembly: unsupported value type {other:?}"))),
    })
}

fn list<'js>(ctx: &Ctx<'js>, items: impl IntoIterator<Item = Value<'js>>) -> rquickjs::Result<Array<'js>> {
    let arr = Array::new(ctx.clone())?;
    for (i, v) in items.into_iter().enumerate() {
        arr.set(i, v)?;
    }
    Ok(arr)
}

fn str_value<'js>(ctx: &Ctx<'js>, s: &str) -> rquickjs::Result<Value<'js>> {
    Ok(rquickjs::String::from_str(ctx.clone(), s)?.into_value())
}

fn opt_number<'js>(ctx: &Ctx<'js>, n: Option<u64>) -> Value<'js> {
    match n {
        Some(n) => Value::new_number(ctx.clone(), n as f64),
        None => Value::new_null(ctx.clone()),
    }
}

/// An extern type as the prelude reads it: `["function", params, results]`,
/// `["memory", min, max]`, `["global", type, mutable]` or `["table", element, min, max]`.
fn type_value<'js>(ctx: &Ctx<'js>, ty: &ExternType) -> rquickjs::Result<Value<'js>> {
    let types = |ts: &[ValType]| -> rquickjs::Result<Value<'js>> {
        Ok(list(ctx, ts.iter().map(|t| str_value(ctx, val_type_name(*t))).collect::<rquickjs::Result<Vec<_>>>()?)?
            .into_value())
    };
    let items = match ty {
        ExternType::Func(f) => vec![str_value(ctx, "function")?, types(f.params())?, types(f.results())?],
        ExternType::Memory(m) => vec![
            str_value(ctx, "memory")?,
            Value::new_number(ctx.clone(), m.minimum() as f64),
            opt_number(ctx, m.maximum()),
        ],
        ExternType::Global(g) => vec![
            str_value(ctx, "global")?,
            str_value(ctx, val_type_name(g.content()))?,
            Value::new_bool(ctx.clone(), !g.mutability().is_const()),
        ],
        ExternType::Table(t) => vec![
            str_value(ctx, "table")?,
            str_value(ctx, if t.element() == RefType::Func { "anyfunc" } else { "externref" })?,
            Value::new_number(ctx.clone(), t.minimum() as f64),
            opt_number(ctx, t.maximum()),
        ],
    };
    Ok(list(ctx, items)?.into_value())
}

/// A JS value (already converted by the prelude: a number, or a BigInt for i64) as a wasm value.
fn to_val(ctx: &Ctx<'_>, v: &Value<'_>, ty: ValType) -> rquickjs::Result<Val> {
    let number = || {
        v.as_number()
            .ok_or_else(|| type_error(ctx, format!("WebAssembly: expected a number for {}", val_type_name(ty))))
    };
    Ok(match ty {
        ValType::I32 => Val::I32(number()? as i64 as i32),
        ValType::I64 => match v.as_big_int() {
            Some(b) => Val::I64(b.clone().to_i64()?),
            None => Val::I64(number()? as i64),
        },
        ValType::F32 => Val::F32(wasmi::F32::from_float(number()? as f32)),
        ValType::F64 => Val::F64(wasmi::F64::from_float(number()?)),
        ValType::FuncRef if v.is_null() || v.is_undefined() => Val::FuncRef(Nullable::Null),
        ValType::ExternRef if v.is_null() || v.is_undefined() => Val::ExternRef(Nullable::Null),
        other => {
            return Err(type_error(ctx, format!("WebAssembly: {} values cannot cross to JS", val_type_name(other))))
        }
    })
}

/// A wasm value as a JS value (i64 as a BigInt).
fn from_val<'js>(ctx: &Ctx<'js>, v: &Val) -> rquickjs::Result<Value<'js>> {
    Ok(match v {
        Val::I32(n) => Value::new_int(ctx.clone(), *n),
        Val::I64(n) => BigInt::from_i64(ctx.clone(), *n)?.into_value(),
        Val::F32(f) => Value::new_float(ctx.clone(), f64::from(f.to_float())),
        Val::F64(f) => Value::new_float(ctx.clone(), f.to_float()),
        Val::FuncRef(Nullable::Null) | Val::ExternRef(Nullable::Null) => Value::new_null(ctx.clone()),
        other => {
            return Err(type_error(
                ctx,
                format!("WebAssembly: {} values cannot cross to JS", val_type_name(other.ty())),
            ))
        }
    })
}

/// Copies the buffers JS holds into wasm memory (before wasm runs): `io.sync()` lists them as
/// `[id, bytes in base64]`. Returns the ids, for [`sync_out`].
fn sync_in<'js>(ctx: &Ctx<'js>, shared: &Shared, io: &Object<'js>) -> rquickjs::Result<Vec<u32>> {
    let sync: Function = io.get("sync")?;
    let pairs: Vec<Array> = sync.call(())?;
    let mut ids = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let id: u32 = pair.get(0)?;
        let bytes = from_base64(ctx, &pair.get::<String>(1)?)?;
        shared.with(|w| w.write(id, &bytes));
        ids.push(id);
    }
    Ok(ids)
}

/// Copies wasm memory into the buffers JS holds (after wasm ran): `io.out(id, copy)`.
fn sync_out<'js>(ctx: &Ctx<'js>, shared: &Shared, io: &Object<'js>, ids: &[u32]) -> rquickjs::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let out: Function = io.get("out")?;
    for &id in ids {
        let copy = shared.with(|w| w.memory(id).map(|m| m.data(&w.store).to_vec()));
        if let Some(copy) = copy {
            out.call::<_, ()>((id, ArrayBuffer::new(ctx.clone(), copy)?))?;
        }
    }
    Ok(())
}

/// A failed wasm execution as the JS error to throw: traps are `RuntimeError`s.
fn exec_error(ctx: &Ctx<'_>, e: &wasmi::Error) -> rquickjs::Error {
    if let Some(code) = e.as_trap_code() {
        return wasm_error(ctx, "RuntimeError", code);
    }
    wasm_error(ctx, "RuntimeError", e)
}

/// Calls wasm function `id` with `args`; results as an array. JS imports it calls run through
/// `io.call(index, args, resultTypes)`.
fn call<'js>(
    ctx: &Ctx<'js>,
    shared: &Shared,
    id: u32,
    args: Vec<Value<'js>>,
    io: &Object<'js>,
) -> rquickjs::Result<Array<'js>> {
    let Some((func, ty)) = shared.with(|w| w.func(id).map(|f| (f, f.ty(&w.store)))) else {
        return Err(type_error(ctx, "WebAssembly: not an exported function"));
    };
    if args.len() != ty.params().len() {
        return Err(type_error(ctx, format!("WebAssembly: expected {} arguments", ty.params().len())));
    }
    let inputs = args.iter().zip(ty.params()).map(|(v, t)| to_val(ctx, v, *t)).collect::<rquickjs::Result<Vec<_>>>()?;
    let mut outputs: Vec<Val> = ty.results().iter().map(|t| Val::default_for_ty(*t)).collect();
    let mut live = sync_in(ctx, shared, io)?;
    let mut step = shared
        .with(|w| w.store.set_fuel(FUEL_SLICE).and_then(|()| func.call_resumable(&mut w.store, &inputs, &mut outputs)));
    loop {
        match step {
            Ok(ResumableCall::Finished) => break,
            Ok(ResumableCall::OutOfFuel(next)) => {
                if shared.past_deadline() {
                    drop(next);
                    sync_out(ctx, shared, io, &live)?;
                    return Err(wasm_error(
                        ctx,
                        "RuntimeError",
                        "wasm ran past the handler time limit and was stopped",
                    ));
                }
                // A bulk operation (`memory.fill` of many bytes) may need more than a slice at once.
                let fuel = FUEL_SLICE.max(next.required_fuel());
                step = shared.with(|w| w.store.set_fuel(fuel).and_then(|()| next.resume(&mut w.store, &mut outputs)));
            }
            Ok(ResumableCall::HostTrap(next)) => {
                let Some(import) = next.host_error().downcast_ref::<JsImport>() else {
                    let e = wasm_error(ctx, "RuntimeError", next.host_error());
                    drop(next);
                    return Err(e);
                };
                let index = import.index;
                let params = import.params.iter().map(|v| from_val(ctx, v)).collect::<rquickjs::Result<Vec<_>>>()?;
                let result_types = shared.with(|w| next.host_func().ty(&w.store)).results().to_vec();
                sync_out(ctx, shared, io, &live)?;
                let js_call: Function = io.get("call")?;
                let names = list(
                    ctx,
                    result_types
                        .iter()
                        .map(|t| str_value(ctx, val_type_name(*t)))
                        .collect::<rquickjs::Result<Vec<_>>>()?,
                )?;
                let results: Vec<Value> = js_call.call((index, list(ctx, params)?, names))?;
                if results.len() != result_types.len() {
                    return Err(type_error(
                        ctx,
                        "WebAssembly: an imported function returned the wrong number of values",
                    ));
                }
                let results = results
                    .iter()
                    .zip(&result_types)
                    .map(|(v, t)| to_val(ctx, v, *t))
                    .collect::<rquickjs::Result<Vec<_>>>()?;
                live = sync_in(ctx, shared, io)?;
                step = shared.with(|w| {
                    w.store.set_fuel(FUEL_SLICE).and_then(|()| next.resume(&mut w.store, &results, &mut outputs))
                });
            }
            Err(e) => {
                sync_out(ctx, shared, io, &live)?;
                return Err(exec_error(ctx, &e));
            }
        }
    }
    sync_out(ctx, shared, io, &live)?;
    list(ctx, outputs.iter().map(|v| from_val(ctx, v)).collect::<rquickjs::Result<Vec<_>>>()?)
}

/// The exports of a new instance: name, extern id and type.
type Exports = Vec<(String, u32, ExternType)>;

/// Why an instantiation failed: the `WebAssembly` error class to throw, and the message.
type Failure = (&'static str, String);

/// An import as the prelude resolved it: an extern of this room, or JS function `index`.
enum ImportArg {
    Extern(u32),
    Js(u32),
}

/// Instantiates module `id` with `imports` (one per module import, in order: an extern id, or
/// `[index]` for a JS function); the exports as `[name, id, type]`.
fn instantiate<'js>(
    ctx: &Ctx<'js>,
    shared: &Shared,
    id: u32,
    imports: Array<'js>,
    io: &Object<'js>,
) -> rquickjs::Result<Array<'js>> {
    let mut args = Vec::with_capacity(imports.len());
    for v in imports.iter::<Value>() {
        let v = v?;
        if let Some(n) = v.as_number() {
            args.push(ImportArg::Extern(n as u32));
        } else if let Some(a) = v.as_array() {
            args.push(ImportArg::Js(a.get(0)?));
        } else {
            return Err(type_error(ctx, "WebAssembly: a bad import"));
        }
    }
    let live = sync_in(ctx, shared, io)?;
    let made = shared.with(|w| -> Result<Exports, Failure> {
        let module = w.modules.get(id as usize).cloned().ok_or(("LinkError", "not a module".to_string()))?;
        let mut externs = Vec::with_capacity(args.len());
        for (import, arg) in module.imports().zip(&args) {
            let what = || format!("{}.{}", import.module(), import.name());
            let ext = match (arg, import.ty()) {
                (ImportArg::Extern(e), _) => {
                    w.get(*e).ok_or(("LinkError", format!("import {}: unknown value", what())))?
                }
                (ImportArg::Js(index), ExternType::Func(ty)) => {
                    let index = *index;
                    Extern::Func(Func::new(&mut w.store, ty.clone(), move |_caller, params, _results| {
                        Err(wasmi::Error::host(JsImport { index, params: params.to_vec() }))
                    }))
                }
                (ImportArg::Js(_), _) => {
                    return Err((
                        "LinkError",
                        format!("import {}: a function where the module wants another kind", what()),
                    ))
                }
            };
            externs.push(ext);
        }
        if externs.len() != module.imports().len() {
            return Err(("LinkError", "wrong number of imports".to_string()));
        }
        w.store.set_fuel(START_FUEL).map_err(|e| ("RuntimeError", e.to_string()))?;
        let instance = Instance::new(&mut w.store, &module, &externs).map_err(|e| {
            if e.downcast_ref::<JsImport>().is_some() {
                ("LinkError", "the module's start function calls a JS import, which is not supported".to_string())
            } else if e.as_trap_code().is_some() {
                ("RuntimeError", e.to_string())
            } else {
                ("LinkError", e.to_string())
            }
        })?;
        let exports: Vec<(String, Extern)> =
            instance.exports(&w.store).map(|e| (e.name().to_string(), e.into_extern())).collect();
        Ok(exports
            .into_iter()
            .map(|(name, ext)| {
                let ty = ext.ty(&w.store);
                (name, w.add(ext), ty)
            })
            .collect())
    });
    sync_out(ctx, shared, io, &live)?;
    let exports = made.map_err(|(kind, msg)| wasm_error(ctx, kind, msg))?;
    let mut items = Vec::with_capacity(exports.len());
    for (name, ext, ty) in exports {
        items.push(
            list(ctx, [str_value(ctx, &name)?, Value::new_number(ctx.clone(), ext as f64), type_value(ctx, &ty)?])?
                .into_value(),
        );
    }
    list(ctx, items)
}

/// The imports and exports of module `id`: `[[module, name, type]...]` and `[[name, type]...]`.
fn module_info<'js>(ctx: &Ctx<'js>, shared: &Shared, id: u32) -> rquickjs::Result<Array<'js>> {
    let Some(module) = shared.with(|w| w.modules.get(id as usize).cloned()) else {
        return Err(type_error(ctx, "WebAssembly: not a module"));
    };
    let mut imports = Vec::new();
    for i in module.imports() {
        imports.push(
            list(ctx, [str_value(ctx, i.module())?, str_value(ctx, i.name())?, type_value(ctx, i.ty())?])?.into_value(),
        );
    }
    let mut exports = Vec::new();
    for e in module.exports() {
        exports.push(list(ctx, [str_value(ctx, e.name())?, type_value(ctx, e.ty())?])?.into_value());
    }
    list(ctx, [list(ctx, imports)?.into_value(), list(ctx, exports)?.into_value()])
}

fn pages(ctx: &Ctx<'_>, n: f64) -> rquickjs::Result<u32> {
    if !(0.0..=65536.0).contains(&n) || n.fract() != 0.0 {
        return Err(Exception::throw_range(ctx, "WebAssembly.Memory: a page count must be an integer from 0 to 65536"));
    }
    Ok(n as u32)
}

/// Installs the WebAssembly natives on `n` (the natives object of `host::install`).
pub(crate) fn install<'js>(
    ctx: &Ctx<'js>,
    n: &Object<'js>,
    realm: &Arc<crate::engine::Shared>,
) -> rquickjs::Result<()> {
    let shared = Arc::new(Shared { realm: realm.clone(), wasm: Mutex::new(None) });
    n.set(
        HostCall::WasmCompile.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, bytes: String| -> rquickjs::Result<u32> {
                let bytes = from_base64(&ctx, &bytes)?;
                let module = compile(&bytes).map_err(|e| wasm_error(&ctx, "CompileError", e))?;
                Ok(s.with(|w| {
                    w.modules.push(module);
                    (w.modules.len() - 1) as u32
                }))
            }
        })?,
    )?;
    n.set(
        HostCall::WasmValidate.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, bytes: String| -> rquickjs::Result<bool> {
            Ok(Module::validate(engine(), &from_base64(&ctx, &bytes)?).is_ok())
        })?,
    )?;
    n.set(
        HostCall::WasmModuleInfo.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32| module_info(&ctx, &s, id)
        })?,
    )?;
    n.set(
        HostCall::WasmInstantiate.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32, imports: Array<'js>, io: Object<'js>| instantiate(&ctx, &s, id, imports, &io)
        })?,
    )?;
    n.set(
        HostCall::WasmCall.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32, args: Vec<Value<'js>>, io: Object<'js>| call(&ctx, &s, id, args, &io)
        })?,
    )?;
    n.set(
        HostCall::WasmMemoryNew.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, initial: f64, maximum: Opt<Option<f64>>| -> rquickjs::Result<u32> {
                let initial = pages(&ctx, initial)?;
                let maximum = maximum.0.flatten().map(|m| pages(&ctx, m)).transpose()?;
                if maximum.is_some_and(|m| m < initial) {
                    return Err(Exception::throw_range(&ctx, "WebAssembly.Memory: maximum is below initial"));
                }
                s.with(|w| {
                    let m = Memory::new(&mut w.store, MemoryType::new(initial, maximum))?;
                    Ok(w.add(Extern::Memory(m)))
                })
                .map_err(|e: wasmi::Error| Exception::throw_range(&ctx, &format!("WebAssembly.Memory: {e}")))
            }
        })?,
    )?;
    n.set(
        HostCall::WasmMemoryBuffer.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32| -> rquickjs::Result<ArrayBuffer<'js>> {
                let copy = s.with(|w| w.memory(id).map(|m| m.data(&w.store).to_vec()));
                let copy = copy.ok_or_else(|| type_error(&ctx, "WebAssembly: not a memory"))?;
                ArrayBuffer::new(ctx, copy)
            }
        })?,
    )?;
    n.set(
        HostCall::WasmMemoryWrite.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32, bytes: String| -> rquickjs::Result<()> {
                let bytes = from_base64(&ctx, &bytes)?;
                s.with(|w| w.write(id, &bytes));
                Ok(())
            }
        })?,
    )?;
    n.set(
        HostCall::WasmMemoryGrow.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, id: u32, delta: f64| -> rquickjs::Result<f64> {
                let delta = pages(&ctx, delta)?;
                let grown = s.with(|w| w.memory(id).map(|m| m.grow(&mut w.store, u64::from(delta))));
                match grown {
                    None => Err(type_error(&ctx, "WebAssembly: not a memory")),
                    Some(Ok(old)) => Ok(old as f64),
                    Some(Err(e)) => Err(Exception::throw_range(&ctx, &format!("WebAssembly.Memory.grow: {e}"))),
                }
            }
        })?,
    )?;
    n.set(HostCall::WasmDetach.name(), Function::new(ctx.clone(), |mut buf: ArrayBuffer<'js>| buf.detach())?)?;
    n.set(
        HostCall::WasmGlobal.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, op: String, a: Value<'js>, b: Opt<Value<'js>>, c: Opt<Value<'js>>| {
                let undefined = || Value::new_undefined(ctx.clone());
                let (b, c) = (b.0.unwrap_or_else(undefined), c.0.unwrap_or_else(undefined));
                global_op(&ctx, &s, &op, a, b, c)
            }
        })?,
    )?;
    n.set(
        HostCall::WasmTable.name(),
        Function::new(ctx.clone(), {
            let s = shared.clone();
            move |ctx: Ctx<'js>, op: String, a: Value<'js>, b: Opt<Value<'js>>, c: Opt<Value<'js>>| {
                let undefined = || Value::new_undefined(ctx.clone());
                let (b, c) = (b.0.unwrap_or_else(undefined), c.0.unwrap_or_else(undefined));
                table_op(&ctx, &s, &op, a, b, c)
            }
        })?,
    )?;
    Ok(())
}

fn number(ctx: &Ctx<'_>, v: &Value<'_>) -> rquickjs::Result<f64> {
    v.as_number().ok_or_else(|| type_error(ctx, "WebAssembly: expected a number"))
}

/// `WebAssembly.Global`: `("new", type, mutable, value)` → id, `("get", id)` → value,
/// `("set", id, value)`.
fn global_op<'js>(
    ctx: &Ctx<'js>,
    s: &Shared,
    op: &str,
    a: Value<'js>,
    b: Value<'js>,
    c: Value<'js>,
) -> rquickjs::Result<Value<'js>> {
    match op {
        "new" => {
            let name: String = a.get()?;
            let ty = val_type(ctx, &name)?;
            let value = to_val(ctx, &c, ty)?;
            let mutability = if b.as_bool().unwrap_or(false) { Mutability::Var } else { Mutability::Const };
            let id = s.with(|w| {
                let g = Global::new(&mut w.store, value, mutability);
                w.add(Extern::Global(g))
            });
            Ok(Value::new_number(ctx.clone(), f64::from(id)))
        }
        "get" => {
            let id = number(ctx, &a)? as u32;
            let value = s.with(|w| w.global(id).map(|g| g.get(&w.store)));
            from_val(ctx, &value.ok_or_else(|| type_error(ctx, "WebAssembly: not a global"))?)
        }
        "set" => {
            let id = number(ctx, &a)? as u32;
            let Some(ty) = s.with(|w| w.global(id).map(|g| g.ty(&w.store))) else {
                return Err(type_error(ctx, "WebAssembly: not a global"));
            };
            if ty.mutability().is_const() {
                return Err(type_error(ctx, "WebAssembly.Global: the global is immutable"));
            }
            let value = to_val(ctx, &b, ty.content())?;
            s.with(|w| w.global(id).map(|g| g.set(&mut w.store, value)))
                .transpose()
                .map_err(|e| type_error(ctx, format!("WebAssembly.Global: {e}")))?;
            Ok(Value::new_undefined(ctx.clone()))
        }
        other => Err(type_error(ctx, format!("WebAssembly: unknown global operation {other}"))),
    }
}

/// `WebAssembly.Table` (of functions): `("new", initial, maximum)` → id, `("size", id)`,
/// `("get", id, index)` → `[funcId, type]` or null, `("set", id, index, funcId|null)`,
/// `("grow", id, delta)` → old size.
fn table_op<'js>(
    ctx: &Ctx<'js>,
    s: &Shared,
    op: &str,
    a: Value<'js>,
    b: Value<'js>,
    c: Value<'js>,
) -> rquickjs::Result<Value<'js>> {
    let range = |msg: String| Exception::throw_range(ctx, &msg);
    if op == "new" {
        let initial = number(ctx, &a)? as u32;
        let maximum = if b.is_null() || b.is_undefined() { None } else { Some(number(ctx, &b)? as u32) };
        let made = s.with(|w| {
            let t =
                Table::new(&mut w.store, TableType::new(RefType::Func, initial, maximum), Ref::Func(Nullable::Null))?;
            Ok(w.add(Extern::Table(t)))
        });
        let id = made.map_err(|e: wasmi::Error| range(format!("WebAssembly.Table: {e}")))?;
        return Ok(Value::new_number(ctx.clone(), f64::from(id)));
    }
    let id = number(ctx, &a)? as u32;
    let Some(table) = s.with(|w| w.table(id)) else {
        return Err(type_error(ctx, "WebAssembly: not a table"));
    };
    match op {
        "size" => Ok(Value::new_number(ctx.clone(), s.with(|w| table.size(&w.store)) as f64)),
        "get" => {
            let index = number(ctx, &b)? as u64;
            let got = s.with(|w| match table.get(&w.store, index) {
                None => Err(()),
                Some(Ref::Func(Nullable::Val(f))) => {
                    let ty = ExternType::Func(f.ty(&w.store));
                    Ok(Some((w.add(Extern::Func(f)), ty)))
                }
                Some(_) => Ok(None),
            });
            match got {
                Err(()) => Err(range(format!("WebAssembly.Table.get: index {index} is out of bounds"))),
                Ok(None) => Ok(Value::new_null(ctx.clone())),
                Ok(Some((f, ty))) => {
                    Ok(list(ctx, [Value::new_number(ctx.clone(), f64::from(f)), type_value(ctx, &ty)?])?.into_value())
                }
            }
        }
        "set" => {
            let index = number(ctx, &b)? as u64;
            let value = if c.is_null() || c.is_undefined() {
                Ref::Func(Nullable::Null)
            } else {
                let f = s.with(|w| {
                    w.func(number(ctx, &c)? as u32)
                        .ok_or_else(|| type_error(ctx, "WebAssembly.Table.set: not a wasm function"))
                })?;
                Ref::Func(Nullable::Val(f))
            };
            s.with(|w| table.set(&mut w.store, index, value))
                .map_err(|e| range(format!("WebAssembly.Table.set: {e}")))?;
            Ok(Value::new_undefined(ctx.clone()))
        }
        "grow" => {
            let delta = number(ctx, &b)? as u64;
            let old = s.with(|w| table.grow(&mut w.store, delta, Ref::Func(Nullable::Null)));
            Ok(Value::new_number(ctx.clone(), old.map_err(|e| range(format!("WebAssembly.Table.grow: {e}")))? as f64))
        }
        other => Err(type_error(ctx, format!("WebAssembly: unknown table operation {other}"))),
    }
}
