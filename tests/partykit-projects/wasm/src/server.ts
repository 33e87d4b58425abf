import type * as Party from "partykit/server";
import mathModule from "../build/math.wasm";

let reported = -1;
const instance = new WebAssembly.Instance(mathModule, {
  env: {
    report: (value: number) => {
      reported = value;
    },
    abort: () => {
      throw new Error("abort called");
    },
  },
});
const math = instance.exports as {
  add(a: number, b: number): number;
  fib(n: number): bigint;
  sumTo(n: number): number;
  sumBytes(ptr: number, len: number): number;
  memory: WebAssembly.Memory;
};

export default class Wasm implements Party.Server {
  constructor(readonly room: Party.Room) {}

  async onRequest(req: Party.Request) {
    const url = new URL(req.url);
    const a = Number(url.searchParams.get("a") ?? 2);
    const b = Number(url.searchParams.get("b") ?? 3);
    const bytes = new Uint8Array(math.memory.buffer, 1024, 4);
    bytes.set([1, 2, 3, 4]);
    const viaInstantiate = await WebAssembly.instantiate(mathModule, { env: { report() {}, abort() {} } });
    return Response.json({
      add: math.add(a, b),
      fib: String(math.fib(50)),
      sumTo: math.sumTo(10),
      reported,
      sumBytes: math.sumBytes(1024, 4),
      instantiate: (viaInstantiate.exports as typeof math).add(40, 2),
      isModule: mathModule instanceof WebAssembly.Module,
    });
  }
}
