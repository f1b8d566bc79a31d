// The runs table: filters, sort, paging, live status, sweeps and studies grouped.
import { api, duration, el, every, query, runUrl, shortTime, show, statusBadge, valueCell } from "./common.js";

const page = document.getElementById("runs-page");
const store = page.dataset.store;
const form = document.getElementById("filters");
const table = document.getElementById("runs");
const selected = new Set();
const FIXED = [
  ["id", "id"],
  ["experiment", "experiment"],
  ["status", "status"],
  ["start_time", "started"],
  ["duration", "duration"],
  ["result", "result"],
  ["tags", "tags"],
  ["comment", "comment"],
];

const state = readState();
fillForm();
let last = null;

function readState() {
  const params = new URLSearchParams(location.search);
  return {
    where: params.get("where") || "",
    status: params.get("status") || "",
    experiment: params.get("experiment") || "",
    group: params.get("group") !== "0",
    sort: params.get("sort") || "start_time",
    desc: params.get("desc") !== "0",
    offset: Number(params.get("offset") || 0),
    limit: Number(params.get("limit") || 50),
  };
}

function fillForm() {
  form.where.value = state.where;
  form.status.value = state.status;
  form.experiment.value = state.experiment;
  form.group.checked = state.group;
}

function params() {
  return {
    store,
    where: state.where,
    status: state.status,
    experiment: state.experiment,
    group: state.group ? "1" : "0",
    sort: state.sort,
    desc: state.desc ? "1" : "0",
    offset: state.offset || "",
    limit: state.limit,
  };
}

async function load() {
  const errorLine = document.getElementById("filter-error");
  let data;
  try {
    data = await api(`/api/runs${query(params())}`);
  } catch (error) {
    errorLine.textContent = error.message;
    errorLine.hidden = false;
    return;
  }
  errorLine.hidden = true;
  last = data;
  render(data);
}

function render(data) {
  const storeError = document.getElementById("store-error");
  storeError.hidden = !data.store_error;
  storeError.textContent = data.store_error ? `the store could not be read again: ${data.store_error}` : "";
  const first = data.total ? data.offset + 1 : 0;
  const lastShown = Math.min(data.offset + data.limit, data.total);
  document.getElementById("summary").textContent =
    `${data.total} of ${data.all} run(s) in ${data.store_url}` +
    (data.hidden_columns ? ` · ${data.hidden_columns} more differing config columns not shown` : "");
  document.getElementById("page").textContent = data.total ? `${first}–${lastShown}` : "";
  document.getElementById("prev").disabled = data.offset <= 0;
  document.getElementById("next").disabled = data.offset + data.limit >= data.total;

  const head = table.tHead.rows[0];
  head.replaceChildren(el("th", {}, ""));
  for (const [key, label] of FIXED) head.append(sortHeader(key, label));
  for (const key of data.columns) head.append(sortHeader(key, key, "config"));

  const body = table.tBodies[0];
  body.replaceChildren();
  const width = 1 + FIXED.length + data.columns.length;
  let group = null;
  for (const row of data.rows) {
    const key = row.group ? `${row.group.kind}:${row.group.key}` : null;
    if (state.group && key && key !== group) body.append(groupRow(row.group, width));
    group = key;
    body.append(runRow(row, data.columns));
  }
  if (!data.rows.length) {
    body.append(el("tr", {}, el("td", { colspan: width, class: "muted", text: "no runs match" })));
  }
  updateCompare();
}

function sortHeader(key, label, kind = "") {
  const active = state.sort === key;
  const arrow = active ? (state.desc ? " ▼" : " ▲") : "";
  const th = el("th", { class: `sortable ${kind} ${active ? "sorted" : ""}`, title: `sort by ${key}` }, label + arrow);
  th.addEventListener("click", () => {
    state.desc = active ? !state.desc : key !== "id" && key !== "experiment";
    state.sort = key;
    state.offset = 0;
    changed();
  });
  return th;
}

function groupRow(group, width) {
  const href = `/groups/${group.kind}/${encodeURIComponent(group.key)}${query({ store })}`;
  return el(
    "tr",
    { class: "group-row" },
    el(
      "td",
      { colspan: width },
      el("span", { class: "group-kind", text: group.kind }),
      " ",
      el("a", { href, class: "group-link", text: group.key }),
      el("span", { class: "muted", text: ` · ${group.size} run(s) here` }),
    ),
  );
}

function runRow(row, columns) {
  const id = String(row.id);
  const box = el("input", { type: "checkbox", "aria-label": `select run ${id}` });
  box.checked = selected.has(id);
  box.addEventListener("change", () => {
    if (box.checked) selected.add(id);
    else selected.delete(id);
    updateCompare();
  });
  const position = row.group ? el("span", { class: "muted", text: ` #${show(row.group.position)}` }) : null;
  const cells = [
    el("td", {}, box),
    el("td", { class: "id" }, el("a", { href: runUrl(store, id), text: id }), position),
    el("td", { text: row.experiment }),
    el("td", {}, statusBadge(row.status, row.probably_dead)),
    el("td", { class: "time", text: shortTime(row.start_time) }),
    el("td", { class: "num", text: duration(row.duration) }),
    valueCell(row.result),
    el("td", {}, ...row.tags.map((tag) => el("span", { class: "tag", text: tag }))),
    el("td", { class: "comment", text: row.comment, title: row.comment }),
  ];
  for (const key of columns) {
    cells.push(key in row.config ? valueCell(row.config[key]) : el("td", { class: "value" }));
  }
  return el("tr", { class: row.group && state.group ? "in-group" : "", "data-id": id }, ...cells);
}

function updateCompare() {
  const button = document.getElementById("compare");
  button.disabled = selected.size < 2;
  button.textContent = `compare selected (${selected.size})`;
}

async function loadGroups() {
  const list = document.getElementById("groups");
  const groups = await api(`/api/groups${query({ store })}`);
  if (!groups.length) return;
  list.replaceChildren(
    ...groups.map((g) => {
      const statuses = Object.entries(g.statuses).map(([s, n]) => `${n} ${s.toLowerCase()}`).join(", ");
      const href = `/groups/${g.kind}/${encodeURIComponent(g.key)}${query({ store })}`;
      return el(
        "li",
        {},
        el("span", { class: "group-kind", text: g.kind }),
        " ",
        el("a", { href, text: g.key }),
        el("span", { class: "muted", text: ` · ${g.experiment} · ${g.runs} run(s): ${statuses}` }),
      );
    }),
  );
}

function changed() {
  const shown = params();
  delete shown.store;
  history.replaceState(null, "", query({ store, ...shown }) || "/");
  load();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  state.where = form.where.value.trim();
  state.status = form.status.value;
  state.experiment = form.experiment.value.trim();
  state.group = form.group.checked;
  state.offset = 0;
  changed();
});
form.group.addEventListener("change", () => form.requestSubmit());
form.status.addEventListener("change", () => form.requestSubmit());
document.getElementById("prev").addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - state.limit);
  changed();
});
document.getElementById("next").addEventListener("click", () => {
  state.offset += state.limit;
  changed();
});
document.getElementById("compare").addEventListener("click", () => {
  location.href = `/compare${query({ store, run: [...selected] })}`;
});

every(2.5, load);
loadGroups().catch((error) => console.warn(error));
window.expkitRuns = () => last;
