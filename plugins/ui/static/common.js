// Helpers every page uses. Text from a store is only ever put into the page as text
// (textContent, attribute values), never as markup.

export const token = document.querySelector('meta[name="expkit-token"]').content;

// An element with attributes and children (strings become text nodes).
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// GET (or another method with a JSON body) on the API; an error response throws its message.
export async function api(path, { method = "GET", body = undefined, headers = {} } = {}) {
  const options = { method, headers: { ...headers }, credentials: "same-origin" };
  if (method !== "GET") {
    options.headers["X-Expkit-Token"] = token;
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
  }
  const response = await fetch(path, options);
  const text = await response.text();
  let data;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: text };
  }
  if (!response.ok) {
    throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
  }
  return data;
}

// A query string from an object; arrays repeat the key.
export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === null || value === undefined || value === "") continue;
    for (const item of Array.isArray(value) ? value : [value]) search.append(key, item);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

export function runUrl(store, id) {
  return `/runs/${encodeURIComponent(id)}${query({ store })}`;
}

export function apiRun(store, id, rest = "", params = {}) {
  return `/api/runs/${encodeURIComponent(id)}${rest}${query({ store, ...params })}`;
}

// A number JSON cannot carry exactly (NaN, inf, -inf, a whole number beyond 2^53), as the
// server sends it: {"$number": "NaN"}. Its text, or null for any other value.
export function exactNumber(value) {
  const marked = value !== null && typeof value === "object" && !Array.isArray(value);
  if (!marked || Object.keys(value).length !== 1 || typeof value.$number !== "string") return null;
  return value.$number;
}

// A value as a JavaScript number (NaN, Infinity, a large whole number rounded), for charts.
export function numberOf(value) {
  const text = exactNumber(value);
  if (text === null) return value;
  return text === "inf" ? Infinity : text === "-inf" ? -Infinity : Number(text);
}

// A stored value as text: strings as they are, everything else as JSON.
export function show(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "string") return value;
  if (exactNumber(value) !== null) return exactNumber(value);
  if (typeof value === "object" && !Array.isArray(value) && "cut" in value && Object.keys(value).length === 1) {
    return value.cut;
  }
  if (typeof value === "number") return formatNumber(value);
  // Numbers sent as {"$number": TEXT} are written bare (NaN, inf), as the numbers they are.
  const marked = JSON.stringify(value, (key, v) => (exactNumber(v) !== null ? `\u0000${exactNumber(v)}\u0000` : v));
  return marked.replace(/"\\u0000([^"\\]*)\\u0000"/g, "$1");
}

// A table cell showing a stored value; a number sent as text (NaN, inf) is marked as one.
export function valueCell(value, attrs = {}) {
  const number = exactNumber(value) !== null;
  const title = number ? `the number ${exactNumber(value)}, not a text` : attrs.title;
  return el("td", { ...attrs, class: `value${number ? " number" : ""}`, title, text: show(value) });
}

export function formatNumber(x) {
  if (Number.isNaN(x)) return "NaN";
  if (!Number.isFinite(x)) return x > 0 ? "inf" : "-inf";
  if (Number.isInteger(x)) return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-4 || abs >= 1e6)) return x.toExponential(4);
  return String(Number(x.toPrecision(6)));
}

export function shortTime(iso) {
  return iso ? iso.replace("T", " ").slice(0, 19) : "";
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 60) return `${seconds.toFixed(2)}s`;
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const rest = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${rest}` : `${m}:${rest}`;
}

// The status badge: PROBABLY_DEAD for a running run that stopped beating.
export function statusBadge(status, probablyDead) {
  const shown = probablyDead ? "PROBABLY_DEAD" : status;
  return el("span", { class: `status status-${shown.toLowerCase()}`, text: shown });
}

export function setStatus(node, status, probablyDead) {
  const shown = probablyDead ? "PROBABLY_DEAD" : status;
  node.textContent = shown;
  node.className = `status status-${shown.toLowerCase()}`;
}

// Calls fn every `seconds` while the page is visible, and once at once.
export function every(seconds, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await fn();
      } catch (error) {
        console.warn(error);
      }
    }
    if (!stopped) timer = setTimeout(tick, seconds * 1000);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
