// A run's page: metric charts, output that follows a running run, previews, editing.
import { MetricPanel, smoothingControl } from "./charts.js";
import { api, apiRun, duration, every, setStatus, show } from "./common.js";

const run = JSON.parse(document.getElementById("run-data").textContent);
const store = String(run.store);
const panels = [];
let running = run.status === "RUNNING" || run.status === "QUEUED";

document.getElementById("duration").textContent = duration(run.duration);

// --- metrics ---------------------------------------------------------------------------
const charts = document.getElementById("charts");
if (charts) {
  document.getElementById("chart-controls").append(smoothingControl());
  for (const metric of run.metrics) {
    const panel = new MetricPanel(charts, metric.name, [
      { label: `run ${run.id}`, url: (params) => apiRun(store, run.id, "/metrics", params) },
    ]);
    panels.push(panel);
    panel.load().catch((error) => (panel.note.textContent = error.message));
  }
}

// --- captured output, followed while the run runs --------------------------------------
const output = document.getElementById("captured-output");
const following = document.getElementById("following");
let next = null;

async function pollOutput() {
  const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
  const chunk = await api(apiRun(store, run.id, "/output", next === null ? {} : { offset: next }));
  if (next === null && chunk.offset > 0) {
    const note = document.getElementById("output-note");
    note.hidden = false;
    note.textContent = `the first ${chunk.offset} characters are not shown`;
  }
  if (chunk.reset) output.textContent = "";
  if (chunk.text) output.append(chunk.text);
  next = chunk.next;
  if (chunk.next < chunk.size) return pollOutput(); // more than one chunk behind
  if (atBottom) output.scrollTop = output.scrollHeight;
  setStatus(document.getElementById("status"), chunk.status, chunk.probably_dead);
  document.getElementById("heartbeat").textContent = (chunk.heartbeat || "").replace("T", " ");
  document.getElementById("stopped").textContent = (chunk.stop_time || "").replace("T", " ");
  document.getElementById("duration").textContent = duration(chunk.duration);
  // A run that stopped beating may still come back: it is followed until it has ended.
  const live = chunk.status === "RUNNING" || chunk.status === "QUEUED";
  following.textContent = !live
    ? ""
    : chunk.probably_dead
      ? "(no heartbeat for a while: probably dead)"
      : chunk.beat_interval === null
        ? "(following the running run: it hands its output to the store only at its end)"
        : `(following the running run: output reaches the store with each heartbeat, every ${chunk.beat_interval} s by this run's setting)`;
  if (running && !live) {
    running = false;
    document.getElementById("result").textContent = show(chunk.result);
    for (const panel of panels) panel.load();
  }
  return live;
}

const stopOutput = every(1.5, async () => {
  if (!(await pollOutput())) stopOutput();
});
if (running) {
  every(5, async () => {
    if (!running) return;
    for (const panel of panels) if (!panel.range) await panel.load();
  });
}

// --- artifacts: text previews ----------------------------------------------------------
for (const pre of document.querySelectorAll("pre.preview[data-src]")) {
  api(pre.dataset.src)
    .then((p) => {
      pre.textContent = p.binary ? "(binary file)" : p.text + (p.truncated ? `\n… (${p.size} bytes in all)` : "");
    })
    .catch((error) => (pre.textContent = error.message));
}

// --- rerun command ---------------------------------------------------------------------
document.getElementById("copy-rerun").addEventListener("click", async (event) => {
  try {
    await navigator.clipboard.writeText(document.getElementById("rerun").textContent);
    event.target.textContent = "copied";
  } catch {
    event.target.textContent = "select and copy";
  }
});

// --- comment and tags ------------------------------------------------------------------
// Only what was changed here is sent, with the version of the run this page saw: the store
// refuses the edit (409) if someone else changed the run meanwhile, instead of one edit
// silently undoing the other.
const form = document.getElementById("edit");
const saved = { comment: run.comment, tags: run.tags, version: run.version };
form.comment.value = run.comment; // as sent, whatever the HTML parser made of it
form.tags.value = run.tags.join("\n");
// A textarea gives line breaks as "\n": a stored "\r\n" is no change.
const lines = (text) => text.replace(/\r\n?/g, "\n");

// One tag per line: a tag may hold a comma.
function tagsOf(text) {
  return text.split("\n").map((t) => t.trim()).filter(Boolean);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const message = document.getElementById("edit-message");
  message.className = "muted";
  const body = {};
  if (form.comment.value !== lines(saved.comment)) body.comment = form.comment.value;
  const tags = tagsOf(form.tags.value);
  if (JSON.stringify(tags) !== JSON.stringify(saved.tags)) body.tags = tags;
  if (!Object.keys(body).length) {
    message.textContent = "nothing changed";
    return;
  }
  message.textContent = "saving…";
  try {
    const headers = { "If-Match": `"${saved.version}"` };
    const answer = await api(apiRun(store, run.id), { method: "PATCH", body, headers });
    Object.assign(saved, { comment: answer.comment, tags: answer.tags, version: answer.version });
    form.tags.value = answer.tags.join("\n");
    message.textContent = "saved in the store";
  } catch (error) {
    message.className = "error";
    message.textContent = error.message;
  }
});

// --- delete, after a confirmation ------------------------------------------------------
const remove = document.getElementById("delete");
if (remove) {
  const confirmBox = document.getElementById("confirm-delete");
  remove.addEventListener("click", () => {
    confirmBox.hidden = false;
    remove.hidden = true;
  });
  document.getElementById("confirm-delete-no").addEventListener("click", () => {
    confirmBox.hidden = true;
    remove.hidden = false;
  });
  document.getElementById("confirm-delete-yes").addEventListener("click", async () => {
    try {
      await api(apiRun(store, run.id), { method: "DELETE", headers: { "If-Match": `"${saved.version}"` } });
      location.href = `/?store=${encodeURIComponent(store)}`;
    } catch (error) {
      document.getElementById("delete-message").textContent = error.message;
    }
  });
}

window.expkitRun = { run, panels };
