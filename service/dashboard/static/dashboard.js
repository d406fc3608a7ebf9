// bulkhook dashboard: times in the browser's zone, live inbox rows, confirm before discarding.
"use strict";

function localTimes(root) {
  root.querySelectorAll("time").forEach((el) => {
    const raw = el.dataset.epoch ? Number(el.dataset.epoch) * 1000 : el.getAttribute("datetime");
    if (!raw) return;
    let text = String(raw);
    // Naive ISO times from RQ are UTC.
    if (typeof raw === "string" && !/[zZ]|[+-]\d\d:?\d\d$/.test(raw)) text += "Z";
    const when = new Date(typeof raw === "number" ? raw : text);
    if (isNaN(when)) return;
    el.title = when.toISOString();
    el.textContent = when.toLocaleString();
  });
}

function liveInbox() {
  const rows = document.getElementById("rows");
  const live = document.getElementById("live");
  if (!rows || !live) return;
  const url = new URL(rows.dataset.refresh, window.location.href);
  url.searchParams.set("partial", "1");
  setInterval(async () => {
    if (!live.checked || document.hidden) return;
    try {
      const answer = await fetch(url, { credentials: "same-origin" });
      if (!answer.ok) return;
      rows.innerHTML = await answer.text();
      localTimes(rows);
    } catch (err) {
      // Offline for a moment: the next round tries again.
    }
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes(document);
  liveInbox();
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
});
