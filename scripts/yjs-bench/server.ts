// The server side y-partykit's docs show, with snapshot persistence.
import type * as Party from "partykit/server";
import { onConnect } from "y-partykit";

export default class YjsParty implements Party.Server {
  constructor(readonly room: Party.Room) {}
  onConnect(conn: Party.Connection) {
    return onConnect(conn, this.room, { persist: { mode: "snapshot" } });
  }
}
