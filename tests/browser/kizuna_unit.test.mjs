// Unit tests of kizuna.js's pure parts (backoff, frame decoding, result checks, URLs),
// run by Node's own test runner: `node --test tests/browser/kizuna_unit.test.mjs`
// (tests/browser/test_kizuna_js_unit.py runs it under pytest).

import assert from 'node:assert/strict';
import test from 'node:test';

import {
  Backoff,
  Client,
  MalformedFrame,
  Subscription,
  decodeServerFrame,
  endpointUrl,
  parse,
  reconnectAllowed,
} from '../../src/kizuna/web/static/kizuna.js';

function seeded(seed) {
  // mulberry32: a small deterministic PRNG, so a failure can be replayed
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test('backoff defaults are 500 ms to 20 s, doubling, never giving up', () => {
  const b = new Backoff();
  assert.deepEqual([b.minDelay, b.maxDelay, b.factor, b.maxAttempts], [500, 20000, 2, null]);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map((n) => b.ceiling(n)), [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
  assert.equal(b.ceiling(100000), 20000);
  assert.equal(b.givesUp(10 ** 9), false);
});

test('every backoff delay lies in [min, ceiling] and spreads over it', () => {
  const b = new Backoff();
  for (const failures of [0, 1, 2, 3, 6, 10, 40]) {
    const random = seeded(failures + 1);
    const delays = Array.from({ length: 2000 }, () => b.delay(failures, random));
    const ceiling = b.ceiling(failures);
    assert.ok(delays.every((d) => d >= 500 && d <= ceiling), `failures=${failures}`);
    if (ceiling > 500) assert.ok((Math.max(...delays) - Math.min(...delays)) / (ceiling - 500) > 0.9);
  }
});

test('maxAttempts gives up after that many failures', () => {
  const b = new Backoff({ maxAttempts: 3 });
  assert.deepEqual([0, 1, 2, 3, 4].map((n) => b.givesUp(n)), [false, false, false, true, true]);
});

test('invalid backoff policies are refused', () => {
  for (const bad of [{ minDelay: -1 }, { minDelay: 5, maxDelay: 1 }, { factor: 0.5 }, { maxAttempts: 0 }, { minDelay: NaN }]) {
    assert.throws(() => new Backoff(bad), RangeError);
  }
});

test('a coalesced frame decodes in order', () => {
  const frame = [
    '{"id":3,"result":{"offset":7,"epoch":"e"}}',
    '{"push":"pub","channel":"chat:a","data":{"t":1},"offset":8,"info":{"user":"alice","client":"c1"},"epoch":"e"}',
    '{"push":"join","channel":"chat:a","info":{"user":"alice","client":"c1"}}',
    '{"push":"sparkle","x":1}',
    '{"push":"unsubscribe","channel":"chat:a","code":2500,"reason":"gone"}',
    '{"id":4,"error":{"code":103,"message":"permission denied"}}',
    '{"push":"disconnect","code":3001,"reason":"shutdown","reconnect":true}',
  ].join('\n');
  assert.deepEqual(decodeServerFrame(frame), [
    { type: 'reply', id: 3, result: { offset: 7, epoch: 'e' } },
    { type: 'publication', channel: 'chat:a', data: { t: 1 }, offset: 8, epoch: 'e', info: { user: 'alice', client: 'c1' } },
    { type: 'join', channel: 'chat:a', info: { user: 'alice', client: 'c1' } },
    { type: 'unsubscribed', channel: 'chat:a', code: 2500, reason: 'gone' },
    { type: 'error', id: 4, code: 103, message: 'permission denied' },
    { type: 'disconnect', code: 3001, reason: 'shutdown', reconnect: true, delay: null },
  ]);
});

test('binary frames are decoded as UTF-8, and refused when they are not', () => {
  const bytes = new TextEncoder().encode('{"id":1,"result":{}}');
  assert.deepEqual(decodeServerFrame(bytes.buffer), [{ type: 'reply', id: 1, result: {} }]);
  assert.throws(() => decodeServerFrame(new Uint8Array([0xff, 0xfe, 0x41]).buffer), MalformedFrame);
});

const MALFORMED = [
  ['<html>502 Bad Gateway</html>', 'not JSON: "<html>502 Bad Gateway</html>"'],
  ['[1,2]', 'not a JSON object'],
  ['{"hello":1}', 'neither a reply (id) nor a push'],
  ['{"id":0,"result":{}}', 'reply id must be a positive integer, got 0'],
  ['{"id":"7","result":{}}', 'reply id must be a positive integer, got "7"'],
  ['{"id":1.5,"result":{}}', 'reply id must be a positive integer, got 1.5'],
  ['{"id":1,"result":[]}', 'reply 1: result must be an object'],
  ['{"id":1,"error":"boom"}', 'reply 1: error must be an object'],
  ['{"push":"pub","channel":"c"}', 'publication without data'],
  ['{"push":"pub","channel":"","data":1}', 'channel must not be empty'],
  ['{"push":"pub","channel":"c","data":1,"offset":3}', 'must carry its epoch'],
  ['{"push":"pub","channel":"c","data":1,"info":"bob"}', 'info must be an object'],
  ['{"push":"disconnect","code":3001,"reason":"x"}', 'reconnect must be a boolean'],
  ['{"push":7}', 'push must be a string'],
];

for (const [line, message] of MALFORMED) {
  test(`malformed: ${line}`, () => {
    assert.throws(
      () => decodeServerFrame(`{"id":1,"result":{}}\n${line}`),
      (error) => error instanceof MalformedFrame && error.message.includes(message),
    );
  });
}

test('long garbage is quoted short', () => {
  assert.throws(() => decodeServerFrame('x'.repeat(10000)), (e) => e.message.length < 120);
});

test('subscribe results are checked', () => {
  const ok = parse.subscribe(
    { recoverable: true, offset: 5, epoch: 'e', recovered: true, publications: [{ data: 4, offset: 4 }, { data: 5, offset: 5 }] },
    'chat:a',
  );
  assert.deepEqual(ok.position, { offset: 5, epoch: 'e' });
  assert.deepEqual(ok.publications.map((p) => [p.data, p.offset, p.epoch]), [[4, 4, 'e'], [5, 5, 'e']]);
  assert.deepEqual(parse.subscribe({}, 'n:x'), { recoverable: false, position: null, recovered: false, publications: [] });
  for (const bad of [
    { recoverable: true, epoch: 'e' },
    { recoverable: true, offset: 1, epoch: 5 },
    { recoverable: 'yes', offset: 1, epoch: 'e' },
    { recoverable: true, offset: 2, epoch: 'e', publications: [{ data: 1, offset: 2 }, { data: 1, offset: 1 }] },
    { recoverable: true, offset: 2, epoch: 'e', publications: [{ data: 1, offset: 3 }] },
  ]) {
    assert.throws(() => parse.subscribe(bad, 'chat:a'), /subscribe result for "chat:a"/);
  }
});

test('endpoints become transport URLs', () => {
  assert.equal(endpointUrl('http://127.0.0.1:8000', '/connection/websocket', 'ws'), 'ws://127.0.0.1:8000/connection/websocket');
  assert.equal(endpointUrl('https://chat.example/', '/connection/websocket', 'ws'), 'wss://chat.example/connection/websocket');
  assert.equal(endpointUrl('ws://h:1/custom', '/connection/websocket', 'ws'), 'ws://h:1/custom');
  assert.equal(endpointUrl('wss://h/', '/connection/sse', 'http'), 'https://h/connection/sse');
});

test('close codes: 4xxx is final, everything else may reconnect', () => {
  assert.deepEqual([1000, 1006, 3001, 3999, 4000, 4003, 4999, 5000].map(reconnectAllowed), [true, true, true, true, false, false, false, true]);
});

test('without any usable transport the client retries, then gives up', async () => {
  // No transport of these names exists, so none can be made.
  const states = [];
  const client = new Client('http://127.0.0.1:9', {
    token: 't',
    transports: ['carrier-pigeon'],
    backoff: { minDelay: 1, maxDelay: 2, maxAttempts: 2 },
  });
  client.on('state', (s) => states.push([s.state, s.code ?? null, s.reconnect ?? null]));
  await assert.rejects(client.connect(), (e) => e.name === 'Disconnected' && e.message.includes('no transport available'));
  assert.deepEqual(states, [
    ['connecting', null, null],
    ['disconnected', 1006, true],
    ['connecting', null, null],
    ['disconnected', 1006, false],
  ]);
});

test('when no transport can reach the server, the reason names the last one tried', async () => {
  // Nothing listens on port 9: WebSocket is not in Node 20, SSE and long-polling are refused.
  const client = new Client('http://127.0.0.1:9', { token: 't', backoff: { minDelay: 1, maxDelay: 2, maxAttempts: 1 } });
  await assert.rejects(client.connect(), (e) => e.name === 'Disconnected' && e.code === 1006 && /cannot connect to http:\/\/127\.0\.0\.1:9: /.test(e.message));
});

test('a subscription drops replayed duplicates and reports recovery and gaps', async () => {
  const sub = new Subscription(null, 'chat:dup');
  const seen = [];
  sub.on('event', (e) => seen.push(e.type === 'publication' ? [e.data, e.offset, e.epoch] : [e.type, e.recovered, e.gap]));
  sub.subscribeParams();
  sub.onSubscribed({ recoverable: true, position: { offset: 1, epoch: 'e' }, recovered: false, publications: [] });
  const pub = (data, offset, epoch) => ({ type: 'publication', channel: 'chat:dup', data, offset, epoch, info: null });
  sub.onPublication(pub('one', 1, 'e'));
  sub.onPublication(pub('two', 2, 'e'));
  sub.onPublication(pub('two again', 2, 'e'));
  // Reconnect: recover from offset 2; the replay overlaps nothing, then a new epoch is a gap.
  sub.onConnectionLost();
  assert.deepEqual(sub.subscribeParams().since, { offset: 2, epoch: 'e' });
  sub.onSubscribed({ recoverable: true, position: { offset: 3, epoch: 'e' }, recovered: true, publications: [pub('three', 3, 'e')] });
  sub.onConnectionLost();
  sub.subscribeParams();
  sub.onSubscribed({ recoverable: true, position: { offset: 0, epoch: 'f' }, recovered: false, publications: [] });
  sub.onPublication(pub('new life', 1, 'f'));
  assert.deepEqual(seen, [
    ['subscribed', false, false],
    ['two', 2, 'e'],
    ['subscribed', true, false],
    ['three', 3, 'e'],
    ['subscribed', false, true],
    ['new life', 1, 'f'],
  ]);
  // Iterating yields the same events in the same order, then ends when the sub ends.
  sub.end(null, null);
  const iterated = [];
  for await (const e of sub) iterated.push(e.type);
  assert.deepEqual(iterated, ['subscribed', 'publication', 'subscribed', 'publication', 'subscribed', 'publication']);
});

test('a hole in the live stream is not delivered: the client must subscribe again', () => {
  const sub = new Subscription(null, 'chat:hole');
  const seen = [];
  sub.on('publication', (e) => seen.push(e.offset));
  sub.subscribeParams();
  sub.onSubscribed({ recoverable: true, position: { offset: 1, epoch: 'e' }, recovered: false, publications: [] });
  const pub = (offset, epoch = 'e') => ({ type: 'publication', channel: 'chat:hole', data: offset, offset, epoch, info: null });
  assert.equal(sub.onPublication(pub(2)), true);
  assert.equal(sub.onPublication(pub(5)), false); // 3 and 4 are missing
  assert.deepEqual(sub.position, { offset: 2, epoch: 'e' });
  assert.equal(sub.onPublication(pub(3, 'f')), false); // a new epoch, not from its start
  assert.equal(sub.onPublication(pub(1, 'f')), true); // a new epoch from its start
  assert.deepEqual(seen, [2, 1]);
});

test('connect results carry the server ping interval, checked', () => {
  assert.deepEqual(parse.connect({ client: 'c', ping: 2.5 }), { client: 'c', ttl: null, ping: 2.5 });
  assert.throws(() => parse.connect({ client: 'c', ping: 'soon' }), /ping must be a number/);
});
