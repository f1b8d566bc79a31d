// Comparing runs: the config table's filter and every metric overlaid, one line per run.
import { MetricPanel, smoothingControl } from "./charts.js";
import { apiRun } from "./common.js";

const report = JSON.parse(document.getElementById("compare-data").textContent);
const store = String(report.store);
const table = document.getElementById("config-table");
const only = document.getElementById("only-differences");

function filterRows() {
  table.classList.toggle("only-differences", only.checked);
}
only.addEventListener("change", filterRows);
filterRows();

const charts = document.getElementById("charts");
const panels = [];
if (charts) {
  document.getElementById("chart-controls").append(smoothingControl());
  for (const name of report.metric_names) {
    const sources = report.runs.map((id) => ({
      label: `run ${id}`,
      url: (params) => apiRun(store, id, "/metrics", params),
    }));
    const panel = new MetricPanel(charts, name, sources);
    panels.push(panel);
    panel.load().catch((error) => (panel.note.textContent = error.message));
  }
}
window.expkitCompare = { report, panels };
