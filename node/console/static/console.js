// haorch console: live updates of an experiment's page. While the experiment is not terminal, fetch
// /experiments/ID/live every 2 s and put its HTML fragments (rendered and escaped by the server) in place by
// element id; when it turns terminal, reload once so that the buttons match the final state. No framework.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var MAX_FAILURES = 30; // about a minute of errors in a row: stop and say so

  function startLive(box) {
    var url = box.getAttribute("data-live-url");
    var status = document.getElementById("live-status");
    var failures = 0;
    var timer = null;

    function say(text) { if (status) { status.textContent = text; } }

    function apply(data) {
      var fragments = data.fragments || {};
      Object.keys(fragments).forEach(function (id) {
        var el = document.getElementById(id);
        if (el) { el.innerHTML = fragments[id]; }
      });
      box.setAttribute("data-state", data.state);
      box.setAttribute("data-terminal", data.terminal ? "true" : "false");
    }

    function tick() {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store" })
        .then(function (resp) {
          if (resp.status === 401) { throw { stop: "Live updates stopped: log in again." }; }
          if (!resp.ok) { throw { retry: "Live update failed (HTTP " + resp.status + "), retrying" }; }
          return resp.json();
        })
        .then(function (data) {
          failures = 0;
          apply(data);
          if (data.terminal) {
            say("Finished: " + data.state);
            window.location.reload();
            return;
          }
          say("Live: updated " + new Date().toISOString().slice(11, 19) + " UTC");
          timer = window.setTimeout(tick, POLL_MS);
        })
        .catch(function (err) {
          if (err && err.stop) { say(err.stop); return; }
          failures += 1;
          if (failures >= MAX_FAILURES) { say("Live updates stopped after repeated errors: reload the page."); return; }
          say((err && err.retry) || "Live update failed, retrying");
          timer = window.setTimeout(tick, POLL_MS);
        });
    }

    document.addEventListener("visibilitychange", function () {
      // a hidden tab stops polling; showing it again polls at once
      if (document.hidden) { window.clearTimeout(timer); timer = null; }
      else if (timer === null && box.getAttribute("data-terminal") !== "true") { tick(); }
    });
    timer = window.setTimeout(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("experiment");
    if (box && box.getAttribute("data-terminal") === "false") { startLive(box); }
  });
})();
