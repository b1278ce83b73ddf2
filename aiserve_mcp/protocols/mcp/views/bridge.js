// The MCP Apps bridge (extension io.modelcontextprotocol/ui, spec 2026-01-26): JSON-RPC 2.0 over
// postMessage with the host that renders this view. The view asks ui/initialize, confirms with
// ui/notifications/initialized, then draws each ui/notifications/tool-result the host sends.
"use strict";

const McpView = (() => {
  const PROTOCOL_VERSION = "2026-01-26";
  const host = window.parent;
  const pending = new Map();
  let nextId = 1;
  let locale;
  let lastSize = "";

  const send = (message) => host.postMessage({ jsonrpc: "2.0", ...message }, "*");
  const notify = (method, params) => send({ method, params });

  function request(method, params) {
    const id = nextId++;
    send({ id, method, params });
    return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  }

  // An element with a class and text (never HTML: tool results carry provider-supplied strings).
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function usd(value, digits) {
    if (typeof value !== "number") return "-";
    return new Intl.NumberFormat(locale, {
      style: "currency",
      currency: "USD",
      minimumFractionDigits: 2,
      maximumFractionDigits: digits || 2,
    }).format(value);
  }

  function status(text, kind) {
    const line = document.getElementById("status");
    line.textContent = text;
    line.className = kind ? `status ${kind}` : "status";
    line.hidden = !text;
  }

  function applyContext(context) {
    if (!context) return;
    if (context.locale) locale = context.locale;
    if (context.theme === "light" || context.theme === "dark") {
      document.documentElement.style.colorScheme = context.theme;
    }
    const variables = (context.styles && context.styles.variables) || {};
    for (const [name, value] of Object.entries(variables)) {
      if (name.startsWith("--") && typeof value === "string") {
        document.documentElement.style.setProperty(name, value);
      }
    }
  }

  const textOf = (result) => ((result.content || []).find((block) => block && block.type === "text") || {}).text;

  // A tool result's data: its structuredContent, else the JSON of its first text block.
  function dataOf(result) {
    const data = result.structuredContent;
    return data && typeof data === "object" ? data : JSON.parse(textOf(result));
  }

  // A refusal's message: the "error" of the error body in its text, else the text itself.
  function errorOf(result) {
    const text = textOf(result) || "The tool call was refused.";
    try {
      return JSON.parse(text).error || text;
    } catch {
      return text;
    }
  }

  function showResult(params, render) {
    const view = document.getElementById("view");
    const result = params || {};
    if (result.isError) {
      view.replaceChildren();
      status(errorOf(result), "error");
      return;
    }
    try {
      view.replaceChildren(render(dataOf(result), { el, usd }));
      status("");
    } catch (error) {
      status(`This result cannot be shown: ${error.message}`, "error");
    }
  }

  function reportSize() {
    const width = Math.ceil(document.documentElement.scrollWidth);
    const height = Math.ceil(document.body.getBoundingClientRect().height);
    const size = `${width}x${height}`;
    if (size === lastSize) return;
    lastSize = size;
    notify("ui/notifications/size-changed", { width, height });
  }

  function answer(message) {
    const known = message.method === "ui/resource-teardown" || message.method === "ping";
    send(
      known
        ? { id: message.id, result: {} }
        : { id: message.id, error: { code: -32601, message: `Method not found: ${message.method}` } },
    );
  }

  // Start the view: `render(data, helpers)` returns the node that shows one tool result's data.
  function start(name, render) {
    window.addEventListener("message", (event) => {
      const message = event.data;
      if (event.source !== host || !message || message.jsonrpc !== "2.0") return;
      if (message.method === undefined) {
        const waiter = pending.get(message.id);
        if (!waiter) return;
        pending.delete(message.id);
        if (message.error) waiter.reject(new Error(message.error.message));
        else waiter.resolve(message.result || {});
      } else if (message.id !== undefined) {
        answer(message);
      } else if (message.method === "ui/notifications/tool-result") {
        showResult(message.params, render);
      } else if (message.method === "ui/notifications/tool-input") {
        status("Waiting for the result…");
      } else if (message.method === "ui/notifications/tool-cancelled") {
        status(`Cancelled${message.params && message.params.reason ? `: ${message.params.reason}` : ""}.`, "error");
      } else if (message.method === "ui/notifications/host-context-changed") {
        applyContext(message.params);
      }
    });
    request("ui/initialize", {
      appInfo: { name, version: "1.0.0" },
      appCapabilities: { availableDisplayModes: ["inline"] },
      protocolVersion: PROTOCOL_VERSION,
    }).then(
      (result) => {
        applyContext(result.hostContext);
        notify("ui/notifications/initialized", {});
        new ResizeObserver(reportSize).observe(document.body);
      },
      (error) => status(`The host refused this view: ${error.message}`, "error"),
    );
  }

  return { start };
})();
