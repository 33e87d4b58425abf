// The PASS/FAIL lines and summary the fixture checks print (tests/tests/partykit.rs looks for
// ` passed, 0 failed`), and a watchdog so a check run always ends.

let passed = 0;
let failed = 0;

export async function check(name, fn) {
  try {
    const detail = await fn();
    passed += 1;
    console.log(`PASS ${name}${detail ? ` (${detail})` : ""}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err?.message ?? err}`);
  }
}

export function assert(cond, message) {
  if (!cond) throw new Error(message);
}

export function assertEq(actual, expected, what) {
  const [a, e] = [JSON.stringify(actual), JSON.stringify(expected)];
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

/** Ends the run after `seconds` whatever happens. */
export function watchdog(seconds, cleanup = () => {}) {
  const t = setTimeout(() => {
    console.log(`FAIL the whole run took over ${seconds} s`);
    cleanup();
    process.exit(1);
  }, seconds * 1000);
  t.unref();
}

/** The host:port argument, or exits with usage. */
export function hostArg(script) {
  const host = process.argv[2] ?? "";
  if (!/^[^\s/]+:\d+$/.test(host)) {
    console.error(`usage: node ${script} <host:port>`);
    process.exit(2);
  }
  return host;
}

export function finish(cleanup = () => {}) {
  console.log(`${passed} passed, ${failed} failed`);
  cleanup();
  setTimeout(() => process.exit(failed ? 1 : 0), 400);
}
