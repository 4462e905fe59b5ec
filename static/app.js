// Spool's page glue: htmx settings, SSE resume cursors, the "reconnecting…" badge, the polling
// fallback, error toasts and Enter-to-send. Pages work without it; it only makes them live.
(function () {
  "use strict";
  if (typeof htmx === "undefined") return;

  // No eval: hx-on and js: values stay off, so injected attributes cannot run code.
  htmx.config.allowEval = false;
  htmx.config.allowScriptTags = false;
  // A 422 carries a re-rendered form with the server's message next to the field: swap it.
  htmx.config.responseHandling = [
    { code: "204", swap: false },
    { code: "[23]..", swap: true },
    { code: "422", swap: true, error: false },
    { code: "[45]..", swap: false, error: true },
  ];

  const POLL_MS = 2000;
  const ERRORS_BEFORE_POLLING = 4;

  function badge(show) {
    const b = document.getElementById("conn");
    if (b) b.hidden = !show;
  }

  function toast(text) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const t = document.createElement("div");
    t.className = "toast";
    t.textContent = text;
    box.appendChild(t);
    setTimeout(() => t.remove(), 8000);
  }

  // Keeps the resume point in the sse-connect URL, so a stream the extension has to re-create
  // (after the browser gave up on it) resumes where this page left off instead of replaying.
  function remember(source, id) {
    if (!id) return;
    source.dataset.cursor = id;
    const raw = source.getAttribute("sse-connect");
    if (!raw) return;
    const url = new URL(raw, location.href);
    url.searchParams.set("after", id);
    source.setAttribute("sse-connect", url.pathname + url.search);
  }

  document.addEventListener("htmx:sseMessage", (e) => {
    const source = e.target.closest("[sse-connect]");
    if (source && e.detail && e.detail.lastEventId) remember(source, e.detail.lastEventId);
  });
  document.addEventListener("htmx:sseOpen", (e) => {
    e.target.dataset.errors = "0";
    badge(false);
  });
  // A stream the page closed on purpose (the job finished) or a removed element is no outage.
  document.addEventListener("htmx:sseClose", () => badge(false));
  document.addEventListener("htmx:sseError", (e) => {
    const source = e.target;
    if (!source.isConnected) return;
    badge(true);
    const n = Number(source.dataset.errors || "0") + 1;
    source.dataset.errors = String(n);
    if (n >= ERRORS_BEFORE_POLLING) startPolling(source);
  });

  // Without SSE (a proxy that buffers, or no EventSource), ask the same endpoint for the
  // fragments after our cursor every few seconds and apply them the same way.
  function startPolling(source) {
    if (source.dataset.polling === "1") return;
    source.dataset.polling = "1";
    const url = new URL(source.getAttribute("sse-connect"), location.href);
    const internal = htmx.closest(source, "[sse-connect]");
    if (internal && internal["htmx-internal-data"] && internal["htmx-internal-data"].sseEventSource) {
      internal["htmx-internal-data"].sseEventSource.close();
    }
    source.removeAttribute("sse-connect");
    const sink = source.querySelector("[sse-swap]") || source;
    async function tick() {
      try {
        if (source.dataset.cursor) url.searchParams.set("after", source.dataset.cursor);
        const res = await fetch(url, { headers: { Accept: "text/html", "X-Spool-Poll": "1" } });
        if (res.ok) {
          badge(false);
          const cursor = res.headers.get("Spool-Cursor");
          const html = await res.text();
          if (html.trim()) htmx.swap(sink, html, { swapStyle: "none" });
          if (cursor) source.dataset.cursor = cursor;
          if (res.headers.get("Spool-Done") === "1") return;
        } else {
          badge(true);
        }
      } catch (_) {
        badge(true);
      }
      setTimeout(tick, POLL_MS);
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (typeof EventSource === "undefined") {
      document.querySelectorAll("[sse-connect]").forEach(startPolling);
    }
  });

  // A failed htmx request that swaps nothing still tells the user why.
  document.addEventListener("htmx:responseError", (e) => {
    const xhr = e.detail.xhr;
    const doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    const msg = doc.querySelector(".error-text, .field-error");
    toast(msg ? msg.textContent : "The server answered " + xhr.status + ".");
  });
  document.addEventListener("htmx:sendError", () => toast("The server could not be reached."));

  // Enter sends, Shift+Enter adds a line.
  document.addEventListener("keydown", (e) => {
    const box = e.target;
    if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
    if (!(box instanceof HTMLTextAreaElement) || !box.hasAttribute("data-enter-submits")) return;
    e.preventDefault();
    if (box.value.trim() && box.form) box.form.requestSubmit();
  });
})();
