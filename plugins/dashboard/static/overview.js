// The overview: the session table and the alarms strip, kept live over SSE.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function formatAge(s) {  // as render.format_age
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${pad(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${pad(Math.floor(s % 3600 / 60))} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor(s % 86400 / 3600)} h`;
}

function sparkline(rate) {
  const width = 120, height = 24, top = Math.max(1, ...rate);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("role", "img");
  const now = rate.length ? rate[rate.length - 1] : 0;
  svg.setAttribute("aria-label", `events per second over the last minute: now ${now}, ` +
                   `peak ${Math.max(0, ...rate)}`);
  const line = document.createElementNS(SVG, "polyline");
  const step = width / Math.max(1, rate.length - 1);
  line.setAttribute("points", rate.map((v, i) =>
    `${(i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`).join(" "));
  svg.append(line);
  const cell = el("span", {class: "spark"}, [svg, el("span", {class: "now", text: `${now}/s`})]);
  return cell;
}

function row(s) {
  const cells = [
    el("td", {}, [el("a", {href: `/sessions/${encodeURIComponent(s.id)}`, text: s.id})]),
    el("td", {}, [el("span", {class: `state state-${s.state.toLowerCase()}`, text: s.state})]),
    el("td", {text: s.tag}), el("td", {text: s.backend}), el("td", {text: s.client}),
    el("td", {text: s.owner}), el("td", {text: String(s.subscribers)}),
    el("td", {text: String(s.last_sequence)}), el("td", {text: formatAge(s.age)}),
    el("td", {class: "rate"}, [sparkline(s.rate)]),
  ];
  return el("tr", {"data-id": s.id}, cells);
}

function showSnapshot(snapshot) {
  const body = document.querySelector("#sessions tbody");
  const rows = snapshot.sessions.map(row);
  if (!rows.length) {
    rows.push(el("tr", {class: "none"}, [el("td", {colspan: "10",
      text: "No session you may see is open."})]));
  }
  body.replaceChildren(...rows);
}

function showAlarm(alarm) {
  const list = document.getElementById("alarms");
  if (list.querySelector(`[data-id="${alarm.id}"]`)) return;  // sent again on reconnect
  document.getElementById("no-alarms")?.remove();
  const time = new Date(alarm.at * 1000).toLocaleTimeString();
  list.prepend(el("li", {class: `alarm alarm-${alarm.kind}`, "data-id": String(alarm.id)},
    [el("span", {class: "kind", text: alarm.kind}), ` ${time} ${alarm.text}`]));
  while (list.children.length > 50) list.lastElementChild.remove();
}

liveStream("/events", {
  liveText: "Live.",
  on: {snapshot: showSnapshot, alarm: showAlarm},
});
