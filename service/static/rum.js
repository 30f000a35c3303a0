/* eBook Scene Packer real-user monitoring, beaconed to the service. Include with one tag, no
 * build step:
 *   <script src="/static/rum.js"></script>
 * The web vitals (FCP, LCP, CLS, INP, TTFB) come from Google's web-vitals library (attribution
 * build), which this script loads from beside itself: its definitions are Chrome's, Search
 * Console's and CrUX's, back/forward-cache restores and prerendering included. This script
 * adds what is the service's own: JavaScript errors, timings of same-origin /api/ calls made
 * with fetch or XMLHttpRequest, batching within the receiver's limits, and sending when the page
 * is hidden or left (sendBeacon, falling back to fetch with keepalive).
 * Optional attributes on the tag: data-endpoint="/api/rum", data-web-vitals="<its URL>".
 * Values are milliseconds (CLS unitless); see POST /api/rum in the service's README. */
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = attribute("data-endpoint") || "/api/rum";
  var library = attribute("data-web-vitals") ||
    new URL("web-vitals.attribution.iife.js", (script && script.src) || location.href).href;
  var MAX_ENTRIES = 30; // the receiver accepts 50 per beacon and 16 KB
  var MAX_MESSAGE = 150;
  var MAX_TEXT = 100; // selectors and paths; the receiver keeps 100 characters
  var queue = { metrics: [], errors: [], api: [] };
  var originalFetch = window.fetch;

  function attribute(name) {
    return script && script.getAttribute(name);
  }

  function size() {
    return queue.metrics.length + queue.errors.length + queue.api.length;
  }

  function push(list, entry) {
    list.push(entry);
    if (size() >= MAX_ENTRIES) flush();
  }

  // ---------------------------------------------------------------- web vitals

  function text(value) {
    return typeof value === "string" ? value.slice(0, MAX_TEXT) : undefined;
  }

  function path(url) {
    try {
      return url ? new URL(url, location.href).pathname.slice(0, MAX_TEXT) : undefined;
    } catch (e) {
      return undefined;
    }
  }

  // What a frontend developer needs to act on a poor value, and nothing that names a user.
  function culprit(metric) {
    var a = metric.attribution || {};
    if (metric.name === "LCP") {
      return {
        target: text(a.target), url: path(a.url), timeToFirstByte: a.timeToFirstByte,
        resourceLoadDelay: a.resourceLoadDelay, resourceLoadDuration: a.resourceLoadDuration,
        elementRenderDelay: a.elementRenderDelay
      };
    }
    if (metric.name === "CLS") {
      return {
        target: text(a.largestShiftTarget), time: a.largestShiftTime,
        shift: a.largestShiftValue, loadState: text(a.loadState)
      };
    }
    if (metric.name === "INP") {
      return {
        target: text(a.interactionTarget), type: text(a.interactionType),
        inputDelay: a.inputDelay, processingDuration: a.processingDuration,
        presentationDelay: a.presentationDelay, loadState: text(a.loadState)
      };
    }
    return undefined;
  }

  function report(metric) {
    if (!(metric.value >= 0)) return;
    var entry = { name: metric.name, value: metric.value, navigation: metric.navigationType };
    if (metric.rating === "poor") entry.attribution = culprit(metric);
    push(queue.metrics, entry);
  }

  var tag = document.createElement("script");
  tag.src = library;
  tag.async = true;
  tag.onload = function () {
    var vitals = window.webVitals;
    if (!vitals) return;
    [vitals.onFCP, vitals.onLCP, vitals.onCLS, vitals.onINP, vitals.onTTFB].forEach(
      function (on) {
        if (typeof on === "function") on(report);
      }
    );
  };
  (document.head || document.documentElement).appendChild(tag);

  // ---------------------------------------------------------------- errors

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

  // ---------------------------------------------------------------- API calls

  // The call to time, or null: same-origin /api/ calls other than the beacon itself.
  function apiCall(method, target) {
    try {
      var url = new URL(String(target), location.href);
      if (url.origin !== location.origin || url.pathname.indexOf("/api/") !== 0 ||
        url.pathname === endpoint) return null;
      return { endpoint: url.pathname, method: String(method || "GET").toUpperCase() };
    } catch (e) {
      return null;
    }
  }

  function record(call, status, started) {
    push(queue.api, {
      endpoint: call.endpoint, method: call.method, status: status,
      duration: performance.now() - started
    });
  }

  if (originalFetch) {
    window.fetch = function (input, init) {
      var request = typeof Request === "function" && input instanceof Request ? input : null;
      var call = apiCall((init && init.method) || (request && request.method),
        request ? request.url : input);
      if (!call) return originalFetch.apply(this, arguments);
      var started = performance.now();
      return originalFetch.apply(this, arguments).then(function (response) {
        record(call, response.status, started);
        return response;
      }, function (error) {
        record(call, 0, started); // a network failure or an abort: the browser saw no answer
        throw error;
      });
    };
  }

  var XHR = window.XMLHttpRequest;
  if (XHR && typeof WeakMap === "function") {
    var calls = new WeakMap();
    var open = XHR.prototype.open;
    var send = XHR.prototype.send;
    XHR.prototype.open = function (method, url) {
      var call = apiCall(method, url);
      if (call) calls.set(this, call);
      else calls.delete(this);
      return open.apply(this, arguments);
    };
    XHR.prototype.send = function () {
      var call = calls.get(this);
      if (call) {
        var started = performance.now();
        // loadend follows load, error, abort and timeout alike; status is 0 without an answer
        this.addEventListener("loadend", function () {
          record(call, this.status, started);
        });
      }
      return send.apply(this, arguments);
    };
  }

  // ---------------------------------------------------------------- sending

  function flush() {
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
    if (!sent && originalFetch) {
      originalFetch.call(window, endpoint, {
        method: "POST", body: body, keepalive: true, headers: { "Content-Type": "text/plain" }
      }).catch(function () {});
    }
  }

  // web-vitals reports LCP, CLS and INP from its own capturing listener on window, which runs
  // before this one on the document: the beacon sent here already holds them.
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush();
  });
  window.addEventListener("pagehide", flush);
})();
