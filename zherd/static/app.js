// The live herd page: draws the view the dashboard pushes over Server-Sent Events.
// Servers sit on a circle, links are lines; every element carries data-state
// (up, starting, down, unknown), which the stylesheet colours and tests read.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640, HEIGHT = 560, RADIUS = 54;
const STALE_AFTER_MS = 3000; // no view for this long: the page says so

const count = new Intl.NumberFormat("en-US");
const decimal = new Intl.NumberFormat("en-US", { maximumFractionDigits: 1 });

let drawn = ""; // the layout the graph was drawn for
let nodes = new Map(); // name -> {g, x, y, texts}
let edges = new Map(); // "a|b" -> {g, line, rect, text}
let lastView = 0;

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function html(tag, attrs, text) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function perSecond(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? count.format(Math.round(value)) : decimal.format(value);
}

function milliseconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const ms = seconds * 1000;
  return ms < 1 ? `≤ ${decimal.format(ms * 1000)} µs` : `≤ ${decimal.format(ms)} ms`;
}

function uptime(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${String(Math.floor(s % 86400 / 3600)).padStart(2, "0")}h`;
}

function sum(values) {
  const known = values.filter((v) => v !== null && v !== undefined);
  return known.length ? known.reduce((a, b) => a + b, 0) : null;
}

// Lay the servers out on a circle in the view's order (the dashboard chose it so that
// few links cross), first one at the top, and make one element each.
function layout(view) {
  const linksLayer = document.getElementById("links");
  const serversLayer = document.getElementById("servers");
  linksLayer.replaceChildren();
  serversLayer.replaceChildren();
  nodes = new Map();
  edges = new Map();
  const order = view.layout || view.servers.map((s) => s.name);
  const n = order.length;
  const ring = n === 1 ? 0 : Math.min(WIDTH, HEIGHT) / 2 - RADIUS - 16;
  const spots = order.map((_, i) => {
    const angle = -Math.PI / 2 + (2 * Math.PI * i) / n;
    return [ring * Math.cos(angle), ring * Math.sin(angle)];
  });
  const ys = spots.map(([, y]) => y); // a pentagon is taller above its centre: centre the box
  const shift = HEIGHT / 2 - (Math.min(...ys) + Math.max(...ys)) / 2;
  order.forEach((name, i) => {
    const x = WIDTH / 2 + spots[i][0];
    const y = shift + spots[i][1];
    const g = svg("g", { class: "server", "data-server": name }, serversLayer);
    svg("circle", { class: "ring", cx: x, cy: y, r: RADIUS }, g);
    svg("text", { class: "name", x, y: y - 8 }, g).textContent = name;
    const clients = svg("text", { class: "clients", x, y: y + 10 }, g);
    const detail = svg("text", { class: "detail", x, y: y + 27 }, g);
    const title = svg("title", {}, g);
    nodes.set(name, { g, x, y, clients, detail, title });
  });
  for (const link of view.links) {
    const a = nodes.get(link.a), b = nodes.get(link.b);
    if (!a || !b) continue;
    const g = svg("g", { class: "link", "data-link": `${link.a}|${link.b}`, "data-a": link.a,
      "data-b": link.b }, linksLayer);
    svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y }, g);
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    const rect = svg("rect", { x: mx - 50, y: my - 11, width: 100, height: 22, rx: 11 }, g);
    const text = svg("text", { x: mx, y: my + 4, "text-anchor": "middle" }, g);
    const title = svg("title", {}, g);
    edges.set(`${link.a}|${link.b}`, { g, rect, text, title, mx });
  }
  drawn = layoutKey(view);
}

function layoutKey(view) {
  return JSON.stringify([view.layout, view.links.map((l) => [l.a, l.b])]);
}

function label(edge, words) {
  if (edge.text.textContent === words) return;
  edge.text.textContent = words;
  const width = edge.text.getComputedTextLength() + 22;
  edge.rect.setAttribute("width", width);
  edge.rect.setAttribute("x", edge.mx - width / 2);
}

function drawGraph(view) {
  if (layoutKey(view) !== drawn) layout(view);
  for (const server of view.servers) {
    const node = nodes.get(server.name);
    node.g.setAttribute("data-state", server.state);
    node.clients.textContent = server.clients === null ? server.state
      : `${count.format(server.clients)} clients`;
    node.detail.textContent = server.state === "up"
      ? `${perSecond(server.rates.iamat)} IAMAT/s` : server.reason || server.state;
    node.title.textContent = `${server.name} (${server.address}): ${server.state}` +
      (server.pid ? `, pid ${server.pid}` : "");
  }
  for (const link of view.links) {
    const edge = edges.get(`${link.a}|${link.b}`);
    if (!edge) continue;
    edge.g.setAttribute("data-state", link.state);
    const lag = Math.max(...Object.values(link.lag).filter((v) => v !== null), 0);
    const rate = sum(Object.values(link.rate));
    label(edge, link.state === "up" ? `${perSecond(rate)}/s · lag ${count.format(lag)}`
      : link.state);
    edge.title.textContent = `${link.a} ↔ ${link.b}: ${link.state}`;
  }
}

function drawTables(view) {
  const servers = document.querySelector("#server-table tbody");
  servers.replaceChildren(...view.servers.map((s) => {
    const tr = html("tr", { "data-server": s.name, "data-state": s.state });
    const up = s.state === "up";
    tr.append(
      html("td", {}, s.name),
      html("td", { class: "state", "data-state": s.state },
        up ? "up" : `${s.state}${s.reason ? ` (${s.reason})` : ""}`),
      html("td", { class: "n" }, s.clients === null ? "–" : count.format(s.clients)),
      html("td", { class: "n" }, s.connections === null ? "–" : count.format(s.connections)),
      html("td", { class: "n" }, perSecond(s.rates.iamat)),
      html("td", { class: "n" }, perSecond(s.rates.whatsat)),
      html("td", { class: "n" }, perSecond(s.rates.applied)),
      html("td", { class: "n" }, milliseconds(s.p99_s.iamat)),
      html("td", { class: "n" }, uptime(s.uptime_s)),
    );
    return tr;
  }));
  const links = document.querySelector("#link-table tbody");
  links.replaceChildren(...view.links.map((link) => {
    const tr = html("tr", { "data-link": `${link.a}|${link.b}`, "data-state": link.state });
    const ab = `${link.a}->${link.b}`, ba = `${link.b}->${link.a}`;
    const show = (v) => (v === null || v === undefined ? "–" : count.format(v));
    tr.append(
      html("td", {}, `${link.a} ⇄ ${link.b}`),
      html("td", { class: "state", "data-state": link.state }, link.state),
      html("td", { class: "n" }, perSecond(link.rate[ab])),
      html("td", { class: "n" }, perSecond(link.rate[ba])),
      html("td", { class: "n" }, show(link.lag[ab])),
      html("td", { class: "n" }, show(link.lag[ba])),
    );
    return tr;
  }));
}

function drawSummary(view) {
  const s = view.summary;
  const servers = document.getElementById("servers-badge");
  servers.textContent = `${s.up}/${s.servers} servers up`;
  servers.setAttribute("data-state", s.up === s.servers ? "up" : "down");
  const links = document.getElementById("links-badge");
  links.textContent = `${s.links_up}/${s.links} links up`;
  links.setAttribute("data-state", s.links_up === s.links ? "up" : "down");
  document.getElementById("title").textContent =
    `herd of ${s.servers} server${s.servers === 1 ? "" : "s"}`;
}

function render(view) {
  lastView = Date.now();
  drawGraph(view);
  drawTables(view);
  drawSummary(view);
  document.body.setAttribute("data-stream", "live");
  document.body.setAttribute("data-updated", String(view.at));
  document.getElementById("stream-badge").textContent = "live";
}

function watch() {
  const source = new EventSource("events");
  source.onmessage = (event) => render(JSON.parse(event.data));
  source.onerror = () => {
    document.body.setAttribute("data-stream", "lost");
    document.getElementById("stream-badge").textContent = "dashboard unreachable, retrying…";
  };
  setInterval(() => {
    if (lastView && Date.now() - lastView > STALE_AFTER_MS &&
        document.body.getAttribute("data-stream") === "live") {
      document.body.setAttribute("data-stream", "lost");
      document.getElementById("stream-badge").textContent =
        `no update for ${Math.round((Date.now() - lastView) / 1000)} s`;
    }
  }, 1000);
}

watch();
