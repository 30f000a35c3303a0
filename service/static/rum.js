/* eBook Scene Packer real-user monitoring: page timings, JavaScript errors and API timings,
 * beaconed to the service. Include with one tag, no build step:
 *   <script src="/static/rum.js" defer></script>
 * Optional: data-endpoint="/api/rum" on the tag. Values are milliseconds (CLS unitless);
 * see POST /api/rum in the service's README for the body. */
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = (script && script.getAttribute("data-endpoint")) || "/api/rum";
  var MAX_ENTRIES = 30; // the receiver accepts 50 per beacon and 16 KB
  var MAX_MESSAGE = 150;
  var queue = { metrics: [], errors: [], api: [] };
  var final = { LCP: null, CLS: 0, INP: null };
  var finalSent = false;

  function size() {
    return queue.metrics.length + queue.errors.length + queue.api.length;
  }

  function push(list, entry) {
    list.push(entry);
    if (size() >= MAX_ENTRIES) flush(false);
  }

  function observe(type, onEntry, options) {
    try {
      var observer = new PerformanceObserver(function (list) {
        list.getEntries().forEach(onEntry);
      });
      var settings = { type: type, buffered: true };
      for (var key in options || {}) settings[key] = options[key];
      observer.observe(settings);
    } catch (e) {
      /* metric not supported by this browser */
    }
  }

  observe("paint", function (entry) {
    if (entry.name === "first-contentful-paint") {
      push(queue.metrics, { name: "FCP", value: entry.startTime });
    }
  });
  observe("largest-contentful-paint", function (entry) {
    final.LCP = entry.startTime;
  });
  observe("layout-shift", function (entry) {
    if (!entry.hadRecentInput) final.CLS += entry.value;
  });
  // INP approximated as the slowest interaction of the page view.
  observe("event", function (entry) {
    if (entry.interactionId && (final.INP === null || entry.duration > final.INP)) {
      final.INP = entry.duration;
    }
  }, { durationThreshold: 16 });

  var navigation = performance.getEntriesByType && performance.getEntriesByType("navigation")[0];
  if (navigation && navigation.responseStart > 0) {
    push(queue.metrics, { name: "TTFB", value: navigation.responseStart });
  }

  function errorKind(error, fallback) {
    return (error && error.name) || fallback;
  }

  window.addEventListener("error", function (event) {
    if (!event.message) return; // a resource failed to load, not a script error
    push(queue.errors, {
      kind: errorKind(event.error, "Error"),
      message: String(event.message).slice(0, MAX_MESSAGE)
    });
  });
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    push(queue.errors, {
      kind: "unhandledrejection",
      message: String((reason && reason.message) || reason).slice(0, MAX_MESSAGE)
    });
  });

  if (window.fetch) {
    var originalFetch = window.fetch;
    window.fetch = function (input, init) {
      var url = new URL(typeof input === "string" ? input : input.url, location.href);
      var method = ((init && init.method) || (input && input.method) || "GET").toUpperCase();
      var timed = url.origin === location.origin && url.pathname.indexOf("/api/") === 0 &&
        url.pathname !== endpoint;
      if (!timed) return originalFetch.apply(this, arguments);
      var started = performance.now();
      function record(status) {
        push(queue.api, {
          endpoint: url.pathname, method: method, status: status,
          duration: performance.now() - started
        });
      }
      return originalFetch.apply(this, arguments).then(function (response) {
        record(response.status);
        return response;
      }, function (error) {
        record(0);
        throw error;
      });
    };
  }

  function flush(pageEnds) {
    if (!finalSent && pageEnds) {
      finalSent = true; // LCP, CLS and INP are only final once the page is hidden
      if (final.LCP !== null) queue.metrics.push({ name: "LCP", value: final.LCP });
      queue.metrics.push({ name: "CLS", value: final.CLS });
      if (final.INP !== null) queue.metrics.push({ name: "INP", value: final.INP });
    }
    if (!size()) return;
    var body = JSON.stringify({
      page: location.pathname, metrics: queue.metrics, errors: queue.errors, api: queue.api
    });
    queue = { metrics: [], errors: [], api: [] };
    var sent = false;
    try {
      sent = navigator.sendBeacon && navigator.sendBeacon(endpoint, body); // text/plain
    } catch (e) {
      sent = false;
    }
    if (!sent && window.fetch) {
      originalFetchOrFetch()(endpoint, {
        method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" }
      }).catch(function () {});
    }
  }

  function originalFetchOrFetch() {
    return typeof originalFetch === "function" ? originalFetch : window.fetch;
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush(true);
  });
  window.addEventListener("pagehide", function () {
    flush(true);
  });
})();
