//! WebAssembly in JS parties (js/src/wasm.rs and prelude/wasm.js), run through a real project:
//! modules written here in the text format (converted with the `wat` crate) and embedded in the
//! party's `server.ts` as byte arrays, as the bundler's `.wasm` imports will embed them.

use std::sync::Arc;
use std::time::Duration;

use partyline::testing::{request, TestRoom};
use partyline::{Limits, PartyFactory, PartyRegistry};
use partyline_js::{JsSettings, Project};
use serde_json::Value;

/// Exports of every kind, JS imports, a memory with a data segment, a mutable global, traps and an
/// infinite loop.
const MAIN_WAT: &str = r#"
(module
  (import "env" "double" (func $double (param i32) (result i32)))
  (import "env" "big" (func $big (param i64) (result i64)))
  (import "env" "fill" (func $fill (param i32 i32)))
  (import "env" "fail" (func $fail))
  (memory (export "memory") 1 100)
  (global (export "counter") (mut i32) (i32.const 7))
  (global (export "pi") f64 (f64.const 3.5))
  (table (export "table") 2 funcref)
  (elem (i32.const 0) $add)
  (data (i32.const 1024) "hello from wasm")
  (func $add (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1)))
  (func (export "add64") (param i64 i64) (result i64)
    (i64.add (local.get 0) (local.get 1)))
  (func (export "mul") (param f64 f32) (result f64)
    (f64.mul (local.get 0) (f64.promote_f32 (local.get 1))))
  (func (export "callDouble") (param i32) (result i32)
    (i32.add (call $double (local.get 0)) (i32.const 1)))
  (func (export "callBig") (param i64) (result i64)
    (call $big (local.get 0)))
  (func (export "callFail") (call $fail))
  (func $sum (export "sum") (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $s i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $s (i32.add (local.get $s) (i32.load8_u (i32.add (local.get $p) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $s))
  (func (export "upper") (param $p i32) (param $n i32)
    (local $i i32) (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
          (then (i32.store8 (i32.add (local.get $p) (local.get $i)) (i32.sub (local.get $c) (i32.const 32)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
  (func (export "fillAndSum") (param $p i32) (param $n i32) (result i32)
    (i32.store8 (local.get $p) (i32.const 42))
    (call $fill (local.get $p) (local.get $n))
    (call $sum (local.get $p) (local.get $n)))
  (func (export "bump") (result i32)
    (global.set 0 (i32.add (global.get 0) (i32.const 1)))
    (global.get 0))
  (func (export "grow") (param i32) (result i32)
    (memory.grow (local.get 0)))
  (func (export "trap") unreachable)
  (func (export "div") (param i32 i32) (result i32)
    (i32.div_s (local.get 0) (local.get 1)))
  (func (export "spin")
    (loop $forever (br $forever))))
"#;

/// A memory with no maximum (bounded only by the room's budget) and a function importing `add`
/// from another instance.
const SECOND_WAT: &str = r#"
(module
  (import "main" "add" (func $add (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "grow") (param i32) (result i32)
    (memory.grow (local.get 0)))
  (func (export "addTwice") (param i32) (result i32)
    (call $add (call $add (local.get 0) (local.get 0)) (local.get 0))))
"#;

/// A module compiled by AssemblyScript 0.28.20 from
///
/// ```ts
/// export function add(a: i32, b: i32): i32 {
///   return a + b;
/// }
///
/// export function greet(name: string): string {
///   return "Hello, " + name + "!";
/// }
/// ```
///
/// with `asc greet.ts --outFile greet.wasm --bindings raw --runtime stub -O3 --noAssert`.
const AS_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x1a, 0x05, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, 0x60, 0x00,
    0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x60, 0x04, 0x7f, 0x7f, 0x7f, 0x7f, 0x00, 0x60, 0x01, 0x7f, 0x00, 0x02, 0x0d,
    0x01, 0x03, 0x65, 0x6e, 0x76, 0x05, 0x61, 0x62, 0x6f, 0x72, 0x74, 0x00, 0x03, 0x03, 0x09, 0x08, 0x00, 0x00, 0x01,
    0x04, 0x02, 0x01, 0x02, 0x00, 0x05, 0x03, 0x01, 0x00, 0x01, 0x06, 0x0c, 0x02, 0x7f, 0x01, 0x41, 0x00, 0x0b, 0x7f,
    0x00, 0x41, 0x80, 0x0a, 0x0b, 0x07, 0x4c, 0x08, 0x03, 0x61, 0x64, 0x64, 0x00, 0x08, 0x05, 0x67, 0x72, 0x65, 0x65,
    0x74, 0x00, 0x07, 0x05, 0x5f, 0x5f, 0x6e, 0x65, 0x77, 0x00, 0x02, 0x05, 0x5f, 0x5f, 0x70, 0x69, 0x6e, 0x00, 0x05,
    0x07, 0x5f, 0x5f, 0x75, 0x6e, 0x70, 0x69, 0x6e, 0x00, 0x04, 0x09, 0x5f, 0x5f, 0x63, 0x6f, 0x6c, 0x6c, 0x65, 0x63,
    0x74, 0x00, 0x06, 0x0b, 0x5f, 0x5f, 0x72, 0x74, 0x74, 0x69, 0x5f, 0x62, 0x61, 0x73, 0x65, 0x03, 0x01, 0x06, 0x6d,
    0x65, 0x6d, 0x6f, 0x72, 0x79, 0x02, 0x00, 0x08, 0x01, 0x03, 0x0c, 0x01, 0x0b, 0x0a, 0xbc, 0x02, 0x08, 0x48, 0x01,
    0x04, 0x7f, 0x41, 0xd0, 0x08, 0x21, 0x02, 0x20, 0x00, 0x41, 0x14, 0x6b, 0x28, 0x02, 0x10, 0x41, 0x7e, 0x71, 0x22,
    0x03, 0x20, 0x01, 0x41, 0x14, 0x6b, 0x28, 0x02, 0x10, 0x41, 0x7e, 0x71, 0x22, 0x04, 0x6a, 0x22, 0x05, 0x04, 0x40,
    0x20, 0x05, 0x41, 0x02, 0x10, 0x02, 0x22, 0x02, 0x20, 0x00, 0x20, 0x03, 0xfc, 0x0a, 0x00, 0x00, 0x20, 0x02, 0x20,
    0x03, 0x6a, 0x20, 0x01, 0x20, 0x04, 0xfc, 0x0a, 0x00, 0x00, 0x0b, 0x20, 0x02, 0x0b, 0xc6, 0x01, 0x01, 0x05, 0x7f,
    0x20, 0x00, 0x41, 0xec, 0xff, 0xff, 0xff, 0x03, 0x4b, 0x04, 0x40, 0x41, 0xf0, 0x08, 0x41, 0xb0, 0x09, 0x41, 0xd6,
    0x00, 0x41, 0x1e, 0x10, 0x00, 0x00, 0x0b, 0x20, 0x00, 0x41, 0x10, 0x6a, 0x22, 0x03, 0x41, 0xfc, 0xff, 0xff, 0xff,
    0x03, 0x4b, 0x04, 0x40, 0x41, 0xf0, 0x08, 0x41, 0xb0, 0x09, 0x41, 0x21, 0x41, 0x1d, 0x10, 0x00, 0x00, 0x0b, 0x23,
    0x00, 0x41, 0x04, 0x6a, 0x22, 0x02, 0x20, 0x03, 0x41, 0x13, 0x6a, 0x41, 0x70, 0x71, 0x41, 0x04, 0x6b, 0x22, 0x03,
    0x6a, 0x22, 0x04, 0x3f, 0x00, 0x22, 0x05, 0x41, 0x10, 0x74, 0x41, 0x0f, 0x6a, 0x41, 0x70, 0x71, 0x22, 0x06, 0x4b,
    0x04, 0x40, 0x20, 0x05, 0x20, 0x04, 0x20, 0x06, 0x6b, 0x41, 0xff, 0xff, 0x03, 0x6a, 0x41, 0x80, 0x80, 0x7c, 0x71,
    0x41, 0x10, 0x76, 0x22, 0x06, 0x20, 0x05, 0x20, 0x06, 0x4a, 0x1b, 0x40, 0x00, 0x41, 0x00, 0x48, 0x04, 0x40, 0x20,
    0x06, 0x40, 0x00, 0x41, 0x00, 0x48, 0x04, 0x40, 0x00, 0x0b, 0x0b, 0x0b, 0x23, 0x00, 0x20, 0x04, 0x24, 0x00, 0x20,
    0x03, 0x36, 0x02, 0x00, 0x20, 0x02, 0x41, 0x04, 0x6b, 0x22, 0x03, 0x41, 0x00, 0x36, 0x02, 0x04, 0x20, 0x03, 0x41,
    0x00, 0x36, 0x02, 0x08, 0x20, 0x03, 0x20, 0x01, 0x36, 0x02, 0x0c, 0x20, 0x03, 0x20, 0x00, 0x36, 0x02, 0x10, 0x20,
    0x02, 0x41, 0x10, 0x6a, 0x0b, 0x07, 0x00, 0x41, 0x9c, 0x0a, 0x24, 0x00, 0x0b, 0x02, 0x00, 0x0b, 0x04, 0x00, 0x20,
    0x00, 0x0b, 0x02, 0x00, 0x0b, 0x0e, 0x00, 0x41, 0xa0, 0x08, 0x20, 0x00, 0x10, 0x01, 0x41, 0xf0, 0x09, 0x10, 0x01,
    0x0b, 0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b, 0x0b, 0xc8, 0x01, 0x0b, 0x00, 0x41, 0x8c, 0x08, 0x0b, 0x01,
    0x2c, 0x00, 0x41, 0x98, 0x08, 0x0b, 0x15, 0x02, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x00, 0x00, 0x48, 0x00, 0x65, 0x00,
    0x6c, 0x00, 0x6c, 0x00, 0x6f, 0x00, 0x2c, 0x00, 0x20, 0x00, 0x41, 0xbc, 0x08, 0x0b, 0x01, 0x1c, 0x00, 0x41, 0xc8,
    0x08, 0x0b, 0x01, 0x02, 0x00, 0x41, 0xdc, 0x08, 0x0b, 0x01, 0x3c, 0x00, 0x41, 0xe8, 0x08, 0x0b, 0x2f, 0x02, 0x00,
    0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x41, 0x00, 0x6c, 0x00, 0x6c, 0x00, 0x6f, 0x00, 0x63, 0x00, 0x61, 0x00, 0x74,
    0x00, 0x69, 0x00, 0x6f, 0x00, 0x6e, 0x00, 0x20, 0x00, 0x74, 0x00, 0x6f, 0x00, 0x6f, 0x00, 0x20, 0x00, 0x6c, 0x00,
    0x61, 0x00, 0x72, 0x00, 0x67, 0x00, 0x65, 0x00, 0x41, 0x9c, 0x09, 0x0b, 0x01, 0x3c, 0x00, 0x41, 0xa8, 0x09, 0x0b,
    0x25, 0x02, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x00, 0x00, 0x7e, 0x00, 0x6c, 0x00, 0x69, 0x00, 0x62, 0x00, 0x2f, 0x00,
    0x72, 0x00, 0x74, 0x00, 0x2f, 0x00, 0x73, 0x00, 0x74, 0x00, 0x75, 0x00, 0x62, 0x00, 0x2e, 0x00, 0x74, 0x00, 0x73,
    0x00, 0x41, 0xdc, 0x09, 0x0b, 0x01, 0x1c, 0x00, 0x41, 0xe8, 0x09, 0x0b, 0x09, 0x02, 0x00, 0x00, 0x00, 0x02, 0x00,
    0x00, 0x00, 0x21, 0x00, 0x41, 0x80, 0x0a, 0x0b, 0x0d, 0x04, 0x00, 0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x20, 0x00,
    0x00, 0x00, 0x20,
];

/// The bindings `asc` wrote beside it (`greet.js`, verbatim): they pass strings through
/// `memory.buffer` (`__lowerString` writes UTF-16 into memory after calling `__new`,
/// `__liftString` reads the result).
const AS_BINDINGS: &str = r#"export async function instantiate(module, imports = {}) {
  const adaptedImports = {
    env: Object.setPrototypeOf({
      abort(message, fileName, lineNumber, columnNumber) {
        // ~lib/builtins/abort(~lib/string/String | null?, ~lib/string/String | null?, u32?, u32?) => void
        message = __liftString(message >>> 0);
        fileName = __liftString(fileName >>> 0);
        lineNumber = lineNumber >>> 0;
        columnNumber = columnNumber >>> 0;
        (() => {
          // @external.js
          throw Error(`${message} in ${fileName}:${lineNumber}:${columnNumber}`);
        })();
      },
    }, Object.assign(Object.create(globalThis), imports.env || {})),
  };
  const { exports } = await WebAssembly.instantiate(module, adaptedImports);
  const memory = exports.memory || imports.env.memory;
  const adaptedExports = Object.setPrototypeOf({
    greet(name) {
      // greet/greet(~lib/string/String) => ~lib/string/String
      name = __lowerString(name) || __notnull();
      return __liftString(exports.greet(name) >>> 0);
    },
  }, exports);
  function __liftString(pointer) {
    if (!pointer) return null;
    const
      end = pointer + new Uint32Array(memory.buffer)[pointer - 4 >>> 2] >>> 1,
      memoryU16 = new Uint16Array(memory.buffer);
    let
      start = pointer >>> 1,
      string = "";
    while (end - start > 1024) string += String.fromCharCode(...memoryU16.subarray(start, start += 1024));
    return string + String.fromCharCode(...memoryU16.subarray(start, end));
  }
  function __lowerString(value) {
    if (value == null) return 0;
    const
      length = value.length,
      pointer = exports.__new(length << 1, 2) >>> 0,
      memoryU16 = new Uint16Array(memory.buffer);
    for (let i = 0; i < length; ++i) memoryU16[(pointer >>> 1) + i] = value.charCodeAt(i);
    return pointer;
  }
  function __notnull() {
    throw TypeError("value must not be null");
  }
  return adaptedExports;
}
"#;

const SERVER: &str = r#"
import { instantiate } from "./greet.js";

const MAIN = new Uint8Array(MAIN_BYTES);
const GREET = new Uint8Array(AS_BYTES);
const SECOND = new Uint8Array(SECOND_BYTES);

// Runs each check; the result is its value, or what it threw.
async function checks(list: Record<string, () => unknown>): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(list)) {
    try {
      out[name] = await fn();
    } catch (e: any) {
      out[name] = `threw ${e && e.name}: ${e && e.message}`;
    }
  }
  return out;
}
function throws(fn: () => unknown): string {
  try {
    fn();
    return "did not throw";
  } catch (e: any) {
    return `${e.constructor.name}`;
  }
}

let seen = -1;
function imports() {
  return {
    env: {
      double: (x: number) => x * 2,
      big: (x: bigint) => x * 3n,
      fill: (p: number, n: number) => {
        const view = new Uint8Array(main.exports.memory.buffer);
        seen = view[p];
        for (let i = 0; i < n; i++) view[p + i] = i + 1;
      },
      fail: () => {
        throw new TypeError("from JS");
      },
    },
  };
}
const module = new WebAssembly.Module(MAIN);
const main: any = new WebAssembly.Instance(module, imports());

export default class Server {
  async onRequest(req: Request) {
    const path = new URL(req.url).pathname;
    const x = main.exports;
    if (path.endsWith("/spin")) {
      x.spin();
      return new Response("the loop ended?");
    }
    if (path.endsWith("/basic")) {
      return Response.json(await checks({
        add: () => x.add(2, 3),
        addWraps: () => x.add(0x7fffffff, 1),
        add64: () => String(x.add64(1n << 40n, 5n)),
        mul: () => x.mul(1.5, 2),
        importCalled: () => x.callDouble(20),
        importBigInt: () => String(x.callBig(7n)),
        importThrows: () => throws(() => x.callFail()),
        trap: () => throws(() => x.trap()),
        trapMessage: () => { try { x.div(1, 0); } catch (e: any) { return e instanceof WebAssembly.RuntimeError && e.message; } },
        stillWorks: () => x.add(1, 1),
        globalValue: () => [x.counter.value, x.bump(), x.counter.value, x.pi.value],
        globalSet: () => { x.counter.value = 100; return x.bump(); },
        immutable: () => throws(() => { x.pi.value = 1; }),
        table: () => [x.table.length, x.table.get(0)(4, 5), x.table.get(1)],
        descriptors: () => [WebAssembly.Module.exports(module).length, WebAssembly.Module.imports(module).map((i) => `${i.module}.${i.name}:${i.kind}`).join(",")],
        exportKinds: () => [x.memory instanceof WebAssembly.Memory, x.counter instanceof WebAssembly.Global, x.table instanceof WebAssembly.Table, typeof x.add],
        validate: () => [WebAssembly.validate(MAIN), WebAssembly.validate(new Uint8Array([0, 97, 115, 109, 9, 9, 9, 9]))],
        compileError: () => throws(() => new WebAssembly.Module(new Uint8Array([1, 2, 3]))),
        linkError: () => throws(() => new WebAssembly.Instance(module, { env: { double: 1 } })),
        instantiateBytes: async () => {
          const { module: m, instance } = await WebAssembly.instantiate(MAIN, imports());
          return [m instanceof WebAssembly.Module, instance.exports.add(40, 2)];
        },
        instantiateModule: async () => {
          const instance = await WebAssembly.instantiate(await WebAssembly.compile(SECOND), { main: { add: x.add } });
          return instance.exports.addTwice(5);
        },
        globalImport: () => {
          const g = new WebAssembly.Global({ value: "i64", mutable: true }, 5n);
          g.value = 6n;
          return String(g.value);
        },
      }));
    }
    if (path.endsWith("/memory")) {
      const mem = x.memory as WebAssembly.Memory;
      const view = new Uint8Array(mem.buffer);
      const text = new TextEncoder().encode("hello, wasm!");
      return Response.json(await checks({
        sameBuffer: () => mem.buffer === mem.buffer,
        segment: () => new TextDecoder().decode(new Uint8Array(mem.buffer, 1024, 15)),
        roundTrip: () => {
          view.set(text, 2048);
          x.upper(2048, text.length);
          return new TextDecoder().decode(view.subarray(2048, 2048 + text.length));
        },
        wasmReadsJsWrites: () => {
          view.set([1, 2, 3, 4], 4096);
          return x.sum(4096, 4);
        },
        duringImport: () => {
          const sum = x.fillAndSum(8192, 10);
          return [seen, sum, view[8192 + 9]];
        },
        growFromWasm: () => {
          const before = mem.buffer;
          const old = x.grow(1);
          return [old, before.byteLength, mem.buffer.byteLength, view.byteLength, new Uint8Array(mem.buffer)[2048]];
        },
        growFromJs: () => {
          const buf = mem.buffer;
          new Uint8Array(buf)[70000] = 9;
          const old = mem.grow(1);
          return [old, buf.byteLength, mem.buffer.byteLength, new Uint8Array(mem.buffer)[70000], x.sum(70000, 1)];
        },
        newMemory: () => {
          const m = new WebAssembly.Memory({ initial: 1, maximum: 2 });
          new Uint8Array(m.buffer)[0] = 5;
          return [m.buffer.byteLength, m.grow(1), m.buffer.byteLength, new Uint8Array(m.buffer)[0], throws(() => m.grow(1))];
        },
      }));
    }
    if (path.endsWith("/assemblyscript")) {
      const greet = await instantiate(new WebAssembly.Module(GREET), {});
      return Response.json([greet.add(2, 3), greet.greet("wasm"), greet.greet("wörld ✓"), greet.greet("again")]);
    }
    if (path.endsWith("/limit")) {
      const second: any = new WebAssembly.Instance(new WebAssembly.Module(SECOND), { main: { add: x.add } });
      return Response.json(await checks({
        growSome: () => second.exports.grow(10),
        growPastBudget: () => second.exports.grow(2000),
        jsGrowPastBudget: () => throws(() => second.exports.memory.grow(2000)),
        newMemoryPastBudget: () => throws(() => new WebAssembly.Memory({ initial: 2000 })),
        pages: () => second.exports.memory.buffer.byteLength / 65536,
      }));
    }
    return new Response("not found", { status: 404 });
  }
}
"#;

/// The bytes of a module in the text format, as a JS array literal.
fn js_bytes(wat_text: &str) -> String {
    let bytes = wat::parse_str(wat_text).expect("the module parses");
    format!("{bytes:?}")
}

/// The project in a temporary directory, with a heap (and wasm) budget of 64 MiB and a handler
/// time limit of one second.
async fn load() -> (tempfile::TempDir, Arc<dyn PartyFactory>, Limits) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("partykit.json"), r#"{ "main": "server.ts" }"#).expect("partykit.json");
    let server = SERVER
        .replace("MAIN_BYTES", &js_bytes(MAIN_WAT))
        .replace("SECOND_BYTES", &js_bytes(SECOND_WAT))
        .replace("AS_BYTES", &format!("{AS_WASM:?}"));
    std::fs::write(dir.path().join("greet.js"), AS_BINDINGS).expect("greet.js");
    std::fs::write(dir.path().join("server.ts"), server).expect("server.ts");
    let limits = Limits { handler_timeout: Duration::from_secs(1), ..Limits::default() };
    let settings = JsSettings { memory_bytes: 64 << 20, ..JsSettings::default() };
    let project = Project::load(&dir.path().join("partykit.json"), &limits, &settings)
        .await
        .unwrap_or_else(|e| panic!("the project loads: {e:#}"));
    let registry = project.registry(PartyRegistry::new()).expect("the registry");
    let factory = registry.get("main").expect("the main party").clone();
    (dir, factory, limits)
}

async fn get(room: &TestRoom, path: &str) -> (u16, String) {
    let res = room.request(request("GET", &format!("http://partyline.test/parties/main/r{path}"), "")).await;
    (res.status().as_u16(), String::from_utf8_lossy(res.body()).into_owned())
}

async fn get_json(room: &TestRoom, path: &str) -> Value {
    let (status, body) = get(room, path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("JSON ({e}): {body}"))
}

fn start(factory: Arc<dyn PartyFactory>, limits: Limits) -> TestRoom {
    TestRoom::with_factory("main", "r", factory).limits(limits).start()
}

#[tokio::test]
async fn exports_imports_globals_tables_and_errors_behave_as_in_workers() {
    let (_dir, factory, limits) = load().await;
    let room = start(factory, limits);
    let r = get_json(&room, "/basic").await;
    let expected = serde_json::json!({
        "add": 5,
        "addWraps": -2147483648i64,
        "add64": "1099511627781",
        "mul": 3,
        "importCalled": 41,
        "importBigInt": "21",
        "importThrows": "TypeError",
        "trap": "RuntimeError",
        "trapMessage": "integer divide by zero",
        "stillWorks": 2,
        "globalValue": [7, 8, 8, 3.5],
        "globalSet": 101,
        "immutable": "TypeError",
        "table": [2, 9, null],
        "descriptors": [18, "env.double:function,env.big:function,env.fill:function,env.fail:function"],
        "exportKinds": [true, true, true, "function"],
        "validate": [true, false],
        "compileError": "CompileError",
        "linkError": "LinkError",
        "instantiateBytes": [true, 42],
        "instantiateModule": 15,
        "globalImport": "6",
    });
    assert_eq!(r, expected);
}

#[tokio::test]
async fn memory_buffer_is_kept_in_sync_both_ways() {
    let (_dir, factory, limits) = load().await;
    let room = start(factory, limits);
    let r = get_json(&room, "/memory").await;
    let expected = serde_json::json!({
        "sameBuffer": true,
        "segment": "hello from wasm",
        "roundTrip": "HELLO, WASM!",
        "wasmReadsJsWrites": 10,
        "duringImport": [42, 55, 10],
        "growFromWasm": [1, 0, 131072, 0, 72],
        "growFromJs": [2, 0, 196608, 9, 9],
        "newMemory": [65536, 1, 131072, 5, "RangeError"],
    });
    assert_eq!(r, expected);
}

#[tokio::test]
async fn wasm_memory_is_bounded_by_the_room_budget() {
    let (_dir, factory, limits) = load().await;
    let room = start(factory, limits);
    let r = get_json(&room, "/limit").await;
    let expected = serde_json::json!({
        "growSome": 1,
        "growPastBudget": -1,
        "jsGrowPastBudget": "RangeError",
        "newMemoryPastBudget": "RangeError",
        "pages": 11,
    });
    assert_eq!(r, expected);
}

#[tokio::test]
async fn an_infinite_loop_in_wasm_ends_at_the_handler_time_limit() {
    let (_dir, factory, limits) = load().await;
    let room = start(factory, limits);
    // The request would never end without the time limit (TestRoom::request gives up after 10 s).
    let (status, body) = get(&room, "/spin").await;
    assert_eq!(status, 500, "{body}");
    // The room goes on serving.
    let r = get_json(&room, "/basic").await;
    assert_eq!(r["add"], 5);
}

#[tokio::test]
async fn an_assemblyscript_module_runs_with_the_bindings_asc_writes() {
    let (_dir, factory, limits) = load().await;
    let room = start(factory, limits);
    let r = get_json(&room, "/assemblyscript").await;
    assert_eq!(r, serde_json::json!([5, "Hello, wasm!", "Hello, wörld ✓!", "Hello, again!"]));
}
