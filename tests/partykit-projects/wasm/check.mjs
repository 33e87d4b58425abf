#!/usr/bin/env node
// Checks of the wasm fixture against a running server (Partyline or `partykit dev`): a module
// compiled from AssemblyScript by build.command, imported as `.wasm`, instantiated with JS
// imports, its memory written from JS.
//
//   node check.mjs 127.0.0.1:1999

import { assertEq, check, finish, hostArg, watchdog } from "../lib/checks.mjs";

const HOST = hostArg("check.mjs");
watchdog(60);

await check("the AssemblyScript module runs in the room", async () => {
  const res = await fetch(`http://${HOST}/parties/main/w1?a=20&b=22`);
  assertEq(res.status, 200, `status (${res.status === 200 ? "" : await res.clone().text()})`);
  assertEq(await res.json(), {
    add: 42,
    fib: "12586269025",
    sumTo: 55,
    reported: 55,
    sumBytes: 10,
    instantiate: 42,
    isModule: true,
  }, "results");
});

finish();
