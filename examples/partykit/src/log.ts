// A chat without framing, for the load tester: every text message is stored (the room's last
// 100, as the Rust `main` party keeps its history) and then broadcast verbatim to everyone.
import type * as Party from "partykit/server";

export default class Log implements Party.Server {
  messages: string[] = [];

  constructor(readonly room: Party.Room) {}

  async onStart() {
    this.messages = (await this.room.storage.get<string[]>("messages")) ?? [];
  }

  async onMessage(message: string | ArrayBuffer) {
    if (typeof message !== "string") return;
    this.messages.push(message);
    if (this.messages.length > 100) this.messages.shift();
    await this.room.storage.put("messages", this.messages);
    this.room.broadcast(message);
  }
}
