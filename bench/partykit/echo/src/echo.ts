// The `echo` party of the load tester, in JS: every frame goes back to its sender only, text as
// text and binary as binary; nothing on connect. The same behaviour as Partyline's Rust `echo`
// party, so scripts/bench.sh compares the servers, not the parties.
import type * as Party from "partykit/server";

export default class Echo implements Party.Server {
  constructor(readonly room: Party.Room) {}

  onMessage(message: string | ArrayBuffer | ArrayBufferView, sender: Party.Connection) {
    sender.send(message as string | ArrayBuffer);
  }
}
