// Preloaded with `node -r ./bench-shim.js server.js` so that server.js stays byte-for-byte the
// guide's code block while the benchmark runs it on free ports: the guide hard-codes port 8080
// and `new Redis()` (127.0.0.1:6379, which belongs to the machine, never to a benchmark).
// BENCH_PORT and BENCH_REDIS_PORT say where to listen and which private redis-server to use.
'use strict';

const WebSocket = require('ws');
const Redis = require('ioredis');

const port = Number(process.env.BENCH_PORT);
const redisPort = Number(process.env.BENCH_REDIS_PORT);
if (!port || !redisPort) {
  throw new Error('bench-shim: set BENCH_PORT and BENCH_REDIS_PORT');
}

const OriginalServer = WebSocket.Server;
class BenchServer extends OriginalServer {
  constructor(options, callback) {
    super({ ...options, port, host: '127.0.0.1' }, callback);
  }
}
WebSocket.Server = BenchServer;
WebSocket.WebSocketServer = BenchServer;

class BenchRedis extends Redis {
  constructor(...args) {
    super(...(args.length === 0 ? [redisPort, '127.0.0.1'] : args));
  }
}
require.cache[require.resolve('ioredis')].exports = BenchRedis;
