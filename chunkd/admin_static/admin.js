// chunkd's live view: polls the JSON API (api/status) and renders it.
// Plain DOM code, no framework, no network beyond this server.
"use strict";

const POLL_MS = 1500;

function size(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function age(seconds) {
  seconds = Math.max(0, seconds);
  if (seconds >= 86400) return Math.floor(seconds / 86400) + "d";
  if (seconds >= 3600) return Math.floor(seconds / 3600) + "h";
  if (seconds >= 60) return Math.floor(seconds / 60) + "m";
  return Math.floor(seconds) + "s";
}

function action(label, path, confirmText) {
  const button = document.createElement("button");
  button.textContent = label;
  button.addEventListener("click", async () => {
    if (confirmText && !window.confirm(confirmText)) return;
    const response = await fetch(path, { method: "POST", credentials: "same-origin" });
    if (!response.ok) window.alert(label + ": " + (await response.text()));
    poll();
  });
  return button;
}

// Fill a table: headers, then one row per item from columns(item) -> [text or Node, class].
function fill(id, headers, items, columns) {
  const table = document.getElementById(id);
  table.textContent = "";
  if (!items.length) {
    const row = table.insertRow();
    const td = row.insertCell();
    td.textContent = "none";
    td.className = "empty";
    return;
  }
  const head = table.createTHead().insertRow();
  for (const [name, cls] of headers) { const th = document.createElement("th"); th.textContent = name; if (cls) th.className = cls; head.appendChild(th); }
  const body = table.createTBody();
  for (const item of items) {
    const row = body.insertRow();
    for (const [value, cls] of columns(item)) {
      const td = row.insertCell();
      if (value instanceof Node) td.appendChild(value); else td.textContent = value;
      if (cls) td.className = cls;
    }
  }
}

function render(s) {
  document.getElementById("updated").textContent = "pid " + s.pid + ", " + new Date(s.time * 1000).toLocaleTimeString();
  const summary = document.getElementById("summary");
  summary.textContent = "";
  for (const text of [
    "disk free: " + size(s.disk.free) + " of " + size(s.disk.total),
    "write queue: " + size(s.disk.writeQueue) + " (peak " + size(s.disk.writeQueuePeak) + ")",
    "uploads streaming: " + s.inProgress.length,
  ]) { const span = document.createElement("span"); span.textContent = text; summary.appendChild(span); }

  fill("inProgress",
    [["id"], ["protocol"], ["client"], ["size", "num"], ["offset", "num"], ["rate", "num"], ["age", "num"], ["subject"], [""]],
    s.inProgress, (u) => [
      [u.id], [u.protocol], [u.client], [size(u.size), "num"],
      [size(u.offset) + (u.size ? " (" + Math.floor(100 * u.offset / u.size) + "%)" : ""), "num"],
      [size(u.rate) + "/s", "num"], [age(u.age), "num"], [u.subject || "-"],
      [action("delete", "api/uploads/" + u.id + "/delete", "Delete upload " + u.id + "?")],
    ]);
  fill("completed", [["id"], ["protocol"], ["size", "num"], ["name"], ["sha256"], ["when", "num"]],
    s.recent.completed, (u) => [[u.id], [u.protocol], [size(u.size), "num"], [u.name || "-"],
      [u.sha256 ? u.sha256.slice(0, 16) + "…" : "-"], [age(s.time - u.at) + " ago", "num"]]);
  fill("expired", [["id"], ["protocol"], ["how"], ["when", "num"]],
    s.recent.expired, (u) => [[u.id], [u.protocol], [u.how], [age(s.time - u.at) + " ago", "num"]]);
  fill("failed", [["id"], ["protocol"], ["client"], ["why"], ["received", "num"]],
    s.recent.failed, (u) => [[u.id], [u.protocol], [u.client], [u.error, "bad"], [size(u.received), "num"]]);
  fill("hooks", [["delivery"], ["event"], ["receiver"], ["upload"], ["age", "num"], ["last failure"], [""]],
    s.hooks.pending, (d) => [[d.name], [d.event], [d.url], [d.uploadId || "-"], [age(d.age), "num"],
      [d.failing ? "attempt " + d.failing.attempt + ": " + d.failing.error : "-", d.failing ? "bad" : ""],
      [d.failing ? action("retry now", "api/hooks/" + d.name + "/retry") : ""]]);
  const j = s.janitor;
  fill("janitor", [["last sweep"], ["active", "num"], ["expired", "num"], ["busy", "num"], ["orphans", "num"], ["errors", "num"], ["took", "num"]],
    j ? [j] : [], (r) => [[s.janitorAt ? age(s.time - s.janitorAt) + " ago" : "-"], [r.active, "num"],
      [r.expired, "num"], [r.busy, "num"], [r.orphans, "num"], [r.errors, "num"], [r.seconds.toFixed(3) + " s", "num"]]);
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const response = await fetch("api/status", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(response.status + " " + (await response.text()));
    render(await response.json());
    problem.textContent = "";
  } catch (e) {
    problem.textContent = "cannot reach chunkd: " + e.message;
  }
}

poll();
setInterval(poll, POLL_MS);
