// Headless Chromium over the DevTools protocol, for the fixture projects' page checks: open a
// tab, evaluate in it, type into it, collect its console errors. Needs `ws` (package.json).
//
//   const browser = await launch();          // CHROMIUM or `chromium` on PATH
//   const tab = await browser.open(url);
//   await tab.waitFor("the list", "document.querySelectorAll('li').length === 2");
//   browser.close();

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WS from "ws";

const START_MS = 15000;
export const WAIT_MS = 15000;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export async function launch(chromium = process.env.CHROMIUM || "chromium") {
  const profile = mkdtempSync(join(tmpdir(), "partyline-fixture-"));
  const proc = spawn(
    chromium,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      "--disable-background-timer-throttling",
      "--disable-renderer-backgrounding",
      "--disable-backgrounding-occluded-windows",
      `--user-data-dir=${profile}`,
      "--remote-debugging-port=0",
      "about:blank",
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let exited = false;
  proc.on("exit", () => (exited = true));
  const endpoint = await new Promise((resolve, reject) => {
    let err = "";
    const t = setTimeout(() => reject(new Error(`no DevTools endpoint from ${chromium}: ${err.slice(-500)}`)), START_MS);
    proc.on("error", (e) => reject(new Error(`cannot start ${chromium}: ${e.message}`)));
    proc.stderr.on("data", (d) => {
      err += d;
      const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
  });
  const cdp = new WS(endpoint, { perMessageDeflate: false });
  await new Promise((res, rej) => {
    cdp.once("open", res);
    cdp.once("error", rej);
  });
  let nextId = 1;
  const pending = new Map();
  const listeners = new Map(); // sessionId -> fn(method, params)
  cdp.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(msg.error.message));
      else resolve(msg.result);
    } else if (msg.method && msg.sessionId && listeners.has(msg.sessionId)) {
      listeners.get(msg.sessionId)(msg.method, msg.params);
    }
  });
  const send = (method, params = {}, sessionId) => {
    const id = nextId++;
    cdp.send(JSON.stringify({ id, method, params, sessionId }));
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  };

  return {
    /** A tab on `url`: evaluate, type, wait, and the page's errors (uncaught exceptions and
     * console.error lines). */
    async open(url) {
      const { targetId } = await send("Target.createTarget", { url: "about:blank" });
      const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
      const errors = [];
      const logs = [];
      listeners.set(sessionId, (method, params) => {
        if (method === "Runtime.exceptionThrown") {
          const d = params.exceptionDetails;
          errors.push(d.exception?.description || d.text);
        } else if (method === "Runtime.consoleAPICalled") {
          const text = params.args.map((a) => a.value ?? a.description ?? "").join(" ");
          logs.push(`${params.type}: ${text}`);
          if (params.type === "error") errors.push(text);
        }
      });
      await send("Runtime.enable", {}, sessionId);
      await send("Page.enable", {}, sessionId);
      await send("Page.navigate", { url }, sessionId);
      const evaluate = async (expression) => {
        const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true }, sessionId);
        if (r.exceptionDetails) throw new Error(r.exceptionDetails.exception?.description || r.exceptionDetails.text);
        return r.result.value;
      };
      const tab = {
        errors,
        logs,
        evaluate,
        /** Types `text` into the focused element, as keyboard input would. */
        type: (text) => send("Input.insertText", { text }, sessionId),
        /** Reloads the page. */
        reload: () => send("Page.reload", {}, sessionId),
        /** Waits until `expression` is true in the page (it may throw while the page loads). */
        async waitFor(what, expression, ms = WAIT_MS) {
          const deadline = Date.now() + ms;
          let last;
          for (;;) {
            last = await evaluate(expression).catch((e) => `error: ${e.message}`);
            if (last === true) return;
            if (Date.now() > deadline) {
              throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)}; page errors: ${JSON.stringify(errors)})`);
            }
            await sleep(50);
          }
        },
      };
      return tab;
    },
    close() {
      cdp.close();
      if (!exited) proc.kill("SIGTERM");
      setTimeout(() => rmSync(profile, { recursive: true, force: true }), 300);
    },
  };
}
