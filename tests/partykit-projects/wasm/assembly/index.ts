// AssemblyScript: compiled to build/math.wasm by partykit.json's build.command.

/** Called from JS: adds two numbers. */
export function add(a: i32, b: i32): i32 {
  return a + b;
}

/** The n-th Fibonacci number, computed in wasm. */
export function fib(n: i32): i64 {
  let a: i64 = 0, b: i64 = 1;
  for (let i = 0; i < n; i++) {
    const t = a + b;
    a = b;
    b = t;
  }
  return a;
}

@external("env", "report")
declare function report(value: i32): void;

/** Calls back into JS with the sum of 1..n. */
export function sumTo(n: i32): i32 {
  let s = 0;
  for (let i = 1; i <= n; i++) s += i;
  report(s);
  return s;
}

/** Sums `len` bytes of linear memory at `ptr` (written by JS through memory.buffer). */
export function sumBytes(ptr: usize, len: i32): i32 {
  let s = 0;
  for (let i = 0; i < len; i++) s += load<u8>(ptr + i);
  return s;
}
