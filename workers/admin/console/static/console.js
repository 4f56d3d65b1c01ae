/* The console's few behaviours. Every page works without them, except that nothing refreshes by itself.
   - [data-refresh=URL][data-every=SECONDS]: fetch URL (an HTML fragment) and replace the element's content;
     with data-until-done, stop once the fragment holds [data-done]. Paused while the tab is hidden, and
     while the keyboard focus is inside the element (so a focused button is never swapped away).
   - [data-copy=SELECTOR]: copy the text (or value) of SELECTOR to the clipboard.
   - [data-select-all=NAME]: check or uncheck every enabled checkbox named NAME in the same form. */
(function () {
  "use strict";

  function refresh(el) {
    var url = el.getAttribute("data-refresh");
    var every = Math.max(1, Number(el.getAttribute("data-every") || "5")) * 1000;
    function later(ms) { window.setTimeout(tick, ms); }
    function tick() {
      if (document.hidden || el.contains(document.activeElement)) { later(every); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.status === 401) { window.location.assign("/login"); return null; }
          return response.ok ? response.text() : null;
        })
        .then(function (html) {
          if (html !== null) { el.innerHTML = html; }
          if (el.hasAttribute("data-until-done") && el.querySelector("[data-done]")) { return; }
          later(every);
        })
        .catch(function () { later(every * 3); });
    }
    if (!(el.hasAttribute("data-until-done") && el.querySelector("[data-done]"))) { later(every); }
  }

  function copy(button) {
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) { return; }
    var text = target.value !== undefined ? target.value : target.textContent;
    function done() {
      var label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = label; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done);
    } else if (target.select) {
      target.select();
      document.execCommand("copy");
      done();
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () { copy(button); });
    });
    document.querySelectorAll("[data-select-all]").forEach(function (box) {
      box.addEventListener("change", function () {
        var name = box.getAttribute("data-select-all");
        box.form.querySelectorAll('input[type=checkbox][name="' + name + '"]:not(:disabled)').forEach(function (each) {
          each.checked = box.checked;
        });
      });
    });
  });
}());
