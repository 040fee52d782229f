// olol dashboard: refreshes the live part of the page every 2 s (the server renders
// it: GET <page>?fragment=1) and sends the page's actions with its CSRF token.
(function () {
  "use strict";
  var body = document.body;
  var prefix = body.dataset.prefix;
  var view = body.dataset.view;
  var meta = document.querySelector('meta[name="olol-csrf"]');
  var csrf = meta ? meta.content : "";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  var EVERY_MS = 2000;
  var timer = null;
  var busy = false;
  var shown = "";

  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("bad", !!bad);
  }

  function note(text, bad) {
    var el = document.getElementById("note");
    if (!el) return;
    el.textContent = text;
    el.className = bad ? "note bad" : "note";
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, EVERY_MS);
  }

  function refresh() {
    if (!live || busy) return;
    if (document.hidden) { schedule(); return; }
    busy = true;
    var started = performance.now();
    fetch(location.pathname + "?fragment=1", {credentials: "same-origin", cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) {
          location.href = prefix + "/login?next=" + encodeURIComponent(view);
          throw new Error("logged out");
        }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        if (html !== shown) {
          shown = html;
          live.innerHTML = html;
        }
        body.dataset.updateMs = (performance.now() - started).toFixed(1);
        body.dataset.updates = String(Number(body.dataset.updates || 0) + 1);
        say("live · " + new Date().toLocaleTimeString());
      })
      .catch(function (err) { say("not updating: " + err.message, true); })
      .then(function () { busy = false; schedule(); });
  }

  function post(path, data) {
    return fetch(prefix + path, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-OLOL-CSRF": csrf},
      body: JSON.stringify(data || {})
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (answer) {
        if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
        return answer;
      });
    });
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.dataset.action !== "pull") return;
    ev.preventDefault();
    var model = form.elements.model.value.trim();
    var nodes = form.elements.nodes.value.split(",").map(function (s) { return s.trim(); })
      .filter(Boolean);
    var data = {model: model};
    if (nodes.length) data.nodes = nodes;
    note("starting the pull of " + model + "…");
    post("/api/pull", data).then(function (op) {
      note("pulling " + op.model + " on " + op.nodes.join(", "));
      refresh();
    }, function (err) { note(err.message, true); });
  });

  document.addEventListener("click", function (ev) {
    var button = ev.target.closest ? ev.target.closest("button[data-action]") : null;
    if (!button) return;
    if (button.dataset.action === "apply") {
      if (!window.confirm("Apply the distribution plan (" + button.dataset.count +
                          " action(s))? Models will be pulled and removed.")) return;
      button.disabled = true;
      note("applying the plan…");
      post("/api/plan/apply", {plan_id: button.dataset.plan}).then(function (r) {
        note("plan applied: " + r.done + " done, " + r.skipped + " skipped, " +
             r.failed + " failed");
        refresh();
      }, function (err) { note(err.message, true); button.disabled = false; });
    } else if (button.dataset.action === "run-job") {
      var job = button.dataset.job;
      button.disabled = true;
      post("/api/jobs/" + encodeURIComponent(job) + "/run").then(function (r) {
        note(job + ": " + (r.outcome || "done"));
        refresh();
      }, function (err) { note(job + ": " + err.message, true); button.disabled = false; });
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
  if (live) schedule();
})();
