// Live updates: the server sends a `runs` event whenever a run starts or ends; every element
// marked `data-live` (the runs table's body, its count, the imports) is fetched again with the
// page and swapped in, without reloading it. Without script the pages still read as they are.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  if (live.length === 0 || !window.EventSource || !window.DOMParser) { return; }
  var source = new EventSource("/ui/events");
  source.addEventListener("runs", function () {
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (element) {
          var replacement = fresh.getElementById(element.id);
          if (replacement) {
            element.replaceChildren.apply(element, Array.prototype.slice.call(replacement.childNodes));
            element.setAttribute("data-updated", String(Date.now()));
          }
        });
      });
  });
})();
