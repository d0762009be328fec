// Updraft's only script, and the pages work without it: it shows times in the
// viewer's time zone, refreshes parts of a page while runs are active, and
// follows a running task's log live.
"use strict";

const ERROR_LINE = /error|exception|traceback|failed|fatal|panic/i;

function localTimes(root) {
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  for (const el of root.querySelectorAll("time[datetime]")) {
    const at = new Date(el.getAttribute("datetime"));
    if (isNaN(at)) continue;
    el.textContent = format.format(at);
    const zone = el.dataset.zone;
    let title = "UTC: " + at.toISOString().replace(".000", "");
    if (zone) {
      try {
        title += "\n" + zone + ": " + new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", timeZone: zone }).format(at);
      } catch (_) { /* an unknown zone: UTC only */ }
    }
    el.title = title;
  }
}

// Parts marked data-refresh are fetched again every 2 s while they say they are live.
function refresh() {
  for (const el of document.querySelectorAll("[data-refresh][data-live='true']")) {
    fetch(el.dataset.refresh, { headers: { "accept": "text/html" } })
      .then((response) => response.ok ? response.text() : null)
      .then((html) => {
        if (html === null) return;
        const fresh = document.createElement("div");
        fresh.innerHTML = html;
        const next = fresh.firstElementChild;
        if (!next) return;
        el.replaceWith(next);
        localTimes(next);
      })
      .catch(() => {});
  }
}

function appendLog(pre, text) {
  for (const line of text.split(/(?<=\n)/)) {
    const span = document.createElement("span");
    if (line.startsWith("[updraft ")) span.className = "sys";
    else if (ERROR_LINE.test(line)) span.className = "err";
    span.textContent = line;
    pre.appendChild(span);
  }
}

function followLog(pre) {
  if (pre.dataset.state !== "running" || !window.EventSource) return;
  const stick = () => pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
  const url = new URL(pre.dataset.stream, location.href);
  url.searchParams.set("offset", pre.dataset.offset);
  const source = new EventSource(url);
  source.addEventListener("log", (event) => {
    const atBottom = stick();
    appendLog(pre, event.data);
    pre.dataset.offset = event.lastEventId;
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  });
  source.addEventListener("end", (event) => {
    source.close();
    pre.dataset.state = event.data;
    const badge = document.getElementById("attempt-state");
    if (badge) { badge.textContent = event.data; badge.className = "state s-" + event.data; }
  });
  source.addEventListener("error", () => source.close());
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  setInterval(refresh, 2000);
  for (const pre of document.querySelectorAll("pre.log[data-stream]")) followLog(pre);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => { if (!confirm(form.dataset.confirm)) event.preventDefault(); });
  }
});
