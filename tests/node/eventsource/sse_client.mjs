// Reads kizuna's SSE stream with the npm `eventsource` package and prints each event
// as a JSON line {event, id, data}. Usage: node sse_client.mjs URL COUNT [TIMEOUT_MS]
// Exits 0 after COUNT `pub` events, 2 on timeout. Reconnects (with Last-Event-ID) as
// browsers do; a `disconnect` event is printed like any other.
import { EventSource } from "eventsource";

const [url, count, timeoutMs = "10000"] = process.argv.slice(2);
let pubs = 0;
const source = new EventSource(url);
const timer = setTimeout(() => {
  console.error("timeout");
  process.exit(2);
}, Number(timeoutMs));
const print = (event) => (e) => {
  console.log(JSON.stringify({ event, id: e.lastEventId || null, data: JSON.parse(e.data) }));
  if (event === "pub" && ++pubs >= Number(count)) {
    clearTimeout(timer);
    source.close();
    process.exit(0);
  }
};
for (const name of ["connected", "pub", "join", "leave", "gap", "subscribe_error", "disconnect"]) {
  source.addEventListener(name, print(name));
}
source.onopen = () => console.log(JSON.stringify({ event: "open" }));
