// Live parts of a console page. Each element with data-fragment="<name>" and data-streams="<stream> ..."
// is fetched again from /console/fragments/<name> when an event of one of its streams arrives on /ws
// (signed in by the session cookie). The page works without this: it is only fresher with it.
// While subscribed, <html data-live="on">. Each time the subscriptions are confirmed (at first, and after
// a drop, reconnecting with backoff) every part is fetched once: events sent before were missed.
"use strict";

(() => {
  const parts = Array.from(document.querySelectorAll("[data-fragment]"));
  if (parts.length === 0 || !("WebSocket" in window)) {
    return;
  }
  const streamsOf = (part) => (part.dataset.streams || "").split(/\s+/).filter(Boolean);
  const streams = new Set(parts.flatMap(streamsOf));
  const due = new Set();
  const FIRST_DELAY_MS = 1000;
  const MOST_DELAY_MS = 30000;
  const SETTLE_MS = 150; // events come in bursts (provisioning, running): one fetch for the burst
  let delay = FIRST_DELAY_MS;
  let timer = null;

  async function refresh(part) {
    const response = await fetch(`/console/fragments/${encodeURIComponent(part.dataset.fragment)}`, {
      credentials: "same-origin",
      redirect: "manual", // signed out: the socket closes too, and the page stays as it was
      headers: { Accept: "text/html" },
    });
    if (response.status !== 200) {
      return;
    }
    const html = await response.text();
    const focused = part.contains(document.activeElement) ? document.activeElement.id : "";
    part.innerHTML = html;
    const again = focused && document.getElementById(focused);
    if (again) {
      again.focus(); // a keyboard user keeps their place
    }
  }

  async function flush() {
    timer = null;
    const now = Array.from(due);
    due.clear();
    for (const part of now) {
      try {
        await refresh(part);
      } catch (error) {
        due.add(part); // the network blinked: try again with the next event or reconnection
      }
    }
  }

  function schedule(changed) {
    for (const part of changed) {
      due.add(part);
    }
    if (timer === null) {
      timer = window.setTimeout(flush, SETTLE_MS);
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${window.location.host}/ws`);
    const waiting = new Set(streams);
    socket.addEventListener("open", () => {
      for (const stream of streams) {
        socket.send(JSON.stringify({ type: "subscribe", stream }));
      }
    });
    socket.addEventListener("message", (message) => {
      let body;
      try {
        body = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (body.type === "event") {
        schedule(parts.filter((part) => streamsOf(part).includes(body.stream)));
      } else if (body.type === "subscribed") {
        waiting.delete(body.stream);
        if (waiting.size === 0) {
          delay = FIRST_DELAY_MS;
          document.documentElement.dataset.live = "on";
          schedule(parts); // whatever changed between rendering the page and subscribing
        }
      }
    });
    socket.addEventListener("close", (event) => {
      document.documentElement.dataset.live = "off";
      if (event.code === 4401) {
        return; // signed out or the session ended: nothing to reconnect as
      }
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, MOST_DELAY_MS);
    });
  }

  connect();
})();
