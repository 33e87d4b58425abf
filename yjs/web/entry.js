// What the collaborative text page needs, exposed as the global `YPartyKit`:
// `YPartyKit.Y` (the yjs module) and `YPartyKit.YPartyKitProvider` (y-partykit's provider).
export * as Y from "yjs";
export { default as YPartyKitProvider } from "y-partykit/provider";
