/* fraudpipe dashboard: renders the server's Snapshot / History payloads (see payload.py).
 *
 * Every number on the page comes from the payload; a null is shown as "—" with the reason the
 * server gave. All payload text goes into the DOM through textContent, never innerHTML.
 */
"use strict";

const HISTORY_WINDOW_S = 600;       // charts keep the last 10 minutes
const STALE_AFTER_MS = 3000;        // no message for this long: "stale"
const GAP_S = 5;                    // points further apart than this are not joined
const POLL_MS = 5000;               // /api/snapshot polling while the WebSocket is down
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const CONTROL_STAGES = ["gather", "preprocess", "infer", "train"];
const TOKEN_KEY = "fraudpipe.token";
const DASH = "—";

/* ------------------------------------------------------------------ helpers */

const $ = (id) => document.getElementById(id);

function el(tag, { text, cls, id, title, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  if (id) node.id = id;
  if (title) node.title = title;
  if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const child of children) node.append(child);
  return node;
}

const isNum = (v) => typeof v === "number" && Number.isFinite(v);

function fmtNum(v, digits = 0) {
  if (!isNum(v)) return DASH;
  return v.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** rows/s and similar rates: whole numbers when large, one decimal when small. */
function fmtRate(v) {
  if (!isNum(v)) return DASH;
  return Math.abs(v) >= 100 ? fmtNum(v, 0) : fmtNum(v, 1);
}

// Units of a duration: [name, milliseconds, shown while the number stays below this].
const DURATION_UNITS = [["ms", 1, 1000], ["s", 1e3, 100], ["min", 6e4, 100], ["h", 3.6e6, 100],
  ["d", 8.64e7, Infinity]];

/** A duration in ms as [number, unit]: ms below 1 s, then s, min, h, d, with at most three
 * digits before the unit grows (a long pause reads "78 min", never "4,693,742 ms"). */
function fmtDuration(ms) {
  if (!isNum(ms)) return [DASH, ""];
  for (const [unit, size, below] of DURATION_UNITS) {
    const v = ms / size;
    if (Math.abs(v) < below - 0.5) {
      return [fmtNum(v, v === 0 || Math.abs(v) >= 9.95 ? 0 : 1), unit];
    }
  }
}

function fmtPct(fraction, digits = 1) {
  return isNum(fraction) ? fmtNum(fraction * 100, digits) : DASH;
}

/** Compact axis labels: 950, 1.2k, 3.4M. */
function fmtCompact(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return `${+(v / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(v / 1e3).toFixed(0)}k`;
  if (a >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  if (a >= 100 || v === 0) return `${+v.toFixed(0)}`;
  if (a >= 10) return `${+v.toFixed(1)}`;
  return `${+v.toPrecision(2)}`;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** Epoch seconds -> local HH:MM:SS. */
function fmtClock(epochS, withSeconds = true) {
  if (!isNum(epochS)) return DASH;
  const d = new Date(epochS * 1000);
  const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  return withSeconds ? `${hm}:${pad2(d.getSeconds())}` : hm;
}

/** ISO 8601 text shown as "YYYY-MM-DD HH:MM:SS" without changing its time zone. */
function fmtIso(text) {
  if (typeof text !== "string" || text === "") return DASH;
  const m = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})/.exec(text);
  return m ? `${m[1]} ${m[2]}` : text;
}

/** Registry versions look like 20250101T120000.123456Z-abc123: show "abc123". */
function shortVersion(version) {
  if (typeof version !== "string" || version === "") return DASH;
  const m = /^\d{8}T\d{6}(?:\.\d+)?Z-([0-9a-f]+)$/i.exec(version);
  if (m) return m[1];
  return version.length > 14 ? `${version.slice(0, 13)}…` : version;
}

/** Long ids keep both ends (pod names and worker ids differ at the end): "fraudpi…b5-0x3q". */
function truncMiddle(text, max = 20) {
  const str = String(text ?? "");
  if (str.length <= max) return str;
  const tail = Math.ceil((max - 1) / 2);
  return `${str.slice(0, max - 1 - tail)}…${str.slice(-tail)}`;
}

function fmtSigned(v, digits = 2) {
  if (!isNum(v)) return DASH;
  return `${v >= 0 ? "+" : "−"}${Math.abs(v).toFixed(digits)}`;
}

/** Sets the text of a cell/span; null values get "—" and the reason as a tooltip. */
function setValue(node, text, why) {
  if (!node) return;
  node.textContent = text;
  if (why) node.title = why;
  else node.removeAttribute("title");
}

/* ------------------------------------------------------------------ history store */

/** The chart data: HistoryPoint-shaped objects, oldest first, deduplicated by `at`. */
class HistoryStore {
  constructor(windowS) {
    this.windowS = windowS;
    this.points = [];
  }

  add(point) {
    if (!point || !isNum(point.at)) return;
    const pts = this.points;
    const last = pts[pts.length - 1];
    if (!last || point.at > last.at + 1e-6) {
      pts.push(point);
    } else {
      // out of order (history arriving after the first WebSocket messages): insert sorted
      let i = pts.length - 1;
      while (i >= 0 && pts[i].at > point.at + 1e-6) i--;
      if (i >= 0 && Math.abs(pts[i].at - point.at) <= 1e-6) return; // duplicate
      pts.splice(i + 1, 0, point);
    }
    this.trim();
  }

  trim() {
    const pts = this.points;
    if (pts.length === 0) return;
    const cutoff = pts[pts.length - 1].at - this.windowS;
    let drop = 0;
    while (drop < pts.length && pts[drop].at < cutoff) drop++;
    if (drop) pts.splice(0, drop);
  }
}

/** A Snapshot as a HistoryPoint, so live messages and /api/history feed the same charts. */
function snapshotToPoint(s) {
  const stages = {};
  for (const st of s.throughput?.stages ?? []) stages[st.stage] = st.rows_per_s;
  const pending = {};
  for (const b of s.backlog ?? []) pending[b.topic] = b.pending;
  return {
    at: s.at,
    stages,
    end_to_end_rows_per_s: s.throughput?.end_to_end_rows_per_s ?? null,
    p50_ms: s.latency?.p50_ms ?? null,
    p95_ms: s.latency?.p95_ms ?? null,
    p99_ms: s.latency?.p99_ms ?? null,
    alerts_per_s: s.detection?.alerts_per_s ?? null,
    pending,
  };
}

/* ------------------------------------------------------------------ line chart */

const PALETTE = ["#58a6ff", "#3fb950", "#d29922", "#bc8cff", "#ff7b72", "#39c5cf", "#f0883e", "#8b949e"];
const FIXED_COLORS = {
  "end to end": "#f0f6fc",
  gather: "#58a6ff",
  preprocess: "#3fb950",
  train: "#bc8cff",
  infer: "#d29922",
  p50: "#3fb950",
  p95: "#d29922",
  p99: "#ff7b72",
};

/**
 * A small time-series chart on a canvas. `extract(point)` returns {seriesName: number|null};
 * a missing or null value is a gap. Crisp on high-DPI screens, redrawn on resize.
 *
 * Why hand-drawn rather than a vendored charting library (uPlot, Chart.js): the page needs
 * three line charts with gaps and a legend, about 150 lines here. A library would be a
 * minified file of tens of kilobytes in the package that `make lock` does not pin by hash and
 * `make audit` (pip-audit, Python only) does not check, updated by hand; and what the page
 * must get right (a null is a gap, never a zero; points further apart than GAP_S are not
 * joined) would be that library's options instead of code the browser test reads. Revisit
 * if the page needs zoom, tooltips or many more series.
 */
class LineChart {
  constructor(canvas, legend, store, extract, { format = fmtCompact, order = [], integer = false } = {}) {
    this.integer = integer;
    this.canvas = canvas;
    this.legend = legend;
    this.store = store;
    this.extract = extract;
    this.format = format;
    this.order = order;
    this.colors = new Map();
    this.pending = false;
    new ResizeObserver(() => this.requestDraw()).observe(canvas.parentElement);
  }

  colorFor(name) {
    if (!this.colors.has(name)) {
      const fixed = FIXED_COLORS[name];
      // colours already given, and those reserved for this chart's known series
      const used = new Set([...this.colors.values(), ...this.order.map((n) => FIXED_COLORS[n])]);
      const free = PALETTE.find((c) => !used.has(c)) ?? PALETTE[this.colors.size % PALETTE.length];
      this.colors.set(name, fixed ?? free);
    }
    return this.colors.get(name);
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      this.draw();
    });
  }

  /** Series names in a stable order: the preferred ones first, then as first seen. */
  seriesNames(rows) {
    const seen = new Set();
    for (const r of rows) for (const k of Object.keys(r.values)) seen.add(k);
    const names = this.order.filter((n) => seen.has(n));
    for (const n of seen) if (!names.includes(n)) names.push(n);
    return names;
  }

  draw() {
    const rows = this.store.points.map((p) => ({ at: p.at, values: this.extract(p) }));
    const names = this.seriesNames(rows);
    this.renderLegend(names, rows);

    const { canvas } = this;
    const dpr = window.devicePixelRatio || 1;
    const cssW = canvas.clientWidth;
    const cssH = canvas.clientHeight;
    if (cssW === 0 || cssH === 0) return;
    const w = Math.round(cssW * dpr);
    const h = Math.round(cssH * dpr);
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);

    const style = getComputedStyle(document.documentElement);
    const fontPx = parseFloat(style.fontSize) * 0.78;
    ctx.font = `${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    const muted = "#9aa7b4";
    const grid = "#2d3643";

    if (rows.length === 0 || names.length === 0) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.fillText("waiting for data", cssW / 2, cssH / 2);
      return;
    }

    // x range: the data span, at least one minute, at most the store window
    const tMax = rows[rows.length - 1].at;
    const tMin = Math.min(rows[0].at, tMax - 60);

    // y range: 0 .. nice max
    let vMax = 0;
    let anyValue = false;
    for (const r of rows) for (const n of names) {
      const v = r.values[n];
      if (!isNum(v)) continue;
      anyValue = true;
      if (v > vMax) vMax = v;
    }
    const yTicks = niceTicks(vMax > 0 ? vMax : 1, Math.max(2, Math.round(cssH / (fontPx * 4))), this.integer);
    const yMax = yTicks[yTicks.length - 1];

    const yLabels = yTicks.map((t) => this.format(t));
    const labelW = Math.max(...yLabels.map((s) => ctx.measureText(s).width));
    const left = Math.ceil(labelW + fontPx * 0.8);
    const right = Math.ceil(fontPx * 0.6);
    const top = Math.ceil(fontPx * 0.7);
    const bottom = Math.ceil(fontPx * 1.9);
    const plotW = Math.max(10, cssW - left - right);
    const plotH = Math.max(10, cssH - top - bottom);
    const xOf = (t) => left + ((t - tMin) / Math.max(1e-9, tMax - tMin)) * plotW;
    const yOf = (v) => top + plotH - (v / yMax) * plotH;

    // grid + y labels
    ctx.lineWidth = 1;
    ctx.strokeStyle = grid;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    yTicks.forEach((t, i) => {
      const y = Math.round(yOf(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(left, y);
      ctx.lineTo(left + plotW, y);
      ctx.stroke();
      ctx.fillText(yLabels[i], left - fontPx * 0.4, y);
    });

    // x ticks on round clock times
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const span = tMax - tMin;
    const maxTicks = Math.max(2, Math.floor(plotW / (fontPx * 5)));
    const step = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800].find((s) => span / s <= maxTicks) ?? 3600;
    const withSeconds = step < 60;
    for (let t = Math.ceil(tMin / step) * step; t <= tMax + 1e-6; t += step) {
      const x = Math.round(xOf(t)) + 0.5;
      ctx.strokeStyle = grid;
      ctx.beginPath();
      ctx.moveTo(x, top + plotH);
      ctx.lineTo(x, top + plotH + fontPx * 0.35);
      ctx.stroke();
      const label = fmtClock(t, withSeconds);
      const half = ctx.measureText(label).width / 2;
      // skip labels that would run into the y labels or off the right edge
      if (x - half >= left - fontPx * 0.5 && x + half <= cssW) ctx.fillText(label, x, top + plotH + fontPx * 0.5);
    }
    ctx.strokeStyle = "#3b4450";
    ctx.beginPath();
    ctx.moveTo(left, top + plotH + 0.5);
    ctx.lineTo(left + plotW, top + plotH + 0.5);
    ctx.stroke();

    // series (end to end drawn last and thicker so it stays on top)
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top - 2, plotW, plotH + 4);
    ctx.clip();
    const drawOrder = names.filter((n) => n !== "end to end");
    if (names.includes("end to end")) drawOrder.push("end to end");
    for (const name of drawOrder) {
      this.drawSeries(ctx, rows, name, xOf, yOf, name === "end to end" ? 2.4 : 1.6);
    }
    ctx.restore();

    if (!anyValue) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("no measured values in this window", left + plotW / 2, top + plotH / 2);
    }
  }

  drawSeries(ctx, rows, name, xOf, yOf, width) {
    const color = this.colorFor(name);
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.lineWidth = width;
    ctx.lineJoin = "round";
    ctx.lineCap = "round";
    let prevAt = null;
    let runLen = 0;
    let runStart = null;
    const endRun = () => {
      if (runLen === 1 && runStart) {
        // an isolated point between gaps: a dot, so it is not lost
        ctx.beginPath();
        ctx.arc(runStart[0], runStart[1], width, 0, Math.PI * 2);
        ctx.fill();
      } else if (runLen > 1) {
        ctx.stroke();
      }
      runLen = 0;
      runStart = null;
    };
    for (const r of rows) {
      const v = r.values[name];
      if (!isNum(v)) {
        endRun();
        prevAt = null;
        continue;
      }
      const x = xOf(r.at);
      const y = yOf(v);
      if (prevAt === null || r.at - prevAt > GAP_S || runLen === 0) {
        endRun();
        ctx.beginPath();
        ctx.moveTo(x, y);
        runStart = [x, y];
      } else {
        ctx.lineTo(x, y);
      }
      runLen++;
      prevAt = r.at;
    }
    endRun();
  }

  renderLegend(names, rows) {
    if (!this.legend) return;
    const last = rows[rows.length - 1];
    const items = names.map((name) => {
      const v = last ? last.values[name] : null;
      const swatch = el("span", { cls: "swatch" });
      swatch.style.background = this.colorFor(name);
      return el("li", {}, [
        swatch,
        el("span", { text: name }),
        el("span", { cls: "value", text: isNum(v) ? this.format(v) : DASH }),
      ]);
    });
    this.legend.replaceChildren(...items);
  }
}

/** Tick values 0..>=max on a 1/2/5 x 10^n step, about `count` of them. */
function niceTicks(max, count, integer = false) {
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const steps = [1, 2, 2.5, 5, 10].map((m) => m * mag).filter((s) => !integer || Number.isInteger(s));
  const step = steps.find((s) => raw <= s) ?? Math.max(integer ? 1 : 0, 10 * mag);
  const ticks = [];
  for (let t = 0; t < max + step * 0.999; t += step) ticks.push(+t.toPrecision(12));
  if (ticks.length < 2) ticks.push(step);
  return ticks;
}

/* ------------------------------------------------------------------ render: header */

function renderHeader(s) {
  const at = $("last-snapshot");
  at.textContent = fmtClock(s.at);
  at.dateTime = isNum(s.at) ? new Date(s.at * 1000).toISOString() : "";

  const cluster = s.cluster ?? {};
  $("cluster-mode").textContent = cluster.mode ?? DASH;

  const api = $("metrics-api");
  const detail = cluster.detail ? ` — ${cluster.detail}` : "";
  let text;
  let cls;
  if (cluster.metrics_api === "available") {
    text = `pod metrics: available${detail}`;
    cls = "available";
  } else if (cluster.metrics_api === "unavailable") {
    text = `pod metrics: unavailable${detail}`;
    cls = "unavailable";
  } else if (cluster.metrics_api === "not in a cluster") {
    text = `pod metrics: not in a cluster${detail}`;
    cls = "not-in-cluster";
  } else {
    text = DASH;
    cls = "";
  }
  api.textContent = text;
  api.className = cls;
  api.title = text;
}

/* ------------------------------------------------------------------ render: KPI tiles */

/** A KPI tile: its value, the reason when unknown, its caption and, if given, its unit. */
function setTile(id, text, why, caption, unit) {
  const node = $(id);
  const cap = $(`${id}-caption`);
  const tile = node?.closest(".tile");
  const unknown = text === DASH;
  setValue(node, text, unknown ? why : null);
  if (tile) {
    tile.classList.toggle("unknown", unknown);
    if (unknown && why) tile.title = why;
    else tile.removeAttribute("title");
    if (unit) tile.querySelector(".unit").textContent = unit;
  }
  if (cap) {
    cap.textContent = unknown ? `unknown: ${why || "no reason given by the server"}` : caption || "";
    cap.title = cap.textContent;
  }
}

function renderTiles(s) {
  const tp = s.throughput ?? {};
  const lat = s.latency ?? {};
  const det = s.detection ?? {};

  setTile("e2e-rate", fmtRate(tp.end_to_end_rows_per_s), null, "scored transactions");

  // Latency has no *_why field: a null percentile means no rows were scored in its window.
  const latWhy = isNum(lat.rows) && lat.rows === 0
    ? `no rows scored in the last ${fmtNum(lat.window_s)} s`
    : null;
  // Rows that entered before generation resumed waited through the stop: they stay in the
  // percentiles (that wait was real) and the caption says so.
  const waited = isNum(lat.before_resume) && lat.before_resume > 0
    ? `, ${fmtNum(lat.before_resume)} waited through a stop (resumed ${fmtClock(lat.resumed_at)})`
    : "";
  const latCaption = `${fmtNum(lat.rows)} rows / ${fmtNum(lat.window_s)} s${waited}`;
  for (const q of ["p50", "p95", "p99"]) {
    const [text, unit] = fmtDuration(lat[`${q}_ms`]);
    setTile(`latency-${q}`, text, latWhy, latCaption, unit);
  }

  const detWindow = `last ${fmtNum(det.window_s)} s`;
  const detWindowShort = `${fmtNum(det.window_s)} s`;
  setTile("alerts-rate", fmtNum(det.alerts_per_s, 2), null, `last ${fmtNum(det.rate_window_s)} s`);
  // alert_rate = alerts / scored rows: null only when nothing was scored in the window.
  setTile("alert-rate", fmtPct(det.alert_rate, 2), `no rows scored in the ${detWindow}`,
    `of scored rows / ${detWindowShort}`);

  const qWhy = det.quality_why;
  const qWindow = `${fmtNum(det.quality_window_s)} s`;
  setTile("precision", fmtPct(det.precision), qWhy, `of ${fmtNum(det.labeled_alerts)} labeled alerts / ${qWindow}`);
  setTile("recall", fmtPct(det.recall), qWhy, `of ${fmtNum(det.labeled_frauds)} labeled frauds / ${qWindow}`);
}

/* ------------------------------------------------------------------ render: tables */

function emptyRow(colspan, text) {
  return el("tr", {}, [el("td", { cls: "empty", text, attrs: { colspan: String(colspan) } })]);
}

function renderStages(s) {
  const stages = s.throughput?.stages ?? [];
  const rows = stages.map((st) => el("tr", {}, [
    el("th", { text: st.stage, attrs: { scope: "row" } }),
    el("td", { cls: "num", id: `stage-rate-${st.stage}`, text: fmtRate(st.rows_per_s) }),
    el("td", { cls: "num", id: `stage-workers-${st.stage}`, text: fmtNum(st.workers) }),
  ]));
  $("stages").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(3, "no stages reported")]));
}

function renderBacklog(s) {
  const rows = (s.backlog ?? []).map((b) => {
    const hasDead = isNum(b.dead) && b.dead > 0;
    return el("tr", { cls: hasDead ? "has-dead" : "" }, [
      el("th", { text: b.topic, attrs: { scope: "row" } }),
      el("td", { cls: "num", id: `backlog-${b.topic}-pending`, text: fmtNum(b.pending) }),
      el("td", { cls: "num", id: `backlog-${b.topic}-claimed`, text: fmtNum(b.claimed) }),
      el("td", {
        cls: hasDead ? "num dead-positive" : "num",
        id: `backlog-${b.topic}-dead`,
        text: fmtNum(b.dead),
        title: hasDead ? "batches that failed repeatedly and were set aside" : undefined,
      }),
    ]);
  });
  $("backlog").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(4, "no topics reported")]));
}

function renderWarnings(s) {
  const list = $("warnings");
  const warnings = s.warnings ?? [];
  const items = warnings.map((w) => {
    const level = w.level === "critical" ? "critical" : "warning";
    return el("li", { cls: `warning ${level}` }, [
      el("span", { cls: "level", text: level }),
      el("span", { cls: "message", text: w.message }),
    ]);
  });
  list.replaceChildren(...(items.length ? items : [el("li", { cls: "none", text: "all stages keeping up" })]));

  const critical = warnings.filter((w) => w.level === "critical");
  $("warnings-panel").classList.toggle("has-critical", critical.length > 0);
  const banner = $("critical-banner");
  if (critical.length) {
    const more = critical.length > 1 ? ` (+${critical.length - 1} more critical)` : "";
    banner.textContent = `critical: ${critical[0].message}${more}`;
    banner.hidden = false;
  } else {
    banner.textContent = "";
    banner.hidden = true;
  }
}

function reasonChip(r) {
  const sign = isNum(r.contribution) ? (r.contribution >= 0 ? "pos" : "neg") : "";
  const text = `${r.feature} (${isNum(r.contribution) ? (r.contribution >= 0 ? "+" : "") + r.contribution.toFixed(2) : DASH})`;
  return el("span", {
    cls: "reason",
    text,
    attrs: { "data-sign": sign },
    title: `Contribution to the log-odds of fraud: ${fmtSigned(r.contribution, 4)}`,
  });
}

function renderAlerts(s) {
  const det = s.detection ?? {};
  const alerts = [...(det.recent_alerts ?? [])].sort((a, b) => (b.scored_at ?? 0) - (a.scored_at ?? 0));
  const rows = alerts.map((a) => el("tr", {}, [
    el("td", { cls: "when", text: fmtIso(a.ts), title: `transaction time ${a.ts}; scored at ${fmtClock(a.scored_at)}` }),
    el("td", { cls: "num", text: String(a.transaction_id) }),
    el("td", { cls: "num", text: String(a.customer_id) }),
    el("td", { cls: "num", text: String(a.terminal_id) }),
    el("td", { cls: "num", text: fmtNum(a.amount, 2) }),
    el("td", { cls: "num", text: isNum(a.score) ? a.score.toFixed(3) : DASH }),
    el("td", { text: shortVersion(a.model_version), title: a.model_version }),
    el("td", { cls: "reasons" }, (a.reasons ?? []).map(reasonChip)),
  ]));
  $("alerts").tBodies[0].replaceChildren(
    ...(rows.length ? rows : [emptyRow(8, `no alerts in the last ${fmtNum(det.window_s)} s`)]));
  $("alerts-count").textContent = alerts.length ? `(${alerts.length})` : "";
}

function renderModel(s) {
  const m = s.model ?? {};
  const version = $("model-version");
  if (m.version) {
    const short = shortVersion(m.version);
    version.textContent = short !== m.version ? `${m.version} (${short})` : m.version;
  } else {
    version.textContent = "no model promoted yet";
  }
  $("model-promoted-at").textContent = fmtIso(m.promoted_at);
  $("model-promoted-at").title = m.promoted_at ?? "";
  $("model-promotion-reason").textContent = m.promotion_reason ?? DASH;
  $("model-created-at").textContent = fmtIso(m.created_at);
  $("model-created-at").title = m.created_at ?? "";
  $("model-threshold").textContent = isNum(m.threshold) ? m.threshold.toFixed(4) : DASH;

  const drift = $("model-drift");
  const limit = isNum(m.drift_psi_max) ? `retrains above ${m.drift_psi_max.toFixed(2)}` : "never retrains on drift";
  if (isNum(m.drift)) {
    setValue(drift, `${m.drift.toFixed(4)} (${m.drift_feature ?? "unnamed"}); ${limit}`, null);
    drift.classList.toggle("late", isNum(m.drift_psi_max) && m.drift > m.drift_psi_max);
  } else {
    // While warming up, drift_why starts with "warming up:" and names the dates.
    const why = m.drift_warming_up === true ? m.drift_why : `not measured: ${m.drift_why || "no reason given"}`;
    setValue(drift, `${why}; ${limit}`, m.drift_why);
    drift.classList.remove("late");
  }

  renderQuality(s.quality ?? {});

  const entries = Object.entries(m.metrics ?? {});
  const metricNodes = entries.map(([k, v]) => el("div", {}, [
    el("dt", { text: k }),
    el("dd", { text: isNum(v) ? fmtMetric(v) : DASH }),
  ]));
  const none = el("div", {}, [el("dt", { text: "none in the manifest" }), el("dd", { text: DASH })]);
  $("model-metrics").replaceChildren(...(metricNodes.length ? metricNodes : [none]));
}

/** "AP 0.812 · AUC 0.934", or null when either is unknown. */
function fmtFigures(ap, auc) {
  return isNum(ap) && isNum(auc) ? `AP ${ap.toFixed(3)} · AUC ${auc.toFixed(3)}` : null;
}

/** Live figures over labeled traffic: the champion's beside its holdout's, the shadow's beside
 * the champion's on the same rows; "not measured" with the server's reason otherwise. */
function renderQuality(q) {
  const c = q.champion ?? {};
  const over = (f) => `over ${fmtNum(f.rows)} labeled rows (${fmtNum(f.frauds)} frauds)`;
  const live = fmtFigures(c.average_precision, c.roc_auc);
  const holdout = fmtFigures(c.holdout_average_precision, c.holdout_roc_auc) ?? "unknown";
  setValue($("model-live"), live ? `${live} ${over(c)}; holdout ${holdout}`
    : `not measured: ${c.why || "no reason given"}`, c.why);
  const sh = q.shadow;
  if (!sh) {
    setValue($("model-shadow"), "none", null);
    return;
  }
  const mine = fmtFigures(sh.average_precision, sh.roc_auc);
  const theirs = fmtFigures(sh.champion_average_precision, sh.champion_roc_auc) ?? "unknown";
  setValue($("model-shadow"), mine
    ? `${shortVersion(sh.version)}: ${mine} vs champion ${theirs}, same ${fmtNum(sh.rows)} rows (${fmtNum(sh.frauds)} frauds)`
    : `${shortVersion(sh.version)}: not measured: ${sh.why || "no reason given"}`, sh.version);
}

function fmtMetric(v) {
  if (Number.isInteger(v)) return fmtNum(v);
  return Math.abs(v) >= 1000 ? fmtNum(v, 1) : v.toFixed(4);
}

function renderWorkers(s) {
  const workers = s.workers ?? [];
  const unknown = (text) => el("td", { cls: "num unknown-cell", text: DASH, title: text });
  const metricsWhy = s.cluster?.detail || `pod metrics: ${s.cluster?.metrics_api ?? "unknown"}`;
  const rows = workers.map((w) => el("tr", {}, [
    el("th", { text: truncMiddle(w.worker, 26), title: w.worker, attrs: { scope: "row" } }),
    el("td", { text: w.stage }),
    el("td", { text: w.device }),
    el("td", { text: truncMiddle(w.host, 26), title: w.host }),
    el("td", { cls: "num", text: fmtRate(w.rows_per_s) }),
    el("td", { cls: isNum(w.heartbeat_age_s) && w.heartbeat_age_s > 5 ? "num late" : "num", text: fmtNum(w.heartbeat_age_s, 1) }),
    isNum(w.cpu_millicores) ? el("td", { cls: "num", text: fmtNum(w.cpu_millicores) }) : unknown(metricsWhy),
    isNum(w.memory_bytes) ? el("td", { cls: "num", text: fmtNum(w.memory_bytes / 1048576, 1) }) : unknown(metricsWhy),
    isNum(w.gpu_utilization)
      ? el("td", { cls: "num", text: `${fmtNum(w.gpu_utilization, 0)} %` })
      : unknown("reported by GPU stages only"),
  ]));
  $("workers").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(9, "no live workers")]));
  $("workers-count").textContent = workers.length ? `(${workers.length})` : "";
}

/* ------------------------------------------------------------------ render: controls state */

let replicasPrefilled = false;

function renderControlsState(s) {
  const c = s.controls ?? {};
  $("controls-readonly").hidden = c.enabled !== false;

  const scaleGroup = $("scale-group");
  const hint = $("scale-hint");
  const scaleOff = c.scale_available === false;
  const scaleWhy = c.scale_why || `scaling is unavailable (mode: ${s.cluster?.mode ?? "unknown"})`;
  scaleGroup.classList.toggle("unavailable", scaleOff);
  hint.hidden = !scaleOff;
  hint.textContent = scaleOff ? scaleWhy : "";
  for (const stage of CONTROL_STAGES) {
    const button = $(`scale-${stage}-button`);
    button.disabled = scaleOff;
    button.title = scaleOff ? scaleWhy : `set ${stage} replicas`;
    $(`scale-${stage}-replicas`).disabled = scaleOff;
  }
  // Only the action that changes something is offered: Pause while running, Resume while paused.
  const paused = c.generation_paused;
  $("pause-button").disabled = paused === true;
  $("pause-button").title = paused === true ? "generation is paused" : "stop generating transactions";
  $("resume-button").disabled = paused === false;
  $("resume-button").title = paused === false ? "generation is running" : "generate transactions again";

  const gen = $("generation-state");
  const rate = isNum(c.generation_rate)
    ? `, rate ${fmtRate(c.generation_rate)} rows/s (set here)`
    : isNum(c.configured_rate) ? `, rate ${fmtRate(c.configured_rate)} rows/s (configured)` : "";
  gen.textContent = c.generation_paused === undefined ? "" : `— ${c.generation_paused ? "paused" : "running"}${rate}`;

  // Prefill replica inputs once with the live worker counts, never over what the user typed.
  if (!replicasPrefilled && Array.isArray(s.throughput?.stages)) {
    for (const st of s.throughput.stages) {
      const input = $(`scale-${st.stage}-replicas`);
      if (input && input.value === "") input.value = String(st.workers);
    }
    replicasPrefilled = true;
  }
}

/* ------------------------------------------------------------------ snapshot dispatch */

const store = new HistoryStore(HISTORY_WINDOW_S);
let charts = [];

function renderSnapshot(s) {
  const parts = [renderHeader, renderTiles, renderWarnings, renderStages, renderBacklog,
    renderAlerts, renderModel, renderWorkers, renderControlsState];
  for (const render of parts) {
    try {
      render(s);
    } catch (err) {
      console.warn(`render ${render.name} failed`, err);
    }
  }
}

let lastSnapshotAt = -Infinity;

function acceptSnapshot(s, { fromPoll = false } = {}) {
  if (!s || typeof s !== "object" || !isNum(s.at)) return;
  if (fromPoll && s.at <= lastSnapshotAt) return; // a poll answer older than what we show
  lastSnapshotAt = s.at;
  renderSnapshot(s);
  store.add(snapshotToPoint(s));
  for (const chart of charts) chart.requestDraw();
}

function makeCharts() {
  charts = [
    new LineChart($("chart-throughput"), $("chart-throughput-legend"), store, (p) => ({
      ...(p.stages ?? {}),
      "end to end": p.end_to_end_rows_per_s,
    }), { order: ["gather", "preprocess", "train", "infer", "end to end"] }),
    new LineChart($("chart-latency"), $("chart-latency-legend"), store, (p) => ({
      p50: p.p50_ms,
      p95: p.p95_ms,
      p99: p.p99_ms,
    }), { order: ["p50", "p95", "p99"], format: (ms) => fmtDuration(ms).join(" ") }),
    new LineChart($("chart-pending"), $("chart-pending-legend"), store, (p) => ({ ...(p.pending ?? {}) }),
      { order: ["raw-transactions", "features-ready", "inference-results"], integer: true }),
  ];
  window.addEventListener("resize", () => charts.forEach((c) => c.requestDraw()));
  // devicePixelRatio changes (window dragged to another screen, zoom) do not always resize
  const watchDpr = () => {
    matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`).addEventListener("change", () => {
      charts.forEach((c) => c.requestDraw());
      watchDpr();
    }, { once: true });
  };
  watchDpr();
}

async function loadHistory() {
  try {
    const res = await fetch("/api/history", { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    for (const p of body.points ?? []) store.add(p);
    charts.forEach((c) => c.requestDraw());
  } catch (err) {
    console.warn("history unavailable:", err.message);
  }
}

async function fetchSnapshot() {
  try {
    const res = await fetch("/api/snapshot", { cache: "no-store" });
    if (res.ok) acceptSnapshot(await res.json(), { fromPoll: true });
  } catch (err) {
    console.warn("snapshot unavailable:", err.message);
  }
}

/* ------------------------------------------------------------------ WebSocket connection */

const conn = {
  ws: null,
  open: false,
  lastMessageMs: 0,
  attempt: 0,
  retryAtMs: 0,
  retryTimer: null,
  pollTimer: null,
};

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws`;
}

function connect() {
  clearTimeout(conn.retryTimer);
  conn.retryAtMs = 0;
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    console.warn("WebSocket failed:", err.message);
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  updateWsStatus();
  ws.addEventListener("open", () => {
    conn.open = true;
    updateWsStatus();
  });
  ws.addEventListener("message", (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      console.warn("ignored a WebSocket message that is not JSON");
      return;
    }
    if (msg && msg.kind !== undefined && msg.kind !== "snapshot") return;
    conn.lastMessageMs = Date.now();
    conn.attempt = 0;
    stopPolling();
    acceptSnapshot(msg);
    updateWsStatus();
  });
  ws.addEventListener("close", () => {
    if (conn.ws !== ws) return;
    conn.ws = null;
    conn.open = false;
    updateWsStatus();
    scheduleReconnect();
    startPolling();
  });
  // "error" is always followed by "close", which does the work
}

function scheduleReconnect() {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** conn.attempt);
  const delay = base / 2 + Math.random() * base / 2; // jitter: many screens do not reconnect at once
  conn.attempt++;
  conn.retryAtMs = Date.now() + delay;
  clearTimeout(conn.retryTimer);
  conn.retryTimer = setTimeout(connect, delay);
  updateWsStatus();
}

function startPolling() {
  if (conn.pollTimer) return;
  conn.pollTimer = setInterval(fetchSnapshot, POLL_MS);
}

function stopPolling() {
  clearInterval(conn.pollTimer);
  conn.pollTimer = null;
}

function updateWsStatus() {
  const pill = $("ws-status");
  const detail = $("ws-detail");
  const now = Date.now();
  let state;
  let info = "";
  if (conn.open && conn.lastMessageMs > 0) {
    const age = now - conn.lastMessageMs;
    state = age > STALE_AFTER_MS ? "stale" : "live";
    if (state === "stale") info = `no message for ${Math.round(age / 1000)} s`;
  } else {
    state = "disconnected";
    if (conn.open) info = "connected, waiting for the first message";
    else if (conn.ws) info = "connecting…";
    else if (conn.retryAtMs) info = `retrying in ${Math.max(0, Math.ceil((conn.retryAtMs - now) / 1000))} s`;
  }
  if (pill.textContent !== state) pill.textContent = state;
  pill.className = `pill ${state}`;
  if (detail.textContent !== info) detail.textContent = info;
}

/* ------------------------------------------------------------------ token + controls */

function readToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

function storeToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: the token lives only in the input */
  }
  $("token-state").textContent = token ? "token set" : "no token";
}

/** A `#token=XYZ` in the URL is moved to sessionStorage and removed from the address bar. */
function takeTokenFromHash() {
  const hash = location.hash.replace(/^#/, "");
  if (!hash) return;
  const params = new URLSearchParams(hash);
  const token = params.get("token");
  if (token === null) return;
  storeToken(token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", `${location.pathname}${location.search}${rest ? `#${rest}` : ""}`);
}

function currentToken() {
  return $("token-input").value.trim() || readToken();
}

function showResult(text, ok, status) {
  const line = $("control-result");
  line.textContent = text;
  line.classList.toggle("ok", ok);
  line.classList.toggle("error", !ok);
  if (status !== undefined) line.dataset.status = String(status);
  else delete line.dataset.status;
}

/** POSTs a control request and shows the server's message or error text verbatim. */
async function postControl(path, body, button) {
  const headers = { "Content-Type": "application/json" };
  const token = currentToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  button?.setAttribute("aria-busy", "true");
  try {
    const res = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    const raw = await res.text();
    let data = null;
    try {
      data = JSON.parse(raw);
    } catch {
      data = null;
    }
    if (res.ok && data && data.ok !== false) {
      showResult(typeof data.message === "string" ? data.message : `HTTP ${res.status}`, true, res.status);
    } else {
      const text = data && typeof data.error === "string" ? data.error
        : data && typeof data.detail === "string" ? data.detail
          : `HTTP ${res.status}${raw ? `: ${raw.slice(0, 300)}` : ""}`;
      showResult(text, false, res.status);
    }
  } catch (err) {
    showResult(`request failed: ${err.message}`, false);
  } finally {
    button?.removeAttribute("aria-busy");
  }
}

/** An input's number, or null with an error shown when it is not one. */
function numberFrom(input, what) {
  const raw = input.value.trim();
  const v = Number(raw);
  if (raw === "" || !Number.isFinite(v)) {
    showResult(`enter a number for ${what}`, false);
    input.focus();
    return null;
  }
  return v;
}

function wireControls() {
  const tokenInput = $("token-input");
  tokenInput.value = readToken();
  storeToken(tokenInput.value);
  tokenInput.addEventListener("input", () => storeToken(tokenInput.value.trim()));
  $("token-form").addEventListener("submit", (ev) => ev.preventDefault());

  for (const stage of CONTROL_STAGES) {
    const button = $(`scale-${stage}-button`);
    const input = $(`scale-${stage}-replicas`);
    const go = () => {
      const replicas = numberFrom(input, `${stage} replicas`);
      if (replicas === null) return;
      postControl("/api/control/scale", { stage, replicas }, button);
    };
    button.addEventListener("click", go);
    input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") go(); });
  }

  $("pause-button").addEventListener("click", (ev) =>
    postControl("/api/control/generation", { paused: true }, ev.currentTarget));
  $("resume-button").addEventListener("click", (ev) =>
    postControl("/api/control/generation", { paused: false }, ev.currentTarget));

  const rateInput = $("rate-input");
  const setRate = () => {
    const rate = numberFrom(rateInput, "the rate");
    if (rate === null) return;
    postControl("/api/control/generation", { rate }, $("rate-button"));
  };
  $("rate-button").addEventListener("click", setRate);
  rateInput.addEventListener("keydown", (ev) => { if (ev.key === "Enter") setRate(); });

  $("retrain-button").addEventListener("click", (ev) =>
    postControl("/api/control/retrain", {}, ev.currentTarget));
}

/* ------------------------------------------------------------------ start */

function start() {
  takeTokenFromHash();
  wireControls();
  makeCharts();
  loadHistory();
  fetchSnapshot();
  connect();
  setInterval(updateWsStatus, 500);
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
