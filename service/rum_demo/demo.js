/* The demo pages' own view of the web vitals: the values Google's web-vitals library reports
 * in this page (the same library rum.js loads), kept in localStorage under
 * "web-vitals:<path>" and printed to the console, so they can be compared with what the
 * beacon delivered (/metrics, and the service's log for a poor value). */
(function () {
  "use strict";
  var key = "web-vitals:" + location.pathname;

  function store(metric) {
    var seen = JSON.parse(localStorage.getItem(key) || "{}");
    (seen[metric.name] = seen[metric.name] || []).push(metric.value);
    localStorage.setItem(key, JSON.stringify(seen));
    console.log("web-vitals", metric.name, metric.value, metric.rating, metric.navigationType);
  }

  addEventListener("pageshow", function (event) {
    if (event.persisted) store({ name: "restored", value: performance.now() });
  });

  (function register() {
    var vitals = window.webVitals;
    if (!vitals) return setTimeout(register, 10);
    [vitals.onFCP, vitals.onLCP, vitals.onCLS, vitals.onINP, vitals.onTTFB].forEach(
      function (on) { on(store); }
    );
  })();
})();
