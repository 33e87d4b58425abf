import type * as Party from "partykit/server";

// One room per log ("crons", "closes"): POST appends a JSON entry, GET lists them.
export default class Server implements Party.Server {
  constructor(readonly room: Party.Room) {}

  async onRequest(req: Party.Request) {
    const entries = ((await this.room.storage.get<unknown[]>("entries")) ?? []) as unknown[];
    if (req.method === "POST") {
      entries.push(await req.json());
      await this.room.storage.put("entries", entries);
    }
    return Response.json(entries);
  }

  // A WebSocket to a URL outside any room: handled here, on the edge, with no room behind it.
  static onSocket(socket: Party.FetchSocket, lobby: Party.FetchLobby) {
    const name = new URL(socket.request.url).searchParams.get("name") ?? "nobody";
    // A hook that throws refuses the upgrade (500).
    if (name === "refused") throw new Error("no sockets for refused");
    socket.send(`hello ${name}`);
    socket.addEventListener("message", async (event) => {
      const data = String(event.data);
      if (data === "bye") {
        socket.close(4001, "bye " + name);
      } else if (data === "crons") {
        // Other rooms are reachable from here as from any static hook.
        const res = await lobby.parties.main.get("crons").fetch();
        socket.send(`crons ${(await res.json()).length >= 0}`);
      } else {
        socket.send(`echo ${data}`);
      }
    });
    socket.addEventListener("close", (event) => {
      lobby.parties.main.get("closes").fetch({
        method: "POST",
        body: JSON.stringify({ name, code: event.code, reason: event.reason }),
      });
    });
  }

  // Runs once per due time of each schedule in `crons` (and on /__scheduled__?cron=NAME in dev).
  static async onCron(cron: Party.Cron, lobby: Party.CronLobby) {
    await lobby.parties.main.get("crons").fetch({
      method: "POST",
      body: JSON.stringify({ name: cron.name, cron: cron.cron, scheduledTime: cron.scheduledTime }),
    });
  }

  static onFetch(req: Party.Request) {
    return new Response(`fetch ${new URL(req.url).pathname}`);
  }
}
