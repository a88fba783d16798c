// Drives Debian's chromium with playwright-core for the pytest browser tests.
//
// A line protocol over stdin/stdout, so that pytest keeps control of everything else
// (servers it restarts, proxies it cuts) while pages run in a real browser:
//
//   stdin:  {"id": 1, "op": "open", "page": "ann", "url": "http://..."}
//   stdout: {"id": 1, "ok": true, "value": ...}  or  {"id": 1, "ok": false, "error": "..."}
//
// The browser is never downloaded: CHROMIUM (default /usr/bin/chromium) is launched with a
// fresh user-data-dir that is removed on exit.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { chromium } from 'playwright-core';

const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kizuna-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
  viewport: { width: 1000, height: 700 },
  // The demo's Content-Security-Policy forbids eval, which waitForFunction needs; the
  // escaping test checks the DOM itself, so it does not lean on the CSP.
  bypassCSP: true,
});

const pages = new Map();
const logs = new Map(); // page name → console lines, page errors and dialogs

function page(name) {
  const p = pages.get(name);
  if (!p) throw new Error(`no page named ${name}`);
  return p;
}

const ops = {
  async open({ page: name, url }) {
    const p = await context.newPage();
    const log = [];
    p.on('console', (m) => log.push(`${m.type()}: ${m.text()}`));
    p.on('pageerror', (e) => log.push(`pageerror: ${e.message}`));
    p.on('dialog', async (d) => {
      log.push(`dialog: ${d.message()}`);
      await d.dismiss();
    });
    pages.set(name, p);
    logs.set(name, log);
    await p.goto(url);
    return p.url();
  },
  async fill({ page: name, selector, value }) {
    await page(name).fill(selector, value);
  },
  async click({ page: name, selector }) {
    await page(name).click(selector);
  },
  async press({ page: name, selector, key }) {
    await page(name).press(selector, key);
  },
  async text({ page: name, selector }) {
    return page(name).textContent(selector);
  },
  async eval({ page: name, expression }) {
    return page(name).evaluate(expression);
  },
  async wait({ page: name, expression, timeout = 10000 }) {
    const handle = await page(name).waitForFunction(expression, null, { timeout, polling: 50 });
    return handle.jsonValue();
  },
  async screenshot({ page: name, path: file }) {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const png = await page(name).screenshot({ path: file, fullPage: true });
    return png.length;
  },
  async log({ page: name }) {
    return logs.get(name) ?? [];
  },
  async close({ page: name }) {
    await page(name).close();
    pages.delete(name);
  },
};

async function quit() {
  await context.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
}

const write = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
write({ id: 0, ok: true, value: 'ready' });

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { id, op, ...args } = JSON.parse(line);
  if (op === 'quit') break;
  try {
    const fn = ops[op];
    if (!fn) throw new Error(`unknown op ${op}`);
    write({ id, ok: true, value: (await fn(args)) ?? null });
  } catch (error) {
    write({ id, ok: false, error: String(error && error.stack ? error.stack : error) });
  }
}
await quit();
process.exit(0);
