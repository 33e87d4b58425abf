import type * as Party from "partykit/server";
import { format } from "@lib/format";
import words from "./words.txt";
import data from "./data.json";
// As on PartyKit, where the global `Buffer` is not the class: import it.
import { Buffer } from "node:buffer";

declare const BUILD_LABEL: string;

// Read while the module loads, as PartyKit projects commonly do.
const SECRET_AT_LOAD = process.env.SECRET_WORD;

export default class Chat implements Party.Server {
  constructor(readonly room: Party.Room) {}

  async onConnect(conn: Party.Connection) {
    conn.send(JSON.stringify({ type: "hello", label: BUILD_LABEL }));
    conn.send(JSON.stringify({ type: "messages", messages: await this.messages() }));
  }

  async messages(): Promise<string[]> {
    return (await this.room.storage.get<string[]>("messages")) ?? [];
  }

  async onMessage(message: string, sender: Party.Connection) {
    const max = this.room.env.MAX_MESSAGES as number;
    const messages = [...(await this.messages()), format(message, sender.id)].slice(-max);
    await this.room.storage.put("messages", messages);
    this.room.broadcast(JSON.stringify({ type: "messages", messages }));
  }

  onRequest(_req: Party.Request) {
    return Response.json({
      secret: SECRET_AT_LOAD,
      envSecret: this.room.env.SECRET_WORD,
      maxType: typeof this.room.env.MAX_MESSAGES,
      label: BUILD_LABEL,
      words: words.trim().split(" "),
      data,
      buffer: Buffer.from("partyline").toString("base64"),
      global: typeof global === "object" && global !== null,
    });
  }

  static onFetch(req: Party.Request, lobby: Party.FetchLobby) {
    const url = new URL(req.url);
    if (url.pathname === "/api/info") {
      return Response.json({ greeting: lobby.env.GREETING, path: url.pathname });
    }
    // Anything else: not found (the project's 404.html).
  }
}
