// A sweep or a study: every parameter against the result, and parallel coordinates.
import { parallelCoordinates, scatterChart } from "./charts.js";
import { numberOf, query } from "./common.js";

const group = JSON.parse(document.getElementById("group-data").textContent);
const store = String(group.store);
const select = document.getElementById("objective");

function objectiveOf(run, objective) {
  if (objective === "result") return numberOf(run.result);
  const key = objective.slice("result.".length);
  return run.result && typeof run.result === "object" ? numberOf(run.result[key]) : null;
}

function draw() {
  const objective = select.value;
  const ys = group.runs.map((r) => objectiveOf(r, objective));
  const labels = group.runs.map((r) => String(r.id));
  const scatters = document.getElementById("scatters");
  scatters.replaceChildren();
  for (const param of group.params) {
    scatterChart(scatters, param, group.runs.map((r) => numberOf(r.params[param])), ys, labels);
  }
  const parallel = document.getElementById("parallel");
  parallel.replaceChildren();
  const columns = [...group.params, objective];
  const rows = group.runs.map((r, i) => [...group.params.map((p) => numberOf(r.params[p])), ys[i]]);
  parallelCoordinates(parallel, columns, rows);
}

if (select) {
  select.addEventListener("change", draw);
  draw();
}
document.getElementById("compare").addEventListener("click", () => {
  location.href = `/compare${query({ store, run: group.runs.slice(0, 20).map((r) => String(r.id)) })}`;
});
window.expkitGroup = group;
