// The chat of PartyKit's announcement, with the static hooks, onFetch and connection tags.
// Runs unchanged under `partykit dev` and `partyline dev`.
import type * as Party from "partykit/server";

type Stored = { from: string; text: string };

export default class Chat implements Party.Server {
  messages: Stored[] = [];

  constructor(readonly room: Party.Room) {}

  // Runs at the edge before a WebSocket reaches the room: the token is checked and the user
  // handed to the room in a header.
  static async onBeforeConnect(req: Party.Request, lobby: Party.Lobby) {
    const url = new URL(req.url);
    if (url.searchParams.get("token") !== lobby.env.CHAT_TOKEN) {
      return new Response("Unauthorized", { status: 401 });
    }
    const headers = new Headers(req.headers);
    headers.set("x-user", url.searchParams.get("user") ?? "anonymous");
    return new Request(req, { headers });
  }

  // HTTP writes need the token as a bearer header; throwing answers 401 with the message.
  static async onBeforeRequest(req: Party.Request, lobby: Party.Lobby) {
    if (req.method !== "GET" && req.headers.get("authorization") !== `Bearer ${lobby.env.CHAT_TOKEN}`) {
      throw new Error("missing or wrong bearer token");
    }
    return req;
  }

  // URLs that are not a party's (static files in `serve` are answered first).
  static async onFetch(req: Party.Request, lobby: Party.FetchLobby) {
    const url = new URL(req.url);
    if (url.pathname === "/hello") {
      return Response.json({ greeting: lobby.env.GREETING });
    }
    return new Response("Not found", { status: 404 });
  }

  async onStart() {
    this.messages = (await this.room.storage.get<Stored[]>("messages")) ?? [];
  }

  getConnectionTags(conn: Party.Connection, ctx: Party.ConnectionContext) {
    const role = new URL(ctx.request.url).searchParams.get("role");
    return role === "admin" ? ["admin"] : ["member"];
  }

  onConnect(conn: Party.Connection, ctx: Party.ConnectionContext) {
    conn.setState({ user: ctx.request.headers.get("x-user") ?? "anonymous" });
    conn.send(JSON.stringify({ type: "history", messages: this.messages }));
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection<{ user: string }>) {
    if (typeof message !== "string") return;
    if (message.startsWith("/admins ")) {
      for (const admin of this.room.getConnections("admin")) {
        admin.send(JSON.stringify({ type: "admin", text: message.slice(8), from: sender.state?.user }));
      }
      return;
    }
    const entry = { from: sender.state?.user ?? sender.id, text: message };
    this.messages.push(entry);
    await this.room.storage.put("messages", this.messages);
    this.room.broadcast(JSON.stringify({ type: "message", ...entry }));
  }

  async onRequest(req: Party.Request) {
    if (req.method === "GET") {
      return Response.json({ room: this.room.id, messages: this.messages });
    }
    if (req.method === "POST") {
      const text = await req.text();
      const entry = { from: "http", text };
      this.messages.push(entry);
      await this.room.storage.put("messages", this.messages);
      this.room.broadcast(JSON.stringify({ type: "message", ...entry }));
      return Response.json({ ok: true, count: this.messages.length });
    }
    return new Response("Method not allowed", { status: 405 });
  }

  onClose(conn: Party.Connection) {
    this.room.broadcast(JSON.stringify({ type: "left", id: conn.id }), [conn.id]);
  }
}

Chat satisfies Party.Worker;
