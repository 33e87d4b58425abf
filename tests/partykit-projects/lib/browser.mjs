// Headless Chromium over the DevTools protocol, for the fixture projects' page checks: open a
// tab, evaluate in it, type into it, collect its console errors. Needs `ws` (package.json).
//
//   const browser = await launch();          // CHROMIUM or `chromium` on PATH
//   const tab = await browser.open(url);
//   await tab.waitFor("the list", "document.querySelectorAll('li').length === 2");
//   browser.close();
//
// `open(url, options)` also takes, before the page loads: `headers` (sent with every request of
// the tab, e.g. Basic auth), `viewport` ({width, height, mobile}), and `dialogs: "accept"`
// (alert/confirm/prompt answered OK, recorded in `tab.dialogs`). A tab also has `send` (a raw
// DevTools command in its session), `on` (its events), `click` (a real mouse click on a
// selector), `setViewport`/`clearViewport`, `navigate` and `close`.

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
  const handlers = new Map(); // sessionId -> [fn(method, params)] added by tab.on
  cdp.on("message", (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(msg.error.message));
      else resolve(msg.result);
    } else if (msg.method && msg.sessionId && listeners.has(msg.sessionId)) {
      listeners.get(msg.sessionId)(msg.method, msg.params);
      for (const fn of handlers.get(msg.sessionId) ?? []) fn(msg.method, msg.params);
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
    async open(url, options = {}) {
      const { targetId } = await send("Target.createTarget", { url: "about:blank" });
      const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
      const dialogs = [];
      handlers.set(sessionId, []);
      if (options.dialogs === "accept") {
        handlers.get(sessionId).push((method, params) => {
          if (method !== "Page.javascriptDialogOpening") return;
          dialogs.push({ type: params.type, message: params.message });
          send("Page.handleJavaScriptDialog", { accept: true, promptText: params.defaultPrompt ?? "" }, sessionId).catch(() => {});
        });
      }
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
      if (options.headers) {
        await send("Network.enable", {}, sessionId);
        await send("Network.setExtraHTTPHeaders", { headers: options.headers }, sessionId);
      }
      const setViewport = ({ width, height = 900, mobile = false, deviceScaleFactor = 1 }) =>
        send("Emulation.setDeviceMetricsOverride", { width, height, mobile, deviceScaleFactor }, sessionId);
      if (options.viewport) await setViewport(options.viewport);
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
        /** The dialogs answered (with `dialogs: "accept"`): [{type, message}]. */
        dialogs,
        /** A raw DevTools command in this tab's session. */
        send: (method, params = {}) => send(method, params, sessionId),
        /** Calls `fn(method, params)` with every event of this tab. */
        on: (fn) => handlers.get(sessionId).push(fn),
        /** Emulates a viewport ({width, height, mobile}); clearViewport ends it. */
        setViewport,
        clearViewport: () => send("Emulation.clearDeviceMetricsOverride", {}, sessionId),
        /** Navigates the tab to `to`. */
        navigate: (to) => send("Page.navigate", { url: to }, sessionId),
        /** A real mouse click in the middle of the first element matching `selector` (scrolled
         * into view first); resolves to its {x, y}, or throws when there is none. */
        async click(selector) {
          const at = await evaluate(`(() => {
            const e = document.querySelector(${JSON.stringify(selector)});
            if (!e) return null;
            e.scrollIntoView({ block: "center", inline: "center" });
            const r = e.getBoundingClientRect();
            return { x: r.left + r.width / 2, y: r.top + r.height / 2 };
          })()`);
          if (!at) throw new Error(`nothing to click: no ${selector}`);
          await send("Input.dispatchMouseEvent", { type: "mouseMoved", x: at.x, y: at.y }, sessionId);
          await send("Input.dispatchMouseEvent", { type: "mousePressed", x: at.x, y: at.y, button: "left", clickCount: 1 }, sessionId);
          await send("Input.dispatchMouseEvent", { type: "mouseReleased", x: at.x, y: at.y, button: "left", clickCount: 1 }, sessionId);
          return at;
        },
        /** Closes the tab. */
        close: () => send("Target.closeTarget", { targetId }).catch(() => {}),
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
