// A hibernating party: the count lives in storage, each connection's state survives
// hibernation, and an alarm can be set with "alarm <ms>".
import type * as Party from "partykit/server";

export default class Counter implements Party.Server {
  static options = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  async count(): Promise<number> {
    return (await this.room.storage.get<number>("count")) ?? 0;
  }

  async onConnect(conn: Party.Connection) {
    conn.setState({ joinedAt: Date.now(), sent: 0 });
    conn.send(JSON.stringify({ count: await this.count() }));
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection<{ joinedAt: number; sent: number }>) {
    if (typeof message !== "string") return;
    if (message.startsWith("alarm ")) {
      await this.room.storage.setAlarm(Date.now() + Number(message.slice(6)));
      return;
    }
    if (message === "state") {
      sender.send(JSON.stringify({ state: sender.state }));
      return;
    }
    const count = (await this.count()) + 1;
    await this.room.storage.put("count", count);
    sender.setState({ ...sender.state!, sent: (sender.state?.sent ?? 0) + 1 });
    this.room.broadcast(JSON.stringify({ count }));
  }

  async onAlarm() {
    this.room.broadcast(JSON.stringify({ alarm: true, count: await this.count() }));
  }

  async onRequest() {
    return Response.json({ count: await this.count() });
  }
}
