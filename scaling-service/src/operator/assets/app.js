// Berth fleet dashboard: applies the live sections the server pushes and
// sends the operator's confirmed actions. Plain script, no dependencies.
"use strict";

(function () {
  const flash = document.getElementById("flash");
  const dialog = document.getElementById("confirm");
  let pending = null;

  function say(text, ok) {
    flash.textContent = text;
    flash.className = ok ? "ok" : "error";
  }

  const source = document.body.dataset.events;
  if (source) {
    const events = new EventSource(source);
    events.addEventListener("section", function (event) {
      const update = JSON.parse(event.data);
      const target = document.getElementById(update.id);
      if (target) {
        target.innerHTML = update.html;
        target.dataset.updated = String(Date.now());
      }
    });
    events.addEventListener("error", function () {
      document.body.dataset.live = "reconnecting";
    });
    events.addEventListener("open", function () {
      document.body.dataset.live = "open";
    });
  }

  async function send(method, url, body) {
    try {
      const response = await fetch(url, {
        method: method,
        credentials: "same-origin",
        headers: { "X-Requested-With": "berth-ui", "Content-Type": "application/json" },
        body: body,
      });
      const answer = await response.json().catch(function () { return {}; });
      if (response.ok) {
        say((answer.changed ? "Done: " : "Already so: ") + method + " " + url, true);
      } else {
        const error = answer.error || {};
        say((error.code || response.status) + ": " + (error.message || "refused"), false);
      }
    } catch (e) {
      say("The request failed: " + e, false);
    }
  }

  function ask(text, action) {
    pending = action;
    document.getElementById("confirm-text").textContent = text;
    dialog.showModal();
  }

  document.getElementById("confirm-yes").addEventListener("click", function () {
    dialog.close();
    const action = pending;
    pending = null;
    if (action) action();
  });
  document.getElementById("confirm-no").addEventListener("click", function () {
    pending = null;
    dialog.close();
  });

  // Buttons live in sections the server replaces: listen on the document.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button.action");
    if (!button) return;
    ask(button.dataset.confirm, function () {
      send(button.dataset.method, button.dataset.url, button.dataset.body || null);
    });
  });

  document.addEventListener("submit", function (event) {
    const form = event.target.closest("form.action-form");
    if (!form) return;
    event.preventDefault();
    const body = {};
    for (const input of form.querySelectorAll("input[name]")) {
      if (input.value === "") continue;
      body[input.name] = input.type === "number" ? Number(input.value) : input.value;
    }
    ask(form.dataset.confirm, function () {
      send(form.dataset.method, form.dataset.url, JSON.stringify(body));
    });
  });
})();
