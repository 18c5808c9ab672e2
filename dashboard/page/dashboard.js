// beamflow's dashboard: the panels come from GET /api/v1/dashboard (one per accumulator that has
// a way to be shown, plus health), live updates from ONE EventSource on /api/v1/events.
// Plain DOM and uPlot (loaded before this module as window.uPlot); no framework, no build step.

const API = "/api/v1";
const uPlot = window.uPlot;
const TOKEN_KEY = "beamflow-token";
// The reconnect period after `bye` or a closed stream, as the server's `retry:`.
const RETRY_MS = 2000;
// A history keeps at most this many rows in the page, whatever the server holds.
const MAX_ROWS = 100000;
const BROWSER_ZONE = new Intl.DateTimeFormat().resolvedOptions().timeZone;
const COLORS = ["#58a6ff", "#f0883e", "#3fb950", "#d2a8ff", "#ff7b72", "#79c0ff", "#e3b341", "#56d4dd", "#db61a2", "#a5d6ff"];
const AXIS = { stroke: "#8b949e", grid: { stroke: "#21262d", width: 1 }, ticks: { stroke: "#30363d", width: 1 } };

// ---------------------------------------------------------------- small helpers

/** Creates an element: `attrs` holds `class`, `text`, `data` (dataset) and plain properties. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "data") Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

/** A number for people: up to 5 significant digits, exponent form for the very small or large. */
function fmt(v, digits = 5) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(digits - 1);
  return String(Number(v.toPrecision(digits)));
}

/** A size in bytes for people: B, kB, MB or GB (powers of 1000). */
function bytes(n) {
  if (!Number.isFinite(n)) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function ageText(seconds) {
  if (seconds === null || !Number.isFinite(seconds)) return "–";
  if (seconds < 0) seconds = 0;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

/** `GET /api/v1/result/{path}`, or null when the result is not there (yet). */
async function getResult(path) {
  const response = await fetch(`${API}/result/${path}`, { cache: "no-store" });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`result ${path}: ${response.status}`);
  return response.json();
}

/** The element a uPlot chart fits into, and keeps fitting as the page resizes. */
function chartBox(height) {
  const box = el("div", { class: "chart" });
  box.chartHeight = height;
  return box;
}

function fitChart(chart, box) {
  const resize = () => {
    const width = Math.max(200, Math.floor(box.clientWidth));
    if (width !== chart.width) chart.setSize({ width, height: box.chartHeight });
  };
  new ResizeObserver(resize).observe(box);
}

function newChart(opts, data, box) {
  const width = Math.max(200, Math.floor(box.clientWidth || 500));
  const chart = new uPlot({ width, height: box.chartHeight, ...opts }, data, box);
  fitChart(chart, box);
  return chart;
}

/** Formats unix seconds as `HH:MM:SS ZONE` in `zone` (null: the browser's); `HH:MM:SS` without `named`. */
function timeFormatter(zone, named = true) {
  const format = new Intl.DateTimeFormat("en-US", {
    timeZone: zone ?? undefined,
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    hourCycle: "h23",
    timeZoneName: named ? "short" : undefined,
  });
  return (ts) => (ts === null || ts === undefined ? "–" : format.format(new Date(ts * 1e3)));
}

// ---------------------------------------------------------------- the bearer token

/** The token from `#token=...` (kept in sessionStorage and taken out of the address bar). */
function takeToken() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

// ---------------------------------------------------------------- shared state

const page = {
  panels: new Map(), // name -> panel object
  latest: {}, // name -> the newest update of that panel from `state`
  scan: null, // the scan of the newest `state`
  pvStates: new Map(), // stream -> its ingester's PV state ("connected", ...)
  health: null,
};

/** The value at a state path, e.g. "last/values/xrms/value", from the newest `state` updates. */
function stateValue(path) {
  const parts = path.split("/").filter((p) => p !== "");
  const update = page.latest[parts[0]];
  if (update === undefined) return undefined;
  if (Array.isArray(update.rows)) {
    // A table update: rows are keyed by the leaf's path inside `values`, the PV's `value` folded.
    let rest = parts.slice(1);
    if (rest[0] === "values") rest = rest.slice(1);
    const folded = rest[rest.length - 1] === "value" ? rest.slice(0, -1) : rest;
    for (const key of [rest.join("/"), folded.join("/"), rest.join("."), folded.join(".")]) {
      const row = update.rows.find((r) => r.key === key);
      if (row) return isDisconnected(row) ? undefined : row.value;
    }
    return undefined;
  }
  let node = update;
  for (const part of parts.slice(1)) {
    if (node === null || typeof node !== "object") return undefined;
    node = node[part];
  }
  return node;
}

function isDisconnected(row) {
  if (!row.source) return false;
  const state = page.pvStates.get(row.source);
  return state !== undefined && state !== "connected";
}

// ---------------------------------------------------------------- history

class HistoryPanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.columns = desc.columns ?? [];
    this.zone = desc.time_zone ?? null;
    this.formatTime = timeFormatter(this.zone);
    this.rows = { ev: [], t: [], cols: this.columns.map(() => []) };
    this.windowSeconds = 120;
    this.following = true;
    this.fetching = false;
    this.pending = [];
    this.expected = null; // the x range we set last: any other is the user's zoom
    section.dataset.timeZone = this.zone ?? BROWSER_ZONE;
    section.dataset.points = "0";

    this.latest = el("span", { class: "latest-time", text: "–" });
    const windowSelect = el("select", { class: "window", title: "the time window shown while following" });
    for (const [seconds, label] of [[30, "30 s"], [120, "2 min"], [600, "10 min"], [0, "all"]]) {
      windowSelect.append(el("option", { value: String(seconds), text: label, selected: seconds === 120 }));
    }
    windowSelect.addEventListener("change", () => {
      this.windowSeconds = Number(windowSelect.value);
      this.resume();
    });
    this.followButton = el("button", { class: "follow hidden", text: "follow", title: "scroll with the newest data again" });
    this.followButton.addEventListener("click", () => this.resume());
    const zoneName = this.zone ?? `${BROWSER_ZONE} (browser)`;
    section.append(
      el("div", { class: "controls" },
        el("span", { text: "newest" }), this.latest,
        el("label", { text: "window " }, windowSelect),
        this.followButton,
        el("span", { class: "note", text: `times in ${zoneName}; drag to zoom, double-click to follow` })),
    );
    this.box = chartBox(260);
    section.append(this.box);
    this.chart = this.makeChart();
    this.refetch();
  }

  makeChart() {
    const zone = this.zone;
    const tickTime = timeFormatter(zone, false);
    const series = [
      { label: "time", value: (u, ts) => this.formatTime(ts) },
      ...this.columns.map((name, i) => ({
        label: name,
        stroke: COLORS[i % COLORS.length],
        width: 1.5,
        value: (u, v) => fmt(v),
        spanGaps: false,
      })),
    ];
    const opts = {
      series,
      scales: { x: { time: true } },
      // 24-hour tick labels in the zone, as the caption; uPlot places the ticks (tzDate).
      axes: [{ ...AXIS, values: (u, ticks) => ticks.map(tickTime) }, { ...AXIS, size: 70, values: (u, vals) => vals.map((v) => fmt(v, 4)) }],
      legend: { live: true },
      cursor: {
        drag: { x: true, y: false, setScale: true },
        // Double-click resumes following instead of uPlot's zoom-to-all-data.
        bind: { dblclick: () => (e) => { if (e.button === 0) this.resume(); return null; } },
      },
      hooks: {
        // uPlot reports scale changes later (batched), so compare with what we set rather than
        // flag our own calls. Before we set any (while uPlot is built), the range is not a zoom.
        setScale: [(u, key) => {
          if (key !== "x" || this.expected === null) return;
          const { min, max } = u.scales.x;
          const tolerance = 1e-6 * Math.max(1, Math.abs(this.expected.max - this.expected.min));
          if (Math.abs(min - this.expected.min) > tolerance || Math.abs(max - this.expected.max) > tolerance) this.pause();
        }],
      },
    };
    if (zone) opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1e3), zone);
    return newChart(opts, this.data(), this.box);
  }

  data() {
    return [this.rows.t, ...this.rows.cols];
  }

  pause() {
    this.following = false;
    this.followButton.classList.remove("hidden");
  }

  resume() {
    this.following = true;
    this.followButton.classList.add("hidden");
    this.redraw();
  }

  async refetch() {
    this.fetching = true;
    try {
      const view = await getResult(this.desc.path);
      this.rows = { ev: [], t: [], cols: this.columns.map(() => []) };
      if (view) this.append(view);
    } catch (error) {
      console.warn("history", this.desc.name, error);
    } finally {
      this.fetching = false;
    }
    const pending = this.pending;
    this.pending = [];
    for (const update of pending) this.append(update);
    this.redraw();
  }

  /**
   * A `state` tail: append what is newer. When its first row is newer than our newest, rows
   * were skipped (a full tail) or the server's history no longer holds ours (a shorter tail is
   * all of it): re-fetch. So does a newest row older than ours (a new scan began).
   */
  update(tail) {
    if (this.fetching) {
      this.pending.push(tail);
      return;
    }
    const ev = tail.event_number ?? [];
    if (ev.length === 0) return;
    const mine = this.rows.ev.length ? this.rows.ev[this.rows.ev.length - 1] : null;
    if (mine !== null) {
      const newScan = ev[ev.length - 1] < mine;
      const skipped = ev[0] > mine;
      if (newScan || skipped) {
        this.pending.push(tail);
        this.refetch();
        return;
      }
    }
    this.append(tail);
    this.redraw();
  }

  append(view) {
    const ev = view.event_number ?? [];
    const t = view.time ?? [];
    const values = view.values ?? {};
    const { rows } = this;
    for (let i = 0; i < ev.length; i++) {
      const last = rows.ev.length ? rows.ev[rows.ev.length - 1] : null;
      if (last !== null && ev[i] <= last) continue;
      rows.ev.push(ev[i]);
      rows.t.push(t[i] ?? null);
      this.columns.forEach((name, c) => rows.cols[c].push(values[name]?.[i] ?? null));
    }
    if (rows.ev.length > MAX_ROWS) {
      const drop = rows.ev.length - MAX_ROWS;
      rows.ev.splice(0, drop);
      rows.t.splice(0, drop);
      rows.cols.forEach((col) => col.splice(0, drop));
    }
  }

  redraw() {
    const { t } = this.rows;
    this.section.dataset.points = String(t.length);
    this.latest.textContent = t.length ? this.formatTime(t[t.length - 1]) : "–";
    this.chart.setData(this.data(), false);
    if (this.following && t.length) {
      const max = t[t.length - 1];
      const min = Math.min(this.windowSeconds > 0 ? max - this.windowSeconds : t[0], max - 1);
      this.expected = { min, max };
      this.chart.setScale("x", { min, max });
    }
  }
}

// ---------------------------------------------------------------- image

const COLORMAPS = ["inferno", "magma", "viridis", "greys", "turbo"];

class ImagePanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.png = desc.png ?? `${API}/image/${desc.name}.png`;
    this.view = null; // the newest image view from `state`
    this.wanted = null; // the newest frame's event number the server has
    this.drawn = null; // the event number of the frame on the canvas
    this.inFlight = false;
    this.dirty = true; // settings changed: fetch even when no newer frame came
    this.scan = null;

    this.cmap = el("select", { class: "cmap", title: "colormap" });
    for (const name of COLORMAPS) this.cmap.append(el("option", { value: name, text: name }));
    this.range = null; // [low, high]: the counts the drawn frame's colours span
    this.scale = el("select", { class: "scale", title: "colour scale" });
    for (const [value, text] of [["robust", "robust"], ["auto", "auto (min–max)"], ["fixed", "fixed"]]) {
      this.scale.append(el("option", { value, text }));
    }
    this.min = el("input", { type: "number", class: "scale-min hidden", placeholder: "min", step: "any", title: "fixed scale: the lowest count" });
    this.max = el("input", { type: "number", class: "scale-max hidden", placeholder: "max", step: "any", title: "fixed scale: the highest count" });
    this.barImage = el("img", { class: "colorbar-image", alt: "colour bar" });
    this.barMin = el("span", { class: "scale-label", text: "–" });
    this.barMax = el("span", { class: "scale-label", text: "–" });
    const changed = () => {
      const fixed = this.scale.value === "fixed";
      // Fixed starts from the range shown now, which the user then edits.
      if (fixed && this.min.value === "" && this.range) this.min.value = String(this.range[0]);
      if (fixed && this.max.value === "" && this.range) this.max.value = String(this.range[1]);
      this.min.classList.toggle("hidden", !fixed);
      this.max.classList.toggle("hidden", !fixed);
      this.barImage.src = `${API}/colorbar.png?cmap=${encodeURIComponent(this.cmap.value)}`;
      this.dirty = true;
      this.maybeFetch();
    };
    for (const control of [this.cmap, this.scale, this.min, this.max]) control.addEventListener("change", changed);

    this.image = el("canvas", { class: "image", width: 1, height: 1 });
    this.overlay = el("canvas", { class: "overlay", width: 1, height: 1 });
    this.message = el("div", { class: "message", text: "waiting for the first frame…" });
    this.readout = el("div", { class: "beam-readout" });
    this.projX = chartBox(120);
    this.projY = chartBox(120);
    section.append(
      el("div", { class: "controls" },
        el("label", { text: "colormap " }, this.cmap),
        el("label", { text: "scale " }, this.scale),
        this.min, this.max,
        el("span", { class: "colorbar" }, this.barMin, this.barImage, this.barMax)),
      el("div", { class: "image-row" }, el("div", { class: "frame" }, this.image, this.overlay)),
      this.message,
      this.readout,
      el("div", { class: "projections" },
        el("div", { class: "projection-x" }, el("div", { class: "note", text: "x projection" }), this.projX),
        el("div", { class: "projection-y" }, el("div", { class: "note", text: "y projection" }), this.projY)),
    );
    for (const box of [this.projX, this.projY]) box.classList.add("projection");
    this.barImage.src = `${API}/colorbar.png?cmap=${this.cmap.value}`;
    this.charts = null;
  }

  /** After a reconnect: draw the newest frame even if its number is not newer (a restart). */
  refetch() {
    this.dirty = true;
    this.maybeFetch();
  }

  update(view, state) {
    if (state && state.scan !== this.scan) {
      this.scan = state.scan;
      this.dirty = true;
    }
    this.view = view;
    // The view is null until the run's first frame (after a restart too).
    this.wanted = view ? (view.event_number ?? view.frame ?? null) : null;
    if (this.wanted === null) {
      this.message.textContent = "waiting for the first frame…";
      return;
    }
    this.maybeFetch();
  }

  url() {
    const query = new URLSearchParams({ cmap: this.cmap.value, scale: this.scale.value });
    if (this.scale.value === "fixed") {
      if (this.min.value !== "") query.set("min", this.min.value);
      if (this.max.value !== "") query.set("max", this.max.value);
    }
    return `${this.png}?${query}`;
  }

  /** One PNG in flight at most, and only for a frame other than the one drawn (a restarted
   * run numbers its frames from 1 again). */
  async maybeFetch() {
    // No frame known yet: asking would only earn a 404.
    if (this.inFlight || this.wanted === null) return;
    if (!this.dirty && this.wanted === this.drawn) return;
    if (this.scale.value === "fixed" && (this.min.value === "" || this.max.value === "")) {
      this.message.textContent = "a fixed scale needs its min and max";
      return;
    }
    this.inFlight = true;
    this.dirty = false;
    let drewOne = false;
    try {
      const response = await fetch(this.url(), { cache: "no-store" });
      if (response.status === 404) {
        // The frame went with the reducer that had it: ask again with the next state.
        this.message.textContent = "waiting for the first frame…";
        this.dirty = true;
        return;
      }
      if (!response.ok) {
        this.message.textContent = `the frame could not be read: ${response.status} ${await response.text()}`;
        return;
      }
      const event = Number(response.headers.get("X-Frame-Event"));
      const low = response.headers.get("X-Scale-Min");
      const high = response.headers.get("X-Scale-Max");
      const bitmap = await createImageBitmap(await response.blob());
      this.draw(bitmap);
      bitmap.close();
      this.drawn = Number.isFinite(event) ? event : this.wanted;
      this.section.dataset.event = String(this.drawn);
      this.barMin.textContent = low === null ? "–" : fmt(Number(low), 4);
      this.barMax.textContent = high === null ? "–" : fmt(Number(high), 4);
      if (low !== null && high !== null) this.range = [Number(low), Number(high)];
      this.message.textContent = "";
      drewOne = true;
    } catch (error) {
      console.warn("image", this.desc.name, error);
    } finally {
      this.inFlight = false;
    }
    // A newer frame (or a settings change) may have come while this one was on its way.
    if (drewOne && this.wanted !== null && (this.dirty || this.wanted !== this.drawn)) {
      requestAnimationFrame(() => this.maybeFetch());
    }
  }

  draw(bitmap) {
    for (const canvas of [this.image, this.overlay]) {
      if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
        canvas.width = bitmap.width;
        canvas.height = bitmap.height;
      }
    }
    this.image.getContext("2d").drawImage(bitmap, 0, 0);
    this.drawOverlay(bitmap.width);
    this.drawProjections();
  }

  drawOverlay(width) {
    const ctx = this.overlay.getContext("2d");
    ctx.clearRect(0, 0, this.overlay.width, this.overlay.height);
    const view = this.view;
    const beam = view?.beam;
    if (!beam?.x || !beam?.y) {
      this.readout.textContent = "no beam found";
      return;
    }
    // Beam coordinates are in source pixels; the PNG may be binned (by the view's or our request).
    const sourceWidth = view.source_shape?.[1];
    const scale = sourceWidth ? width / sourceWidth : 1 / (view.bin || 1);
    const x = beam.x.centroid_px * scale;
    const y = beam.y.centroid_px * scale;
    const sx = beam.x.sigma_px * scale;
    const sy = beam.y.sigma_px * scale;
    const line = Math.max(1, width / 320);
    const arm = Math.max(6 * line, Math.min(sx, sy) / 2);
    ctx.lineWidth = line;
    ctx.strokeStyle = "#00e5ff";
    ctx.beginPath();
    ctx.moveTo(x - arm, y);
    ctx.lineTo(x + arm, y);
    ctx.moveTo(x, y - arm);
    ctx.lineTo(x, y + arm);
    ctx.stroke();
    if (sx > 0 && sy > 0) {
      ctx.setLineDash([4 * line, 3 * line]);
      ctx.beginPath();
      ctx.ellipse(x, y, sx, sy, 0, 0, 2 * Math.PI);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    this.readout.textContent =
      `centroid x ${fmt(beam.x.centroid_px, 4)} px, y ${fmt(beam.y.centroid_px, 4)} px; ` +
      `σ x ${fmt(beam.x.sigma_px, 4)} px, y ${fmt(beam.y.sigma_px, 4)} px (source pixels); frame ${view.frame ?? view.event_number}`;
  }

  drawProjections() {
    const projections = this.view?.projections;
    if (!projections?.x || !projections?.y) return;
    const series = (name, color) => [{ label: "px" }, { label: name, stroke: color, width: 1, value: (u, v) => fmt(v) }];
    const opts = (name, color) => ({
      series: series(name, color),
      scales: { x: { time: false } },
      axes: [{ ...AXIS }, { ...AXIS, size: 55, values: (u, vals) => vals.map((v) => fmt(v, 3)) }],
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
    });
    const data = (values) => [values.map((_, i) => i), values];
    if (!this.charts) {
      this.charts = [
        newChart(opts("x", "#ff7b72"), data(projections.x), this.projX),
        newChart(opts("y", "#79c0ff"), data(projections.y), this.projY),
      ];
    } else {
      this.charts[0].setData(data(projections.x));
      this.charts[1].setData(data(projections.y));
    }
  }
}

// ---------------------------------------------------------------- quad scan

const PLANES = ["x", "y"];

class QuadScanPanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.view = null;
    section.dataset.steps = "0";
    this.select = el("select", { class: "measurement", title: "the measurement shown" });
    this.select.addEventListener("change", () => this.render());
    this.status = el("span", { class: "note" });
    this.fitBody = el("tbody");
    this.warnings = el("div", { class: "warning" });
    this.boxes = PLANES.map(() => chartBox(240));
    this.charts = [null, null];
    section.append(
      el("div", { class: "controls" }, el("label", { text: "measurement " }, this.select), this.status),
      el("div", { class: "planes" },
        ...PLANES.map((plane, i) => el("div", {}, el("div", { class: "note", text: `σ${plane}² (µm²) against the quad (kG)` }), this.boxes[i]))),
      el("table", { class: "fit" },
        el("thead", {}, el("tr", {}, ...["plane", "εn (µm)", "± (µm)", "β (m)", "α", "BMAG", "χ²/dof"].map((t) => el("th", { text: t })))),
        this.fitBody),
      this.warnings,
      el("div", { class: "note", text: "Scans are started from the command line: beamflow scan quad --help" }),
    );
  }

  update(view) {
    this.view = view;
    this.fillSelect();
    this.render();
  }

  fillSelect() {
    const view = this.view;
    const chosen = this.select.value;
    const options = [["", "newest (live while running)"]];
    if (view.live) options.push(["live", `live: ${view.live.id ?? ""} (${view.live.state ?? "running"})`]);
    const finished = Object.values(view.measurements ?? {}).sort((a, b) => String(b.started_at).localeCompare(String(a.started_at)));
    for (const m of finished) options.push([m.id, `${m.id} (${m.state ?? "finished"}, ${m.steps?.length ?? 0} steps)`]);
    const signature = options.map((o) => o.join("=")).join("|");
    if (signature === this.signature) return;
    this.signature = signature;
    this.select.replaceChildren(...options.map(([value, text]) => el("option", { value, text })));
    this.select.value = options.some(([value]) => value === chosen) ? chosen : "";
  }

  /** The measurement the selector names: `{id, state, steps, fit}` or null. */
  shown() {
    const view = this.view;
    if (!view) return null;
    const choice = this.select.value;
    if (choice === "live") return view.live ?? null;
    if (choice) return view.measurements?.[choice] ?? null;
    if (view.live) return view.live;
    if (view.last_measurement && view.measurements?.[view.last_measurement]) return view.measurements[view.last_measurement];
    return { id: null, state: null, steps: view.steps ?? [], fit: view.fit ?? null };
  }

  render() {
    const m = this.shown();
    const steps = m?.steps ?? [];
    const plotted = steps.filter((s) => Number.isFinite(s.bctrl_kg) && (Number.isFinite(s.size_x_m) || Number.isFinite(s.size_y_m)));
    this.section.dataset.steps = String(plotted.length);
    this.status.textContent = m?.id ? `${m.id}: ${m.state ?? ""}, ${plotted.length} steps` : `${plotted.length} steps`;
    PLANES.forEach((plane, i) => this.plot(i, plane, plotted, m?.fit?.[plane] ?? null));
    this.fitBody.replaceChildren(...PLANES.map((plane) => this.fitRow(plane, m?.fit?.[plane] ?? null)));
    const warnings = [...(m?.fit?.warnings ?? []), ...PLANES.flatMap((p) => (m?.fit?.[p]?.warnings ?? []).map((w) => `${p}: ${w}`))];
    this.warnings.textContent = warnings.map((w) => (typeof w === "string" ? w : JSON.stringify(w))).join("; ");
  }

  fitRow(plane, fit) {
    const td = (text) => el("td", { class: "num", text });
    if (!fit) return el("tr", {}, el("td", { text: plane }), el("td", { colSpan: 6, class: "note", text: "no fit yet (three settings needed)" }));
    const errors = fit.errors_chi2_scaled ?? fit.errors_apriori ?? {};
    const um = (v) => (Number.isFinite(v) ? fmt(v * 1e6) : "–");
    return el("tr", {},
      el("td", { text: fit.physical === false ? `${plane} (unphysical)` : plane }),
      td(um(fit.norm_emit)), td(um(errors.norm_emit)),
      td(`${fmt(fit.beta, 4)} ± ${fmt(errors.beta, 2)}`),
      td(`${fmt(fit.alpha, 4)} ± ${fmt(errors.alpha, 2)}`),
      td(fmt(fit.bmag?.min, 4)),
      td(fmt(fit.reduced_chi2, 3)));
  }

  plot(i, plane, steps, fit) {
    const um2 = (m) => (m * 1e6) ** 2;
    const sorted = [...steps].sort((a, b) => a.bctrl_kg - b.bctrl_kg);
    const k = sorted.map((s) => s.bctrl_kg);
    const size = sorted.map((s) => s[`size_${plane}_m`]);
    const sigma2 = size.map((s) => (Number.isFinite(s) ? um2(s) : null));
    // σ² = s², so its error is 2 s δs.
    const err = sorted.map((s, j) => (Number.isFinite(size[j]) && Number.isFinite(s[`error_${plane}_m`]) ? 2 * size[j] * s[`error_${plane}_m`] * 1e12 : null));
    const curveK = fit?.curve?.bctrl_kg ?? [];
    const curve = (fit?.curve?.size_m ?? []).map((s) => (Number.isFinite(s) ? um2(s) : null));
    const data = uPlot.join([[k, sigma2], [curveK, curve]]);
    // The error bars follow the joined x values.
    const errByK = new Map(k.map((x, j) => [x, err[j]]));
    this.errors = this.errors ?? [];
    this.errors[i] = data[0].map((x) => errByK.get(x) ?? null);
    if (!this.charts[i]) {
      const opts = {
        scales: { x: { time: false } },
        series: [
          { label: "quad (kG)", value: (u, v) => fmt(v, 4) },
          { label: `σ${plane}² measured`, stroke: plane === "x" ? "#ff7b72" : "#79c0ff", paths: () => null, points: { show: true, size: 7, fill: plane === "x" ? "#ff7b72" : "#79c0ff" }, value: (u, v) => fmt(v, 4) },
          { label: "fit", stroke: "#e3b341", width: 1.5, dash: [6, 3], spanGaps: true, points: { show: false }, value: (u, v) => fmt(v, 4) },
        ],
        axes: [{ ...AXIS }, { ...AXIS, size: 70, values: (u, vals) => vals.map((v) => fmt(v, 4)) }],
        hooks: { draw: [(u) => this.drawErrorBars(u, i)] },
      };
      this.charts[i] = newChart(opts, data, this.boxes[i]);
    } else {
      this.charts[i].setData(data);
    }
  }

  drawErrorBars(u, i) {
    const errors = this.errors?.[i];
    if (!errors || !u.series[1].show) return;
    const { ctx } = u;
    const xs = u.data[0];
    const ys = u.data[1];
    ctx.save();
    ctx.strokeStyle = u.series[1].stroke();
    ctx.lineWidth = Math.max(1, devicePixelRatio);
    ctx.beginPath();
    for (let j = 0; j < xs.length; j++) {
      if (ys[j] === null || ys[j] === undefined || !errors[j]) continue;
      const x = u.valToPos(xs[j], "x", true);
      const lo = u.valToPos(ys[j] - errors[j], "y", true);
      const hi = u.valToPos(ys[j] + errors[j], "y", true);
      const cap = 4 * devicePixelRatio;
      ctx.moveTo(x, lo);
      ctx.lineTo(x, hi);
      ctx.moveTo(x - cap, lo);
      ctx.lineTo(x + cap, lo);
      ctx.moveTo(x - cap, hi);
      ctx.lineTo(x + cap, hi);
    }
    ctx.stroke();
    ctx.restore();
  }
}

// ---------------------------------------------------------------- table (last values)

const SEVERITY_CLASS = { 1: "alarm-minor", 2: "alarm-major", 3: "alarm-invalid" };

class TablePanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.rows = [];
    this.trs = new Map();
    this.body = el("tbody");
    section.append(el("div", { class: "scroll" }, el("table", { class: "last" },
      el("thead", {}, el("tr", {}, ...["name", "value", "unit", "age", "alarm"].map((t) => el("th", { text: t })))),
      this.body)));
  }

  update(update) {
    this.rows = update.rows ?? [];
    const keys = this.rows.map((r) => r.key).join("\n");
    if (keys !== this.keys) {
      this.keys = keys;
      this.trs = new Map();
      this.body.replaceChildren(...this.rows.map((row) => {
        const tr = el("tr", { data: { key: row.key } },
          el("td", { text: row.key, title: row.source ? `stream ${row.source}` : "" }),
          el("td", { class: "value num" }), el("td", { class: "unit" }), el("td", { class: "age num" }), el("td", { class: "alarm" }));
        this.trs.set(row.key, tr);
        return tr;
      }));
    }
    this.refresh();
  }

  /** Values, alarms and ages; also called every second so ages grow and PV states apply. */
  refresh() {
    const now = Date.now() / 1e3;
    for (const row of this.rows) {
      const tr = this.trs.get(row.key);
      if (!tr) continue;
      const [, value, unit, age, alarm] = tr.children;
      const disconnected = isDisconnected(row);
      let cls = "";
      if (disconnected) cls = "disconnected";
      else if (SEVERITY_CLASS[row.severity]) cls = SEVERITY_CLASS[row.severity];
      tr.className = cls;
      // A disconnected PV's last number is not the machine's value: never show it as one.
      value.textContent = disconnected ? "disconnected" : fmt(row.value);
      unit.textContent = row.unit ?? row.units ?? "";
      age.textContent = row.time === null || row.time === undefined ? "–" : ageText(now - row.time);
      alarm.textContent = disconnected
        ? page.pvStates.get(row.source)
        : row.severity ? `${cls.replace("alarm-", "")} (status ${row.status ?? "?"})` : "";
    }
  }
}

// ---------------------------------------------------------------- what-if (surrogate model)

class WhatIfPanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.model = desc.model ?? `${API}/model/${desc.name}`;
    this.measured = desc.measured ?? {};
    this.inputs = new Map(); // name -> {input, live, provenance, desc}
    this.outputs = new Map(); // name -> {value, measured}
    this.seq = 0;
    this.replies = 0;
    section.dataset.replies = "0";

    this.token = el("input", { class: "token hidden", type: "password", placeholder: "token (from beamflow run)", autocomplete: "off" });
    this.token.addEventListener("change", () => {
      const value = this.token.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      this.token.value = "";
      this.showToken(false);
      this.evaluate();
    });
    this.apply = el("button", { class: "apply", text: "Apply current machine values", type: "button" });
    this.apply.addEventListener("click", () => this.applyMachine());
    this.message = el("div", { class: "message" });
    this.inputBody = el("tbody");
    this.outputBody = el("tbody");
    section.append(
      el("div", { class: "controls" }, this.apply, this.token, el("span", { class: "note", text: "evaluates when a value is committed (Enter or leaving the box)" })),
      this.message,
      el("div", { class: "what-if" },
        el("table", { class: "inputs" },
          el("thead", {}, el("tr", {}, ...["input", "value", "range", "machine", ""].map((t) => el("th", { text: t })))),
          this.inputBody),
        el("table", { class: "outputs" },
          el("thead", {}, el("tr", {}, ...["output", "model", "unit", "measured"].map((t) => el("th", { text: t })))),
          this.outputBody)),
    );
    this.showToken(!sessionStorage.getItem(TOKEN_KEY));
    this.load();
  }

  showToken(show) {
    this.token.classList.toggle("hidden", !show);
  }

  async load() {
    try {
      const model = await getJson(this.model);
      if (model.description) this.section.querySelector("h2 .note").textContent = model.description;
      this.buildInputs(model.inputs ?? []);
      this.buildOutputs(model.outputs ?? []);
      await this.refreshLive();
      // Start from the machine as it is, so the first answer is the model's view of now.
      this.fillLive();
      this.evaluate();
    } catch (error) {
      this.message.textContent = `the model could not be read: ${error.message}`;
      return;
    }
    // While the stream is down the server is too: asking would only fail.
    setInterval(() => connection.lost || this.refreshLive(), RETRY_MS);
  }

  buildInputs(inputs) {
    this.inputBody.replaceChildren(...inputs.map((desc) => {
      const [lo, hi] = desc.range ?? [null, null];
      const input = el("input", {
        type: "number", step: "any", value: String(desc.default ?? ""), disabled: Boolean(desc.read_only),
        title: desc.read_only ? "read-only: the model takes it from its default or the machine" : `${lo} … ${hi} ${desc.unit ?? ""}`,
        data: { input: desc.name },
      });
      if (lo !== null) input.min = String(lo);
      if (hi !== null) input.max = String(hi);
      // `change` fires on commit (Enter, blur, a spinner click), not on every keystroke.
      input.addEventListener("change", () => this.evaluate());
      const live = el("td", { class: "num" });
      const provenance = el("span", { class: "provenance" });
      this.inputs.set(desc.name, { input, live, provenance, desc });
      return el("tr", {},
        el("td", { text: desc.name }),
        el("td", {}, input),
        el("td", { class: "range", text: `${fmt(lo, 4)} … ${fmt(hi, 4)} ${desc.unit ?? ""}` }),
        live,
        el("td", {}, provenance));
    }));
  }

  buildOutputs(outputs) {
    this.outputBody.replaceChildren(...outputs.map((desc) => {
      const value = el("td", { class: "num", text: "–", data: { output: desc.name } });
      const measured = el("td", { class: "num", text: this.measured[desc.name] ? "–" : "" , title: this.measured[desc.name] ?? "not measured" });
      const unit = el("td", { text: desc.unit ?? "" });
      this.outputs.set(desc.name, { value, measured, unit });
      return el("tr", {}, el("td", { text: desc.name }), value, unit, measured);
    }));
  }

  async refreshLive() {
    try {
      const live = await getJson(`${this.model}/inputs`);
      for (const [name, entry] of Object.entries(live)) {
        const row = this.inputs.get(name);
        if (!row) continue;
        row.liveValue = entry.value;
        row.live.textContent = `${fmt(entry.value)} ${entry.unit ?? ""}`;
        row.provenance.textContent = entry.provenance ?? "";
        row.provenance.className = `provenance ${entry.provenance ?? ""}`;
      }
    } catch (error) {
      console.warn("model inputs", error);
    }
  }

  fillLive() {
    for (const row of this.inputs.values()) {
      if (Number.isFinite(row.liveValue)) row.input.value = String(row.liveValue);
      row.input.classList.remove("invalid");
    }
  }

  async applyMachine() {
    await this.refreshLive();
    this.fillLive();
    this.evaluate();
  }

  /** POST the form; only the newest request's reply is shown. */
  async evaluate() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      this.showToken(true);
      this.message.textContent = "a token is needed to evaluate: open the URL beamflow run prints, or paste the token";
      return;
    }
    const inputs = {};
    const outside = [];
    for (const [name, row] of this.inputs) {
      if (row.desc.read_only) continue;
      const value = row.input.valueAsNumber;
      if (!Number.isFinite(value)) continue;
      inputs[name] = value;
      const [lo, hi] = row.desc.range ?? [-Infinity, Infinity];
      row.input.classList.toggle("invalid", value < lo || value > hi);
      if (value < lo || value > hi) outside.push(`${name} = ${fmt(value)} is outside the model's range ${fmt(lo, 4)} … ${fmt(hi, 4)}`);
    }
    const seq = ++this.seq;
    // The server would refuse it (422); say so here, and drop any reply still on its way.
    if (outside.length) {
      this.message.textContent = outside.join("; ");
      return;
    }
    let response;
    let body;
    try {
      response = await fetch(`${this.model}/evaluate`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify({ base: "live", inputs }),
      });
      body = await response.json().catch(() => null);
    } catch (error) {
      if (seq === this.seq) this.message.textContent = `evaluation failed: ${error.message}`;
      return;
    }
    // A reply to an older request is stale: the form has changed since.
    if (seq !== this.seq) return;
    for (const row of this.inputs.values()) row.input.classList.remove("invalid");
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      this.showToken(true);
      this.message.textContent = "the token was refused: paste the one beamflow run prints";
      return;
    }
    if (!response.ok) {
      for (const issue of body?.issues ?? []) this.inputs.get(issue.name)?.input.classList.add("invalid");
      this.message.textContent = body?.detail ?? `evaluation failed: ${response.status}`;
      return;
    }
    this.message.textContent = "";
    for (const [name, out] of Object.entries(body?.outputs ?? {})) {
      const row = this.outputs.get(name);
      if (!row) continue;
      row.value.textContent = fmt(out.value, 6);
      // The exact number, for whoever reads the page by machine; the text is rounded.
      row.value.dataset.value = String(out.value);
      if (out.unit) row.unit.textContent = out.unit;
    }
    this.replies += 1;
    this.section.dataset.replies = String(this.replies);
    this.refreshMeasured();
  }

  /** The measured values beside the model's outputs, from the newest `state`. */
  refreshMeasured() {
    for (const [name, path] of Object.entries(this.measured)) {
      const row = this.outputs.get(name);
      if (!row) continue;
      const value = stateValue(path);
      row.measured.textContent = value === undefined ? "–" : fmt(value, 6);
    }
  }

  update() {
    this.refreshMeasured();
  }
}

// ---------------------------------------------------------------- scan view (bluesky runs)

const RUN_STATUS = { running: "running", success: "success", abort: "aborted", fail: "failed" };
// The peak markers, apart from the series' colours.
const CEN_COLOR = "#e3b341";
const COM_COLOR = "#ff7b72";
// Where a map has no measured cell (the page's background).
const BLANK = "#0d1117";
// A stream's events shown in its table at most: the first and the newest.
const STREAM_EVENTS = 4;
// Rows of marker labels (cen, com) above a line plot.
const MARKER_ROWS = 2;

/** 256 [r, g, b] of a colormap, read off the server's colour bar: the image panel's colours. */
function colormapLut(name) {
  colormapLut.cache ??= new Map();
  if (!colormapLut.cache.has(name)) {
    const lut = (async () => {
      const response = await fetch(`${API}/colorbar.png?cmap=${encodeURIComponent(name)}`);
      if (!response.ok) throw new Error(`colorbar ${name}: ${response.status}`);
      const bitmap = await createImageBitmap(await response.blob());
      const canvas = el("canvas", { width: bitmap.width, height: 1 });
      const ctx = canvas.getContext("2d");
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      const { data } = ctx.getImageData(0, 0, canvas.width, 1);
      return Array.from({ length: canvas.width }, (_, i) => [data[4 * i], data[4 * i + 1], data[4 * i + 2]]);
    })();
    // A failure is not kept: the next drawing asks again.
    lut.catch(() => colormapLut.cache.delete(name));
    colormapLut.cache.set(name, lut);
  }
  return colormapLut.cache.get(name);
}

/** Ticks at 1, 2 or 5 × 10^k inside [lo, hi], about `count` of them. */
function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) ?? 10 * power;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  return ticks;
}

const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

/** A tick label: as `fmt`, but 5e-4 rather than 5.000e-4 (ticks are round numbers). */
function tickText(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return Number(v.toPrecision(4)).toExponential();
  return fmt(v, 4);
}

class ScanViewPanel {
  constructor(desc, section) {
    this.desc = desc;
    this.section = section;
    this.summary = null; // the newest update: {order, latest, late, runs, run}
    this.following = true;
    this.picked = null; // the uid picked while not following
    this.run = null; // the view shown
    this.fetchSeq = 0;
    this.fetching = false;
    this.field = null; // the field whose PeakStats are marked
    this.chart = null;
    this.chartKey = null;
    this.userZoom = false;
    this.plotMode = "none";
    this.mapNote = "";
    this.openStreams = new Set();
    section.dataset.following = "true";
    section.dataset.mode = "none";

    this.picker = el("select", { class: "run-picker", title: "the run shown" });
    this.picker.addEventListener("change", () => this.pick(this.picker.value));
    this.followButton = el("button", { class: "follow hidden", text: "follow latest", title: "show each new run as it starts again" });
    this.followButton.addEventListener("click", () => this.pick(""));
    this.late = el("span", { class: "note" });
    this.scanId = el("span", { class: "scan-id", text: "–" });
    this.plan = el("span", { class: "plan" });
    this.status = el("span", { class: "run-status", text: "no run yet" });
    this.points = el("span", { class: "run-points" });
    this.missing = el("span", { class: "warning" });
    this.times = el("span", { class: "note" });
    this.message = el("div", { class: "message" });
    this.plotNote = el("div", { class: "message" });
    this.box = el("div", { class: "scan-plot" });
    this.readout = el("div", { class: "note map-readout" });
    this.statsField = el("select", { class: "stats-field", title: "the field whose PeakStats are shown and marked on the plot" });
    this.statsField.addEventListener("change", () => {
      this.field = this.statsField.value;
      if (this.run) this.showStats(this.run);
      // Its markers, and with a scale per field its axis.
      if (this.run && this.plotMode === "line") this.plotLine(this.run);
    });
    // I0 at 1e5 beside a ratio near 1 would flatten one of them: a scale each, the axis the
    // marked field's, unless the user wants them on one.
    this.ownScales = true;
    this.scalesBox = el("input", { type: "checkbox", checked: true });
    this.scalesBox.addEventListener("change", () => {
      this.ownScales = this.scalesBox.checked;
      if (this.run && this.plotMode === "line") this.plotLine(this.run);
    });
    this.scalesLabel = el("label", { class: "own-scales hidden", title: "each field on its own y scale; the axis shows the field whose PeakStats are marked" }, this.scalesBox, " a y scale per field");
    this.swatch = el("span", { class: "swatch" });
    this.statsList = el("dl", { class: "peak-stats" });
    this.stats = el("div", { class: "stats-card hidden" },
      el("h3", {}, "PeakStats of ", this.swatch, this.statsField),
      this.statsList,
      el("div", { class: "note", text: "as bluesky's PeakStats computes them; cen and com are marked on the plot, the span between the half-maximum crossings shaded" }));
    this.streams = el("div", { class: "streams" });
    section.append(
      el("div", { class: "controls" }, el("label", { text: "run " }, this.picker), this.followButton, this.scalesLabel, this.late),
      el("div", { class: "scan-header" }, this.scanId, this.plan, this.status, this.points, this.missing, this.times),
      this.message,
      el("div", { class: "scan-body" },
        el("div", { class: "scan-main" }, this.plotNote, this.box, this.readout),
        el("div", { class: "scan-side" }, this.stats, this.streams)),
    );
    this.fmtTime = timeFormatter(null);
  }

  update(summary) {
    this.summary = summary;
    this.fillPicker();
    const late = Number(summary.late ?? 0);
    this.late.textContent = late > 0 ? `${late} documents of runs joined mid-way skipped` : "";
    if (this.following) {
      this.show(summary.run ?? null);
    } else if (this.stale()) {
      // A picked run still going (or just stopped): keep it current, one request at a time.
      if (!this.fetching) this.fetchPicked();
    }
  }

  /** Whether the picked run's view may be behind the server's: running, or stopped since. */
  stale() {
    const listed = this.summary?.runs?.[this.picked];
    if (!listed || this.run?.uid !== this.picked) return false;
    return listed.status === "running" || listed.status !== this.run.status;
  }

  /** After a reconnect the state comes again; a picked run is asked for again. */
  refetch() {
    if (!this.following && this.picked) this.fetchPicked();
  }

  fillPicker() {
    const summary = this.summary;
    const latest = summary.latest ? summary.runs?.[summary.latest] : null;
    const label = (run) => `#${run.scan_id ?? "?"} ${run.plan_name ?? ""} (${RUN_STATUS[run.status] ?? run.status ?? "?"})`;
    const options = [["", latest ? `latest: ${label(latest)}` : "latest (none yet)"]];
    for (const uid of [...(summary.order ?? [])].reverse()) {
      const run = summary.runs?.[uid];
      if (run) options.push([uid, `${label(run)} ${uid.slice(0, 8)}`]);
    }
    const signature = options.map((o) => o.join("=")).join("|");
    if (signature === this.signature) return;
    this.signature = signature;
    this.picker.replaceChildren(...options.map(([value, text]) => el("option", { value, text })));
    // A picked run dropped from the list stays shown, as it was fetched.
    if (!this.following && !options.some(([value]) => value === this.picked)) {
      this.picker.append(el("option", { value: this.picked, text: `${this.run?.scan_id ?? "?"} (no longer kept)` }));
    }
    this.picker.value = this.following ? "" : this.picked;
  }

  pick(uid) {
    this.picker.value = uid;
    this.following = uid === "";
    this.picked = this.following ? null : uid;
    this.section.dataset.following = String(this.following);
    this.followButton.classList.toggle("hidden", this.following);
    this.fetchSeq += 1;
    if (this.following) this.show(this.summary?.run ?? null);
    else this.fetchPicked();
  }

  async fetchPicked() {
    const seq = ++this.fetchSeq;
    const uid = this.picked;
    this.fetching = true;
    try {
      const run = await getResult(`${this.desc.path}/runs/${encodeURIComponent(uid)}`);
      // Only the newest request's answer, and only while that run is still wanted.
      if (seq !== this.fetchSeq || this.following) return;
      if (run === null) this.message.textContent = `run ${uid} is no longer kept`;
      else this.show(run);
    } catch (error) {
      console.warn("scan view", this.desc.name, error);
      if (seq === this.fetchSeq) this.message.textContent = `run ${uid} could not be read: ${error.message}`;
      return;
    } finally {
      this.fetching = false;
    }
    // The run stopped while its view was on its way: its final view, once.
    const listed = this.summary?.runs?.[uid];
    if (seq === this.fetchSeq && listed && listed.status !== "running" && this.run?.status === "running") this.fetchPicked();
  }

  show(run) {
    const changed = run?.uid !== this.run?.uid;
    this.run = run;
    this.section.dataset.run = run?.uid ?? "";
    this.section.dataset.status = run?.status ?? "";
    if (changed) {
      this.field = null;
      this.message.textContent = "";
    }
    if (!run) {
      this.scanId.textContent = "–";
      this.status.textContent = "no run yet";
      this.status.dataset.status = "";
      for (const node of [this.plan, this.points, this.missing, this.times]) node.textContent = "";
      this.stats.classList.add("hidden");
      this.message.textContent = "waiting for a run: nothing has come from the RunEngine since beamflow started";
      this.showPlot(null);
      return;
    }
    this.header(run);
    const fields = run.y ?? [];
    if (!fields.includes(this.field)) this.field = fields.find((f) => run.peak_stats?.[f]) ?? fields[0] ?? null;
    this.showPlot(run);
    this.showStats(run);
    this.showStreams(run);
  }

  header(run) {
    this.scanId.textContent = `scan ${run.scan_id ?? "?"}`;
    this.plan.textContent = run.plan_name ?? "";
    const status = run.status ?? "running";
    this.status.dataset.status = status;
    this.status.textContent = RUN_STATUS[status] ?? status;
    if (run.reason) this.status.textContent += `: ${run.reason}`;
    this.status.title = run.reason ?? "";
    const stream = run.streams?.[run.stream];
    const done = Number(stream?.events ?? 0) + Number(stream?.dropped ?? 0);
    this.points.textContent = `${done}${isNumber(run.num_points) ? ` / ${run.num_points}` : ""} points`;
    const missing = Object.entries(run.missing ?? {}).filter(([, n]) => n > 0);
    this.missing.textContent = missing.length ? `missing: ${missing.map(([s, n]) => `${n} ${s} event${n === 1 ? "" : "s"}`).join(", ")}` : "";
    const dropped = Number(stream?.dropped ?? 0);
    if (dropped > 0) this.missing.textContent += `${this.missing.textContent ? "; " : ""}${dropped} points past the view's limit not kept`;
    const started = isNumber(run.started) ? this.fmtTime(run.started) : "–";
    let took = "";
    if (isNumber(run.started) && isNumber(run.stopped)) took = `, took ${ageText(run.stopped - run.started)}`;
    else if (isNumber(run.started) && run.status === "running") took = `, running for ${ageText(Date.now() / 1e3 - run.started)}`;
    this.times.textContent = `started ${started}${took} · uid ${run.uid}`;
  }

  /** The plotted stream's points: x (sorted), each y field, x's label. */
  columns(run) {
    const columns = run.streams?.[run.stream]?.columns ?? {};
    const fields = run.y ?? [];
    let xs = columns[run.x] ?? [];
    let xLabel = run.x ?? "";
    if (run.x === "time") {
      const t0 = xs.find(isNumber);
      xs = xs.map((t) => (isNumber(t) ? t - t0 : null));
      xLabel = "time since the first point (s)";
    }
    const rows = [];
    for (let i = 0; i < xs.length; i++) if (isNumber(xs[i])) rows.push(i);
    // uPlot wants x ascending; a scan that went down is the same curve.
    rows.sort((a, b) => xs[a] - xs[b] || a - b);
    return {
      x: rows.map((i) => xs[i]),
      ys: fields.map((f) => rows.map((i) => (isNumber(columns[f]?.[i]) ? columns[f][i] : null))),
      fields,
      xLabel,
    };
  }

  showPlot(run) {
    const dims = run?.dimensions?.length ?? 0;
    const mode = !run ? "none" : run.grid ? "map" : dims >= 2 ? "scatter" : (run.y ?? []).length ? "line" : "none";
    this.section.dataset.mode = mode;
    if (mode !== this.plotMode) this.clearPlot();
    this.plotMode = mode;
    // Why nothing is drawn, while nothing is (a run's fields come with its first event).
    this.plotNote.textContent = mode === "none" && run ? this.nothingToPlot(run) : "";
    if (mode === "line") this.plotLine(run);
    else if (mode === "none") {
      this.section.dataset.points = "0";
      this.section.dataset.series = "0";
    } else this.plotMap(run, mode);
  }

  /** Whatever plot is there, gone: a line run after a map, a map after a line. */
  clearPlot() {
    this.dropChart();
    this.mapObserver?.disconnect();
    this.mapObserver = null;
    this.mapGeometry = null;
    this.box.replaceChildren();
    this.readout.textContent = "";
  }

  nothingToPlot(run) {
    if (!Number(run.streams?.[run.stream]?.events ?? 0)) return "waiting for the first point…";
    const arrays = Object.entries(run.streams?.[run.stream]?.arrays ?? {});
    const shown = arrays.map(([field, a]) => `${field} (${a.dtype ?? "?"} ${(a.shape ?? []).join("×")}, newest at point ${a.seq_num ?? "?"})`);
    return `no scalar field to plot${shown.length ? `; arrays: ${shown.join(", ")}` : ""}`;
  }

  dropChart() {
    this.chart?.destroy();
    this.chart = null;
    this.chartKey = null;
    this.observer?.disconnect();
    this.observer = null;
    this.userZoom = false;
  }

  plotLine(run) {
    const { x, ys, fields, xLabel } = this.columns(run);
    const data = [x, ...ys];
    const own = this.ownScales && fields.length > 1;
    const marked = Math.max(0, fields.indexOf(this.field));
    this.scalesLabel.classList.toggle("hidden", fields.length < 2);
    // A new run, other fields or scales: a new chart (series, scales and labels are fixed at
    // creation).
    const key = `${run.uid}\n${xLabel}\n${fields.join("\n")}\n${own ? marked : "one scale"}`;
    if (key !== this.chartKey) {
      this.dropChart();
      this.chartKey = key;
      const box = el("div", { class: "chart" });
      this.box.replaceChildren(box);
      const yLabel = fields.length === 1 || own ? fields[marked] : "";
      const opts = {
        width: Math.max(300, Math.floor(this.box.clientWidth || 700)),
        height: 340,
        scales: { x: { time: false } },
        series: [
          { label: xLabel, value: (u, v) => fmt(v) },
          ...fields.map((name, i) => ({
            label: name,
            stroke: COLORS[i % COLORS.length],
            width: 2,
            // Each point marked while they are apart; uPlot leaves them out when dense.
            points: { size: 6, fill: COLORS[i % COLORS.length] },
            scale: own ? `y${i}` : "y",
            value: (u, v) => fmt(v),
          })),
        ],
        axes: [
          { ...AXIS, label: xLabel, labelSize: 20, size: 32, font: "12px system-ui", labelFont: "13px system-ui", values: (u, vals) => vals.map(tickText) },
          { ...AXIS, scale: own ? `y${marked}` : "y", ...(own ? { stroke: COLORS[marked % COLORS.length] } : {}), label: yLabel, labelSize: yLabel ? 22 : 0, size: 70, font: "12px system-ui", labelFont: "13px system-ui", values: (u, vals) => vals.map(tickText) },
        ],
        legend: { live: true },
        // Room above the plot for the markers' labels.
        padding: [MARKER_ROWS * 19 + 6, null, null, null],
        cursor: { drag: { x: true, y: false, setScale: true } },
        hooks: {
          draw: [(u) => this.drawMarkers(u)],
          // A drag zooms: new points then keep the range the user chose.
          setSelect: [(u) => { if (u.select.width > 0) this.userZoom = true; }],
        },
      };
      this.chart = new uPlot(opts, data, box);
      // uPlot's double-click shows all the data again, and so do new points from then on.
      box.addEventListener("dblclick", () => (this.userZoom = false));
      const chart = this.chart;
      this.observer = new ResizeObserver(() => {
        const width = Math.max(300, Math.floor(this.box.clientWidth));
        if (width !== chart.width) chart.setSize({ width, height: chart.height });
      });
      this.observer.observe(this.box);
    } else {
      this.chart.setData(data, !this.userZoom);
    }
    this.section.dataset.points = String(this.chart.data[0].length);
    this.section.dataset.series = String(this.chart.series.length - 1);
  }

  /** cen and com of the selected field as vertical lines, its half-maximum span shaded. */
  drawMarkers(u) {
    const stats = this.run?.peak_stats?.[this.field];
    const index = (this.run?.y ?? []).indexOf(this.field);
    const drawn = [];
    if (stats && index >= 0 && u.series[index + 1]?.show) {
      const { ctx } = u;
      const { left, top, width, height } = u.bbox;
      const px = (v) => u.valToPos(v, "x", true);
      const inside = (v) => isNumber(v) && px(v) >= left - 0.5 && px(v) <= left + width + 0.5;
      const ratio = devicePixelRatio;
      ctx.save();
      const crossings = stats.crossings ?? [];
      ctx.font = `${13 * ratio}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      ctx.textAlign = "left";
      let band = null;
      if (crossings.length >= 2 && isNumber(stats.fwhm)) {
        const a = Math.max(left, px(crossings[0]));
        const b = Math.min(left + width, px(crossings[crossings.length - 1]));
        if (b > a) {
          ctx.fillStyle = "rgba(227, 179, 65, 0.12)";
          ctx.fillRect(a, top, b - a, height);
          band = a;
          drawn.push("fwhm");
        }
      }
      // The labels in the margin above the plot (the chart's top padding), one row each.
      let labelY = top - MARKER_ROWS * 19 * ratio;
      for (const [name, value, color, dash] of [["cen", stats.cen, CEN_COLOR, []], ["com", stats.com, COM_COLOR, [6 * ratio, 4 * ratio]]]) {
        if (!inside(value)) continue;
        const x = Math.round(px(value)) + 0.5;
        ctx.strokeStyle = color;
        ctx.lineWidth = 2 * ratio;
        ctx.setLineDash(dash);
        ctx.beginPath();
        ctx.moveTo(x, labelY);
        ctx.lineTo(x, top + height);
        ctx.stroke();
        const text = `${name} ${fmt(value)}`;
        const w = ctx.measureText(text).width + 8 * ratio;
        // Right of its line, or left where the plot ends.
        const tx = x + w + 2 * ratio > left + width ? x - w - 2 * ratio : x + 2 * ratio;
        ctx.fillStyle = color;
        ctx.fillText(text, tx + 4 * ratio, labelY + 1 * ratio);
        labelY += 19 * ratio;
        drawn.push(name);
      }
      if (band !== null) {
        // Inside the span's left edge, over the lines, on a backing.
        const text = `fwhm ${fmt(stats.fwhm)}`;
        const w = ctx.measureText(text).width + 8 * ratio;
        ctx.fillStyle = "rgba(13, 17, 23, 0.85)";
        ctx.fillRect(band + 2 * ratio, top + height - 21 * ratio, w, 18 * ratio);
        ctx.fillStyle = "#c9d1d9";
        ctx.fillText(text, band + 6 * ratio, top + height - 19 * ratio);
      }
      ctx.restore();
    }
    this.section.dataset.markers = drawn.join(",");
  }

  /** The selected field's PeakStats, large: what a scientist reads off to move a motor. */
  showStats(run) {
    const fields = run.y ?? [];
    const oneD = (run.dimensions?.length ?? 0) === 1 && run.x !== "time" && fields.length > 0;
    this.stats.classList.toggle("hidden", !oneD);
    if (!oneD) return;
    const signature = fields.join("\n");
    if (signature !== this.statsSignature) {
      this.statsSignature = signature;
      this.statsField.replaceChildren(...fields.map((f) => el("option", { value: f, text: f })));
    }
    this.statsField.value = this.field;
    // A colour is data, not markup: set through the CSSOM, which the page's CSP allows.
    this.swatch.style.background = COLORS[Math.max(0, fields.indexOf(this.field)) % COLORS.length];
    this.stats.dataset.field = this.field ?? "";
    const s = run.peak_stats?.[this.field];
    if (!s) {
      this.statsList.replaceChildren(el("dd", { class: "note", text: "none yet: PeakStats needs points that vary" }));
      return;
    }
    // The exact number in data-value, for whoever reads the page by machine; the text is rounded.
    const value = (stat, v) => el("span", { class: `num stat-${stat}`, text: fmt(v), data: isNumber(v) ? { stat, value: String(v) } : { stat } });
    const at = (stat, pair) => el("dd", {}, value(`${stat}_y`, pair?.[1]), el("span", { class: "note", text: ` at ${run.x} ` }), value(`${stat}_x`, pair?.[0]));
    const d = s.derivative;
    const rows = [
      ["cen", el("dd", {}, value("cen", s.cen))],
      ["com", el("dd", {}, value("com", s.com))],
      ["fwhm", el("dd", {}, value("fwhm", s.fwhm))],
      ["max", at("max", s.max)],
      ["min", at("min", s.min)],
    ];
    if (d) rows.push(["d/dx cen", el("dd", {}, value("derivative_cen", d.cen))], ["d/dx fwhm", el("dd", {}, value("derivative_fwhm", d.fwhm))]);
    if (s.lin_bkg) rows.push(["background", el("dd", {}, value("bkg_m", s.lin_bkg.m), el("span", { class: "note", text: ` × ${run.x} + ` }), value("bkg_b", s.lin_bkg.b))]);
    this.statsList.replaceChildren(...rows.flatMap(([name, dd]) => [el("dt", { text: name }), dd]));
  }

  /** The other streams (baseline, monitors): a reading per row, the first and newest events. */
  showStreams(run) {
    const names = Object.keys(run.streams ?? {}).filter((name) => name !== run.stream).sort();
    const signature = `${run.uid}|${names.map((n) => `${n}:${run.streams[n].events}`).join("|")}`;
    if (signature === this.streamSignature) return;
    this.streamSignature = signature;
    if (names.length === 0) {
      this.streams.replaceChildren(el("div", { class: "note", text: "no other stream (a baseline) in this run" }));
      return;
    }
    this.streams.replaceChildren(...names.map((name) => {
      const stream = run.streams[name];
      const columns = stream.columns ?? {};
      const n = Number(stream.events ?? 0);
      const picked = n <= STREAM_EVENTS ? [...Array(n).keys()] : [0, ...Array.from({ length: STREAM_EVENTS - 1 }, (_, k) => n - STREAM_EVENTS + 1 + k)];
      const seq = columns.seq_num ?? [];
      const fields = Object.keys(columns).filter((f) => f !== "seq_num" && f !== "time").sort();
      const details = el("details", { class: "stream", open: this.openStreams.has(name), data: { stream: name } },
        el("summary", { text: `${name}: ${n} event${n === 1 ? "" : "s"}, ${fields.length} readings${n > STREAM_EVENTS ? " (the first and the newest shown)" : ""}` }),
        el("table", {},
          el("thead", {}, el("tr", {}, el("th", { text: "reading" }), ...picked.map((i) => el("th", { class: "num", text: `#${fmt(seq[i] ?? i + 1)}` })))),
          el("tbody", {}, ...fields.map((f) => el("tr", {}, el("td", { text: f }), ...picked.map((i) => el("td", { class: "num", text: fmt(columns[f]?.[i] ?? null) })))))));
      details.addEventListener("toggle", () => (details.open ? this.openStreams.add(name) : this.openStreams.delete(name)));
      return details;
    }));
  }

  /** The grid (or the scatter of a 2-D run without one) on a canvas, with axes and a colour scale. */
  async plotMap(run, mode) {
    let canvas = this.box.querySelector("canvas.scan-map");
    if (!canvas) {
      canvas = el("canvas", { class: "scan-map" });
      this.box.replaceChildren(canvas);
      canvas.addEventListener("mousemove", (e) => this.hover(canvas, e));
      canvas.addEventListener("mouseleave", () => (this.readout.textContent = this.mapNote));
      this.mapObserver = new ResizeObserver(() => {
        if (this.run && (this.plotMode === "map" || this.plotMode === "scatter")) this.plotMap(this.run, this.plotMode);
      });
      this.mapObserver.observe(this.box);
    }
    let lut;
    try {
      lut = await colormapLut("viridis");
    } catch (error) {
      this.message.textContent = `the colour map could not be read: ${error.message}`;
      return;
    }
    // Another run (or plot) may have come while the colours were on their way.
    if (this.run !== run) return;
    const cells = mode === "map" ? this.gridCells(run) : this.scatterCells(run);
    this.drawMap(canvas, cells, lut);
    this.section.dataset.points = String(cells.points.filter((p) => isNumber(p.v)).length);
    this.section.dataset.series = "1";
  }

  gridCells(run) {
    const g = run.grid;
    const [rows, cols] = g.shape;
    const [[s0, s1], [f0, f1]] = g.extents;
    const at = (a, b, n, i) => (n > 1 ? a + ((b - a) * i) / (n - 1) : a);
    const points = [];
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const v = g.values[r * cols + c];
        points.push({ x: at(f0, f1, cols, c), y: at(s0, s1, rows, r), v: isNumber(v) ? v : null });
      }
    }
    const half = (a, b, n) => (n > 1 ? Math.abs(b - a) / (n - 1) / 2 : 0.5);
    return {
      points, grid: true,
      cellW: 2 * half(f0, f1, cols), cellH: 2 * half(s0, s1, rows),
      xRange: [Math.min(f0, f1) - half(f0, f1, cols), Math.max(f0, f1) + half(f0, f1, cols)],
      yRange: [Math.min(s0, s1) - half(s0, s1, rows), Math.max(s0, s1) + half(s0, s1, rows)],
      xLabel: g.fast, yLabel: g.slow, signal: g.signal,
      note: `${rows} × ${cols} grid`,
    };
  }

  scatterCells(run) {
    const columns = run.streams?.[run.stream]?.columns ?? {};
    const [slow, fast] = run.dimensions.map(([fields]) => fields[0]);
    const signal = (run.y ?? [])[0];
    const xs = columns[fast] ?? [];
    const points = xs.map((x, i) => ({ x, y: columns[slow]?.[i], v: isNumber(columns[signal]?.[i]) ? columns[signal][i] : null }))
      .filter((p) => isNumber(p.x) && isNumber(p.y));
    const span = (values) => {
      const lo = Math.min(...values);
      const hi = Math.max(...values);
      const pad = hi > lo ? (hi - lo) * 0.05 : 0.5;
      return [lo - pad, hi + pad];
    };
    return {
      points, grid: false,
      xRange: points.length ? span(points.map((p) => p.x)) : [0, 1],
      yRange: points.length ? span(points.map((p) => p.y)) : [0, 1],
      xLabel: fast, yLabel: slow, signal,
      note: `${points.length} points, no grid`,
    };
  }

  drawMap(canvas, cells, lut) {
    const ratio = devicePixelRatio;
    const cssW = Math.max(300, Math.floor(this.box.clientWidth || 600));
    const cssH = 380;
    if (canvas.width !== cssW * ratio || canvas.height !== cssH * ratio) {
      canvas.width = cssW * ratio;
      canvas.height = cssH * ratio;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    // Margins for tick labels and axis names; the colour scale on the right.
    const plot = { x: 78, y: 12, w: cssW - 78 - 120, h: cssH - 12 - 52 };
    this.mapGeometry = { plot, cells };
    canvas.dataset.plot = [plot.x, plot.y, plot.w, plot.h].map((v) => v * ratio).join(",");
    const [x0, x1] = cells.xRange;
    const [y0, y1] = cells.yRange;
    const px = (x) => plot.x + ((x - x0) / (x1 - x0 || 1)) * plot.w;
    const py = (y) => plot.y + plot.h - ((y - y0) / (y1 - y0 || 1)) * plot.h;
    const values = cells.points.map((p) => p.v).filter(isNumber);
    const lo = values.length ? Math.min(...values) : 0;
    const hi = values.length ? Math.max(...values) : 1;
    const color = (v) => {
      const t = hi > lo ? (v - lo) / (hi - lo) : 0.5;
      const [r, g, b] = lut[Math.min(lut.length - 1, Math.max(0, Math.round(t * (lut.length - 1))))];
      return `rgb(${r}, ${g}, ${b})`;
    };
    ctx.fillStyle = BLANK;
    ctx.fillRect(plot.x, plot.y, plot.w, plot.h);
    for (const p of cells.points) {
      if (!isNumber(p.v)) continue;
      ctx.fillStyle = color(p.v);
      if (cells.grid) {
        // Whole pixels, edge to edge: no seams between cells.
        const a = Math.round(px(p.x - cells.cellW / 2));
        const b = Math.round(px(p.x + cells.cellW / 2));
        const c = Math.round(py(p.y + cells.cellH / 2));
        const d = Math.round(py(p.y - cells.cellH / 2));
        ctx.fillRect(a, c, b - a, d - c);
      } else {
        ctx.beginPath();
        ctx.arc(px(p.x), py(p.y), 6, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    // Axes, ticks and names.
    ctx.strokeStyle = "#8b949e";
    ctx.fillStyle = "#c9d1d9";
    ctx.lineWidth = 1;
    ctx.strokeRect(plot.x - 0.5, plot.y - 0.5, plot.w + 1, plot.h + 1);
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const t of niceTicks(x0, x1, Math.max(2, Math.floor(plot.w / 90)))) {
      const x = Math.round(px(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(x, plot.y + plot.h);
      ctx.lineTo(x, plot.y + plot.h + 5);
      ctx.stroke();
      ctx.fillText(tickText(t), x, plot.y + plot.h + 8);
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const t of niceTicks(y0, y1, Math.max(2, Math.floor(plot.h / 60)))) {
      const y = Math.round(py(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(plot.x - 5, y);
      ctx.lineTo(plot.x, y);
      ctx.stroke();
      ctx.fillText(tickText(t), plot.x - 8, y);
    }
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(`${cells.xLabel} (fast)`, plot.x + plot.w / 2, cssH - 4);
    ctx.save();
    ctx.translate(16, plot.y + plot.h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(`${cells.yLabel} (slow)`, 0, 0);
    ctx.restore();
    // The colour scale: the signal's range, low at the bottom.
    const bar = { x: plot.x + plot.w + 24, y: plot.y, w: 16, h: plot.h };
    for (let j = 0; j < bar.h; j++) {
      const [r, g, b] = lut[Math.round((1 - j / Math.max(1, bar.h - 1)) * (lut.length - 1))];
      ctx.fillStyle = `rgb(${r}, ${g}, ${b})`;
      ctx.fillRect(bar.x, bar.y + j, bar.w, 1);
    }
    ctx.strokeRect(bar.x - 0.5, bar.y - 0.5, bar.w + 1, bar.h + 1);
    ctx.fillStyle = "#c9d1d9";
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    if (values.length) {
      for (const t of hi > lo ? niceTicks(lo, hi, 5) : [lo]) {
        const y = bar.y + bar.h - (hi > lo ? ((t - lo) / (hi - lo)) * bar.h : bar.h / 2);
        ctx.fillText(tickText(t), bar.x + bar.w + 5, y);
      }
    }
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText(cells.signal ?? "", bar.x + bar.w / 2 + 20, cssH - 4);
    const blank = cells.points.length - values.length;
    this.mapNote = `${cells.note}: ${values.length} measured${blank ? `, ${blank} not yet (blank)` : ""}; ${cells.signal} ${fmt(lo)} … ${fmt(hi)}. Point at a cell to read it.`;
    this.readout.textContent = this.mapNote;
  }

  hover(canvas, event) {
    const geometry = this.mapGeometry;
    if (!geometry) return;
    const { plot, cells } = geometry;
    const rect = canvas.getBoundingClientRect();
    const scale = rect.width / (canvas.width / devicePixelRatio);
    const mx = (event.clientX - rect.left) / scale;
    const my = (event.clientY - rect.top) / scale;
    if (mx < plot.x || mx > plot.x + plot.w || my < plot.y || my > plot.y + plot.h) return;
    const [x0, x1] = cells.xRange;
    const [y0, y1] = cells.yRange;
    const x = x0 + ((mx - plot.x) / plot.w) * (x1 - x0);
    const y = y0 + ((plot.y + plot.h - my) / plot.h) * (y1 - y0);
    let best = null;
    for (const p of cells.points) {
      const d = ((p.x - x) / (x1 - x0 || 1)) ** 2 + ((p.y - y) / (y1 - y0 || 1)) ** 2;
      if (!best || d < best.d) best = { p, d };
    }
    if (best) this.readout.textContent = `${cells.xLabel} ${fmt(best.p.x)}, ${cells.yLabel} ${fmt(best.p.y)}: ${cells.signal} ${best.p.v === null ? "not measured" : fmt(best.p.v)}`;
  }
}

// ---------------------------------------------------------------- any other kind: its JSON

// Its view comes with every `state` (the current one at once when the stream opens).
class JsonPanel {
  constructor(desc, section) {
    this.pre = el("pre", { class: "json", text: "–" });
    section.append(this.pre);
  }

  update(view) {
    const text = JSON.stringify(view, null, 1) ?? "null";
    this.pre.textContent = text.length > 20000 ? `${text.slice(0, 20000)}\n…` : text;
  }
}

// ---------------------------------------------------------------- health

class HealthPanel {
  constructor(section) {
    this.section = section;
    this.figures = el("dl", { class: "figures" });
    this.workers = el("div", { class: "workers" });
    this.ingesters = el("div", { class: "ingesters" });
    this.scan = el("div", { class: "scan" });
    this.controller = el("div", { class: "controller" });
    this.files = el("div", { class: "files note", data: { files: "" } });
    this.values = {};
    for (const [key, label] of [
      ["eps", "events/s"], ["p50", "latency p50"], ["p99", "latency p99"], ["incomplete", "incomplete events"],
      ["events", "events reduced"], ["last", "last event"], ["scanNumber", "scan"], ["lost", "lost events"],
    ]) {
      const dd = el("dd", { text: "–" });
      if (key === "eps") dd.dataset.eventsPerSecond = "";
      this.values[key] = dd;
      this.figures.append(el("dt", { text: label }), dd);
    }
    section.append(el("div", { class: "health-grid" },
      el("div", {}, el("h3", { class: "note", text: "reducer" }), this.figures),
      el("div", {}, el("h3", { class: "note", text: "workers (busy share)" }), this.workers, el("h3", { class: "note", text: "scan" }), this.scan, this.controller),
      el("div", {}, el("h3", { class: "note", text: "ingesters and their PVs" }), this.ingesters)));
    section.append(el("div", { class: "note" },
      "raw: ", el("a", { href: `${API}/result`, text: "result" }), " · ",
      el("a", { href: `${API}/status`, text: "status" }), " · ",
      el("a", { href: `${API}/openapi.json`, text: "openapi.json" })));
    section.append(this.files);
  }

  update(health) {
    const reducer = health.reducer ?? {};
    const v = this.values;
    v.eps.textContent = fmt(reducer.events_per_second, 3);
    v.eps.dataset.eventsPerSecond = String(reducer.events_per_second ?? "");
    v.p50.textContent = reducer.latency_ms ? `${fmt(reducer.latency_ms.p50, 3)} ms` : "–";
    v.p99.textContent = reducer.latency_ms ? `${fmt(reducer.latency_ms.p99, 3)} ms` : "–";
    v.incomplete.textContent = fmt(reducer.incomplete_events);
    v.events.textContent = fmt(reducer.events);
    v.last.textContent = fmt(reducer.last_event);
    v.scanNumber.textContent = fmt(reducer.scan);
    v.lost.textContent = fmt(reducer.lost_events);
    document.getElementById("summary").textContent =
      `${fmt(reducer.events_per_second, 3)} events/s · p99 ${fmt(reducer.latency_ms?.p99, 3)} ms · event ${fmt(reducer.last_event)}`;
    this.updateWorkers(health.load);
    this.updateIngesters(health.controller);
    this.updateScan(health.scan);
    this.updateFiles(health.files);
    this.controller.className = health.controller ? "controller" : "controller down";
    this.controller.textContent = health.controller
      ? "controller reachable"
      : `controller unreachable${health.controller_error ? `: ${health.controller_error}` : ""}`;
  }

  updateWorkers(load) {
    // A missed answer keeps the last figures, greyed: a flickering panel helps nobody.
    this.workers.classList.toggle("stale", !load);
    if (!load) return;
    const names = Object.keys(load).sort();
    if (names.join("\n") !== this.workerNames) {
      this.workerNames = names.join("\n");
      this.workers.replaceChildren(...names.map((name) => el("div", { class: "worker", data: { worker: name } },
        el("span", { text: name }), el("div", { class: "bar" }, el("div")), el("span", { class: "num" }))));
    }
    for (const name of names) {
      const row = this.workers.querySelector(`[data-worker="${CSS.escape(name)}"]`);
      const intervals = load[name]?.intervals ?? {};
      // The shortest window the controller gives: the load now rather than since the scan began.
      const key = ["1", "10", "scan"].find((k) => intervals[k]) ?? Object.keys(intervals)[0];
      const interval = intervals[key];
      const share = interval && interval.total > 0 ? Math.min(1, interval.active / interval.total) : null;
      row.children[1].firstChild.style.width = `${share === null ? 0 : share * 100}%`;
      row.children[2].textContent = share === null ? "–" : `${(share * 100).toFixed(0)} %`;
      row.title = key ? `busy share over ${key === "scan" ? "the scan" : `${key} s`}` : "";
    }
  }

  updateIngesters(controller) {
    this.ingesters.classList.toggle("stale", !controller);
    if (!controller) return;
    page.pvStates = new Map();
    const blocks = [];
    for (const [name, ingester] of Object.entries(controller.ingesters ?? {}).sort(([a], [b]) => a.localeCompare(b))) {
      const pvs = ingester?.source?.pvs ?? {};
      const chips = Object.entries(pvs).sort(([a], [b]) => a.localeCompare(b)).map(([stream, pv]) => {
        const state = pv.state ?? (pv.connected ? "connected" : "disconnected");
        page.pvStates.set(stream, state);
        const known = ["connected", "disconnected", "never connected"].includes(state);
        return el("span", { class: known ? "pv" : "pv other", text: stream, title: `${pv.pv ?? stream}: ${state}`, data: { pv: stream, state } });
      });
      blocks.push(el("div", { class: "ingester" },
        el("div", { text: `${name}${Object.keys(pvs).length ? "" : " (no PVs)"}` }),
        el("div", { class: "chips" }, ...chips)));
    }
    this.ingesters.replaceChildren(...blocks);
  }

  // [reducer.hdf5]: each scan's NeXus file, newest first, with its size and a download link.
  updateFiles(files) {
    if (!files) return;
    const key = JSON.stringify(files);
    if (key === this.filesKey) return;
    this.filesKey = key;
    const rows = (files.files ?? []).slice(0, 20).map((file) => el("li", { data: { file: file.name } },
      el("a", { href: `${API}/files/${encodeURIComponent(file.name)}`, text: file.name }),
      ` ${bytes(file.size)}${file.complete ? "" : " (scan running)"}`));
    const failed = files.failures
      ? el("div", { class: "error", text: `${files.failures} writes failed: ${files.last_error ?? ""}` })
      : "";
    this.files.replaceChildren(el("h3", { class: "note", text: `HDF5 files in ${files.folder}` }),
      rows.length ? el("ul", {}, ...rows) : el("div", { text: "none yet: one is written at each scan's end" }), failed);
  }

  updateScan(scan) {
    if (!scan || !scan.state) {
      // A scan driven from the command line shows only in the quad_scan accumulator.
      const live = Object.values(page.latest).find((view) => view && typeof view === "object" && view.live && view.measurements)?.live;
      this.scan.textContent = live
        ? `quad scan ${live.id ?? ""} ${live.state ?? "running"}: ${live.steps?.length ?? 0} steps so far`
        : "no quad scan running";
      return;
    }
    const total = scan.request?.values?.length ?? scan.request?.count ?? null;
    const done = scan.steps?.length ?? 0;
    this.scan.textContent = `quad scan ${scan.state}: step ${done}${total ? ` of ${total}` : ""}${scan.message ? ` — ${scan.message}` : ""}`;
  }
}

// ---------------------------------------------------------------- the page

const KINDS = { history: HistoryPanel, image: ImagePanel, quad_scan: QuadScanPanel, scan_view: ScanViewPanel, table: TablePanel, what_if: WhatIfPanel };

function section(name, kind, title, note) {
  return el("section", { class: "panel", data: { panel: name, kind } },
    el("h2", {}, el("span", { text: title }), el("span", { class: "note", text: note ?? "" })));
}

function build(dashboard) {
  document.title = dashboard.title ?? "beamflow";
  document.getElementById("title").textContent = dashboard.title ?? "beamflow";
  const main = document.getElementById("panels");
  main.replaceChildren();
  const healthSection = section("health", "health", "pipeline health", dashboard.controller ? `controller ${dashboard.controller}` : "");
  main.append(healthSection);
  page.panels.set("health", new HealthPanel(healthSection));
  for (const desc of dashboard.panels ?? []) {
    const Kind = KINDS[desc.kind] ?? JsonPanel;
    const s = section(desc.name, desc.kind, desc.title ?? desc.name, desc.kind === desc.name ? "" : desc.kind);
    main.append(s);
    try {
      page.panels.set(desc.name, new Kind(desc, s));
    } catch (error) {
      console.warn("panel", desc.name, error);
      s.append(el("div", { class: "message", text: `this panel could not be built: ${error.message}` }));
    }
  }
}

function onState(state) {
  page.scan = state.scan ?? null;
  for (const [name, update] of Object.entries(state.panels ?? {})) {
    page.latest[name] = update;
    const panel = page.panels.get(name);
    if (panel?.update && name !== "health") panel.update(update, state);
  }
  // The what-if's measured values come from other panels' updates.
  for (const panel of page.panels.values()) if (panel instanceof WhatIfPanel) panel.refreshMeasured();
}

function onHealth(health) {
  page.health = health;
  page.panels.get("health")?.update(health);
  for (const panel of page.panels.values()) if (panel instanceof TablePanel) panel.refresh();
}

function refetchAll() {
  for (const panel of page.panels.values()) panel.refetch?.();
}

// ---------------------------------------------------------------- the event stream

const connection = {
  source: null,
  timer: null,
  opened: false, // has any stream been open yet
  lost: false, // the stream was down: histories may have missed rows
};

function setConnection(state) {
  const node = document.getElementById("connection");
  node.dataset.state = state;
  node.textContent = { open: "live", connecting: "connecting…", reconnecting: "reconnecting…" }[state];
}

function parse(event) {
  try {
    return JSON.parse(event.data);
  } catch (error) {
    console.warn("a malformed", event.type, "event", error);
    return null;
  }
}

function connect() {
  clearTimeout(connection.timer);
  setConnection(connection.opened ? "reconnecting" : "connecting");
  const source = new EventSource(`${API}/events`);
  connection.source = source;
  source.addEventListener("open", () => {
    setConnection("open");
    if (connection.lost) refetchAll();
    connection.opened = true;
    connection.lost = false;
  });
  source.addEventListener("error", () => {
    connection.lost = true;
    // EventSource retries by itself while CONNECTING; once CLOSED (an HTTP error), we do.
    if (source.readyState === EventSource.CLOSED) retry(source);
    else setConnection("reconnecting");
  });
  source.addEventListener("state", (event) => {
    const state = parse(event);
    if (state) onState(state);
  });
  source.addEventListener("health", (event) => {
    const health = parse(event);
    if (health) onHealth(health);
  });
  // The server is shutting down: close, and keep trying until it is back.
  source.addEventListener("bye", () => {
    connection.lost = true;
    retry(source);
  });
}

function retry(source) {
  source.close();
  if (connection.source !== source) return;
  setConnection("reconnecting");
  clearTimeout(connection.timer);
  connection.timer = setTimeout(connect, RETRY_MS);
}

// ---------------------------------------------------------------- start

async function start() {
  takeToken();
  for (;;) {
    try {
      build(await getJson(`${API}/dashboard`));
      break;
    } catch (error) {
      console.warn("the dashboard description", error);
      setConnection("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }
  connect();
  // Ages in the table grow while nothing arrives.
  setInterval(() => {
    for (const panel of page.panels.values()) if (panel instanceof TablePanel) panel.refresh();
  }, 1000);
}

start();
