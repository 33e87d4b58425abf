import { StrictMode, useCallback, useState } from "react";
import { createRoot } from "react-dom/client";
import usePartySocket from "partysocket/react";

declare const PARTYKIT_HOST: string;

type Update = { type: "count"; count: number; last: string | null; connections: number };

function Counter({ room }: { room: string }) {
  const [status, setStatus] = useState("connecting");
  const [state, setState] = useState<Update | null>(null);
  const socket = usePartySocket({
    host: PARTYKIT_HOST,
    room,
    onOpen: () => setStatus("connected"),
    onClose: () => setStatus("closed"),
    onMessage: (event) => {
      const msg = JSON.parse(event.data) as Update;
      if (msg.type === "count") setState(msg);
    },
  });
  const add = useCallback((by: number) => socket.send(JSON.stringify({ type: "add", by })), [socket]);

  return (
    <main>
      <h1>
        Room <code id="room">{room}</code>
      </h1>
      <p>
        <span id="status">{status}</span> as <code id="me">{socket.id}</code>
      </p>
      <p>
        Count: <output id="count">{state ? state.count : "…"}</output>{" "}
        <small>
          (<span id="connections">{state?.connections ?? 0}</span> here
          {state?.last ? <>, last by <span id="last">{state.last}</span></> : null})
        </small>
      </p>
      <button id="add" disabled={status !== "connected"} onClick={() => add(1)}>
        +1
      </button>
      <button id="add5" disabled={status !== "connected"} onClick={() => add(5)}>
        +5
      </button>
    </main>
  );
}

const room = new URLSearchParams(location.search).get("room") ?? "lobby";
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <Counter room={room} />
  </StrictMode>,
);
