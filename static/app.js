// Spool's page glue: htmx settings, SSE resume cursors, the "reconnecting…" badge, the polling
// fallback, error toasts, Enter-to-send and file uploads on the chat page. Pages work without
// it; it only makes them live (and attaching files needs it).
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

  // The chat page's background panel (#subagents) polls itself only while a subagent in it is
  // unfinished. A new spawn first shows in the chat's live feed (a subagent tool's call or
  // result), so such a fragment asks an idle panel to refresh. Bursts of fragments coalesce into
  // one request that starts after the last of them, so it sees what they announced.
  let subagentsTimer = null;
  function subagentsSaw(html) {
    if (subagentsTimer || typeof html !== "string" || !html.includes("subagent")) return;
    const panel = document.getElementById("subagents");
    if (!panel || panel.dataset.live === "1") return;
    subagentsTimer = setTimeout(() => {
      subagentsTimer = null;
      const p = document.getElementById("subagents");
      if (p && p.dataset.live !== "1") htmx.trigger(p, "subagents-refresh");
    }, 300);
  }
  document.addEventListener("htmx:sseMessage", (e) => subagentsSaw(e.detail && e.detail.data));
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
          subagentsSaw(html);
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

  // Enter sends, Shift+Enter adds a line. A message of attached files alone may be sent too.
  document.addEventListener("keydown", (e) => {
    const box = e.target;
    if (e.key !== "Enter" || e.shiftKey || e.isComposing) return;
    if (!(box instanceof HTMLTextAreaElement) || !box.hasAttribute("data-enter-submits")) return;
    e.preventDefault();
    const form = box.form;
    if (!form) return;
    if (box.value.trim() || form.querySelector("#attached .chip[data-id]")) form.requestSubmit();
  });

  // Attachments: each picked or dropped file is uploaded at once, with the CSRF header the page
  // gives htmx; the composer's hidden field then carries the ids of those that arrived.
  function csrfToken() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}")["X-CSRF-Token"] || "";
    } catch (_) {
      return "";
    }
  }

  function syncAttached(form) {
    const ids = Array.from(form.querySelectorAll("#attached .chip[data-id]")).map((c) => c.dataset.id);
    const field = form.querySelector("#attachments");
    if (field) field.value = ids.join(",");
  }

  function removeButton(name) {
    const x = document.createElement("button");
    x.type = "button";
    x.className = "chip-x";
    x.setAttribute("aria-label", "Remove " + name);
    x.textContent = "×";
    return x;
  }

  async function uploadFile(form, file) {
    const list = form.querySelector("#attached");
    if (!list || !form.dataset.upload) return;
    const chip = document.createElement("li");
    chip.className = "chip uploading";
    chip.textContent = file.name + " · uploading…";
    list.appendChild(chip);
    const body = new FormData();
    body.append("file", file, file.name);
    try {
      const res = await fetch(form.dataset.upload, {
        method: "POST",
        body,
        credentials: "same-origin",
        headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
      });
      const data = await res.json().catch(() => null);
      if (!res.ok || !data || !data.attachment_id) {
        chip.remove();
        const why = data && data.error ? data.error.message : "the server answered " + res.status;
        toast(file.name + " was not attached: " + why + ".");
        return;
      }
      chip.className = "chip";
      chip.dataset.id = data.attachment_id;
      chip.textContent = data.name + " ";
      chip.appendChild(removeButton(data.name));
      syncAttached(form);
    } catch (_) {
      chip.remove();
      toast(file.name + " was not attached: the server could not be reached.");
    }
  }

  function uploadAll(form, files) {
    Array.from(files || []).forEach((f) => uploadFile(form, f));
  }

  document.addEventListener("change", (e) => {
    const input = e.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "file" || !input.form) return;
    if (input.form.id !== "composer") return;
    uploadAll(input.form, input.files);
    input.value = "";
  });

  document.addEventListener("click", (e) => {
    const x = e.target instanceof Element ? e.target.closest(".chip-x") : null;
    const form = x && x.closest("form");
    if (!x || !form) return;
    x.closest(".chip").remove();
    syncAttached(form);
  });

  document.addEventListener("dragover", (e) => {
    const form = e.target instanceof Element ? e.target.closest("#composer") : null;
    if (!form) return;
    e.preventDefault();
    form.classList.add("dropping");
  });
  document.addEventListener("dragleave", (e) => {
    const form = e.target instanceof Element ? e.target.closest("#composer") : null;
    if (form) form.classList.remove("dropping");
  });
  document.addEventListener("drop", (e) => {
    const form = e.target instanceof Element ? e.target.closest("#composer") : null;
    if (!form || !e.dataTransfer) return;
    e.preventDefault();
    form.classList.remove("dropping");
    uploadAll(form, e.dataTransfer.files);
  });

  // A message is not sent while its files are still uploading: they would be left out.
  document.addEventListener("htmx:confirm", (e) => {
    const form = e.target;
    if (form instanceof HTMLFormElement && form.querySelector("#attached .chip.uploading")) {
      e.preventDefault();
      toast("Wait until the files have finished uploading.");
    }
  });

  // Controls that need this script are hidden in the markup and shown here.
  function reveal(root) {
    root.querySelectorAll("[data-needs-js]").forEach((el) => {
      el.hidden = false;
    });
  }
  document.addEventListener("DOMContentLoaded", () => reveal(document));
  document.addEventListener("htmx:load", (e) => reveal(e.target));
})();
