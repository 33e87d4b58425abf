// y-partykit's default: no persistence (the document lives in the isolate's memory).
import type * as Party from "partykit/server";
import { onConnect } from "y-partykit";

export default class YjsMemory implements Party.Server {
  constructor(readonly room: Party.Room) {}
  onConnect(conn: Party.Connection) {
    return onConnect(conn, this.room);
  }
}
