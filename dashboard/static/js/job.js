// The job page, live: progress bar, counts, timings, shard table and thumbnails follow the
// server-sent events of /jobs/<id>/events. When the job ends the page reloads once, so that
// its buttons (cancel, retry, comic) match the final state. A stream the server refuses is
// tried again, later each time, and the page says it is not live meanwhile.
"use strict";

(function () {
  const root = document.querySelector("[data-job]");
  if (!root) return;
  const field = (name) => root.querySelector(`[data-field="${name}"]`);

  function formatSeconds(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 60) return `${seconds.toFixed(2)} s`;
    return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  }

  function tickElapsed() {
    const started = root.dataset.started;
    if (!started) return;
    const end = root.dataset.finished ? new Date(root.dataset.finished) : new Date();
    const seconds = Math.max(0, Math.round((end - new Date(started)) / 1000));
    field("elapsed").textContent =
      seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  }

  function showProgress(p) {
    const bar = field("bar");
    bar.max = 1;
    bar.value = p.fraction;
    field("percent").textContent = `${p.percent}%`;
    field("eta").textContent = p.eta;
    const running = field("running");
    running.textContent = p.running
      .map((r) => `scene ${r.scene + 1} v${r.variant} step ${r.steps_done}/${r.steps ?? "?"}`)
      .join(", ");
    running.hidden = !p.running.length;
    const waiting = field("waiting");
    waiting.textContent = p.waiting || "";
    waiting.hidden = !p.waiting;
    const status = field("status");
    status.textContent = p.status;
    status.className = `badge status-${p.status}`;
    for (const [state, count] of Object.entries(p.counts)) {
      for (const cell of root.querySelectorAll(`[data-count="${state}"]`)) {
        cell.textContent = count;
      }
    }
    for (const [step, mean] of Object.entries(p.timings)) {
      const cell = root.querySelector(`[data-timing="${step}"]`);
      if (cell) cell.textContent = formatSeconds(mean);
    }
    root.dataset.started = p.started || "";
    root.dataset.finished = p.finished || "";
    tickElapsed();
  }

  function addThumb(r) {
    const thumbs = field("thumbs");
    if (thumbs.querySelector(`[data-render="${r.id}"]`)) return;
    const link = document.createElement("a");
    link.className = "thumb new";
    link.href = r.page;
    link.dataset.render = r.id;
    link.title = r.caption || "";
    const img = document.createElement("img");
    img.src = r.thumb;
    const number = r.scene + 1; // scenes are numbered from 1 wherever a person reads them
    img.alt = `scene ${number}, variant ${r.variant}`;
    const label = document.createElement("span");
    label.textContent = `${number} · v${r.variant}`;
    link.append(img, label);
    // Keep scene order, whatever order the renders finish in.
    const after = [...thumbs.children].find((el) => {
      const [scene, variant] = el.querySelector("span").textContent.split(" · v").map(Number);
      return scene > number || (scene === number && variant > r.variant);
    });
    thumbs.insertBefore(link, after || null);
    field("no-renders").hidden = true;
  }

  function showShard(s) {
    const row = root.querySelector(`[data-shard="${s.index}"]`);
    if (!row) return; // the page lists the shards worth seeing first, not all of a big job
    const cell = (name) => row.querySelector(`[data-cell="${name}"]`);
    cell("status").textContent = s.status;
    cell("status").className = `badge status-${s.status}`;
    cell("worker").textContent = s.worker_id || "–";
    cell("attempts").textContent = `${s.attempts}/${s.max_attempts}`;
    cell("seconds").textContent = formatSeconds(s.seconds);
    const errorRow = root.querySelector(`[data-shard-error="${s.index}"]`);
    errorRow.querySelector('[data-cell="error"]').textContent = s.error || "";
    errorRow.hidden = !s.error;
  }

  tickElapsed();
  const url = root.dataset.events;
  if (!url) return;
  const timer = setInterval(tickElapsed, 1000);
  const refused = field("stream-refused");
  let retryMs = 5000;

  // A stream the server refuses (429: too many open, or any error status) closes for good,
  // unlike a dropped one, which the browser reopens: the page says so and tries again later.
  function follow() {
    const source = new EventSource(url);
    source.addEventListener("open", () => {
      refused.hidden = true;
      retryMs = 5000;
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) return;
      refused.hidden = false;
      setTimeout(follow, retryMs);
      retryMs = Math.min(2 * retryMs, 120000);
    });
    source.addEventListener("progress", (e) => showProgress(JSON.parse(e.data)));
    source.addEventListener("render", (e) => addThumb(JSON.parse(e.data)));
    source.addEventListener("shards", (e) => JSON.parse(e.data).forEach(showShard));
    source.addEventListener("end", () => {
      source.close();
      clearInterval(timer);
      root.dataset.ended = "true";
      setTimeout(() => window.location.reload(), 800);
    });
  }
  follow();
})();
