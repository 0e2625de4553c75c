// Live updates of the runs table: the server sends an event whenever a run starts or
// finishes; the table body is fetched again and swapped in, without reloading the page.
(function () {
  "use strict";
  var body = document.getElementById("runs-body");
  if (!body || !window.EventSource) { return; }
  var source = new EventSource("/ui/events");
  source.addEventListener("runs", function () {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    fetch(url.toString(), { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var template = document.createElement("template");
        template.innerHTML = "<table><tbody>" + html + "</tbody></table>";
        var fresh = template.content.querySelector("tbody");
        body.replaceChildren.apply(body, Array.prototype.slice.call(fresh.childNodes));
        body.setAttribute("data-updated", String(Date.now()));
      });
  });
})();
