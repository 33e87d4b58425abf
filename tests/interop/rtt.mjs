// Sequential echo round trips through a Partyline server: `node rtt.mjs <host:port> [count]`.
// Prints p50/p99/mean in microseconds. A quick latency probe, not the load tester.
import WebSocket from "ws";

const [host, countArg] = process.argv.slice(2);
if (!host) {
  console.error("usage: node rtt.mjs <host:port> [count]");
  process.exit(2);
}
const count = Number(countArg ?? 2000);
const ws = new WebSocket(`ws://${host}/parties/echo/rtt-${Date.now()}`);
const samples = [];
ws.on("open", () => {
  let i = 0;
  let t0 = 0n;
  const next = () => {
    t0 = process.hrtime.bigint();
    ws.send(`ping ${i}`);
  };
  ws.on("message", () => {
    samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    i += 1;
    if (i < count) next();
    else {
      const warm = samples.slice(Math.floor(count / 10)).sort((a, b) => a - b);
      const q = (p) => warm[Math.min(warm.length - 1, Math.floor(p * warm.length))].toFixed(0);
      const mean = (warm.reduce((a, b) => a + b, 0) / warm.length).toFixed(0);
      console.log(`${host}: ${warm.length} round trips, p50 ${q(0.5)} us, p99 ${q(0.99)} us, mean ${mean} us`);
      ws.close();
      process.exit(0);
    }
  });
  next();
});
ws.on("error", (e) => {
  console.error(`error: ${e.message}`);
  process.exit(1);
});
