/* eBook Scene Packer real-user monitoring, beaconed to the service. Include with one tag, no
 * build step:
 *   <script src="/static/rum.js"></script>
 * The web vitals (FCP, LCP, CLS, INP, TTFB) come from Google's web-vitals library (attribution
 * build), which this script loads from beside itself: its definitions are Chrome's, Search
 * Console's and CrUX's, back/forward-cache restores and prerendering included. This script
 * adds what is the service's own: JavaScript errors, timings of the /api/ calls made to the
 * service (the origin of the beacon endpoint, whatever the page's) with fetch or
 * XMLHttpRequest, batching within the receiver's limits, and sending when the page
 * is hidden or left (sendBeacon, falling back to fetch with keepalive). It never throws into the
 * page: whatever goes wrong here is dropped.
 * Optional attributes on the tag: data-endpoint="/api/rum", data-web-vitals="<its URL>".
 * Values are milliseconds (CLS unitless); see POST /api/rum in the service's docs (docs/frontend.md). */
(function () {
  "use strict";
  var script = document.currentScript;
  var endpoint = attribute("data-endpoint") || "/api/rum";
  var service = resolve(endpoint); // where the beacons go: the origin whose API calls are timed
  var library = attribute("data-web-vitals") ||
    new URL("web-vitals.attribution.iife.js", (script && script.src) || location.href).href;
  var MAX_ENTRIES = 30; // the receiver accepts 50 per beacon
  var MAX_BYTES = 15000; // and 16 KB
  var MAX_MESSAGE = 150;
  var MAX_TEXT = 100; // selectors, paths and error kinds; the receiver keeps 100 characters
  var MAX_PATH = 200;
  var queue = empty();
  var originalFetch = window.fetch;

  function attribute(name) {
    return script && script.getAttribute(name);
  }

  function resolve(url) {
    try {
      return new URL(url, location.href);
    } catch (e) {
      return null;
    }
  }

  function empty() {
    return { metrics: [], errors: [], api: [] };
  }

  function size() {
    return queue.metrics.length + queue.errors.length + queue.api.length;
  }

  function push(list, entry) {
    list.push(entry);
    if (size() >= MAX_ENTRIES) flush();
  }

  // Page text for the beacon: a string whatever it was, e-mail addresses masked before it is
  // cut (a cut address no longer looks like one), no lone surrogate (the receiver's JSON parser
  // refuses one, and with it the beacon), at most `limit` characters.
  function text(value, limit) {
    var s;
    try {
      s = String(value);
    } catch (e) {
      return "[unprintable]";
    }
    s = s.replace(/[^\s@<>"']+@[^\s@<>"']+/g, "<email>");
    s = s.replace(/[\uD800-\uDBFF][\uDC00-\uDFFF]|[\uD800-\uDFFF]/g, function (pair) {
      return pair.length === 2 ? pair : "\uFFFD";
    });
    if (s.length <= limit) return s;
    var end = /[\uD800-\uDBFF]/.test(s.charAt(limit - 1)) ? limit - 1 : limit;
    return s.slice(0, end);
  }

  // ---------------------------------------------------------------- web vitals

  function optional(value) {
    return typeof value === "string" ? text(value, MAX_TEXT) : undefined;
  }

  function path(url) {
    try {
      return url ? text(new URL(url, location.href).pathname, MAX_TEXT) : undefined;
    } catch (e) {
      return undefined;
    }
  }

  // What a frontend developer needs to act on a poor value, and nothing that names a user.
  function culprit(metric) {
    var a = metric.attribution || {};
    if (metric.name === "LCP") {
      return {
        target: optional(a.target), url: path(a.url), timeToFirstByte: a.timeToFirstByte,
        resourceLoadDelay: a.resourceLoadDelay, resourceLoadDuration: a.resourceLoadDuration,
        elementRenderDelay: a.elementRenderDelay
      };
    }
    if (metric.name === "CLS") {
      return {
        target: optional(a.largestShiftTarget), time: a.largestShiftTime,
        shift: a.largestShiftValue, loadState: optional(a.loadState)
      };
    }
    if (metric.name === "INP") {
      return {
        target: optional(a.interactionTarget), type: optional(a.interactionType),
        inputDelay: a.inputDelay, processingDuration: a.processingDuration,
        presentationDelay: a.presentationDelay, loadState: optional(a.loadState)
      };
    }
    return undefined;
  }

  function report(metric) {
    try {
      if (!(metric.value >= 0)) return;
      var entry = { name: metric.name, value: metric.value, navigation: metric.navigationType };
      if (metric.rating === "poor") entry.attribution = culprit(metric);
      push(queue.metrics, entry);
    } catch (e) {
      /* dropped */
    }
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

  function error(kind, message) {
    try {
      push(queue.errors, { kind: text(kind, MAX_TEXT), message: text(message, MAX_MESSAGE) });
    } catch (e) {
      /* dropped */
    }
  }

  window.addEventListener("error", function (event) {
    if (!event.message) return; // a resource failed to load, not a script error
    error((event.error && event.error.name) || "Error", event.message);
  });
  window.addEventListener("unhandledrejection", function (event) {
    var reason = event.reason;
    error("unhandledrejection", (reason && reason.message) || reason);
  });

  // ---------------------------------------------------------------- API calls

  // The call to time, or null: /api/ calls to the service other than the beacon itself (a page
  // served from elsewhere, a CDN say, calls the service's API on the service's origin).
  function apiCall(method, target) {
    try {
      var url = new URL(String(target), location.href);
      if (!service || url.origin !== service.origin || url.pathname.indexOf("/api/") !== 0 ||
        url.pathname === service.pathname) return null;
      return {
        endpoint: text(url.pathname, MAX_PATH), method: text(method || "GET", 10).toUpperCase()
      };
    } catch (e) {
      return null;
    }
  }

  function record(call, status, started) {
    try {
      push(queue.api, {
        endpoint: call.endpoint, method: call.method, status: status,
        duration: performance.now() - started
      });
    } catch (e) {
      /* dropped */
    }
  }

  if (originalFetch) {
    window.fetch = function (input, init) {
      var call = null;
      try {
        var request = typeof Request === "function" && input instanceof Request ? input : null;
        call = apiCall((init && init.method) || (request && request.method),
          request ? request.url : input);
      } catch (e) {
        call = null;
      }
      if (!call) return originalFetch.apply(this, arguments);
      var started = performance.now();
      return originalFetch.apply(this, arguments).then(function (response) {
        record(call, response.status, started);
        return response;
      }, function (failure) {
        record(call, 0, started); // a network failure or an abort: the browser saw no answer
        throw failure;
      });
    };
  }

  // A request object can be opened and sent again, even from its own event handlers, which run
  // before any listener added here: a call is over when its readyState reaches DONE (before
  // load, error, abort, timeout and loadend, whatever the outcome; status 0 without an answer),
  // or when the page opens the object again first.
  var XHR = window.XMLHttpRequest;
  if (XHR && typeof WeakMap === "function") {
    var opened = new WeakMap(); // request -> the API call it was opened for
    var pending = new WeakMap(); // request -> { call, started } of the call in flight
    var open = XHR.prototype.open;
    var send = XHR.prototype.send;
    XHR.prototype.open = function (method, url) {
      settle(this);
      var call = apiCall(method, url);
      if (call) opened.set(this, call);
      else opened.delete(this);
      return open.apply(this, arguments);
    };
    XHR.prototype.send = function () {
      var call = opened.get(this);
      if (call) {
        var request = this;
        var state = { call: call, started: performance.now() };
        pending.set(this, state);
        this.addEventListener("readystatechange", function done() {
          if (pending.get(request) !== state) {
            request.removeEventListener("readystatechange", done);
          } else if (request.readyState === 4) {
            request.removeEventListener("readystatechange", done);
            settle(request);
          }
        });
      }
      try {
        return send.apply(this, arguments);
      } finally {
        if (this.readyState === 4) settle(this); // a synchronous request
      }
    };
  }

  function settle(request) {
    var state = pending.get(request);
    if (!state) return;
    pending.delete(request);
    record(state.call, request.readyState === 4 ? request.status : 0, state.started);
  }

  // ---------------------------------------------------------------- sending

  function flush() {
    if (!size()) return;
    var batch = queue;
    queue = empty();
    try {
      deliver(batch);
    } catch (e) {
      /* dropped */
    }
  }

  // One beacon, or two halves of it when it would be over the receiver's size limit.
  function deliver(batch) {
    var body = JSON.stringify({
      page: location.pathname, metrics: batch.metrics, errors: batch.errors, api: batch.api
    });
    if (bytes(body) > MAX_BYTES) {
      var entries = [];
      ["metrics", "errors", "api"].forEach(function (list) {
        batch[list].forEach(function (entry) { entries.push([list, entry]); });
      });
      if (entries.length < 2) return;
      var half = Math.ceil(entries.length / 2);
      [entries.slice(0, half), entries.slice(half)].forEach(function (part) {
        var smaller = empty();
        part.forEach(function (item) { smaller[item[0]].push(item[1]); });
        deliver(smaller);
      });
      return;
    }
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

  function bytes(body) {
    return typeof TextEncoder === "function" ? new TextEncoder().encode(body).length
      : body.length * 3;
  }

  // Leaving a page, Chromium fires pagehide before visibilitychange: the beacon sent at pagehide
  // holds what was queued by then; web-vitals then reports LCP, CLS and INP from its capturing
  // visibilitychange listener, before the one here sends them.
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") flush();
  });
  window.addEventListener("pagehide", flush);
})();
