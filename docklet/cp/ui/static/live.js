// Docklet's dashboard, live: follow the event stream and refresh the parts of the page an
// event concerns. Plain JS, no build step; the page is complete without it.
//
// A part is an element with data-part (the URL of its fresh HTML) and data-on (which events
// concern it: "any", "app", "app:<name>", "node"); data-wait (ms) coalesces a burst into one
// fetch; data-every (ms) refreshes it on a timer too. The stream's URL is body[data-live].
(function logTail() {
  // The log pane (an app's page): a button with data-logs, the URL of the app's log relay as
  // Server-Sent Events. It follows only when asked (a stream holds a slot and asks the agents),
  // keeps the newest MAX_LINES, and says why a stream could not start or ended.
  "use strict";
  var MAX_LINES = 1000;
  var button = document.querySelector("[data-logs]");
  var pane = document.getElementById("log-lines");
  if (!button || !pane || !window.EventSource) { return; }
  var stream = null;

  function add(text, kind) {
    var atEnd = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
    var line = document.createElement("div");
    line.textContent = text;  // text, never HTML: log lines are the app's output
    if (kind) { line.className = kind; }
    pane.appendChild(line);
    while (pane.childNodes.length > MAX_LINES) { pane.removeChild(pane.firstChild); }
    if (atEnd) { pane.scrollTop = pane.scrollHeight; }
  }

  function stop(why) {
    if (stream) { stream.close(); stream = null; }
    if (why) { add(why, "notice"); }
    button.textContent = "Follow the logs";
  }

  function data(message) {
    try { return JSON.parse(message.data); } catch (e) { return {}; }
  }

  button.addEventListener("click", function () {
    if (stream) { stop("stopped"); return; }
    pane.hidden = false;
    button.textContent = "Stop following";
    stream = new EventSource(button.getAttribute("data-logs"));
    stream.onmessage = function (m) {
      var line = data(m);
      if (line.text !== undefined) { add(line.label + " | " + line.text); }
    };
    stream.addEventListener("notice", function (m) { add(data(m).message || "", "notice"); });
    stream.addEventListener("end", function (m) { stop(data(m).reason || "the stream ended"); });
    // Cut off: stop, rather than let EventSource reconnect and print the tail again.
    stream.onerror = function () { stop("the log stream was cut off; follow again to go on"); };
  });
})();

(function () {
  "use strict";
  var POLL_MS = 5000;  // without a stream (every slot taken, or it failed): fetch parts this often
  var body = document.body;
  var streamUrl = body.getAttribute("data-live");
  if (!streamUrl || !window.fetch) { return; }
  var parts = Array.prototype.slice.call(document.querySelectorAll("[data-part]"));
  var badge = document.getElementById("live");
  var poller = null;

  function say(text, on) {
    if (!badge) { return; }
    badge.hidden = false;
    badge.textContent = text;
    badge.className = on ? "live on" : "live";
  }

  function refresh(el) {
    if (el.dataset.busy) { el.dataset.again = "1"; return; }
    el.dataset.busy = "1";
    fetch(el.getAttribute("data-part"), { credentials: "same-origin", redirect: "error" })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) { el.innerHTML = html; })  // the CP's own escaped HTML
      .catch(function () { say("not updating: reload the page", false); })
      .then(function () {
        delete el.dataset.busy;
        if (el.dataset.again) { delete el.dataset.again; schedule(el); }
      });
  }

  function schedule(el) {
    if (el.dataset.timer) { return; }
    var wait = parseInt(el.getAttribute("data-wait") || "300", 10);
    el.dataset.timer = String(setTimeout(function () {
      delete el.dataset.timer;
      refresh(el);
    }, wait));
  }

  function concerns(el, event) {
    var on = el.getAttribute("data-on") || "any";
    if (on === "any") { return true; }
    if (on === "app") { return !!event.app; }
    if (on === "node") { return !!event.node_id; }
    if (on.indexOf("app:") === 0) { return event.app === on.slice(4); }
    return false;
  }

  function poll() {
    if (poller) { return; }
    say("updating every " + POLL_MS / 1000 + "s", false);
    poller = setInterval(function () { parts.forEach(schedule); }, POLL_MS);
  }

  parts.forEach(function (el) {
    var every = parseInt(el.getAttribute("data-every") || "0", 10);
    if (every > 0) { setInterval(function () { schedule(el); }, every); }
  });

  if (!window.EventSource) { poll(); return; }
  var stream = new EventSource(streamUrl);
  stream.onopen = function () { say("live", true); };
  stream.onmessage = function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (e) { return; }
    parts.forEach(function (el) { if (concerns(el, event)) { schedule(el); } });
  };
  stream.onerror = function () {
    // Closed: refused (every stream slot taken) or signed out; else it reconnects by itself.
    if (stream.readyState === EventSource.CLOSED) { poll(); } else { say("reconnecting", false); }
  };
})();
