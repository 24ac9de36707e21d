// Sessions and exports: new, save, open (from the sessions directory or a file the user picks),
// and downloads of the session JSON, the single-file HTML snapshot (both made by the UI server)
// and a PNG of the view (drawn here from the transcript as it is shown, with its legend).

import { rampColours } from "./palette.js";

export function download(filename, blob) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

export class SessionsPanel {
  constructor(el, { send, onError }) {
    this.el = el;
    this.send = send;
    this.onError = onError;
    el.newChat.addEventListener("click", () => send({ type: "new" }));
    el.save.addEventListener("click", () => {
      const name = el.name.value.trim();
      if (name) send({ type: "save", name });
    });
    el.upload.addEventListener("change", () => this.upload(false));
    el.exportSession.addEventListener("click", () => send({ type: "export", format: "session" }));
    el.exportHtml.addEventListener("click", () => send({ type: "export", format: "html" }));
    el.panel.addEventListener("toggle", () => { if (el.panel.open) send({ type: "sessions" }); });
  }

  async upload(force) {
    const file = this.el.upload.files[0];
    if (!file) return;
    let session;
    try {
      session = JSON.parse(await file.text());
    } catch (error) {
      this.onError(`${file.name} is not a session file: ${error.message}`);
      return;
    }
    this.send({ type: "upload", session, name: file.name.replace(/\.json$/, ""), force });
  }

  list(message) {
    this.el.dir.textContent = `saved in ${message.directory}`;
    this.el.list.replaceChildren();
    for (const item of message.sessions) {
      const li = document.createElement("li");
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = `${item.name} — ${new Date(item.modified * 1000).toLocaleString()}`;
      const open = document.createElement("button");
      open.type = "button";
      open.textContent = "Open";
      open.addEventListener("click", () => this.send({ type: "open", name: item.name }));
      li.append(text, open);
      this.el.list.append(li);
    }
  }

  exported(message) {
    const type = message.format === "html" ? "text/html" : "application/json";
    download(message.filename, new Blob([message.content], { type }));
  }
}

/** Lines of `text` that fit `width` in the context's font. */
function wrap(ctx, text, width) {
  const lines = [];
  let line = "";
  for (const word of text.split(/\s+/)) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      lines.push(line);
      line = word;
    } else {
      line = next;
    }
  }
  if (line) lines.push(line);
  return lines;
}

/** The view as a PNG, as it is shown: the legend of its colours (the brightness scale, or the
 * inspector's attention while it is open) above each visible token's text on its background,
 * wrapped like prose, pruned text shown inline struck through as on the page. */
export function exportPng(root, filename, legend) {
  const width = 1200, pad = 16, lineHeight = 22, font = "15px system-ui, sans-serif";
  const legendFont = "12px system-ui, sans-serif";
  const measure = document.createElement("canvas").getContext("2d");
  const ops = [];
  let x = pad, y = pad;
  // the legend: the ramp, its ends, and what it means
  const colours = rampColours(legend.prefix);
  const barWidth = 384, cell = barWidth / colours.length;
  colours.forEach((colour, i) => ops.push({ rect: colour, x: pad + i * cell, y, w: cell + 0.5, h: 12 }));
  y += 16;
  ops.push({ small: legend.low, x: pad, y, align: "left" });
  ops.push({ small: legend.mode, x: pad + barWidth / 2, y, align: "center" });
  ops.push({ small: legend.high, x: pad + barWidth, y, align: "right" });
  y += 16;
  measure.font = legendFont;
  for (const line of wrap(measure, legend.text, width - 2 * pad)) {
    ops.push({ small: line, x: pad, y, align: "left" });
    y += 16;
  }
  y += 10;
  measure.font = font;
  for (const turn of root.querySelectorAll(".turn")) {
    if (getComputedStyle(turn).display === "none") continue;
    if (x > pad) { x = pad; y += lineHeight; }
    ops.push({ label: turn.querySelector(".who").textContent, x: pad, y });
    y += 16;
    for (const span of turn.querySelectorAll(".tok")) {
      const style = getComputedStyle(span);
      if (style.display === "none") continue;
      const strike = style.textDecorationLine.includes("line-through");
      const parts = span.textContent.split("\n");
      parts.forEach((part, index) => {
        if (index > 0) { x = pad; y += lineHeight; }
        if (!part) return;
        const w = measure.measureText(part).width;
        if (x + w > width - pad && x > pad) { x = pad; y += lineHeight; }
        ops.push({ text: part, x, y, w, bg: style.backgroundColor, fg: style.color, strike });
        x += w;
      });
    }
    x = pad;
    y += lineHeight + 8;
  }
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = y + pad;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#101217";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.textBaseline = "top";
  for (const op of ops) {
    if (op.rect !== undefined) {
      ctx.fillStyle = op.rect;
      ctx.fillRect(op.x, op.y, op.w, op.h);
    } else if (op.small !== undefined) {
      ctx.font = legendFont;
      ctx.fillStyle = "#9aa0aa";
      ctx.textAlign = op.align;
      ctx.fillText(op.small, op.x, op.y);
      ctx.textAlign = "left";
    } else if (op.label !== undefined) {
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#8a8f98";
      ctx.fillText(op.label.toUpperCase(), op.x, op.y);
    } else {
      ctx.font = font;
      ctx.fillStyle = op.bg;
      ctx.fillRect(op.x, op.y, op.w, lineHeight - 2);
      ctx.fillStyle = op.fg;
      ctx.fillText(op.text, op.x, op.y + 2);
      if (op.strike) ctx.fillRect(op.x, op.y + 11, op.w, 2);
    }
  }
  canvas.toBlob((blob) => download(filename, blob), "image/png");
}
