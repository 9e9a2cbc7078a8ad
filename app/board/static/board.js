// The board's own script (no inline scripts: the page's Content-Security-Policy forbids
// them). Times arrive in UTC; this shows them in the browser's timezone and keeps UTC on
// hover, and says so when the live updates cannot reach the service.
(function () {
  "use strict";
  var format = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit",
  });

  function localTimes(root) {
    var times = (root || document).querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) continue;
      el.textContent = format.format(when);
      el.title = el.getAttribute("datetime").replace("T", " ").replace("Z", " UTC");
    }
  }

  function connection(text) {
    var el = document.getElementById("connection");
    if (!el) return;
    el.textContent = text;
    el.hidden = !text;
  }

  document.addEventListener("DOMContentLoaded", function () { localTimes(document); });
  document.addEventListener("htmx:afterSwap", function (event) { localTimes(event.target); });
  // While focus is inside the live part (a snooze form being filled in, a keyboard user
  // on a row's link), no update swaps it away from under them; the first poll after focus
  // leaves brings the page up to date.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var active = document.activeElement;
    if (active && active.closest && active.closest("#live")) event.preventDefault();
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) connection("");
  });
  document.addEventListener("htmx:sendError", function () {
    connection("⚠ Updates paused: the service cannot be reached. What you see may be out of date.");
  });
  document.addEventListener("htmx:responseError", function () {
    connection("⚠ Updates paused: the service answered with an error. Reload the page.");
  });
})();
