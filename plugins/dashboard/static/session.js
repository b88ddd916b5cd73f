// A session page: its live events over SSE, with pause/resume and "show more".
"use strict";

const table = document.getElementById("feed");
const body = table.querySelector("tbody");
const PREVIEW = Number(table.dataset.preview);
const MAX_ROWS = 1000;      // rows kept on the page (oldest removed first)
const MAX_HELD = 5000;      // rows held while paused (beyond: counted, not kept)
let paused = false;
let held = [];
let heldDropped = 0;

function payloadCell(data) {
  const pre = el("pre", {class: "payload"});
  const cell = el("td", {}, [pre]);
  if (data.payload.length <= PREVIEW) {
    pre.textContent = data.payload;
  } else {
    pre.textContent = data.payload.slice(0, PREVIEW) + "…";
    const more = el("button", {type: "button", class: "more", "aria-expanded": "false",
      text: `Show more (${data.payload.length} characters)`});
    more.addEventListener("click", () => {
      const open = more.getAttribute("aria-expanded") === "true";
      pre.textContent = open ? data.payload.slice(0, PREVIEW) + "…" : data.payload;
      more.setAttribute("aria-expanded", String(!open));
      more.textContent = open ? `Show more (${data.payload.length} characters)` : "Show less";
    });
    cell.append(more);
  }
  if (data.truncated) {
    cell.append(el("p", {class: "cut", text: `Cut at ${data.payload.length} characters ` +
                         `(the payload has ${data.size} bytes).`}));
  }
  return cell;
}

function eventRow(data) {
  return el("tr", {class: "event"}, [
    el("td", {text: String(data.seq)}), el("td", {text: data.kind}),
    el("td", {text: data.time}), payloadCell(data)]);
}

function gapRow(data) {
  return el("tr", {class: "gap"}, [el("td", {colspan: "4"}, [
    el("strong", {text: "Gap "}), el("span", {class: "reason", text: data.reason}),
    ` ${data.text}`])]);
}

function add(rowNode) {
  if (paused) {
    if (held.length < MAX_HELD) held.push(rowNode); else heldDropped += 1;
    setStatus(`Paused: ${held.length + heldDropped} new rows waiting.`);
    return;
  }
  body.append(rowNode);
  while (body.children.length > MAX_ROWS) body.firstElementChild.remove();
}

const pause = document.getElementById("pause");
pause.addEventListener("click", () => {
  paused = !paused;
  pause.setAttribute("aria-pressed", String(paused));
  pause.textContent = paused ? "Resume" : "Pause";
  if (!paused) {
    const waiting = held;
    held = [];
    if (heldDropped) {
      waiting.unshift(gapRow({reason: "PAUSED", text: `${heldDropped} rows not kept while paused.`}));
      heldDropped = 0;
    }
    for (const node of waiting) add(node);
    setStatus("Live.");
  } else {
    setStatus("Paused.");
  }
});

liveStream(`/sessions/${encodeURIComponent(table.dataset.session)}/events`, {
  liveText: "Live.",
  on: {
    event: (data) => add(eventRow(data)),
    gap: (data) => add(gapRow(data)),
    ended: (data, source) => {
      source.close();
      document.getElementById("state").textContent = "ENDED";
      setStatus(data.text, true);
    },
  },
});
