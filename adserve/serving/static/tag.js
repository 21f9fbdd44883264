/*
 * adserve tag: <script async src="https://ads.example/tag.js" data-consent="1"></script>
 * plus any number of <div data-adserve-placement="home-top"></div>.
 *
 * One POST /v1/decisions per page view for every placement on the page; each creative is built
 * with DOM APIs only (response data never reaches an HTML parser); the impression URL fires once,
 * after at least half of the ad has been visible for one continuous second. Errors are logged with
 * console.warn and never thrown into the page.
 *
 * Script attributes: data-consent ("1"/"true" or "0"/"false"), data-user-id, data-page-category,
 * data-keywords (comma separated). Page: <meta name="adserve:category">, <meta name="adserve:keywords">,
 * window.adserveConsent (a boolean set by a consent manager wins over data-consent).
 * API: window.adserve.trackEvent(type, fields) -> Promise<boolean>, window.adserve.refresh().
 * Each slot's data-adserve-state says where it is: loading, rendered (image shown), viewed
 * (impression fired), empty (nothing eligible or unsafe) or error.
 */
(function () {
  "use strict";

  var COOKIE = "adserve_uid";
  var COOKIE_MAX_AGE_S = 60 * 60 * 24 * 395; // about 13 months, the usual ceiling for consented ids
  var VIEWABLE_RATIO = 0.5;
  var VIEWABLE_MS = 1000;
  var EVENT_TYPES = ["page_view", "product_view", "add_to_cart", "purchase", "search"];
  var MAX_URL_CHARS = 2048;
  // The decision API's limits: one malformed key or an 11th slot would fail the whole request.
  var MAX_PLACEMENTS = 10;
  var PLACEMENT_KEY = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$/;

  function warn(message, error) {
    try {
      console.warn("[adserve] " + message, error === undefined ? "" : error);
    } catch (ignored) {
      // a page that replaced console must not break the tag
    }
  }

  // Read once at start-up: document.currentScript is only set while this file first runs.
  var script =
    document.currentScript || document.querySelector('script[src*="/tag.js"]') || document.createElement("script");
  var base;
  try {
    base = new URL(script.src || "/", location.href);
  } catch (error) {
    base = new URL(location.href);
  }
  var sameOrigin = base.origin === location.origin;

  function endpoint(path) {
    return new URL(path, base.origin + "/").href;
  }

  // Only absolute http(s) URLs or relative ones (resolved against the ad server, which served
  // them) may become an href or src: never javascript:, data: or anything else.
  function safeUrl(value) {
    if (typeof value !== "string" || value === "" || value.length > MAX_URL_CHARS) return null;
    try {
      var url = new URL(value, base.origin + "/");
      return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
    } catch (error) {
      return null;
    }
  }

  function uuid4() {
    var cryptoApi = window.crypto;
    if (cryptoApi && typeof cryptoApi.randomUUID === "function") return cryptoApi.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not.
    var bytes = new Uint8Array(16);
    cryptoApi.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map
      .call(bytes, function (byte) {
        return (byte + 0x100).toString(16).slice(1);
      })
      .join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function truthy(text) {
    return /^(1|true|yes|on)$/i.test(String(text).trim());
  }

  // Evaluated per request so a consent manager can grant or withdraw consent, then call refresh().
  function hasConsent() {
    if (typeof window.adserveConsent === "boolean") return window.adserveConsent;
    var attribute = script.getAttribute("data-consent");
    return attribute !== null && truthy(attribute);
  }

  function readCookie(name) {
    var parts = document.cookie ? document.cookie.split(";") : [];
    for (var i = 0; i < parts.length; i++) {
      var pair = parts[i].trim();
      if (pair.indexOf(name + "=") === 0) return decodeURIComponent(pair.slice(name.length + 1));
    }
    return null;
  }

  // Without consent the tag neither reads nor writes a cookie (an advertising identifier is not
  // strictly necessary storage): it uses an id that lives only as long as this page. The server
  // keys such users by session, so caps still hold within the page.
  var pageUserId = null;

  function userId() {
    var explicit = script.getAttribute("data-user-id");
    if (explicit) return explicit.slice(0, 200);
    if (!hasConsent()) return (pageUserId = pageUserId || uuid4());
    var stored = readCookie(COOKIE);
    if (stored && /^[0-9a-f-]{36}$/i.test(stored)) return stored;
    var created = uuid4();
    try {
      document.cookie =
        COOKIE +
        "=" +
        created +
        "; Path=/; Max-Age=" +
        COOKIE_MAX_AGE_S +
        "; SameSite=Lax" +
        (location.protocol === "https:" ? "; Secure" : "");
    } catch (error) {
      warn("could not store the user id cookie", error);
    }
    return created;
  }

  function metaContent(name) {
    var meta = document.querySelector('meta[name="' + name + '"]');
    return meta ? meta.getAttribute("content") : null;
  }

  function deviceClass() {
    var agent = navigator.userAgent || "";
    if (/iPad|Tablet|PlayBook|Silk|(Android(?!.*Mobile))/i.test(agent)) return "tablet";
    if (/Mobi|iPhone|iPod|Android|Windows Phone/i.test(agent)) return "mobile";
    var width = window.innerWidth || document.documentElement.clientWidth || 0;
    if (width > 0 && width < 768) return "mobile";
    if (width > 0 && width < 1024) return "tablet";
    return "desktop";
  }

  function pageContext() {
    var context = { page_url: location.href.slice(0, MAX_URL_CHARS), device: deviceClass() };
    if (document.referrer) context.referrer = document.referrer.slice(0, MAX_URL_CHARS);
    var category = script.getAttribute("data-page-category") || metaContent("adserve:category");
    if (category) context.page_category = category.trim().slice(0, 200);
    var keywords = script.getAttribute("data-keywords") || metaContent("adserve:keywords");
    if (keywords) {
      context.keywords = keywords
        .split(",")
        .map(function (word) {
          return word.trim().slice(0, 200);
        })
        .filter(Boolean)
        .slice(0, 50);
    }
    return context;
  }

  function postJson(path, body) {
    // keepalive lets events survive a navigation (a "buy" button that leaves the page); Chrome
    // refuses keepalive on requests that need a CORS preflight, so only use it same-origin.
    return fetch(endpoint(path), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
      keepalive: sameOrigin,
    });
  }

  function fireUrl(url) {
    try {
      // no-cors: the ad server may be cross-origin and the response is not needed.
      fetch(url, { keepalive: true, credentials: "omit", mode: "no-cors", cache: "no-store" }).catch(function () {
        new Image().src = url; // e.g. blocked by the page's connect-src; the server deduplicates
      });
    } catch (error) {
      new Image().src = url;
    }
  }

  // ---- viewability: >= 50% visible for one continuous second, fired once per ad ----

  var tracked = []; // {element, url, timer, fired, visible}
  var observer = null;

  function startTimer(ad) {
    if (ad.fired || ad.timer !== null || document.visibilityState === "hidden") return;
    ad.timer = setTimeout(function () {
      ad.timer = null;
      if (ad.fired || !ad.visible || document.visibilityState === "hidden") return;
      ad.fired = true;
      if (observer) observer.unobserve(ad.element);
      ad.element.parentNode && ad.element.parentNode.setAttribute("data-adserve-state", "viewed");
      fireUrl(ad.url);
    }, VIEWABLE_MS);
  }

  function stopTimer(ad) {
    if (ad.timer !== null) clearTimeout(ad.timer);
    ad.timer = null;
  }

  function findTracked(element) {
    for (var i = 0; i < tracked.length; i++) if (tracked[i].element === element) return tracked[i];
    return null;
  }

  function onIntersection(entries) {
    entries.forEach(function (entry) {
      var ad = findTracked(entry.target);
      if (!ad || ad.fired) return;
      ad.visible = entry.isIntersecting && entry.intersectionRatio >= VIEWABLE_RATIO;
      if (ad.visible) startTimer(ad);
      else stopTimer(ad);
    });
  }

  // A hidden tab is not a view: pause every running second and resume it when the tab returns.
  document.addEventListener("visibilitychange", function () {
    tracked.forEach(function (ad) {
      if (document.visibilityState === "hidden") stopTimer(ad);
      else if (ad.visible) startTimer(ad);
    });
  });

  function trackViewability(element, impressionUrl) {
    if (!impressionUrl) return;
    if (typeof IntersectionObserver !== "function") {
      warn("IntersectionObserver unavailable; impressions are not counted on this browser");
      return;
    }
    if (!observer) {
      // 0 as well as 0.5 so that dropping out of view entirely also reports below-half.
      observer = new IntersectionObserver(onIntersection, { threshold: [0, VIEWABLE_RATIO] });
    }
    tracked.push({ element: element, url: impressionUrl, timer: null, fired: false, visible: false });
    observer.observe(element);
  }

  function resetViewability() {
    tracked.forEach(stopTimer);
    if (observer) observer.disconnect();
    tracked = [];
  }

  // ---- rendering ----

  function dimension(value) {
    return typeof value === "number" && value >= 1 && value <= 4000 ? String(Math.floor(value)) : null;
  }

  function render(slot, decision) {
    var creative = decision && decision.creative;
    var imageUrl = creative && safeUrl(creative.image_url);
    var clickUrl = decision && safeUrl(decision.click_url);
    slot.replaceChildren();
    if (!creative || !imageUrl || !clickUrl) {
      if (creative) warn("creative " + creative.id + " dropped: unsafe or missing URL");
      slot.setAttribute("data-adserve-state", "empty");
      return;
    }
    var link = document.createElement("a");
    link.href = clickUrl;
    link.rel = "sponsored noopener";
    link.style.display = "inline-block";
    link.style.lineHeight = "0";
    var image = document.createElement("img");
    image.alt = typeof creative.title === "string" ? creative.title : "Advertisement";
    var width = dimension(creative.width);
    var height = dimension(creative.height);
    if (width) image.width = Number(width);
    if (height) image.height = Number(height);
    image.style.maxWidth = "100%";
    image.style.height = "auto";
    image.decoding = "async";
    // Count the second from when the ad can actually be seen, i.e. once its image has loaded.
    var impressionUrl = safeUrl(decision.impression_url);
    image.addEventListener("load", function () {
      slot.setAttribute("data-adserve-state", "rendered");
      trackViewability(link, impressionUrl);
    });
    image.addEventListener("error", function () {
      warn("creative image failed to load: " + imageUrl);
      slot.setAttribute("data-adserve-state", "error");
    });
    image.src = imageUrl;
    link.appendChild(image);
    slot.appendChild(link);
    if (typeof decision.decision_id === "string") slot.setAttribute("data-adserve-decision", decision.decision_id);
  }

  function slots() {
    var all = Array.prototype.slice.call(document.querySelectorAll("[data-adserve-placement]"));
    var valid = all.filter(function (slot) {
      return PLACEMENT_KEY.test(slot.getAttribute("data-adserve-placement") || "");
    });
    if (valid.length < all.length) warn("ignored placements with invalid keys");
    if (valid.length > MAX_PLACEMENTS) warn("only the first " + MAX_PLACEMENTS + " placements are filled");
    return valid.slice(0, MAX_PLACEMENTS);
  }

  // Answers are matched to slots by placement key, in page order, so two slots with the same key
  // each get their own decision and a missing answer leaves a slot empty rather than shifted.
  function assign(found, decisions) {
    var byPlacement = {};
    (Array.isArray(decisions) ? decisions : []).forEach(function (decision) {
      if (!decision || typeof decision.placement !== "string") return;
      (byPlacement[decision.placement] = byPlacement[decision.placement] || []).push(decision);
    });
    found.forEach(function (slot) {
      var queue = byPlacement[slot.getAttribute("data-adserve-placement")];
      try {
        render(slot, queue && queue.length ? queue.shift() : null);
      } catch (error) {
        warn("could not render a placement", error);
      }
    });
  }

  var pageView = 0;

  function requestDecisions() {
    var view = ++pageView;
    resetViewability();
    var found = slots();
    if (found.length === 0) return Promise.resolve(false);
    found.forEach(function (slot) {
      slot.setAttribute("data-adserve-state", "loading");
    });
    var body = {
      user_id: userId(),
      consent: hasConsent(),
      placements: found.map(function (slot) {
        return slot.getAttribute("data-adserve-placement");
      }),
      context: pageContext(),
    };
    return postJson("/v1/decisions", body)
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (answer) {
        if (view !== pageView) return false; // a later refresh() owns the slots now
        assign(found, answer && answer.decisions);
        return true;
      })
      .catch(function (error) {
        warn("decision request failed", error);
        found.forEach(function (slot) {
          slot.setAttribute("data-adserve-state", "error");
        });
        return false;
      });
  }

  // ---- behaviour events ----

  function optionalString(value, limit) {
    return typeof value === "string" && value !== "" ? value.slice(0, limit) : null;
  }

  function trackEvent(type, fields) {
    try {
      if (EVENT_TYPES.indexOf(type) < 0) {
        warn("unknown event type: " + type);
        return Promise.resolve(false);
      }
      fields = fields || {};
      var price = Number(fields.price);
      var event = {
        event_id: uuid4(),
        user_id: userId(),
        type: type,
        item_id: optionalString(fields.item_id, 200),
        category: optionalString(fields.category, 200),
        price: fields.price !== undefined && fields.price !== null && isFinite(price) && price >= 0 ? price : null,
        query: optionalString(fields.query, 200),
        ts: new Date().toISOString(),
      };
      return postJson("/v1/events", { consent: hasConsent(), events: [event] })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return true;
        })
        .catch(function (error) {
          warn("event not sent", error);
          return false;
        });
    } catch (error) {
      warn("event not sent", error);
      return Promise.resolve(false);
    }
  }

  function refresh() {
    try {
      return requestDecisions();
    } catch (error) {
      warn("refresh failed", error);
      return Promise.resolve(false);
    }
  }

  window.adserve = { trackEvent: trackEvent, refresh: refresh };

  // An async tag can run before the placements below it are parsed.
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", refresh, { once: true });
  else refresh();
})();
