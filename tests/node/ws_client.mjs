// A second, independent WebSocket client for kizuna's end-to-end tests, built on the `ws` package.
//
// Why it exists: a server tested only with the client library it is built on (Python
// `websockets`) can share that library's assumptions. `ws` is the client most Node.js
// applications use, so the end-to-end tests drive it too.
//
// Usage: node ws_client.mjs URL [--header "Name: value"]...
//
// stdin:  one line = one text frame to send, verbatim (lines written before the socket
//         opens are queued). EOF closes the socket normally (1000).
// stdout: one JSON object per line:
//           {"event": "open"}
//           {"event": "message", "message": {...}}   one per newline-separated message of a frame
//           {"event": "unexpected-response", "status": 401, "body": "..."}
//           {"event": "close", "code": 4001, "reason": "..."}
//           {"event": "error", "message": "..."}
// The process exits once the socket is closed.

import { createInterface } from "node:readline";
import WebSocket from "ws";

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function parseArgs(argv) {
  const [url, ...rest] = argv;
  if (!url) {
    process.stderr.write("usage: ws_client.mjs URL [--header 'Name: value']...\n");
    process.exit(2);
  }
  const headers = {};
  for (let i = 0; i < rest.length; i += 1) {
    if (rest[i] !== "--header" || i + 1 >= rest.length) {
      process.stderr.write(`unexpected argument: ${rest[i]}\n`);
      process.exit(2);
    }
    const line = rest[(i += 1)];
    const colon = line.indexOf(":");
    headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
  }
  return { url, headers };
}

const { url, headers } = parseArgs(process.argv.slice(2));
const socket = new WebSocket(url, { headers, perMessageDeflate: false });
const pending = [];
let inputEnded = false;

socket.on("open", () => {
  emit({ event: "open" });
  for (const line of pending.splice(0)) socket.send(line);
  if (inputEnded) socket.close(1000);
});

socket.on("message", (data, isBinary) => {
  const text = isBinary ? Buffer.from(data).toString("utf8") : data.toString();
  for (const line of text.split("\n")) {
    if (line.trim()) emit({ event: "message", message: JSON.parse(line) });
  }
});

socket.on("unexpected-response", (request, response) => {
  const chunks = [];
  response.on("data", (chunk) => chunks.push(chunk));
  response.on("end", () => {
    emit({
      event: "unexpected-response",
      status: response.statusCode,
      body: Buffer.concat(chunks).toString("utf8"),
    });
    process.exit(0);
  });
});

socket.on("close", (code, reason) => {
  emit({ event: "close", code, reason: reason.toString() });
  process.exit(0);
});

socket.on("error", (error) => {
  emit({ event: "error", message: String(error && error.message) });
});

const input = createInterface({ input: process.stdin });
input.on("line", (line) => {
  if (!line.trim()) return;
  if (socket.readyState === WebSocket.OPEN) socket.send(line);
  else pending.push(line);
});
input.on("close", () => {
  inputEnded = true;
  if (socket.readyState === WebSocket.OPEN) socket.close(1000);
});
