import { basicSetup, EditorView } from "codemirror";
import { EditorState } from "@codemirror/state";
import * as Y from "yjs";
import { yCollab } from "y-codemirror.next";
import YPartyKitProvider from "y-partykit/provider";

declare const PARTYKIT_HOST: string;

const params = new URLSearchParams(location.search);
const room = params.get("room") ?? "scratch";
const name = params.get("name") ?? `writer-${Math.floor(Math.random() * 1000)}`;
const hue = Math.floor(Math.random() * 360);

const doc = new Y.Doc();
// disableBc: tabs of one browser sync through the server only, not over a BroadcastChannel.
const provider = new YPartyKitProvider(PARTYKIT_HOST, room, doc, { disableBc: true });
const text = doc.getText("codemirror");
provider.awareness.setLocalStateField("user", {
  name,
  color: `hsl(${hue} 70% 45%)`,
  colorLight: `hsl(${hue} 70% 85%)`,
});

const status = document.getElementById("status")!;
provider.on("status", ({ status: s }: { status: string }) => (status.dataset.ws = s));
provider.on("sync", (synced: boolean) => (status.textContent = synced ? "synced" : "syncing"));

const view = new EditorView({
  state: EditorState.create({
    doc: text.toString(),
    extensions: [basicSetup, EditorView.lineWrapping, yCollab(text, provider.awareness)],
  }),
  parent: document.getElementById("editor")!,
});

const peers = document.getElementById("peers")!;
provider.awareness.on("change", () => {
  const names = [...provider.awareness.getStates().entries()]
    .filter(([id]) => id !== doc.clientID)
    .map(([, state]) => (state.user as { name?: string } | undefined)?.name ?? "?");
  peers.textContent = names.sort().join(", ");
});

// For the checks (and the console): the editor, the document and the provider.
Object.assign(window, { editor: view, ydoc: doc, provider });
