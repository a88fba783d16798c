// kizuna's load generator: many clients in one Node.js process, driven by a JSON spec.
//
// Why Node and `ws`: the generator must not be the bottleneck, and one Node process on one core
// parses WebSocket frames several times faster than a Python one. The harness (bench/run.py)
// pins it to its own core, starts the servers, and reads the JSON lines this prints.
//
// Clients are WebSocket (`ws`: kizuna's native protocol, the guide's JSON protocol), Server-Sent
// Events (Node's `http`: kizuna's /connection/sse) or Socket.IO (`socket.io-client`, WebSocket
// transport only: kizuna's /socket.io/ and plain python-socketio).
//
// Usage: node loadgen.js SPEC.json      (see bench/scenarios.py for the spec's fields)
//
// Output: one JSON object per line on stdout: {"event": "log" | "step" | "result", ...}.
//
// Measuring, not guessing:
// * Every publication carries, in its content, a marker, the rate step it belongs to and the
//   moment it was sent (performance.now() in integer microseconds). Publisher and subscribers
//   live in this process, so send and receive times come from the same monotonic clock.
// * Subscribers find publications by scanning the raw frame for the marker `"B|`, so a kizuna
//   frame that coalesces several newline-separated messages counts as several deliveries, and no
//   frame is JSON-parsed on the hot path (the generator's CPU goes to the sockets, not to us).
//   SSE subscribers scan the raw stream the same way, complete events only (a chunk may end in
//   the middle of one: the rest waits for the next chunk). Socket.IO subscribers count
//   `newMessage` events, reading the marker from the content string (socket.io-client has
//   already parsed the packet: that is the client's cost, and it is the same for both servers).
// * Latency goes into a fixed histogram (0.1 ms buckets up to 10 s, exact max), per step.
// * CPU (this process and the server's pids, from /proc/PID/stat) is sampled over each step's
//   publishing window, so a reader can check that the generator was not the one saturated.
'use strict';

const fs = require('fs');
const { performance } = require('perf_hooks');
const net = require('net');
const tls = require('tls');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const MARK = Buffer.from('"B|');
const BUCKET_US = 100; // histogram resolution: 0.1 ms
const BUCKETS = 100000; // up to 10 s; beyond goes to the last bucket (max stays exact)

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function log(msg) {
  emit({ event: 'log', msg });
}

function nowUs() {
  return Math.round(performance.now() * 1000);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function until(predicate, timeoutMs, pollMs = 10) {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() >= deadline) return false;
    await sleep(pollMs);
  }
  return true;
}

// --- CPU and memory from /proc ---------------------------------------------------------------

const CLK_TCK = spec.clkTck || 100;

function procCpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime + stime
  } catch (err) {
    return NaN;
  }
}

// Time spent runnable but waiting for a CPU (ns), from /proc/PID/schedstat: on a shared
// machine this says how much of a step's latency other people's processes caused.
function runDelaySeconds(pid) {
  try {
    return Number(fs.readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[1]) / 1e9;
  } catch (err) {
    return NaN;
  }
}

function rssKb(pid) {
  if (pid === null || pid === undefined) return NaN; // an external target: not ours to read
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) : NaN;
}

function cpuSnapshot() {
  const self = process.cpuUsage();
  return {
    wall: performance.now(),
    self: (self.user + self.system) / 1e6,
    selfSystem: self.system / 1e6,
    servers: (spec.serverPids || []).map(procCpuSeconds),
    redis: (spec.redisPids || []).map(procCpuSeconds),
    selfWait: runDelaySeconds(process.pid),
    serverWait: runDelaySeconds((spec.serverPids || [process.pid])[0]),
  };
}

// With no server pids (an external target, --url) the server's figures are null, not 0.
function cpuPercent(a, b) {
  const wall = (b.wall - a.wall) / 1000;
  const pct = (x, y) => Math.round(((y - x) / wall) * 1000) / 10;
  const cpu = {
    generator: pct(a.self, b.self),
    generatorSystem: pct(a.selfSystem, b.selfSystem),
    server: b.servers.length
      ? Math.round(b.servers.reduce((s, v, i) => s + pct(a.servers[i], v), 0) * 10) / 10
      : null,
    generatorWaiting: pct(a.selfWait, b.selfWait),
    serverWaiting: pct(a.serverWait, b.serverWait),
  };
  // Redis, when the server has one: already in `server`, also shown on its own.
  if (b.redis.length) {
    cpu.redis = Math.round(b.redis.reduce((s, v, i) => s + pct(a.redis[i], v), 0) * 10) / 10;
  }
  return cpu;
}

// CPU microseconds per delivery, over the whole step (publishing and drain): unlike latency,
// this hardly depends on how much CPU other processes took, so its ratios are the steadiest.
function costPerDelivery(a, b, deliveries) {
  if (deliveries === 0) return { server: null, generator: null };
  const per = (x, y) => Math.round(((y - x) / deliveries) * 1e6 * 100) / 100;
  const cost = {
    server: b.servers.length ? b.servers.reduce((s, v, i) => s + per(a.servers[i], v), 0) : null,
    generator: per(a.self, b.self),
  };
  if (b.redis.length) cost.redis = b.redis.reduce((s, v, i) => s + per(a.redis[i], v), 0);
  return cost;
}

// --- per-step delivery statistics -----------------------------------------------------------

const steps = new Map();

function stepStats(step) {
  let st = steps.get(step);
  if (st === undefined) {
    st = { received: 0, late: 0, max: 0, hist: new Uint32Array(BUCKETS), closed: false };
    steps.set(step, st);
  }
  return st;
}

function percentile(st, q) {
  if (st.received === 0) return null;
  const rank = Math.ceil(q * st.received);
  let seen = 0;
  for (let i = 0; i < BUCKETS; i++) {
    seen += st.hist[i];
    if (seen >= rank) return Math.min(((i + 1) * BUCKET_US) / 1000, st.max);
  }
  return st.max;
}

// Scan a frame for publications; returns how many it held.
function scanFrame(buf, client) {
  let i = buf.indexOf(MARK);
  if (i < 0) return 0;
  const recvUs = nowUs();
  let count = 0;
  while (i >= 0) {
    let p = i + MARK.length;
    let c;
    let step = 0;
    while ((c = buf[p++]) !== 124) step = step * 10 + (c - 48); // up to '|'
    while (buf[p++] !== 124); // skip the sequence number
    let sent = 0;
    while ((c = buf[p]) >= 48 && c <= 57) {
      sent = sent * 10 + (c - 48);
      p++;
    }
    count++;
    record(client, step, sent, recvUs);
    i = buf.indexOf(MARK, p);
  }
  return count;
}

// One publication delivered to `client`: a probe (step 0) or a measured one.
function record(client, step, sent, recvUs) {
  if (step === 0) {
    if (!client.probed) {
      client.probed = true;
      probedCount++;
    }
    return;
  }
  const st = stepStats(step);
  if (st.closed) {
    st.late++;
  } else {
    const latency = recvUs - sent;
    st.received++;
    if (latency > st.max) st.max = latency;
    const bucket = Math.floor(latency / BUCKET_US);
    st.hist[bucket < BUCKETS ? (bucket < 0 ? 0 : bucket) : BUCKETS - 1]++;
  }
}

// A publication's content string (`B|step|seq|sent|padding`), as a Socket.IO event carries it.
function scanContent(text, client) {
  if (typeof text !== 'string' || !text.startsWith('B|')) return 0;
  const parts = text.split('|', 4);
  record(client, Number(parts[1]), Number(parts[3]), nowUs());
  return 1;
}

// --- protocol adapters ----------------------------------------------------------------------
//
// An adapter knows how to open a connection (a subscriber on a channel, or a publisher:
// channel null) and how to publish on one server's protocol; the scenarios only speak of
// "subscribe", "publish" and "ready". A new peer with a new protocol adds an adapter here and a
// Peer entry in bench/peer.py. Every client, whatever carries it, has the same fields and the
// methods `isOpen()` and `terminate()` (see openClient).

const PAD = 'x'.repeat(1024);

function content(step, seq) {
  const head = `B|${step}|${seq}|${nowUs()}|`;
  const size = spec.contentBytes || 64;
  return head.length >= size ? head : head + PAD.slice(0, size - head.length);
}

// WebSocket protocols: what to send once open, and how to read replies until ready.
const wsProtocols = {
  // kizuna's native protocol: connect with a JWT, subscribe, publish; replies carry the id.
  kizuna: {
    open(client, channel) {
      client.send({ id: 1, method: 'connect', params: { token: client.token ?? spec.token } });
      if (channel !== null) {
        client.send({ id: 2, method: 'subscribe', params: { channel } });
        client.waitFor = 2;
      } else {
        client.waitFor = 1;
      }
      client.nextId = 2;
    },
    control(client, buf) {
      for (const line of buf.toString('utf8').split('\n')) {
        if (!line || line.includes('"B|')) continue;
        const msg = JSON.parse(line);
        if (msg.id === undefined) continue;
        if (msg.error) {
          client.fail(new Error(`kizuna error ${msg.error.code}: ${msg.error.message}`));
        } else if (msg.id === client.waitFor) {
          client.ready();
        }
      }
    },
    publish(client, channel, text) {
      client.ws.send(kizunaPublish(client, channel, text));
    },
  },
  // The guide's chat protocol (section 5): {type: subscribe|message}; no replies at all, so a
  // subscription is known to be live only when a probe publication arrives through it.
  guide: {
    open(client, channel) {
      if (channel !== null) client.send({ type: 'subscribe', channel });
      client.ready();
    },
    control() {},
    publish(client, channel, text) {
      client.ws.send(
        `{"type":"message","channel":${JSON.stringify(channel)},"user":"bench","content":"${text}"}`,
      );
    },
  },
};

function kizunaPublish(client, channel, text) {
  return `{"id":${++client.nextId},"method":"publish","params":{"channel":${JSON.stringify(
    channel,
  )},"data":{"user":"bench","content":"${text}"}}}`;
}

// kizuna's frames may carry several commands, one per line (docs/protocol.md), answered in
// order, several replies per frame. The `kizuna-batch` publisher packs each millisecond's
// publications into one frame (at most BATCH_MAX), as a client that sends one tick's commands
// together would; the scenarios call adapter.flush after each tick's publications.
const BATCH_MAX = 50;
const batchedPublisher = {
  publish(client, channel, text) {
    if (!client.batch) client.batch = [];
    client.batch.push(kizunaPublish(client, channel, text));
    if (client.batch.length >= BATCH_MAX) batchedPublisher.flush(client);
  },
  flush(client) {
    if (client.batch && client.batch.length) {
      client.ws.send(client.batch.join('\n'));
      client.batch = [];
    }
  },
};

function wsAdapter(protocol) {
  return {
    connect: (client) => connectWebSocket(client, protocol),
    publish: protocol.publish,
  };
}

const adapters = {
  kizuna: wsAdapter(wsProtocols.kizuna),
  guide: wsAdapter(wsProtocols.guide),
  'kizuna-batch': {
    connect: (client) => connectWebSocket(client, wsProtocols.kizuna),
    ...batchedPublisher,
  },
  // kizuna's SSE endpoint for subscribers (GET /connection/sse?channels=C, the token in an
  // Authorization header); the publisher stays on kizuna's native WebSocket, so only the
  // subscribers' transport differs from the `kizuna` adapter.
  'kizuna-sse': {
    connect(client) {
      if (client.channel === null) connectWebSocket(client, wsProtocols.kizuna);
      else connectSSE(client);
    },
    publish: wsProtocols.kizuna.publish,
  },
  // The guide's Socket.IO chat (section 3): joinRoom(room) with an ack, message({roomId,
  // content}) → the room gets newMessage({userId, content, timestamp}). The client's URL
  // (spec.url, or its node's) is the namespace's; its token, if any, goes in auth.token.
  socketio: {
    connect: connectSocketIO,
    publish(client, room, text) {
      client.socket.emit('message', { roomId: room, content: text }, (ack) => {
        if (ack && ack.ok === false) client.errors++;
        else client.acks++;
      });
    },
  },
};

const adapter = adapters[spec.protocol];
if (!adapter) throw new Error(`unknown protocol ${spec.protocol}`);

// --- connections ----------------------------------------------------------------------------

let probedCount = 0;
const disconnects = {};
let unexpectedCloses = 0;
let shuttingDown = false;

// Every node's URLs: several only in the multi-node scenario (xnode), the first being spec.url's.
const nodeUrls = spec.urls || [spec.url];
const nodeHttpBases = spec.httpBases || [spec.httpBase];

// Open one connection; resolves once the adapter says it is subscribed (or, for a publisher,
// connected). channel === null opens a publisher. `token` (kizuna) replaces the spec's shared
// one; `node` picks the server node (spec.urls / spec.httpBases, one per node; the first, which
// is spec.url, by default) for the multi-node scenario.
function openClient(channel, { token, node = 0 } = {}) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const client = {
      channel,
      token,
      url: nodeUrls[node], // this node's spec.url
      httpBase: nodeHttpBases[node], // this node's spec.httpBase
      probed: false,
      isReady: false,
      received: 0,
      acks: 0,
      errors: 0,
      isOpen: () => false,
      terminate() {},
      close() {
        client.terminate();
      },
      onClose: null, // called when the connection ends (closeCleanly counts on it)
      ready() {
        client.isReady = true;
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          resolve(client);
        }
      },
      fail(err) {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          client.terminate();
          reject(err);
        } else {
          client.errors++;
        }
      },
      // The connection ended: a disconnect unless we are the ones closing everything.
      closed(code) {
        if (client.onClose) client.onClose();
        if (!shuttingDown) {
          unexpectedCloses++;
          disconnects[code] = (disconnects[code] || 0) + 1;
        }
        client.fail(new Error(`closed with ${code} before ready`));
      },
    };
    const timer = setTimeout(() => client.fail(new Error('not ready after 30 s')), 30000);
    adapter.connect(client);
  });
}

function connectWebSocket(client, protocol) {
  const ws = new WebSocket(client.url, {
    perMessageDeflate: false,
    skipUTF8Validation: spec.skipUtf8 ?? true,
    handshakeTimeout: 30000,
  });
  client.ws = ws;
  client.isOpen = () => ws.readyState === WebSocket.OPEN;
  client.terminate = () => ws.terminate();
  client.close = () => ws.close(1000);
  client.send = (obj) => ws.send(JSON.stringify(obj));
  ws.on('open', () => protocol.open(client, client.channel));
  ws.on('message', (buf) => {
    const n = scanFrame(buf, client);
    client.received += n;
    if (!client.isReady) {
      protocol.control(client, buf);
    } else if (client.channel === null) {
      // Publisher: count acknowledgements and errors without parsing every reply.
      client.acks += countOccurrences(buf, RESULT);
      client.errors += countOccurrences(buf, ERROR);
    }
  });
  ws.on('error', (err) => client.fail(err));
  ws.on('close', (code) => client.closed(code));
}

// One SSE stream per subscriber, each on its own TCP connection (as browsers' EventSource).
// The request is written and the response read on a bare socket: Node's http client costs
// the generator several times more per chunk (its stream machinery), and at a million events
// a second it, not the server, was the bottleneck. The response is chunked; scanning works on
// the raw bytes all the same: a chunk's size line never contains the marker or a blank line,
// and kizuna writes each frame's events as one chunk.
const EVENT_END = Buffer.from('\n\n');
const HEAD_END = Buffer.from('\r\n\r\n');
const QUOTE = 0x22; // '"'

function connectSSE(client) {
  const url = new URL(
    `${client.httpBase}/connection/sse?channels=${encodeURIComponent(client.channel)}`,
  );
  const secure = url.protocol === 'https:';
  const port = Number(url.port) || (secure ? 443 : 80);
  const sock = secure
    ? tls.connect({ host: url.hostname, port, servername: url.hostname })
    : net.connect({ host: url.hostname, port });
  sock.setNoDelay(true);
  let open = false;
  let headers = true; // still reading the response head
  let rest = null; // what the last read left: part of the head, or of an event
  client.isOpen = () => open;
  client.terminate = () => sock.destroy();
  sock.on(secure ? 'secureConnect' : 'connect', () => {
    sock.write(
      `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
        `Authorization: Bearer ${client.token ?? spec.token}\r\n` +
        'Accept: text/event-stream\r\n\r\n',
    );
  });
  sock.on('data', (chunk) => {
    let buf = rest === null ? chunk : Buffer.concat([rest, chunk]);
    rest = null;
    if (headers) {
      const head = buf.indexOf(HEAD_END);
      if (head < 0) {
        rest = buf;
        return;
      }
      const status = Number(buf.toString('latin1', 9, 12)); // "HTTP/1.1 200 OK"
      if (status !== 200) {
        client.fail(new Error(`SSE ${status}: ${buf.toString('utf8', head + 4, head + 104)}`));
        sock.destroy();
        return;
      }
      headers = false;
      open = true;
      client.ready(); // subscribed or not yet: the probe publications prove every stream live
      buf = buf.subarray(head + HEAD_END.length);
    }
    const end = buf.lastIndexOf(EVENT_END);
    if (end < 0) {
      rest = buf.length ? buf : null;
      return;
    }
    // What follows the last complete event is usually the chunk's trailing CRLF and maybe the
    // next size line: carried over (a copy on the next read) only if it may hold the start of
    // a marker, which begins with a quote.
    rest = end + 2 < buf.length && buf.indexOf(QUOTE, end + 2) >= 0 ? buf.subarray(end + 2) : null;
    client.received += scanFrame(buf.subarray(0, end + 2), client);
  });
  sock.on('close', () => {
    open = false;
    client.closed('sse-end');
  });
  sock.on('error', (err) => {
    open = false;
    client.fail(err);
  });
}

function connectSocketIO(client) {
  const socket = io(client.url, {
    transports: ['websocket'],
    forceNew: true, // one Engine.IO connection per client, not one shared by all
    reconnection: false, // a lost subscriber is a disconnect, not a silent reconnect
    perMessageDeflate: false,
    timeout: 30000,
    auth: (client.token ?? spec.token) ? { token: client.token ?? spec.token } : {},
  });
  client.socket = socket;
  client.isOpen = () => socket.connected;
  client.terminate = () => socket.disconnect();
  client.close = () => socket.disconnect(); // socket.io's clean close: a disconnect packet
  socket.on('connect', () => {
    if (client.channel === null) {
      client.ready();
      return;
    }
    socket.emit('joinRoom', client.channel, (ack) => {
      if (ack && ack.ok === false) {
        client.fail(new Error(`joinRoom refused: ${JSON.stringify(ack.error)}`));
      } else {
        client.ready();
      }
    });
  });
  socket.on('newMessage', (data) => {
    client.received += scanContent(data && data.content, client);
  });
  socket.on('connect_error', (err) => client.fail(err));
  socket.on('disconnect', (reason) => client.closed(reason));
}

const RESULT = Buffer.from('"result"');
const ERROR = Buffer.from('"error"');

function countOccurrences(buf, needle) {
  let n = 0;
  let i = buf.indexOf(needle);
  while (i >= 0) {
    n++;
    i = buf.indexOf(needle, i + needle.length);
  }
  return n;
}

async function openMany(n, channelOf, nodeOf = () => 0) {
  const clients = [];
  const errors = {};
  let next = 0;
  let failed = 0;
  async function worker() {
    while (next < n) {
      const i = next++;
      try {
        clients.push(await openClient(channelOf(i), { node: nodeOf(i) }));
      } catch (err) {
        failed++;
        const key = String(err.message || err).slice(0, 120);
        errors[key] = (errors[key] || 0) + 1;
      }
    }
  }
  const concurrency = Math.min(spec.connectConcurrency || 100, n);
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { clients, failed, errors };
}

// Publish probe publications (step 0) on every channel until each subscriber got one.
async function probe(publisher, channels, subscribers, timeoutMs) {
  const deadline = performance.now() + timeoutMs;
  let seq = 0;
  while (probedCount < subscribers && performance.now() < deadline) {
    for (const channel of channels) adapter.publish(publisher, channel, content(0, ++seq));
    adapter.flush?.(publisher);
    await until(() => probedCount >= subscribers, 250);
  }
  return probedCount >= subscribers;
}

function closeAll(clients) {
  shuttingDown = true;
  for (const c of clients) c.terminate();
}

// --- scenarios ------------------------------------------------------------------------------

// fanout, and xnode: the same ladder with the subscribers split evenly over several nodes
// (spec.urls) and the publisher on the first one.
async function fanout() {
  const n = spec.subscribers;
  const channel = spec.channel;
  const nodeCount = nodeUrls.length;
  const nodes = nodeCount > 1 ? ` over ${nodeCount} nodes` : '';
  log(`fanout: opening ${n} subscribers on ${channel}${nodes}`);
  const t0 = performance.now();
  const opened = await openMany(n, () => channel, (i) => i % nodeCount);
  const subs = opened.clients;
  log(`fanout: ${subs.length} subscribed in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (opened.failed) {
    emit({ event: 'result', ok: false, error: 'subscribers failed', errors: opened.errors });
    return;
  }
  const publisher = await openClient(null); // on the first node
  if (!(await probe(publisher, [channel], n, 60000))) {
    emit({ event: 'result', ok: false, error: `probe: ${probedCount}/${n} subscribers live` });
    return;
  }
  log(`fanout: all ${n} subscribers live`);
  await sleep(spec.settleMs ?? 1000); // let join/leave and probe traffic die down
  log(`fanout: steps start (rates ${spec.rates.join(', ')} msg/s, ${spec.stepSeconds} s each)`);

  const results = [];
  let stepId = 0;
  let best = null;
  // Climb the ladder. A rate fails when every try fails; the ladder stops after `stopAfter`
  // failed rates in a row (a server may miss the latency limit at a low rate and meet it at a
  // higher one, when its frames coalesce), or at once when subscribers were disconnected.
  let failedInARow = 0;
  let noLoss = null;
  for (const rate of spec.rates) {
    let attempt = 0;
    let passed = false;
    let gone = false;
    while (attempt <= (spec.retries ?? 1) && !passed) {
      attempt++;
      const r = await runStep(++stepId, rate, publisher, subs);
      r.attempt = attempt;
      results.push(r);
      emit({ event: 'step', ...r });
      passed = r.pass;
      if (r.lost === 0 && r.disconnects === 0) noLoss = r;
      if (r.disconnects > 0) {
        gone = true; // subscribers are gone: a retry would measure nothing
        break;
      }
      if (!passed) await backlogDrained(); // let a backlog drain before going on
    }
    if (passed) {
      best = results[results.length - 1];
      failedInARow = 0;
    } else {
      failedInARow++;
    }
    if (gone || failedInARow >= (spec.stopAfter ?? 2)) break;
  }
  // xnode: one step at half a maximum rate (spec.halfRate: the reference server's; else this
  // server's own), where the latency is compared.
  let half = null;
  const halfRate = spec.halfRate || (best ? Math.floor(best.rate / 2) : 0);
  if (spec.halfStep && halfRate > 0 && subs.every((c) => c.isOpen())) {
    await backlogDrained();
    half = await runStep(++stepId, halfRate, publisher, subs);
    half.half = true;
    emit({ event: 'step', ...half });
  }
  // One step at a fixed high rate, the same for every server (above the peers' limits), with
  // a longer drain. Does the server still deliver everything, late, or does it lose messages
  // or subscribers?
  let overload = null;
  if (spec.overloadRate && subs.every((c) => c.isOpen())) {
    await backlogDrained();
    const drain = spec.overloadDrainSeconds;
    overload = await runStep(++stepId, spec.overloadRate, publisher, subs, drain);
    overload.overload = true;
    emit({ event: 'step', ...overload });
  }
  const genCpu = Math.max(...results.map((r) => r.cpu.generator));
  emit({
    event: 'result',
    ok: true,
    scenario: spec.scenario,
    subscribers: subs.length,
    nodes: nodeCount,
    steps: results,
    best,
    noLoss,
    half,
    overload,
    maxGeneratorCpu: genCpu,
    publisherAcks: publisher.acks,
    publisherErrors: publisher.errors,
  });
  closeAll([...subs, publisher]);
}

// Wait until deliveries of earlier steps stop arriving (at most 10 s).
async function backlogDrained() {
  const late = () => [...steps.values()].reduce((n, st) => n + st.late, 0);
  const deadline = performance.now() + 10000;
  let before = -1;
  while (performance.now() < deadline) {
    const now = late();
    if (now === before) return;
    before = now;
    await sleep(500);
  }
}

// Where a step's messages go: fanout sends all to spec.channel, which every subscriber follows.
const FANOUT_ROUTE = { channel: () => spec.channel, recipients: (live) => live };

async function runStep(
  stepId,
  rate,
  publisher,
  subs,
  drainSeconds = spec.drainSeconds,
  route = FANOUT_ROUTE,
) {
  const st = stepStats(stepId);
  const seconds = spec.stepSeconds;
  const total = Math.max(1, Math.round(rate * seconds));
  const closesBefore = unexpectedCloses;
  const live = subs.filter((c) => c.isOpen()).length;
  const cpu0 = cpuSnapshot();
  const start = performance.now();
  let sent = 0;
  // Paced, not bursty: every millisecond, whatever is due by now (a few messages at most).
  await new Promise((resolve) => {
    function tick() {
      const due = Math.min(total, Math.floor(((performance.now() - start) / 1000) * rate) + 1);
      while (sent < due) adapter.publish(publisher, route.channel(), content(stepId, ++sent));
      adapter.flush?.(publisher);
      if (sent >= total) resolve();
      else setTimeout(tick, 1);
    }
    tick();
  });
  const cpu1 = cpuSnapshot();
  // The step's window is sent / rate seconds, though its last message leaves 1 / rate earlier:
  // at 1 msg/s, 3 messages take 2 s, and dividing by 2 s would claim 1.5 msg/s.
  const publishSeconds = Math.max((performance.now() - start) / 1000, sent / rate);
  const expected = sent * route.recipients(live);
  await until(() => st.received >= expected, (drainSeconds ?? 3) * 1000);
  st.closed = true;
  const cpu2 = cpuSnapshot();
  const lost = Math.max(0, expected - st.received);
  const p99 = percentile(st, 0.99);
  const disconnectsNow = unexpectedCloses - closesBefore;
  return {
    step: stepId,
    rate,
    sent,
    publishRate: Math.round(sent / publishSeconds),
    subscribers: live,
    expected,
    received: st.received,
    lost,
    deliveriesPerSecond: Math.round(st.received / publishSeconds),
    p50: percentile(st, 0.5),
    p99,
    max: st.max / 1000,
    disconnects: disconnectsNow,
    cpu: cpuPercent(cpu0, cpu1),
    cost: costPerDelivery(cpu0, cpu2, st.received),
    pass: lost === 0 && disconnectsNow === 0 && p99 !== null && p99 < spec.p99LimitMs,
  };
}

async function idle() {
  const n = spec.connections;
  const nChannels = spec.channels;
  const channelName = (i) => `${spec.channelPrefix}${i % nChannels}`;
  await sleep(500);
  const before = rssKb(spec.rssPid);
  log(`idle: server RSS ${before} kB; opening ${n} connections over ${nChannels} channels`);
  const cpu0 = cpuSnapshot();
  const t0 = performance.now();
  const opened = await openMany(n, channelName);
  const connectSeconds = (performance.now() - t0) / 1000;
  const cpu1 = cpuSnapshot();
  log(`idle: ${opened.clients.length} subscribed in ${connectSeconds.toFixed(1)} s`);
  if (opened.failed) {
    emit({ event: 'result', ok: false, error: 'connections failed', errors: opened.errors });
    closeAll(opened.clients);
    return;
  }
  const publisher = await openClient(null);
  const channels = Array.from({ length: nChannels }, (_, i) => channelName(i));
  const live = await probe(publisher, channels, n, 60000);
  await sleep(spec.settleMs ?? 2000);
  const after = rssKb(spec.rssPid);
  const result = {
    event: 'result',
    ok: live,
    scenario: 'idle',
    connections: opened.clients.length,
    probed: probedCount,
    connectSeconds: Math.round(connectSeconds * 100) / 100,
    connectsPerSecond: Math.round(n / connectSeconds),
    connectCpu: cpuPercent(cpu0, cpu1),
    rssBeforeKb: before,
    rssAfterKb: after,
    kbPerConnection: Math.round(((after - before) / n) * 100) / 100,
    unexpectedCloses,
  };
  if (!live) result.error = `probe: ${probedCount}/${n} connections live`;
  emit(result);
  closeAll([...opened.clients, publisher]);
}

// Scenario D: many channels, one subscriber each (its own channel); one publisher sends a
// steady rate to channels drawn at random, so every message has exactly one recipient. What
// it measures is the per-publication cost of routing, not of fan-out: server CPU, loss, p99.
async function channels() {
  const n = spec.connections;
  const names = Array.from({ length: n }, (_, i) => `${spec.channelPrefix}${i}`);
  log(`channels: opening ${n} subscribers, one channel each`);
  const t0 = performance.now();
  const opened = await openMany(n, (i) => names[i]);
  const subs = opened.clients;
  log(`channels: ${subs.length} subscribed in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  if (opened.failed) {
    emit({ event: 'result', ok: false, error: 'subscribers failed', errors: opened.errors });
    closeAll(subs);
    return;
  }
  const publisher = await openClient(null);
  if (!(await probe(publisher, names, n, 60000))) {
    emit({ event: 'result', ok: false, error: `probe: ${probedCount}/${n} subscribers live` });
    closeAll([...subs, publisher]);
    return;
  }
  await sleep(spec.settleMs ?? 1000);
  log(`channels: steps start (${spec.rate} msg/s to random channels for ${spec.stepSeconds} s)`);
  const random = seededRandom(spec.seed ?? 1);
  const route = { channel: () => names[Math.floor(random() * n)], recipients: () => 1 };
  const step = await runStep(1, spec.rate, publisher, subs, spec.drainSeconds, route);
  emit({ event: 'step', ...step });
  emit({
    event: 'result',
    ok: true,
    scenario: 'channels',
    connections: subs.length,
    step,
    publisherAcks: publisher.acks,
    publisherErrors: publisher.errors,
  });
  closeAll([...subs, publisher]);
}

// mulberry32: the same "random" channels for every server of a run.
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// --- scenario C: connect rate ---------------------------------------------------------------
//
// `connects` connections with `connectConcurrency` handshakes in flight. A connection counts as
// connected when the server has answered it: for kizuna the connect reply, after the server
// verified that connection's own JWT (spec.tokens: one per connection); for the guide's servers,
// which authenticate nothing, the WebSocket being open. Latency runs from creating the socket
// (TCP connect, HTTP upgrade, and for kizuna the connect command) to that answer. Then every
// connection is closed cleanly and, after a pause, the next pass starts: `connectPasses` passes,
// every one reported; the best counts (on a shared machine noise only ever slows a pass down).

function sortedPercentile(sorted, q) {
  if (sorted.length === 0) return null;
  const rank = Math.min(sorted.length, Math.ceil(q * sorted.length));
  return Math.round(sorted[rank - 1] * 100) / 100;
}

// Close every connection cleanly (a WebSocket close frame; Socket.IO's disconnect packet) and
// wait (bounded) until all are closed. One already gone counts as closed.
async function closeCleanly(clients, timeoutMs = 30000) {
  shuttingDown = true;
  let closed = 0;
  const t0 = performance.now();
  for (const c of clients) {
    if (!c.isOpen()) {
      closed++;
      continue;
    }
    c.onClose = () => closed++;
    c.close();
  }
  const all = await until(() => closed >= clients.length, timeoutMs);
  const seconds = Math.round((performance.now() - t0) / 10) / 100;
  if (!all) for (const c of clients) c.terminate();
  return { seconds, closed };
}

async function connectPass(pass) {
  const n = spec.connects;
  const tokens = spec.tokens || [];
  const latencies = [];
  const clients = [];
  const errors = {};
  let failed = 0;
  let next = 0;
  shuttingDown = false;
  const cpu0 = cpuSnapshot();
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      const token = tokens.length ? tokens[i % tokens.length] : undefined;
      const started = performance.now();
      try {
        clients.push(await openClient(null, { token }));
        latencies.push(performance.now() - started);
      } catch (err) {
        failed++;
        const key = String(err.message || err).slice(0, 120);
        errors[key] = (errors[key] || 0) + 1;
      }
    }
  }
  await Promise.all(Array.from({ length: Math.min(spec.connectConcurrency || 100, n) }, worker));
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = cpuSnapshot();
  // Still there a moment later? A server that answers and then drops is not connecting.
  await sleep(spec.holdMs ?? 1000);
  const dropped = clients.filter((c) => !c.isOpen()).length;
  const closing = await closeCleanly(clients);
  latencies.sort((a, b) => a - b);
  return {
    pass,
    connections: n,
    connected: clients.length,
    failed,
    errors,
    seconds: Math.round(seconds * 1000) / 1000,
    connectsPerSecond: Math.round(clients.length / seconds),
    p50: sortedPercentile(latencies, 0.5),
    p99: sortedPercentile(latencies, 0.99),
    max: latencies.length ? Math.round(latencies[latencies.length - 1] * 100) / 100 : null,
    cpu: cpuPercent(cpu0, cpu1),
    cost: costPerDelivery(cpu0, cpu1, clients.length), // CPU µs per connection
    dropped,
    closeSeconds: closing.seconds,
    closed: closing.closed,
  };
}

async function connect() {
  const n = spec.connects;
  const tokens = spec.tokens || [];
  const auth = tokens.length ? `${new Set(tokens).size} distinct JWT(s)` : 'no authentication';
  log(`connect: ${n} connections, ${spec.connectConcurrency} in flight, ${auth}`);
  const passes = [];
  for (let pass = 1; pass <= (spec.connectPasses ?? 1); pass++) {
    if (pass > 1) await sleep(spec.pauseMs ?? 1000); // let the server finish the closes
    const r = await connectPass(pass);
    passes.push(r);
    log(
      `connect: pass ${pass}: ${r.connected}/${n} in ${r.seconds} s = ${r.connectsPerSecond}/s, ` +
        `p50 ${r.p50} ms p99 ${r.p99} ms max ${r.max} ms, failed ${r.failed}, ` +
        `dropped ${r.dropped}, cpu server ${r.cpu.server ?? '—'}% generator ${r.cpu.generator}%, ` +
        `closed ${r.closed} in ${r.closeSeconds} s`,
    );
  }
  const clean = passes.filter((r) => r.failed === 0 && r.dropped === 0);
  const pool = clean.length ? clean : passes;
  const best = pool.reduce((a, b) => (b.connectsPerSecond > a.connectsPerSecond ? b : a));
  const result = {
    event: 'result',
    ok: clean.length === passes.length,
    scenario: 'connect',
    connections: n,
    concurrency: spec.connectConcurrency,
    distinctTokens: new Set(tokens).size,
    passes,
    bestPass: best, // not `best`: run.py reads that as a fan-out step
  };
  if (!result.ok) {
    const bad = passes.filter((r) => r.failed || r.dropped);
    result.error = bad
      .map((r) => `pass ${r.pass}: ${r.failed} failed, ${r.dropped} dropped`)
      .join('; ');
    result.errors = {};
    for (const r of bad) {
      for (const [key, count] of Object.entries(r.errors)) {
        result.errors[key] = (result.errors[key] || 0) + count;
      }
    }
  }
  emit(result);
}

const scenarios = { fanout, idle, xnode: fanout, channels, connect };

scenarios[spec.scenario]()
  .then(() => setTimeout(() => process.exit(0), 200))
  .catch((err) => {
    emit({ event: 'result', ok: false, error: String((err && err.stack) || err) });
    process.exit(1);
  });
