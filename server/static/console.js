// Atelier console: the one script. It only refreshes a batch's progress while images are being made
// (every form and link works without it). Same origin, no inline script: the CSP allows nothing else.
(function () {
  "use strict";
  var el = document.getElementById("progress");
  if (!el || !el.dataset.batch || !window.fetch) return;
  var url = "/api/v1/batches/" + encodeURIComponent(el.dataset.batch) + "/progress";
  var last = null;
  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (body) {
        if (!body) return;
        var p = body.progress;
        el.textContent = p.done + " of " + p.planned + " images (" + p.published + " published, " +
          p.quarantined + " quarantined)" + (body.run ? " · run on this server: " + body.run.state : "");
        if (last !== null && p.done !== last && el.dataset.reload === "gallery") window.location.reload();
        last = p.done;
        if (body.status === "running" || body.status === "approved" || (body.run && body.run.state !== "finished" && body.run.state !== "failed")) {
          window.setTimeout(tick, 2000);
        }
      })
      .catch(function () { window.setTimeout(tick, 5000); });
  }
  tick();
})();
