// mlsm status site: live updates over server-sent events. Without this script
// every page still shows the state as of its load.
//
// The page names its feed (body[data-live]) and the cursor it was rendered at
// (body[data-after]). A "changed" event refetches the page and swaps each
// [data-part] element for the new one; a "log" event appends lines to the log as
// text (never as HTML). A dropped connection is retried by the browser with
// Last-Event-ID; if the browser gives up (the controller was down), a new
// EventSource starts from the last cursor seen.
"use strict";
(function () {
  const body = document.body;
  const feed = body.dataset.live;
  if (!feed || !window.EventSource) return;
  const state = document.getElementById("live-state");
  let cursor = body.dataset.after || "";
  let source = null;
  let refreshing = false;
  let again = false;
  let last = 0;
  const SPACING = 2000;  // ms between refetches: a busy job changes many times a second

  function show(text, on) {
    if (!state) return;
    state.textContent = text;
    state.classList.toggle("on", on);
  }

  async function refresh() {
    if (refreshing) { again = true; return; }
    const wait = last + SPACING - Date.now();
    if (wait > 0) { refreshing = true; setTimeout(() => { refreshing = false; refresh(); }, wait); return; }
    refreshing = true;
    last = Date.now();
    try {
      const url = new URL(location.href);
      url.searchParams.set("parts", "1");
      const answer = await fetch(url, { headers: { accept: "text/html" } });
      if (answer.ok) {
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        for (const fresh of page.querySelectorAll("[data-part]")) {
          const old = document.querySelector('[data-part="' + fresh.dataset.part + '"]');
          if (old) old.replaceWith(document.importNode(fresh, true));
        }
      }
    } catch (error) {
      // the next change tries again
    } finally {
      refreshing = false;
      if (again) { again = false; setTimeout(refresh, 500); }
    }
  }

  function append(data) {
    const log = document.getElementById("log");
    if (!log) return;
    if (log.dataset.follow !== "1") return;
    if (log.dataset.run !== data.run) { location.reload(); return; }
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const chunk = document.createDocumentFragment();
    for (const [offset, text] of data.lines) {
      const line = document.createElement("span");
      line.dataset.offset = offset;
      line.textContent = text + "\n";
      chunk.appendChild(line);
    }
    log.appendChild(chunk);
    while (log.childElementCount > 5000) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const url = new URL(feed, location.href);
    if (cursor) url.searchParams.set("after", cursor);
    source = new EventSource(url);
    source.onopen = () => show("live", true);
    source.addEventListener("changed", (event) => {
      if (event.lastEventId) cursor = event.lastEventId;
      const data = JSON.parse(event.data);
      const log = document.getElementById("log");
      if (data.reload || (log && log.dataset.follow === "1" && data.run && log.dataset.run !== data.run)) {
        location.reload();
        return;
      }
      refresh();
    });
    source.addEventListener("log", (event) => {
      if (event.lastEventId) cursor = event.lastEventId;
      append(JSON.parse(event.data));
    });
    source.onerror = () => {
      show("reconnecting…", false);
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        setTimeout(connect, 2000);
      }
    };
  }

  const log = document.getElementById("log");
  if (log) log.scrollTop = log.scrollHeight;  // the newest lines in view
  connect();
})();
