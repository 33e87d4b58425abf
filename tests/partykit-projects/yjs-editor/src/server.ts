import type * as Party from "partykit/server";
import { onConnect, unstable_getYDoc, type YPartyKitOptions } from "y-partykit";

// One Yjs document per room, kept in room storage (snapshot: written when the last editor
// leaves); y-partykit speaks the y-websocket protocol to the page's provider.
const options: YPartyKitOptions = { persist: { mode: "snapshot" } };

export default class Editor implements Party.Server {
  constructor(readonly room: Party.Room) {}

  onConnect(conn: Party.Connection) {
    return onConnect(conn, this.room, options);
  }

  // GET /parties/main/<room>: the document's text as the server holds it.
  async onRequest(_req: Party.Request) {
    const doc = await unstable_getYDoc(this.room, options);
    return Response.json({ text: doc.getText("codemirror").toString() });
  }
}
