import type * as Party from "partykit/server";

// Messages from the page: {"type":"add","by":N}; to the page: {"type":"count",...}.
type Update = { type: "count"; count: number; last: string | null; connections: number };

export default class Counter implements Party.Server {
  count = 0;
  last: string | null = null;

  constructor(readonly room: Party.Room) {}

  async onStart() {
    this.count = (await this.room.storage.get<number>("count")) ?? 0;
    this.last = (await this.room.storage.get<string>("last")) ?? null;
  }

  update(): string {
    const connections = [...this.room.getConnections()].length;
    const msg: Update = { type: "count", count: this.count, last: this.last, connections };
    return JSON.stringify(msg);
  }

  onConnect(conn: Party.Connection) {
    conn.send(this.update());
    this.room.broadcast(this.update(), [conn.id]);
  }

  onClose() {
    this.room.broadcast(this.update());
  }

  async onMessage(message: string, sender: Party.Connection) {
    const msg = JSON.parse(message) as { type: string; by?: number };
    if (msg.type !== "add") return;
    this.count += Math.max(1, Math.min(10, msg.by ?? 1));
    this.last = sender.id;
    await this.room.storage.put({ count: this.count, last: this.last });
    this.room.broadcast(this.update());
  }

  async onRequest(_req: Party.Request) {
    return Response.json({ count: (await this.room.storage.get<number>("count")) ?? 0 });
  }
}
