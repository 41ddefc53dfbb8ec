// metalens dashboard: local times for run timestamps, and the live monitor's server-sent-event client.
document.querySelectorAll(".ts").forEach((el) => {
  const t = parseFloat(el.dataset.t);
  if (!isNaN(t)) el.textContent = new Date(t * 1000).toLocaleString();
});

function metalensMonitor() {
  const form = document.getElementById("monitor-form");
  const out = document.getElementById("stream");
  const status = document.getElementById("status");
  const stopBtn = document.getElementById("stop");
  const goBtn = document.getElementById("generate");
  let source = null, job = null, t0 = 0;

  function finish(text) {
    if (source) source.close();
    source = null;
    stopBtn.disabled = true;
    goBtn.disabled = false;
    status.textContent = text;
    out.dataset.done = "1";
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (source) source.close();
    out.textContent = "";
    delete out.dataset.done;
    job = Math.random().toString(36).slice(2);
    const params = new URLSearchParams({
      prompt: document.getElementById("prompt").value,
      features: document.getElementById("features").value,
      max_new_tokens: document.getElementById("max-new").value,
      job: job,
    });
    t0 = performance.now();
    let thresholds = {}, n = 0;
    source = new EventSource("/api/monitor/stream?" + params.toString());
    stopBtn.disabled = false;
    goBtn.disabled = true;
    status.textContent = "generating…";
    source.addEventListener("start", (e) => { thresholds = JSON.parse(e.data).readers || {}; });
    source.addEventListener("token", (e) => {
      const d = JSON.parse(e.data);
      if (n === 0) out.dataset.firstTokenMs = String(Math.round(performance.now() - t0));
      n += 1;
      const box = document.createElement("span");
      box.className = "st" + (d.flags.length ? " flag" : "");
      const t = document.createElement("span");
      t.className = "t";
      t.textContent = d.token.replace(/\n/g, "⏎");  // textContent: model text is never parsed as HTML
      box.appendChild(t);
      for (const [name, value] of Object.entries(d.readings)) {
        const r = document.createElement("span");
        r.className = "r" + (d.flags.includes(name) ? " hot" : "");
        r.textContent = name + " " + value.toFixed(2);
        r.title = name + " = " + value + (thresholds[name] != null ? " (threshold " + thresholds[name].toFixed(2) + ")" : "");
        box.appendChild(r);
      }
      out.appendChild(box);
      status.textContent = n + " tokens";
    });
    source.addEventListener("done", (e) => {
      const d = JSON.parse(e.data);
      finish(d.tokens + " tokens" + (d.stopped ? " (stopped)" : "") + ", first after " + out.dataset.firstTokenMs + " ms");
    });
    source.addEventListener("error", (e) => {
      let msg = "stream ended";
      try { msg = JSON.parse(e.data).message; } catch (_) { /* a transport error carries no data */ }
      finish(msg);
    });
  });

  stopBtn.addEventListener("click", () => {
    if (job) fetch("/api/monitor/stop?job=" + encodeURIComponent(job), { method: "POST" });
  });
}
