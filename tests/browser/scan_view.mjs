// The scan_view panel in a real headless Chromium (issue 19), against `beamflow run` on a
// bluesky pipeline that a real RunEngine feeds.
//
//   node tests/browser/scan_view.mjs 'http://HOST:PORT/#token=TOKEN' OUTDIR
//
// Prints one line per check, `ok - NAME: ...` or `FAIL - NAME: ...`, and exits non-zero when
// any failed. The runs are a conversation over standard output and input with whoever started
// this (tests/scan_view_page.rs):
//   READY-FOR-RUNS  -> run the plans, wait for every run to stop in the scan view, then answer
//                      RUNS-DONE {"latest": {"uid", "points"}, "scan": uid, "grid": uid}
//                      (the points of the latest run's primary stream as the RunEngine made them)
// OUTDIR receives scan_view.png: the `scan` run with its PeakStats markers.

import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BEAMFLOW_CHROMIUM ?? '/usr/bin/chromium';
// Generous: a loaded two-core CI machine builds, runs the pipeline, Python and Chromium at once.
const WAIT_MS = 60_000;
const TOTAL_MS = 10 * 60_000;
const SCAN = 'section.panel[data-kind="scan_view"]';

const [pageUrl, outDir] = process.argv.slice(2);
if (!pageUrl || !outDir) {
  console.error('usage: node scan_view.mjs URL#token=TOKEN OUTDIR');
  process.exit(2);
}
const url = new URL(pageUrl);
const origin = url.origin;
mkdirSync(outDir, { recursive: true });

let failures = 0;
function report(name, passed, detail) {
  if (!passed) failures += 1;
  console.log(`${passed ? 'ok' : 'FAIL'} - ${name}: ${detail}`);
}

let phase = 'load';
async function check(name, body) {
  phase = name;
  try {
    report(name, true, await body());
  } catch (error) {
    report(name, false, error instanceof Error ? error.message : String(error));
  }
}

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

async function api(path) {
  const response = await fetch(new URL(path, origin));
  const text = await response.text();
  if (!response.ok) throw new Error(`GET ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

const overall = setTimeout(() => {
  report('deadline', false, `the checks took longer than ${TOTAL_MS / 1000} s`);
  process.exit(1);
}, TOTAL_MS);

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const context = await browser.newContext({ timezoneId: 'UTC', viewport: { width: 1400, height: 1000 } });

// Every request the page makes; none may leave the serving host.
const requests = { served: 0, refused: [] };
await context.route('**/*', async (route) => {
  const target = new URL(route.request().url());
  const local = target.protocol === 'data:' || target.protocol === 'blob:' || target.host === url.host;
  if (local) {
    requests.served += 1;
    await route.continue().catch(() => {});
  } else {
    requests.refused.push(target.href);
    await route.abort('blockedbyclient').catch(() => {});
  }
});
context.on('websocket', (socket) => requests.refused.push(socket.url()));

// Console errors and uncaught exceptions, CSP violations among them.
const errors = [];
const page = await context.newPage();
page.on('console', (message) => {
  if (message.type() !== 'error') return;
  const where = message.location();
  errors.push(`console, during ${phase}: ${message.text()} (${where?.url ?? '?'}:${where?.lineNumber ?? '?'})`);
});
page.on('pageerror', (error) => {
  const at = (error.stack ?? '').split('\n').find((line) => line.trim().startsWith('at ')) ?? '';
  errors.push(`page error, during ${phase}: ${error.message} ${at.trim()}`);
});
await page.addInitScript(() => {
  document.addEventListener('securitypolicyviolation', (event) => {
    console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || 'inline'}`);
  });
});

async function until(what, predicate, arg, timeout = WAIT_MS) {
  try {
    return await (await page.waitForFunction(predicate, arg, { timeout, polling: 100 })).jsonValue();
  } catch (error) {
    throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
  }
}

/** The panel's data attributes and header, as the page shows them now. */
const shown = () => page.evaluate((selector) => {
  const section = document.querySelector(selector);
  return {
    ...section.dataset,
    header: section.querySelector('.scan-header')?.textContent ?? '',
    legend: section.querySelectorAll('.u-legend .u-series').length,
  };
}, SCAN);

let panel = null;
await check('page', async () => {
  const response = await page.goto(pageUrl, { waitUntil: 'load' });
  if (!response?.ok()) throw new Error(`GET ${origin}/ answered ${response?.status()}`);
  await until('the SSE stream to open', () => document.querySelector('#connection')?.dataset.state === 'open');
  const dashboard = await api('/api/v1/dashboard');
  panel = dashboard.panels.find((p) => p.kind === 'scan_view');
  if (!panel) throw new Error(`no scan_view panel in /api/v1/dashboard: ${JSON.stringify(dashboard.panels)}`);
  await until('the scan_view section', (selector) => Boolean(document.querySelector(`${selector} select.run-picker`)), SCAN);
  return `panel ${panel.name} (${panel.path}) shown`;
});
if (failures > 0) await finish();

const runs = JSON.parse(await ask('READY-FOR-RUNS', 'RUNS-DONE'));
const runPath = (uid) => `/api/v1/result/${panel.path}/runs/${encodeURIComponent(uid)}`;

// The latest run, followed live: its points and series on the chart.
await check('latest', async () => {
  const { uid, points } = runs.latest;
  const view = await api(runPath(uid));
  const series = view.y.length;
  await until(`run ${uid} shown, stopped, with ${points} points`, ({ selector, uid, points }) => {
    const section = document.querySelector(selector);
    return section.dataset.run === uid && section.dataset.status !== 'running' && Number(section.dataset.points) === points;
  }, { selector: SCAN, uid, points });
  const now = await shown();
  if (now.following !== 'true') throw new Error('the panel does not follow the latest run by default');
  if (now.mode !== 'line') throw new Error(`a 1-D run drawn as ${now.mode}`);
  if (Number(now.series) !== series || now.legend !== series + 1) {
    throw new Error(`${now.series} series on the chart (${now.legend} legend entries), the view plots ${view.y.join(', ')}`);
  }
  if (!now.header.includes(`${points} / ${view.num_points} points`) || now.status !== view.status) {
    throw new Error(`header ${JSON.stringify(now.header)}, status ${now.status}; the view: ${view.status}, ${points} of ${view.num_points}`);
  }
  return `${view.plan_name} ${uid.slice(0, 8)}: ${now.points} points, ${now.series} series (${view.y.join(', ')}), header ${JSON.stringify(now.header.replace(/\s+/g, ' ').trim())}`;
});

/** A number shown rounded agrees with `expected` to the digits shown. */
function agrees(text, expected) {
  const clean = text.trim().replaceAll('\u2212', '-');
  const number = /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.exec(clean);
  if (!number) return false;
  const [mantissa, exponent = '0'] = clean.toLowerCase().split('e');
  const decimals = mantissa.includes('.') ? mantissa.split('.')[1].length : 0;
  const half = 0.5 * 10 ** (Number(exponent) - decimals) * (1 + 1e-9);
  return Math.abs(Number(clean) - expected) <= half;
}

// The `scan` run picked: its PeakStats on the page are the JSON view's.
await check('peak-stats', async () => {
  const uid = runs.scan;
  const view = await api(runPath(uid));
  await page.selectOption(`${SCAN} select.run-picker`, uid);
  await until(`run ${uid} shown with its markers`, ({ selector, uid }) => {
    const section = document.querySelector(selector);
    return section.dataset.run === uid && section.dataset.following === 'false' && section.dataset.mode === 'line'
      && (section.dataset.markers ?? '').includes('cen');
  }, { selector: SCAN, uid });
  const compared = [];
  for (const field of view.y) {
    const stats = view.peak_stats[field];
    if (!stats) continue;
    await page.selectOption(`${SCAN} select.stats-field`, field);
    const cells = await until(`${field}'s PeakStats shown`, ({ selector, field }) => {
      const card = document.querySelector(`${selector} .stats-card`);
      if (card?.dataset.field !== field) return false;
      const read = (stat) => {
        const cell = card.querySelector(`[data-stat="${stat}"]`);
        return cell ? { text: cell.textContent, value: cell.dataset.value ?? null } : null;
      };
      return { cen: read('cen'), fwhm: read('fwhm'), com: read('com') };
    }, { selector: SCAN, field });
    for (const stat of ['cen', 'fwhm', 'com']) {
      const expected = stats[stat];
      const cell = cells[stat];
      if (typeof expected !== 'number') continue;
      if (!cell || Number(cell.value) !== expected || !agrees(cell.text, expected)) {
        throw new Error(`${field} ${stat}: the page shows ${JSON.stringify(cell)}, the view has ${expected}`);
      }
      compared.push(`${field} ${stat} ${cell.text}`);
    }
  }
  if (!compared.some((c) => c.includes(' cen ')) || !compared.some((c) => c.includes(' fwhm '))) {
    throw new Error(`no cen and fwhm to compare in ${JSON.stringify(view.peak_stats)}`);
  }
  const now = await shown();
  // Wait a frame so the markers are on the canvas before the picture.
  await page.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
  const file = join(outDir, 'scan_view.png');
  await page.locator(SCAN).screenshot({ path: file });
  return `${view.plan_name} ${uid.slice(0, 8)} (${now.points} points): ${compared.join(', ')}; markers ${now.markers}; ${file}, ${statSync(file).size} bytes`;
});

// The grid_scan run picked: a map with its cells coloured where the view has values, the
// slow motor up the side (lowest at the bottom), the fast one along the bottom.
await check('map', async () => {
  const uid = runs.grid;
  const view = await api(runPath(uid));
  const grid = view.grid;
  if (!grid) throw new Error(`the grid_scan's view has no grid: ${JSON.stringify(view).slice(0, 300)}`);
  await page.selectOption(`${SCAN} select.run-picker`, uid);
  await until(`run ${uid} drawn as a map`, ({ selector, uid }) => {
    const section = document.querySelector(selector);
    const canvas = section.querySelector('canvas.scan-map');
    return section.dataset.run === uid && section.dataset.mode === 'map' && Boolean(canvas?.dataset.plot);
  }, { selector: SCAN, uid });
  const [rows, cols] = grid.shape;
  const [[s0, s1], [f0, f1]] = grid.extents;
  const samples = await page.evaluate(({ selector, rows, cols, flipX, flipY }) => {
    const canvas = document.querySelector(`${selector} canvas.scan-map`);
    const [x, y, w, h] = canvas.dataset.plot.split(',').map(Number);
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    const pixel = (px, py) => {
      const i = 4 * (Math.floor(py) * canvas.width + Math.floor(px));
      return [data[i], data[i + 1], data[i + 2]];
    };
    const cells = [];
    for (let r = 0; r < rows; r += 1) {
      for (let c = 0; c < cols; c += 1) {
        const col = flipX ? cols - 1 - c : c;
        const row = flipY ? rows - 1 - r : r;
        cells.push(pixel(x + ((col + 0.5) * w) / cols, y + h - ((row + 0.5) * h) / rows));
      }
    }
    const colours = new Set();
    let painted = 0;
    for (let py = y + 1; py < y + h - 1; py += 2) {
      for (let px = x + 1; px < x + w - 1; px += 2) {
        const [r, g, b] = pixel(px, py);
        colours.add((r << 16) | (g << 8) | b);
        if (r + g + b > 3 * 40) painted += 1;
      }
    }
    return { cells, colours: colours.size, painted };
  }, { selector: SCAN, rows, cols, flipX: f1 < f0, flipY: s1 < s0 });
  const luma = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;
  // The page's colour for a cell not measured (its --bg).
  const blank = ([r, g, b]) => Math.abs(r - 13) + Math.abs(g - 17) + Math.abs(b - 23) < 12;
  const measured = grid.values.map((v, i) => ({ v, i })).filter(({ v }) => typeof v === 'number');
  if (measured.length === 0) throw new Error('the view has no measured cell');
  for (const { i } of measured) {
    if (blank(samples.cells[i])) throw new Error(`cell ${i} (row ${Math.floor(i / cols)}, column ${i % cols}) is blank on the canvas: ${samples.cells[i]}`);
  }
  // viridis grows brighter with the value: the largest cell is brighter than the smallest.
  const low = measured.reduce((a, b) => (b.v < a.v ? b : a));
  const high = measured.reduce((a, b) => (b.v > a.v ? b : a));
  if (high.v > low.v && !(luma(samples.cells[high.i]) > luma(samples.cells[low.i]))) {
    throw new Error(`the highest cell ${high.i} (${high.v}) is not brighter than the lowest ${low.i} (${low.v}): ${samples.cells[high.i]} vs ${samples.cells[low.i]}`);
  }
  if (samples.colours < 3) throw new Error(`the map has ${samples.colours} colours`);
  // Pointing at the first measured cell reads its value out.
  const first = measured[0];
  const target = await page.evaluate(({ selector, row, col, rows, cols }) => {
    const canvas = document.querySelector(`${selector} canvas.scan-map`);
    const [x, y, w, h] = canvas.dataset.plot.split(',').map(Number);
    const box = canvas.getBoundingClientRect();
    const scale = box.width / canvas.width;
    return { x: box.left + (x + ((col + 0.5) * w) / cols) * scale, y: box.top + (y + h - ((row + 0.5) * h) / rows) * scale };
  }, { selector: SCAN, row: Math.floor(first.i / cols), col: f1 < f0 ? cols - 1 - (first.i % cols) : first.i % cols, rows, cols });
  await page.mouse.move(target.x, target.y);
  const readout = await until('the readout of the cell pointed at', ({ selector, signal }) => {
    const text = document.querySelector(`${selector} .map-readout`)?.textContent ?? '';
    return text.includes(`${signal} `) && !text.includes('Point at') ? text : false;
  }, { selector: SCAN, signal: grid.signal });
  const value = readout.split(`${grid.signal} `).pop();
  if (!agrees(value, first.v)) throw new Error(`pointing at cell ${first.i} reads ${JSON.stringify(readout)}, the view has ${first.v}`);
  return `${rows} × ${cols} grid of ${grid.signal} against ${grid.slow} and ${grid.fast}: ${measured.length} cells painted where the view has values, ${samples.colours} colours, ${samples.painted} non-dark samples; ${JSON.stringify(readout)}`;
});

// Back to following: the latest run again.
await check('follow', async () => {
  await page.click(`${SCAN} button.follow`);
  const uid = runs.latest.uid;
  await until('the latest run again', ({ selector, uid }) => {
    const section = document.querySelector(selector);
    return section.dataset.following === 'true' && section.dataset.run === uid && section.dataset.mode === 'line';
  }, { selector: SCAN, uid });
  return `following ${uid.slice(0, 8)} again`;
});

await finish();

async function finish() {
  report('requests', requests.refused.length === 0 && requests.served > 0,
    requests.refused.length === 0
      ? `${requests.served} requests, all to ${url.host}`
      : `refused ${requests.refused.length}: ${requests.refused.slice(0, 5).join(', ')}`);
  report('console', errors.length === 0,
    errors.length === 0 ? 'no console or page errors' : errors.slice(0, 10).join(' | '));
  clearTimeout(overall);
  answers.close();
  await browser.close();
  console.log(failures === 0 ? 'ALL-CHECKS-PASSED' : `${failures} CHECKS FAILED`);
  process.exit(failures === 0 ? 0 : 1);
}
