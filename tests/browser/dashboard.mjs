// The dashboard in a real headless Chromium (issue 18), against a running `beamflow run`.
//
//   node tests/browser/dashboard.mjs 'http://HOST:PORT/#token=TOKEN' OUTDIR
//
// Prints one line per check, `ok - NAME: ...` or `FAIL - NAME: ...`, and exits non-zero when
// any failed. The phases that need the pipeline's help are a conversation over standard
// output and input with whoever started this (tests/dashboard.rs):
//   READY-FOR-SCAN      -> start a quad scan, then answer SCAN-STARTED
//   SCAN-SEEN           -> wait for the scan to finish, then answer SCAN-DONE STEPS
//   READY-FOR-RESTART   -> restart `beamflow run` on the same ports, then answer RESTARTED
// Run by hand, type those answers.

import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BEAMFLOW_CHROMIUM ?? '/usr/bin/chromium';
const ZONE = 'America/Los_Angeles';
// Generous: a loaded two-core CI machine builds, runs the pipeline and Chromium at once.
const WAIT_MS = 60_000;
const TOTAL_MS = 15 * 60_000;
// A quad scan's steps wait for the pipeline, which a debug build on a busy machine runs late.
const SCAN_WAIT_MS = 4 * 60_000;
// How far behind the server the page's newest row may be when read.
const LAG_S = 15;

const [pageUrl, outDir] = process.argv.slice(2);
if (!pageUrl || !outDir) {
  console.error('usage: node dashboard.mjs URL#token=TOKEN OUTDIR');
  process.exit(2);
}
const url = new URL(pageUrl);
const origin = url.origin;
const token = new URLSearchParams(url.hash.slice(1)).get('token');
mkdirSync(outDir, { recursive: true });

let failures = 0;
function report(name, passed, detail) {
  if (!passed) failures += 1;
  console.log(`${passed ? 'ok' : 'FAIL'} - ${name}: ${detail}`);
}

// A check that throws fails with its message; the next checks still run.
let phase = 'load';
async function check(name, body) {
  phase = name;
  try {
    report(name, true, await body());
  } catch (error) {
    report(name, false, error instanceof Error ? error.message : String(error));
  }
}

// Whoever started us answers on standard input, one line per phase.
const answers = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
answers.on('line', (line) => {
  const waiter = waiting.shift();
  if (waiter) waiter.resolve(line.trim());
  else pending.push(line.trim());
});
answers.on('close', () => {
  for (const waiter of waiting.splice(0)) waiter.reject(new Error('standard input closed'));
});
function ask(question, answer) {
  console.log(question);
  const line = pending.length > 0
    ? Promise.resolve(pending.shift())
    : new Promise((resolve, reject) => waiting.push({ resolve, reject }));
  return line.then((text) => {
    if (!text.startsWith(answer)) throw new Error(`expected ${answer} after ${question}, got ${JSON.stringify(text)}`);
    return text.slice(answer.length).trim();
  });
}

async function api(path, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (token && init.method === 'POST') headers.Authorization = `Bearer ${token}`;
  const response = await fetch(new URL(path, origin), { ...init, headers });
  const text = await response.text();
  if (!response.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

function resultPath(path) {
  return `/api/v1/result/${path.split('/').map(encodeURIComponent).join('/')}`;
}

const overall = setTimeout(() => {
  report('deadline', false, `the checks took longer than ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS);

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const context = await browser.newContext({
  timezoneId: 'UTC',
  viewport: { width: 1400, height: 1000 },
});

// 1. Every request the page makes goes through here; none may leave the serving host.
const requests = { served: 0, refused: [] };
await context.route('**/*', async (route) => {
  const target = new URL(route.request().url());
  const local = target.protocol === 'data:' || target.protocol === 'blob:' || target.host === url.host;
  if (local) {
    requests.served += 1;
    // The server may be restarting: the page sees the failure, as it would without us.
    await route.continue().catch(() => {});
  } else {
    requests.refused.push(target.href);
    await route.abort('blockedbyclient').catch(() => {});
  }
});
context.on('websocket', (socket) => requests.refused.push(socket.url()));

// 2. Console errors and uncaught exceptions, CSP violations among them. While the server
// restarts (phase 7) the browser logs the requests that could not connect; those alone are
// expected then.
const errors = [];
const tolerated = [];
let restarting = false;
function isOwnNetworkFailure(text, location) {
  return text.startsWith('Failed to load resource') && (location?.url ?? '').startsWith(origin);
}
const page = await context.newPage();
page.on('console', (message) => {
  if (message.type() !== 'error') return;
  const text = message.text();
  const where = message.location();
  if (restarting && isOwnNetworkFailure(text, where)) tolerated.push(text);
  else errors.push(`console, during ${phase}: ${text} (${where?.url ?? '?'}:${where?.lineNumber ?? '?'})`);
});
page.on('pageerror', (error) => {
  const at = (error.stack ?? '').split('\n').find((line) => line.trim().startsWith('at ')) ?? '';
  errors.push(`page error, during ${phase}: ${error.message} ${at.trim()}`);
});
// A violation is reported as an event too, in case a console line is not.
await page.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (event) => {
    console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || 'inline'}`);
  });
});

// Records every value an attribute takes, so a short-lived one is seen too.
async function watch(key, selector, attribute) {
  await page.evaluate(({ key, selector, attribute }) => {
    const seen = [];
    window.__watched ??= {};
    window.__watched[key] = seen;
    const look = () => {
      const value = document.querySelector(selector)?.getAttribute(attribute) ?? null;
      if (seen.length === 0 || seen[seen.length - 1] !== value) seen.push(value);
    };
    look();
    new MutationObserver(look).observe(document.documentElement, {
      subtree: true, childList: true, attributes: true, attributeFilter: [attribute],
    });
  }, { key, selector, attribute });
}
const watched = (key) => page.evaluate((key) => window.__watched[key].slice(), key);

const attribute = (selector, name) =>
  page.evaluate(({ selector, name }) => document.querySelector(selector)?.getAttribute(name) ?? null, { selector, name });

async function until(what, predicate, arg, timeout = WAIT_MS) {
  try {
    return await (await page.waitForFunction(predicate, arg, { timeout, polling: 100 })).jsonValue();
  } catch (error) {
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
  }
}

let browserZone = null;
let dashboard = null;
const panelOf = (name) => dashboard.panels.find((panel) => panel.name === name);
await check('page', async () => {
  const response = await page.goto(pageUrl, { waitUntil: 'load' });
  if (!response?.ok()) throw new Error(`GET ${origin}/ answered ${response?.status()}`);
  await until('the SSE stream to open', () => document.querySelector('#connection')?.dataset.state === 'open');
  browserZone = await page.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone);
  dashboard = await api('/api/v1/dashboard');
  const kinds = await page.evaluate(() => [...document.querySelectorAll('section.panel')].map((s) => `${s.dataset.panel}:${s.dataset.kind}`));
  return `${kinds.length} panels: ${kinds.join(' ')}`;
});
if (failures > 0) await finish();

// 3. A history in Los Angeles time fills while the browser runs in UTC.
const zoneFormat = new Intl.DateTimeFormat('en-US', {
  timeZone: ZONE, hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short',
});
function inZone(unixSeconds) {
  const parts = Object.fromEntries(zoneFormat.formatToParts(new Date(unixSeconds * 1000)).map((p) => [p.type, p.value]));
  return { seconds: Number(parts.hour) * 3600 + Number(parts.minute) * 60 + Number(parts.second), zone: parts.timeZoneName };
}
const HISTORY = `section.panel[data-kind="history"][data-time-zone="${ZONE}"]`;
async function historyFills(minimumRows, only = null) {
  const selector = only ? `${HISTORY}[data-panel="${only}"]` : HISTORY;
  const name = await until(`${only ?? `a ${ZONE} history`} with ${minimumRows} points`, ({ selector, minimumRows }) => {
    const section = [...document.querySelectorAll(selector)].find((s) => Number(s.dataset.points) >= minimumRows);
    return section?.dataset.panel ?? false;
  }, { selector, minimumRows });
  const panel = panelOf(name);
  if (!panel) throw new Error(`panel ${name} is not in /api/v1/dashboard`);
  const newest = (rows) => rows.time.findLast((time) => typeof time === 'number');
  const before = await api(resultPath(panel.path));
  const shown = await page.evaluate((name) => {
    const section = document.querySelector(`section.panel[data-panel="${name}"]`);
    return { caption: section.querySelector('.latest-time')?.textContent.trim() ?? '', points: Number(section.dataset.points) };
  }, name);
  const after = await api(resultPath(panel.path));
  const match = /(\d{2}):(\d{2}):(\d{2})\s+(\S+)/.exec(shown.caption);
  if (!match) throw new Error(`${name}: .latest-time ${JSON.stringify(shown.caption)} is not HH:MM:SS ZONE`);
  const caption = Number(match[1]) * 3600 + Number(match[2]) * 60 + Number(match[3]);
  const [early, late] = [inZone(newest(before)), inZone(newest(after))];
  // Seconds of the day, across midnight too. The page may be a little ahead of the first
  // answer, and behind it by as long as a busy machine delays a browser (a wrong zone is off
  // by hours).
  const offset = (a, b) => ((a - b + 129600) % 86400) - 43200;
  const inside = offset(caption, early.seconds) >= -LAG_S && offset(caption, late.seconds) <= 1;
  if (match[4] !== late.zone || !inside) {
    const utc = new Date(newest(after) * 1000).toISOString().slice(11, 19);
    throw new Error(`${name}: caption ${JSON.stringify(shown.caption)}, the server's newest rows are ${fmt(early)}..${fmt(late)} in ${ZONE} (${utc} UTC)`);
  }
  return { name, panel, shown, rows: after.time.length, expected: fmt(late) };
}
function fmt({ seconds, zone }) {
  const two = (n) => String(n).padStart(2, '0');
  return `${two(Math.floor(seconds / 3600))}:${two(Math.floor(seconds / 60) % 60)}:${two(seconds % 60)} ${zone}`;
}
let history = null;
await check('history', async () => {
  if (browserZone !== 'UTC') throw new Error(`the browser runs in ${browserZone}, not UTC`);
  history = await historyFills(20);
  return `${history.name} has ${history.shown.points} points, latest ${JSON.stringify(history.shown.caption)} (server: ${history.expected}; the browser is in ${browserZone})`;
});

// 4. The image: pixels vary, the bright spot is where the image view says the beam is, and
// new frames come.
const IMAGE = 'section.panel[data-kind="image"]';
function frameStats(selector) {
  const section = document.querySelector(selector);
  const canvas = section?.querySelector('canvas.image');
  if (!canvas || canvas.width === 0 || canvas.height === 0) return null;
  // A copy, whatever context the page drew with.
  const copy = document.createElement('canvas');
  copy.width = canvas.width;
  copy.height = canvas.height;
  const context = copy.getContext('2d');
  context.drawImage(canvas, 0, 0);
  const { data, width, height } = context.getImageData(0, 0, copy.width, copy.height);
  const luma = new Float64Array(width * height);
  const distinct = new Set();
  let [low, high] = [Infinity, -Infinity];
  for (let i = 0; i < luma.length; i += 1) {
    const value = 0.2126 * data[4 * i] + 0.7152 * data[4 * i + 1] + 0.0722 * data[4 * i + 2];
    luma[i] = value;
    distinct.add((data[4 * i] << 16) | (data[4 * i + 1] << 8) | data[4 * i + 2]);
    low = Math.min(low, value);
    high = Math.max(high, value);
  }
  // The bright region: every pixel above half way from the darkest to the brightest (the
  // colormaps offered grow brighter with the count).
  const threshold = low + (high - low) / 2;
  let [sum, sx, sy] = [0, 0, 0];
  for (let y = 0; y < height; y += 1) {
    for (let x = 0; x < width; x += 1) {
      const weight = luma[y * width + x] - threshold;
      if (weight > 0) {
        sum += weight;
        sx += weight * (x + 0.5);
        sy += weight * (y + 0.5);
      }
    }
  }
  return {
    event: Number(section.dataset.event),
    width, height, low, high, colours: distinct.size,
    x: sum > 0 ? sx / sum : null, y: sum > 0 ? sy / sum : null,
  };
}
async function frameFollowsBeam(imagePanel) {
  const frame = await page.evaluate(frameStats, IMAGE);
  const view = await api(resultPath(imagePanel.path));
  if (!frame) throw new Error('no canvas.image with pixels');
  if (frame.colours < 10 || frame.high - frame.low < 50) {
    throw new Error(`frame ${frame.event} is blank or uniform: ${frame.colours} colours, brightness ${frame.low.toFixed(0)}..${frame.high.toFixed(0)}`);
  }
  if (!view.beam) throw new Error(`the image view has no beam: ${JSON.stringify(view).slice(0, 200)}`);
  // The view's beam is in source pixels; the canvas may be binned further than the view.
  const [sourceHeight, sourceWidth] = view.source_shape;
  const scale = { x: sourceWidth / frame.width, y: sourceHeight / frame.height };
  const off = [];
  for (const axis of ['x', 'y']) {
    const centroid = view.beam[axis].centroid_px / scale[axis];
    const sigma = view.beam[axis].sigma_px / scale[axis];
    const distance = Math.abs(frame[axis] - centroid);
    off.push(`${axis} ${frame[axis]?.toFixed(1)} vs ${centroid.toFixed(1)} (σ ${sigma.toFixed(1)})`);
    if (frame[axis] === null || distance > Math.max(3 * sigma, 3)) {
      throw new Error(`frame ${frame.event}: the bright region is not at the beam: ${off.join(', ')}`);
    }
  }
  return { frame, view, off };
}
await check('image', async () => {
  const [imagePanel] = dashboard.panels.filter((panel) => panel.kind === 'image');
  if (!imagePanel) throw new Error('no image panel in /api/v1/dashboard');
  const first = await until('a frame drawn', (selector) => {
    const event = Number(document.querySelector(selector)?.dataset.event);
    return Number.isFinite(event) && event > 0 ? event : false;
  }, IMAGE);
  const a = await frameFollowsBeam(imagePanel);
  const next = await until(`a frame after event ${a.frame.event}`, ({ selector, event }) => {
    const now = Number(document.querySelector(selector)?.dataset.event);
    return now > event ? now : false;
  }, { selector: IMAGE, event: a.frame.event });
  const b = await frameFollowsBeam(imagePanel);
  return `${b.frame.width}x${b.frame.height} canvas (view ${a.view.shape.join('x')}, bin ${a.view.bin}), ${b.frame.colours} colours; frames ${first} -> ${next} -> ${b.frame.event}; bright region ${b.off.join(', ')}`;
});

// 5. The what-if: "Apply current machine values" gets the model's answer for what the form
// shows.
const WHAT_IF = 'section.panel[data-kind="what_if"]';
await check('what-if', async () => {
  const [whatIf] = dashboard.panels.filter((panel) => panel.kind === 'what_if');
  if (!whatIf) throw new Error('no what_if panel in /api/v1/dashboard');
  const spec = await api(whatIf.model);
  await until('the apply button', (selector) => {
    const button = document.querySelector(`${selector} button.apply`);
    return Boolean(button && !button.disabled);
  }, WHAT_IF);
  const replies = Number((await attribute(WHAT_IF, 'data-replies')) ?? 0);
  await page.click(`${WHAT_IF} button.apply`);
  const shown = await until('a reply with numbers', ({ selector, replies }) => {
    const section = document.querySelector(selector);
    if (!(Number(section.dataset.replies) > replies)) return false;
    const outputs = {};
    for (const cell of section.querySelectorAll('[data-output]')) {
      const text = (cell.dataset.value ?? cell.textContent).trim().replaceAll('\u2212', '-').replaceAll(',', '');
      const number = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i.exec(text);
      if (!number) return false;
      outputs[cell.dataset.output] = { text: number[0], exact: cell.dataset.value !== undefined };
    }
    if (Object.keys(outputs).length === 0) return false;
    const inputs = {};
    for (const input of section.querySelectorAll('input[data-input]')) inputs[input.dataset.input] = input.value;
    return { replies: Number(section.dataset.replies), outputs, inputs };
  }, { selector: WHAT_IF, replies });
  const readOnly = new Set(spec.inputs.filter((input) => input.read_only).map((input) => input.name));
  const inputs = {};
  for (const [name, text] of Object.entries(shown.inputs)) {
    if (!readOnly.has(name) && text.trim() !== '') inputs[name] = Number(text);
  }
  const answer = await api(`${whatIf.model}/evaluate`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ base: 'live', inputs }),
  });
  const compared = [];
  for (const [name, { text, exact }] of Object.entries(shown.outputs)) {
    const expected = answer.outputs?.[name]?.value;
    if (typeof expected !== 'number') throw new Error(`the model has no output ${name}: ${JSON.stringify(answer.outputs)}`);
    const value = Number(text);
    // A number shown rounded is compared to the digits shown.
    const [mantissa, exponent = '0'] = text.toLowerCase().split('e');
    const decimals = mantissa.includes('.') ? mantissa.split('.')[1].length : 0;
    const shownTo = exact ? 0 : 0.5 * 10 ** (Number(exponent) - decimals) * (1 + 1e-9);
    const tolerance = Math.max(1e-6 * Math.abs(expected), shownTo);
    if (!(Math.abs(value - expected) <= tolerance)) {
      throw new Error(`${name}: the page shows ${text}, the model answers ${expected} for the inputs shown`);
    }
    compared.push(`${name} ${text}`);
  }
  return `${shown.replies} replies; ${Object.keys(inputs).length} inputs shown posted again, outputs agree: ${compared.join(', ')}`;
});

// 6. A quad scan started from the command line appears point by point.
const QUAD = 'section.panel[data-kind="quad_scan"]';
await check('quad-scan', async () => {
  await until('the quad_scan panel', (selector) => Boolean(document.querySelector(selector)), QUAD);
  await watch('steps', QUAD, 'data-steps');
  await ask('READY-FOR-SCAN', 'SCAN-STARTED');
  // Only what the page showed since the scan started: the pipeline's own steps before it do
  // not count.
  const from = (await watched('steps')).length - 1;
  const grown = await until('two distinct step counts', (from) => {
    const counts = window.__watched.steps.slice(from).map(Number).filter((n) => n > 0);
    return new Set(counts).size >= 2 ? counts : false;
  }, from, SCAN_WAIT_MS);
  const steps = Number(await ask('SCAN-SEEN', 'SCAN-DONE'));
  const final = await until(`${steps} steps shown`, ({ selector, steps }) => {
    const now = Number(document.querySelector(selector)?.dataset.steps);
    return now >= steps ? now : false;
  }, { selector: QUAD, steps });
  const seen = (await watched('steps')).slice(from).map(Number);
  return `data-steps went ${seen.join(' -> ')} (${new Set(grown).size} distinct while running, ${final} at the end: ${steps} steps had shots)`;
});

// 8. The screenshot, with the finished scan on it.
await check('screenshot', async () => {
  const file = join(outDir, 'dashboard.png');
  // From the top: clicking "apply" scrolled the page, and a sticky header is drawn where the
  // scroll left it.
  await page.evaluate(() => new Promise((resolve) => {
    window.scrollTo(0, 0);
    requestAnimationFrame(() => requestAnimationFrame(resolve));
  }));
  await page.screenshot({ path: file, fullPage: true });
  return `${file}, ${statSync(file).size} bytes`;
});

// 7. The reducer restarts: the page says so, reconnects, and its history fills again.
await check('reconnect', async () => {
  if (!history) throw new Error('no history to watch (the history check failed)');
  const chart = `section.panel[data-panel="${history.name}"]`;
  await watch('connection', '#connection', 'data-state');
  await watch('points', chart, 'data-points');
  const before = Number(await attribute(chart, 'data-points'));
  const frameBefore = await attribute(IMAGE, 'data-event');
  restarting = true;
  await ask('READY-FOR-RESTART', 'RESTARTED');
  const states = await until('the connection to drop and open again', () => {
    const seen = window.__watched.connection;
    const dropped = seen.findIndex((state) => state !== 'open');
    return dropped >= 0 && seen.slice(dropped).includes('open') ? seen : false;
  });
  // The new run's history, not the old one's still on the page.
  await until(`${history.name} to start over`, ({ before, minimumRows }) => {
    const seen = window.__watched.points.map(Number);
    const restart = seen.findIndex((points) => points < before);
    return restart >= 0 && seen[seen.length - 1] >= minimumRows;
  }, { before, minimumRows: 20 });
  const again = await historyFills(20, history.name);
  restarting = false;
  // The page starts over with the new run's rows rather than keeping the old ones.
  if (!(again.shown.points <= again.rows) || !(again.rows < before)) {
    throw new Error(`${again.name}: ${again.shown.points} points shown, the new run has ${again.rows} rows, the old run showed ${before}`);
  }
  // The screen shows the new run's frames (numbered from the start again).
  const frameAfter = await until(`a frame of the new run (the last before the restart was ${frameBefore})`, ({ selector, frameBefore }) => {
    const now = document.querySelector(selector)?.dataset.event;
    return now !== undefined && now !== frameBefore ? now : false;
  }, { selector: IMAGE, frameBefore });
  return `#connection went ${states.join(' -> ')}; ${again.name} filled again to ${again.shown.points} points (before the restart ${before}), latest ${JSON.stringify(again.shown.caption)}; frame ${frameBefore} -> ${frameAfter}`;
});
restarting = false;

await finish();

// The checks of the whole visit, then the end.
async function finish() {
  report('requests', requests.refused.length === 0 && requests.served > 0,
    requests.refused.length === 0
      ? `${requests.served} requests, all to ${url.host}`
      : `refused ${requests.refused.length}: ${requests.refused.slice(0, 5).join(', ')}`);
  report('console', errors.length === 0,
    errors.length === 0
      ? `no console or page errors${tolerated.length > 0 ? ` (${tolerated.length} failed requests while the server restarted)` : ''}`
      : errors.slice(0, 10).join(' | '));

  clearTimeout(overall);
  answers.close();
  await browser.close();
  console.log(failures === 0 ? 'ALL-CHECKS-PASSED' : `${failures} CHECKS FAILED`);
  process.exit(failures === 0 ? 0 : 1);
}
