#!/usr/bin/env node
// Live reload (serve.build.live) under `partyline dev`: opens the page in headless Chromium,
// rewrites the page's client file (`v1` → `v2`), and waits for the open page to reload by itself
// and show the rebuilt bundle's text.
//
//   node lib/live.mjs 127.0.0.1:1999 /path/to/project/src/client.ts

import { readFileSync, writeFileSync } from "node:fs";
import { launch } from "./browser.mjs";
import { assert, check, finish, hostArg, watchdog } from "./checks.mjs";

const HOST = hostArg("live.mjs");
const FILE = process.argv[3];
let browser;
watchdog(90, () => browser?.close());
browser = await launch();

await check("the page reloads by itself when its client code changes", async () => {
  const tab = await browser.open(`http://${HOST}/`);
  await tab.waitFor("version 1", `document.body.textContent.includes("client v1")`);
  const source = readFileSync(FILE, "utf8");
  assert(source.includes("client v1"), `${FILE} says "client v1"`);
  writeFileSync(FILE, source.replace("client v1", "client v2"));
  await tab.waitFor("version 2 without a reload from the test", `document.body.textContent.includes("client v2")`, 30000);
});

finish(() => browser?.close());
