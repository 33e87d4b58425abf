// Every frame to everyone in the room: the load tester's fan-out target, in JS.
import type * as Party from "partykit/server";

export default class Relay implements Party.Server {
  constructor(readonly room: Party.Room) {}

  onMessage(message: string | ArrayBuffer) {
    this.room.broadcast(message);
  }
}
