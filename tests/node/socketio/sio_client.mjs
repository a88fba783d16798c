// Real `socket.io-client` sockets for kizuna's Socket.IO end-to-end tests, driven over stdio.
//
// Why it exists: a Socket.IO server is only proven compatible by the client browsers and
// Node applications actually use. pytest starts this script and talks to it in JSON lines.
//
// Usage: node sio_client.mjs
//
// stdin, one JSON object per line:
//   {"op": "open", "sock": "a", "url": "http://127.0.0.1:8000/chat", "opts": {...}}
//        io(url, {forceNew: true, reconnection: false, ...opts}); "opts" are socket.io-client
//        options (transports, auth, tryAllTransports, extraHeaders, ...).
//   {"op": "emit", "sock": "a", "id": 7, "event": "joinRoom", "args": ["r1"], "ack": true}
//        with "ack": the reply is reported as an "ack" event (or its timeout, 5 s).
//   {"op": "transport", "sock": "a", "id": 8}   which Engine.IO transport the socket uses now
//   {"op": "close", "sock": "a"}                 socket.disconnect()
// EOF closes every socket and ends the process.
//
// stdout, one JSON object per line, each with "sock":
//   {"event": "connect", "id": "...", "transport": "websocket"}
//   {"event": "connect_error", "message": "unauthorized", "data": {...}}
//   {"event": "disconnect", "reason": "io server disconnect"}
//   {"event": "engine_open", "transport": "polling"}        the Engine.IO connection opened
//   {"event": "upgrade", "transport": "websocket"}          the Engine.IO upgrade happened
//   {"event": "message", "name": "newMessage", "args": [...]} any event the server emitted
//   {"event": "ack", "id": 7, "args": [...]} | {"event": "ack", "id": 7, "error": "..."}
//   {"event": "transport", "id": 8, "name": "polling"}

import { createInterface } from "node:readline";
import { io } from "socket.io-client";

const ACK_TIMEOUT_MS = 5000;
const sockets = new Map();

function emit(sock, event) {
  process.stdout.write(`${JSON.stringify({ sock, ...event })}\n`);
}

function open({ sock, url, opts }) {
  const socket = io(url, { forceNew: true, reconnection: false, ...(opts || {}) });
  sockets.set(sock, socket);
  socket.io.on("open", () => {
    const engine = socket.io.engine;
    emit(sock, { event: "engine_open", transport: engine.transport.name });
    engine.on("upgrade", (transport) => emit(sock, { event: "upgrade", transport: transport.name }));
  });
  socket.on("connect", () => {
    emit(sock, { event: "connect", id: socket.id, transport: socket.io.engine.transport.name });
  });
  socket.on("connect_error", (error) => {
    emit(sock, { event: "connect_error", message: error.message, data: error.data ?? null });
  });
  socket.on("disconnect", (reason) => emit(sock, { event: "disconnect", reason }));
  socket.onAny((name, ...args) => emit(sock, { event: "message", name, args }));
}

function send({ sock, id, event, args, ack }) {
  const socket = sockets.get(sock);
  if (!ack) {
    socket.emit(event, ...(args || []));
    return;
  }
  socket.timeout(ACK_TIMEOUT_MS).emit(event, ...(args || []), (error, ...reply) => {
    if (error) emit(sock, { event: "ack", id, error: String(error.message || error) });
    else emit(sock, { event: "ack", id, args: reply });
  });
}

const handlers = {
  open,
  emit: send,
  transport: ({ sock, id }) => {
    const engine = sockets.get(sock).io.engine;
    emit(sock, { event: "transport", id, name: engine ? engine.transport.name : null });
  },
  close: ({ sock }) => sockets.get(sock).disconnect(),
};

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  const command = JSON.parse(line);
  handlers[command.op](command);
});
input.on("close", () => {
  for (const socket of sockets.values()) socket.disconnect();
  // Let the DISCONNECT packets leave before the process ends.
  setTimeout(() => process.exit(0), 100);
});
