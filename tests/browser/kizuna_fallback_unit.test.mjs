// Unit tests of kizuna.js's fallback parts: the cursor the HTTP transports build, the SSE
// parser, token expiry, URLs, and how the Client orders transports that keep failing.
// Run by Node's own test runner (tests/browser/test_kizuna_js_unit.py runs it under pytest):
//   node --test tests/browser/kizuna_fallback_unit.test.mjs

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  Client,
  MalformedFrame,
  SSEParser,
  TRANSPORTS,
  decodeCursor,
  encodeCursor,
  httpUrl,
  registerTransport,
  tokenExpiry,
} from '../../src/kizuna/web/static/kizuna.js';

// --- cursors ------------------------------------------------------------------------------

// From the server's own encoder (kizuna.protocol.cursor.encode_cursor), so both sides agree
// byte for byte, non-ASCII channel names included.
// The names are chosen so that the encoding holds both '-' and '_' (base64's '+' and '/').
const SERVER_CURSOR = 'W1siY2hhdDpyb29tLTQyIiw3LCI3MWE1NmMyNCJdLFsiY2hhdDrDvG7Dry_wn5iAIiwwLCJlIl0sWyJjaGF0Oj4-Pn5-fiIsMTIsImYiXV0';
const SERVER_POSITIONS = [
  ['chat:room-42', { offset: 7, epoch: '71a56c24' }],
  ['chat:ünï/😀', { offset: 0, epoch: 'e' }],
  ['chat:>>>~~~', { offset: 12, epoch: 'f' }],
];

test('a cursor encodes exactly as the server encodes it', () => {
  assert.equal(encodeCursor(SERVER_POSITIONS), SERVER_CURSOR);
  assert.equal(encodeCursor(new Map(SERVER_POSITIONS)), SERVER_CURSOR);
  assert.equal(encodeCursor(Object.fromEntries(SERVER_POSITIONS)), SERVER_CURSOR);
  assert.equal(encodeCursor([]), 'W10'); // the server's encoding of no positions
  assert.match(SERVER_CURSOR, /-.*_|_.*-/);
  assert.doesNotMatch(SERVER_CURSOR, /[+/=]/); // base64url without padding: safe in a URL and a header
});

test('a server cursor decodes to its positions, in order', () => {
  assert.deepEqual([...decodeCursor(SERVER_CURSOR)], SERVER_POSITIONS);
  assert.deepEqual([...decodeCursor('')], []);
  const many = Array.from({ length: 50 }, (_, i) => [`chat:r${i}`, { offset: i * 1000, epoch: `e${i}` }]);
  assert.deepEqual([...decodeCursor(encodeCursor(many))], many);
});

test('malformed cursors are refused with MalformedFrame', () => {
  const b64 = (text) => Buffer.from(text).toString('base64url');
  for (const bad of ['%%%', b64('not json'), b64('{"a":1}'), b64('[["c",1]]'), b64('[["c",-1,"e"]]'), b64('[["c",1.5,"e"]]'), b64('[[1,1,"e"]]'), b64('[["c",1,2]]')]) {
    assert.throws(() => decodeCursor(bad), MalformedFrame, bad);
  }
});

// --- SSE parsing --------------------------------------------------------------------------

/** Feed `text` in pieces cut at `cuts`, collecting everything the parser completes. */
function parseInPieces(text, cuts) {
  const parser = new SSEParser();
  const out = [];
  let at = 0;
  for (const cut of [...cuts, text.length]) {
    out.push(...parser.feed(text.slice(at, cut)));
    at = cut;
  }
  return out;
}

// What kizuna's SSE endpoint writes (src/kizuna/transports/sse.py), byte for byte.
const STREAM = [
  'event: connected\ndata: {"client":"c1","version":"0.1.0"}\n\n',
  'id: W1siY2hhdDphIiwxLCJlIl1d\nevent: pub\ndata: {"push":"pub","channel":"chat:a","data":{"t":"a:b"},"offset":1,"epoch":"e"}\n\n',
  ': ping\n\n',
  'event: join\ndata: {"push":"join","channel":"chat:a","info":{"user":"u","client":"c1"}}\n\n',
  'event: gap\ndata: {"push":"gap","channel":"chat:t","offset":5,"epoch":"e"}\n\n',
].join('');

const EXPECTED = [
  { type: 'event', event: 'connected', data: '{"client":"c1","version":"0.1.0"}', id: '' },
  { type: 'event', event: 'pub', data: '{"push":"pub","channel":"chat:a","data":{"t":"a:b"},"offset":1,"epoch":"e"}', id: 'W1siY2hhdDphIiwxLCJlIl1d' },
  { type: 'comment', text: 'ping' },
  // `id` persists: an event without its own id carries the last one (the browser's Last-Event-ID)
  { type: 'event', event: 'join', data: '{"push":"join","channel":"chat:a","info":{"user":"u","client":"c1"}}', id: 'W1siY2hhdDphIiwxLCJlIl1d' },
  { type: 'event', event: 'gap', data: '{"push":"gap","channel":"chat:t","offset":5,"epoch":"e"}', id: 'W1siY2hhdDphIiwxLCJlIl1d' },
];

test('the server stream parses into its events, however the network splits it', () => {
  assert.deepEqual(parseInPieces(STREAM, []), EXPECTED);
  for (let cut = 1; cut < STREAM.length; cut += 1) {
    assert.deepEqual(parseInPieces(STREAM, [cut]), EXPECTED, `cut at ${cut}`);
  }
  const everyByte = Array.from({ length: STREAM.length - 1 }, (_, i) => i + 1);
  assert.deepEqual(parseInPieces(STREAM, everyByte), EXPECTED);
});

test('CRLF and CR line ends, a CRLF split between chunks, and a BOM', () => {
  const crlf = '\ufeffevent: pub\r\ndata: 1\r\n\r\nevent: pub\rdata: 2\r\r';
  const want = [
    { type: 'event', event: 'pub', data: '1', id: '' },
    { type: 'event', event: 'pub', data: '2', id: '' },
  ];
  assert.deepEqual(parseInPieces(crlf, []), want);
  for (let cut = 1; cut < crlf.length; cut += 1) assert.deepEqual(parseInPieces(crlf, [cut]), want, `cut at ${cut}`);
  // A CR at the very end of a chunk followed by a LF is one line end, not two (no empty event).
  assert.deepEqual(parseInPieces('data: x\r\n\r\n', [8]), [{ type: 'event', event: 'message', data: 'x', id: '' }]);
});

test('multi-line data, fields without a value, events without data, unknown fields', () => {
  const text = 'data: a\ndata\ndata:  b\n\nevent: nothing\n\nretry: 10\nfoo: bar\nid: 7\ndata:c\n\n';
  assert.deepEqual(parseInPieces(text, []), [
    { type: 'event', event: 'message', data: 'a\n\n b', id: '' },
    { type: 'event', event: 'message', data: 'c', id: '7' },
  ]);
  const parser = new SSEParser();
  parser.feed('data: incomplete');
  assert.equal(parser.lastEventId, '');
  assert.deepEqual(parser.feed('\nid: a\0b\n\n'), [{ type: 'event', event: 'message', data: 'incomplete', id: '' }]);
});

// --- tokens and URLs ----------------------------------------------------------------------

test('the expiry of a JWT is read without verifying it', () => {
  const jwt = (claims) => `h.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.s`;
  assert.equal(tokenExpiry(jwt({ sub: 'a', exp: 1795761411 })), 1795761411);
  assert.equal(tokenExpiry(jwt({ sub: 'a' })), null);
  assert.equal(tokenExpiry(jwt({ sub: 'a', exp: 'soon' })), null);
  for (const opaque of ['not-a-jwt', 'a.%%%.c', '', null]) assert.equal(tokenExpiry(opaque), null);
});

test('HTTP endpoints sit beside the WebSocket endpoint, under any prefix', () => {
  assert.equal(httpUrl('http://127.0.0.1:8000', '/connection/sse'), 'http://127.0.0.1:8000/connection/sse');
  assert.equal(httpUrl('wss://chat.example/connection/websocket', '/connection/poll'), 'https://chat.example/connection/poll');
  assert.equal(httpUrl('https://chat.example/kizuna/', '/connection/publish'), 'https://chat.example/kizuna/connection/publish');
  assert.equal(httpUrl('ws://h:1/kizuna/connection/websocket', '/connection/sse'), 'http://h:1/kizuna/connection/sse');
});

test('the fallbacks are real transports: every slot of the registry is filled', () => {
  for (const name of ['websocket', 'sse', 'longpoll']) assert.equal(typeof TRANSPORTS[name], 'function', name);
  // Node 20 has fetch and streams, so the HTTP transports can be made here; WebSocket cannot.
  assert.equal(TRANSPORTS.sse('http://127.0.0.1:9', {}).name, 'sse');
  assert.equal(TRANSPORTS.longpoll('http://127.0.0.1:9', {}).name, 'longpoll');
});

test('an HTTP transport that is refused does not open, and says what answered', async () => {
  for (const name of ['sse', 'longpoll']) {
    const transport = TRANSPORTS[name]('http://127.0.0.1:9', {});
    await assert.rejects(transport.open(2000), (e) => e instanceof Error);
    assert.throws(() => transport.send('{"id":1,"method":"connect","params":{}}'), (e) => e.name === 'NotSent');
  }
});

// --- the Client's choice of transport -----------------------------------------------------

/**
 * A scripted transport: `refuse` fails open(); `mute` opens but never answers. It answers
 * connect, subscribe and unsubscribe like a server; `made` keeps every instance.
 */
function scripted(name, { refuse = false, mute = false, made = [] } = {}) {
  registerTransport(name, () => {
    const t = {
      name,
      sent: [],
      onmessage() {},
      onclose() {},
      async open() {
        made.push(t);
        if (refuse) throw new Error(`${name} refused`);
      },
      send(text) {
        const command = JSON.parse(text);
        t.sent.push(command);
        if (mute) return;
        const results = { connect: { client: `${name}-${made.length}` }, subscribe: t.subscribeResult?.(command) ?? {}, unsubscribe: {} };
        queueMicrotask(() => t.onmessage(JSON.stringify({ id: command.id, result: results[command.method] ?? {} })));
      },
      push(obj) {
        t.onmessage(JSON.stringify(obj));
      },
      close(code = 1000, reason = '') {
        if (t.closed) return;
        t.closed = true;
        t.onclose({ code, reason });
      },
    };
    return t;
  });
  return made;
}

const waitFor = async (check, ms = 2000) => {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 2));
  }
};

test('a transport refused where the next one opens is tried last after fallbackAfter times', async (t) => {
  const blocked = scripted('t-blocked', { refuse: true });
  const good = scripted('t-good');
  const connected = [];
  const client = new Client('http://h', { token: 't', transports: ['t-blocked', 't-good'], backoff: { minDelay: 1, maxDelay: 2 } });
  t.after(() => client.close());
  client.on('state', (s) => s.state === 'connected' && connected.push(s.transport));
  await client.connect();
  for (let drop = 1; drop <= 3; drop += 1) {
    good.at(-1).close(1006, 'connection lost');
    await waitFor(() => connected.length === drop + 1);
  }
  // Refused twice, then no longer asked first: four sessions, two refusals.
  assert.deepEqual(connected, ['t-good', 't-good', 't-good', 't-good']);
  assert.equal(blocked.length, 2);
});

test('a transport that opens but never completes connect is tried last after two such sessions', async (t) => {
  const mute = scripted('t-mute', { mute: true });
  scripted('t-fine');
  const states = [];
  const client = new Client('http://h', { token: 't', transports: ['t-mute', 't-fine'], timeout: 30, backoff: { minDelay: 1, maxDelay: 2 } });
  t.after(() => client.close());
  client.on('state', (s) => states.push(s.state === 'connected' ? s.transport : s.state));
  await Promise.race([client.connect(), new Promise((r) => setTimeout(r, 2000))]);
  assert.equal(mute.length, 2);
  assert.deepEqual(states.filter((s) => s !== 'connecting'), ['disconnected', 'disconnected', 't-fine']);
});

test('when every transport fails, none is demoted: the server is down, not a transport', async () => {
  const a = scripted('t-down-a', { refuse: true });
  const b = scripted('t-down-b', { refuse: true });
  const client = new Client('http://h', { token: 't', transports: ['t-down-a', 't-down-b'], backoff: { minDelay: 1, maxDelay: 2, maxAttempts: 4 } });
  await assert.rejects(client.connect(), (e) => e.name === 'Disconnected' && e.message.includes('t-down-b refused'));
  assert.equal(a.length, 4);
  assert.equal(b.length, 4);
  assert.deepEqual(client._transportOrder, ['t-down-a', 't-down-b']);
});

test('an unsubscribe push with a 3xxx code resubscribes from the position; the gap reaches the app', async (t) => {
  const made = scripted('t-gap');
  const client = new Client('http://h', { token: 't', transports: ['t-gap'] });
  t.after(() => client.close());
  await client.connect();
  const wire = made[0];
  wire.subscribeResult = (command) => (command.params.since ? { recoverable: true, offset: 9, epoch: 'e', recovered: false } : { recoverable: true, offset: 4, epoch: 'e' });
  const events = [];
  await client.subscribe('chat:g', { handler: (e) => events.push(e.type === 'publication' ? e.offset : [e.type, e.gap, e.resubscribed]) });
  wire.push({ push: 'pub', channel: 'chat:g', data: 5, offset: 5, epoch: 'e' });
  wire.push({ push: 'unsubscribe', channel: 'chat:g', code: 3005, reason: 'insufficient state' });
  await waitFor(() => events.length === 3);
  wire.push({ push: 'pub', channel: 'chat:g', data: 10, offset: 10, epoch: 'e' });
  await waitFor(() => events.length === 4);
  assert.deepEqual(events, [['subscribed', false, false], 5, ['subscribed', true, true], 10]);
  assert.deepEqual(wire.sent.slice(-2).map((c) => [c.method, c.params]), [
    ['unsubscribe', { channel: 'chat:g' }],
    ['subscribe', { channel: 'chat:g', since: { offset: 5, epoch: 'e' } }],
  ]);
  // Any other code ends the subscription, as before.
  wire.push({ push: 'unsubscribe', channel: 'chat:g', code: 103, reason: 'permission denied' });
  await waitFor(() => client.subscription('chat:g') === null);
});
