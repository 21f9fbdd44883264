/*
 * The /demo shop's buttons. A separate file rather than inline handlers because the page's
 * Content-Security-Policy (script-src 'self') forbids inline script, as a real shop's should.
 */
(function () {
  "use strict";

  var status = document.getElementById("status");

  function say(text) {
    if (status) status.textContent = text;
  }

  function send(type, fields, label) {
    if (!window.adserve) {
      say("The ad tag has not loaded yet.");
      return;
    }
    window.adserve.trackEvent(type, fields).then(function (sent) {
      say(sent ? "Sent " + type + (label ? " for " + label : "") + "." : "Could not send " + type + ".");
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("button[data-event]") : null;
    if (!button) return;
    var card = button.closest("[data-item-id]");
    if (!card) return;
    send(
      button.getAttribute("data-event"),
      {
        item_id: card.getAttribute("data-item-id"),
        category: card.getAttribute("data-category"),
        price: Number(card.getAttribute("data-price")),
      },
      card.getAttribute("data-name")
    );
  });

  var search = document.getElementById("search");
  if (search) {
    search.addEventListener("submit", function (event) {
      event.preventDefault();
      var query = search.querySelector("input[name=q]").value.trim();
      if (query) send("search", { query: query }, '"' + query + '"');
    });
  }

  var refresh = document.getElementById("refresh-ads");
  if (refresh) {
    refresh.addEventListener("click", function () {
      if (window.adserve) window.adserve.refresh();
    });
  }

  // The load event waits for async scripts, so the tag is there by then.
  window.addEventListener("load", function () {
    if (window.adserve) window.adserve.trackEvent("page_view", {});
  });
})();
