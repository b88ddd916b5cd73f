// Shared by the dashboard's pages: small DOM helpers (text only, never markup).
"use strict";

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children || []) node.append(child);
  return node;
}

function setStatus(text, problem) {
  const status = document.getElementById("feed-status");
  status.textContent = text;
  status.classList.toggle("problem", Boolean(problem));
}

// An EventSource that says when it is live, reconnecting, or closed for good.
function liveStream(url, handlers) {
  const source = new EventSource(url);
  source.onopen = () => setStatus(handlers.liveText || "Live.");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      setStatus("Disconnected: your sign-in may have ended. Reload the page.", true);
    } else {
      setStatus("Connection lost: reconnecting…", true);
    }
  };
  source.addEventListener("denied", (e) => {
    source.close();
    setStatus(JSON.parse(e.data).text + " ", true);
    document.getElementById("feed-status").append(el("a", {href: "/login", text: "Sign in"}));
  });
  for (const [name, handler] of Object.entries(handlers.on)) {
    source.addEventListener(name, (e) => handler(JSON.parse(e.data), source));
  }
  return source;
}
