// Charts on uPlot: metric curves (zoom by dragging, double-click to zoom out, smoothing),
// scatter plots and parallel coordinates. Metric series come from the server already cut
// to a few points per pixel column; zooming asks it again for the visible range.
import { api, el, formatNumber, show } from "./common.js";

export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

let smoothing = 0;
const panels = new Set();

// The smoothing slider: every chart follows it.
export function smoothingControl() {
  const input = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", "aria-label": "smoothing" });
  const label = el("span", { class: "muted", text: "0" });
  input.addEventListener("input", () => {
    smoothing = Number(input.value);
    label.textContent = input.value;
    for (const panel of panels) panel.redraw();
  });
  return el("label", { class: "smoothing" }, "smoothing ", input, " ", label);
}

// Exponential moving average with the start debiased (as TensorBoard draws it).
export function smooth(values, weight) {
  if (!weight) return values;
  const out = new Array(values.length);
  let last = 0;
  let count = 0;
  for (let i = 0; i < values.length; i++) {
    const y = values[i];
    if (y === null || y === undefined || !Number.isFinite(y)) {
      out[i] = null;
      continue;
    }
    last = last * weight + (1 - weight) * y;
    count += 1;
    out[i] = last / (1 - weight ** count);
  }
  return out;
}

// One chart of metric `name`, one line per source ({label, url}): url(params) -> API path.
export class MetricPanel {
  constructor(container, name, sources) {
    this.name = name;
    this.sources = sources;
    this.raw = [];
    this.range = null; // [start, stop] when zoomed in
    this.note = el("span", { class: "muted chart-note" });
    this.box = el("div", { class: "chart" });
    this.node = el("figure", { class: "metric", "data-metric": name }, el("figcaption", {}, el("strong", { text: name }), " ", this.note), this.box);
    container.append(this.node);
    panels.add(this);
  }

  width() {
    return Math.max(300, Math.floor(this.box.clientWidth || 600));
  }

  async load() {
    const params = { name: this.name, width: this.width() };
    if (this.range) [params.start, params.stop] = this.range;
    const answers = await Promise.all(this.sources.map((s) => api(s.url(params))));
    const empty = { steps: [], values: [], count: 0, shown: 0, nonfinite: NO_GAPS };
    this.raw = answers.map((a) => a.metrics[this.name] || empty);
    const counts = this.raw.map((r, i) => {
      const label = this.sources.length > 1 ? `${this.sources[i].label}: ` : "";
      const drawn = r.count > r.shown ? `, ${r.shown} drawn` : "";
      const unseen = nonfiniteNote(r.nonfinite || NO_GAPS);
      return `${label}${r.count} points${drawn}${unseen ? `, ${unseen}` : ""}`;
    });
    this.note.textContent = counts.join(" · ") + (this.range ? " · double-click to zoom out" : " · drag to zoom");
    this.redraw();
  }

  data() {
    // A NaN or infinite value has no place on the chart: the line breaks at its step
    // (a null there, and no spanning of gaps) instead of running straight across it.
    const tables = this.raw.map((r) => withGaps(r.steps, smooth(r.values, smoothing), (r.nonfinite || NO_GAPS).steps));
    if (tables.length === 1) return tables[0];
    return uPlot.join(tables);
  }

  // The steps of every NaN or infinite point, marked on the chart.
  gapSteps() {
    return this.raw.flatMap((r) => (r.nonfinite || NO_GAPS).steps);
  }

  redraw() {
    const data = this.data();
    if (this.plot) {
      this.plot.setData(data, !this.range);
      if (this.range) this.plot.setScale("x", { min: this.range[0], max: this.range[1] });
      return;
    }
    const series = [{ label: "step" }];
    this.sources.forEach((s, i) => series.push({ label: s.label, stroke: COLORS[i % COLORS.length], width: 1.5, points: { show: false }, spanGaps: false }));
    const options = {
      width: this.width(),
      height: 220,
      series,
      scales: { x: { time: false } },
      legend: { show: this.sources.length > 1 || true },
      cursor: {
        drag: { x: true, y: false },
        bind: { dblclick: () => () => { this.zoom(null); return null; } },
      },
      hooks: {
        draw: [(u) => markGaps(u, this.gapSteps())],
        setSelect: [
          (u) => {
            if (u.select.width < 2) return;
            const start = u.posToVal(u.select.left, "x");
            const stop = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, width: 0, top: 0, height: 0 }, false);
            this.zoom([start, stop]);
          },
        ],
      },
    };
    options.cursor.drag.setScale = false;
    this.plot = new uPlot(options, data, this.box);
  }

  async zoom(range) {
    this.range = range;
    await this.load();
    if (!range) this.plot.setData(this.data(), true);
  }
}

const NO_GAPS = { counts: {}, steps: [], values: [] };

// "1 point is inf (step 100), not drawn" or "3 points are NaN or inf (2 NaN, 1 inf), not drawn".
export function nonfiniteNote(nonfinite) {
  const kinds = Object.entries(nonfinite.counts || {});
  const total = kinds.reduce((sum, [, n]) => sum + n, 0);
  if (!total) return "";
  if (total === 1) {
    const at = nonfinite.steps.length === 1 ? ` (step ${nonfinite.steps[0]})` : "";
    return `1 point is ${kinds[0][0]}${at}, not drawn: the line breaks there`;
  }
  const each = kinds.map(([kind, n]) => `${n} ${kind}`).join(", ");
  return `${total} points are NaN or infinite (${each}), not drawn: the line breaks there`;
}

// steps/values with a null at each of `gaps` (all three in step order).
function withGaps(steps, values, gaps) {
  if (!gaps.length) return [steps, values];
  const xs = [];
  const ys = [];
  let g = 0;
  for (let i = 0; i < steps.length; i++) {
    for (; g < gaps.length && gaps[g] < steps[i]; g++) {
      xs.push(gaps[g]);
      ys.push(null);
    }
    xs.push(steps[i]);
    ys.push(values[i]);
  }
  for (; g < gaps.length; g++) {
    xs.push(gaps[g]);
    ys.push(null);
  }
  return [xs, ys];
}

// A red mark at the top of the plot at each step whose value is NaN or infinite.
function markGaps(u, steps) {
  if (!steps.length) return;
  const { left, top, width } = u.bbox;
  u.ctx.save();
  u.ctx.fillStyle = "#b42318";
  for (const step of steps) {
    const x = u.valToPos(step, "x", true);
    if (x < left || x > left + width) continue;
    u.ctx.fillRect(x - 2, top, 4, 10 * (window.devicePixelRatio || 1));
  }
  u.ctx.restore();
}

// Points of x against y, one series; x may be text (categories placed in order of appearance).
export function scatterChart(container, title, xs, ys, labels) {
  const categorical = xs.some((x) => typeof x !== "number");
  const categories = categorical ? [...new Set(xs.map((x) => show(x)))] : [];
  const points = xs
    .map((x, i) => [categorical ? categories.indexOf(show(x)) : x, ys[i], labels[i]])
    .filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]))
    .sort((a, b) => a[0] - b[0]);
  const positive = points.length > 1 && !categorical && points[0][0] > 0;
  const log = positive && points[points.length - 1][0] / points[0][0] >= 100;
  const box = el("div", { class: "chart" });
  const figure = el("figure", { class: "scatter", "data-param": title }, el("figcaption", {}, el("strong", { text: title })), box);
  container.append(figure);
  const options = {
    width: Math.max(280, Math.floor(box.clientWidth || 360)),
    height: 220,
    scales: { x: log ? { time: false, distr: 3 } : { time: false } },
    series: [
      { label: title },
      { label: "result", stroke: COLORS[0], width: 0, paths: () => null, points: { show: true, size: 7, fill: COLORS[0] } },
    ],
    axes: [
      categorical ? { values: (u, splits) => splits.map((v) => (Number.isInteger(v) ? categories[v] ?? "" : "")) } : {},
      {},
    ],
  };
  return new uPlot(options, [points.map((p) => p[0]), points.map((p) => p[1])], box);
}

// Parallel coordinates on a canvas: one vertical axis per column, one line per run,
// coloured from the lowest (blue) to the highest (red) value of the last column.
export function parallelCoordinates(container, columns, rows) {
  const width = Math.max(480, container.clientWidth || 800);
  const height = 320;
  const ratio = window.devicePixelRatio || 1;
  const canvas = el("canvas", { class: "parallel", width: width * ratio, height: height * ratio, "aria-label": "parallel coordinates" });
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  container.append(canvas);
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  const pad = { left: 50, right: 50, top: 40, bottom: 24 };
  const axes = columns.map((name, c) => axisOf(name, rows.map((r) => r[c])));
  const x = (c) => pad.left + (columns.length === 1 ? 0 : (c * (width - pad.left - pad.right)) / (columns.length - 1));
  const y = (c, value) => {
    const t = axes[c].position(value);
    return t === null ? null : pad.top + (1 - t) * (height - pad.top - pad.bottom);
  };
  const last = columns.length - 1;
  ctx.lineWidth = 1.2;
  for (const row of rows) {
    const t = axes[last].position(row[last]);
    ctx.strokeStyle = t === null ? "rgba(120,120,120,0.5)" : `hsla(${240 - 240 * t}, 70%, 45%, 0.7)`;
    ctx.beginPath();
    let drawing = false;
    row.forEach((value, c) => {
      const py = y(c, value);
      if (py === null) {
        drawing = false;
        return;
      }
      if (drawing) ctx.lineTo(x(c), py);
      else ctx.moveTo(x(c), py);
      drawing = true;
    });
    ctx.stroke();
  }
  ctx.fillStyle = "#222";
  ctx.strokeStyle = "#444";
  ctx.font = "12px system-ui, sans-serif";
  ctx.textAlign = "center";
  axes.forEach((axis, c) => {
    ctx.beginPath();
    ctx.moveTo(x(c), pad.top);
    ctx.lineTo(x(c), height - pad.bottom);
    ctx.stroke();
    ctx.font = "bold 12px system-ui, sans-serif";
    ctx.fillText(columns[c], x(c), 14);
    ctx.font = "12px system-ui, sans-serif";
    ctx.fillText(axis.top, x(c), pad.top - 8);
    ctx.fillText(axis.bottom, x(c), height - 6);
  });
  return canvas;
}

function axisOf(name, values) {
  const numbers = values.filter((v) => typeof v === "number" && Number.isFinite(v));
  if (numbers.length === values.filter((v) => v !== null && v !== undefined).length && numbers.length) {
    const lo = Math.min(...numbers);
    const hi = Math.max(...numbers);
    // Values over two or more powers of ten (C = 0.01 ... 100) on a log axis.
    const log = lo > 0 && hi / lo >= 100;
    const f = log ? Math.log10 : (v) => v;
    const span = f(hi) - f(lo) || 1;
    return {
      position: (v) => (typeof v === "number" && Number.isFinite(v) && (!log || v > 0) ? (hi === lo ? 0.5 : (f(v) - f(lo)) / span) : null),
      top: formatNumber(hi),
      bottom: formatNumber(lo) + (log ? " (log)" : ""),
    };
  }
  const categories = [...new Set(values.filter((v) => v !== null && v !== undefined).map((v) => show(v)))];
  return {
    position: (v) => {
      if (v === null || v === undefined) return null;
      const i = categories.indexOf(show(v));
      return categories.length === 1 ? 0.5 : i / (categories.length - 1);
    },
    top: categories[categories.length - 1] ?? "",
    bottom: categories[0] ?? "",
  };
}
