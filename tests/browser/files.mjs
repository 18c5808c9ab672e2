// The HDF5 files in the dashboard's health panel (issue 21), in a real headless Chromium,
// against `beamflow run` with `[reducer.hdf5]` after its scan ended.
//
//   node tests/browser/files.mjs 'http://HOST:PORT/#token=TOKEN' NAME SIZE
//
// Prints one line per check, `ok - NAME: ...` or `FAIL - NAME: ...`, and exits non-zero when
// any failed: the file NAME is listed with its size as people read it, and its link downloads
// SIZE bytes.

import { chromium } from 'playwright-core';

const CHROMIUM = process.env.BEAMFLOW_CHROMIUM ?? '/usr/bin/chromium';
const WAIT_MS = 60_000;

const [pageUrl, name, size] = process.argv.slice(2);
if (!pageUrl || !name || !size) {
  console.error('usage: node files.mjs URL#token=TOKEN NAME SIZE');
  process.exit(2);
}

let failures = 0;
function report(check, passed, detail) {
  if (!passed) failures += 1;
  console.log(`${passed ? 'ok' : 'FAIL'} - ${check}: ${detail}`);
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
try {
  const page = await browser.newPage();
  await page.goto(pageUrl);
  const row = page.locator(`[data-files] li[data-file="${name}"]`);
  try {
    await row.waitFor({ timeout: WAIT_MS });
    const text = await row.innerText();
    const kilobytes = `${(Number(size) / 1000).toFixed(1)} kB`;
    const megabytes = `${(Number(size) / 1e6).toFixed(1)} MB`;
    report('listed', text.includes(name) && (text.includes(kilobytes) || text.includes(megabytes)), text);
    const href = await row.locator('a').getAttribute('href');
    const bytes = await page.evaluate(async (link) => (await (await fetch(link)).arrayBuffer()).byteLength, href);
    report('download', bytes === Number(size), `${href}: ${bytes} bytes`);
  } catch (error) {
    report('listed', false, error instanceof Error ? error.message : String(error));
  }
} finally {
  await browser.close();
}
process.exit(failures ? 1 : 0);
