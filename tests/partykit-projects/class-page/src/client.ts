import PartySocket from "partysocket";

declare const PARTYKIT_HOST: string;
declare const BUILD_LABEL: string;

const room = new URLSearchParams(location.search).get("room") ?? "lobby";
const socket = new PartySocket({ host: PARTYKIT_HOST, room });
const list = document.getElementById("messages")!;
const status = document.getElementById("status")!;

socket.addEventListener("open", () => (status.textContent = "connected"));
socket.addEventListener("message", (event) => {
  const msg = JSON.parse(event.data);
  if (msg.type === "hello") document.getElementById("label")!.textContent = msg.label;
  if (msg.type === "messages") {
    list.replaceChildren(
      ...msg.messages.map((text: string) => {
        const li = document.createElement("li");
        li.textContent = text;
        return li;
      }),
    );
  }
});

document.getElementById("form")!.addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("input") as HTMLInputElement;
  socket.send(input.value);
  input.value = "";
});

const { banner } = await import("./lazy");
document.getElementById("banner")!.textContent = banner(BUILD_LABEL);
