// A `scan_view` panel in a real headless Chromium (issue 19), against a running `beamflow run`
// whose scan view holds the runs tests/bluesky.rs published (a `scan`, a `grid_scan`, ...).
//
//   node tests/browser/scan_view.mjs 'http://HOST:PORT/' OUTDIR
//
// Prints one line per check, `ok - NAME: ...` or `FAIL - NAME: ...`, and exits non-zero when
// any failed. With BEAMFLOW_SCREENSHOT=1 it writes docs/scan_view.png (the `scan` run).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BEAMFLOW_CHROMIUM ?? '/usr/bin/chromium';
const WAIT_MS = 60_000;

const [pageUrl, outDir] = process.argv.slice(2);
if (!pageUrl || !outDir) {
  console.error('usage: node scan_view.mjs URL OUTDIR');
  process.exit(2);
}
const url = new URL(pageUrl);
mkdirSync(outDir, { recursive: true });

let failures = 0;
async function check(name, body) {
  try {
    console.log(`ok - ${name}: ${await body()}`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL - ${name}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

async function api(path) {
  const response = await fetch(new URL(path, url.origin));
  if (!response.ok) throw new Error(`GET ${path}: ${response.status}`);
  return response.json();
}

/** The page's number format (dashboard.js `fmt`), to compare what it shows. */
function fmt(v, digits = 5) {
  if (v === null || v === undefined) return '–';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
const refused = [];
await context.route('**/*', async (route) => {
  const target = new URL(route.request().url());
  if (target.protocol === 'data:' || target.protocol === 'blob:' || target.host === url.host) {
    await route.continue().catch(() => {});
  } else {
    refused.push(target.href);
    await route.abort('blockedbyclient').catch(() => {});
  }
});
const errors = [];
const page = await context.newPage();
page.on('console', (message) => { if (message.type() === 'error') errors.push(message.text()); });
page.on('pageerror', (error) => errors.push(error.message));

async function until(what, predicate, arg) {
  try {
    return await (await page.waitForFunction(predicate, arg, { timeout: WAIT_MS, polling: 100 })).jsonValue();
  } catch {
    throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for ${what}`);
  }
}

const name = (await api('/api/v1/dashboard')).panels.find((panel) => panel.kind === 'scan_view')?.name;
const PANEL = `section.panel[data-kind="scan_view"][data-panel="${name}"]`;
const view = await api(`/api/v1/result/${name}`);
const runs = view.order.map((uid) => view.runs[uid]);

await check('latest', async () => {
  await page.goto(pageUrl, { waitUntil: 'load' });
  const latest = view.runs[view.latest];
  const events = latest.streams[latest.stream].events;
  await until(`the panel to follow run ${view.latest} with ${events} points`,
    ({ selector, uid, events }) => {
      const panel = document.querySelector(selector);
      return panel?.dataset.run === uid && panel?.dataset.points === String(events);
    }, { selector: PANEL, uid: view.latest, events });
  return `${name}: run ${view.latest.slice(0, 8)}, ${events} points`;
});

async function pick(run) {
  await page.selectOption(`${PANEL} select.run`, run.uid);
  await until(`run ${run.uid} shown`, ({ selector, uid }) => document.querySelector(selector)?.dataset.run === uid,
    { selector: PANEL, uid: run.uid });
}

const scan = runs.find((run) => run.plan_name === 'scan' && run.status === 'success' && run.peak_stats?.det);
await check('peak-stats', async () => {
  await pick(scan);
  const stats = scan.peak_stats.det;
  const shown = await page.evaluate((selector) => Object.fromEntries(
    [...document.querySelectorAll(`${selector} tr[data-field="det"] td[data-stat]`)].map((td) => [td.dataset.stat, td.textContent])), PANEL);
  for (const key of ['cen', 'fwhm', 'com']) {
    if (shown[key] !== fmt(stats[key], 7)) throw new Error(`${key}: the page shows ${shown[key]}, the view has ${stats[key]}`);
  }
  if (process.env.BEAMFLOW_SCREENSHOT === '1') {
    await page.locator(PANEL).screenshot({ path: join('docs', 'scan_view.png') });
  }
  return `cen ${shown.cen}, fwhm ${shown.fwhm}, com ${shown.com}`;
});

const grid = runs.find((run) => run.grid);
await check('grid', async () => {
  await pick(grid);
  const measured = grid.grid.values.filter((v) => v !== null).length;
  const cells = await until('the map drawn', ({ selector }) => document.querySelector(`${selector} canvas.grid-map:not(.hidden)`)?.dataset.cells, { selector: PANEL });
  if (cells !== String(measured)) throw new Error(`${cells} cells drawn, ${measured} measured`);
  // The map's middle is coloured, not the panel's background.
  const pixel = await page.evaluate((selector) => {
    const canvas = document.querySelector(`${selector} canvas.grid-map`);
    return [...canvas.getContext('2d').getImageData(canvas.width / 3, canvas.height / 2, 1, 1).data];
  }, PANEL);
  if (pixel[0] === 0x16 && pixel[1] === 0x1b && pixel[2] === 0x22) throw new Error('the map is blank');
  await page.screenshot({ path: join(outDir, 'grid.png') });
  return `${cells} cells, rgb(${pixel.slice(0, 3).join(', ')}) in the middle`;
});

await check('clean', async () => {
  if (refused.length) throw new Error(`requests outside the origin: ${refused.join(' ')}`);
  if (errors.length) throw new Error(`console errors: ${errors.join(' | ')}`);
  return 'no console errors, no request outside the origin';
});

await browser.close();
process.exit(failures > 0 ? 1 : 0);
