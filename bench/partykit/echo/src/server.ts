// The main party of the echo project: unused by the benchmark, present because PartyKit needs one.
import type * as Party from "partykit/server";

export default class Main implements Party.Server {
  constructor(readonly room: Party.Room) {}

  onRequest() {
    return new Response("ok");
  }
}
