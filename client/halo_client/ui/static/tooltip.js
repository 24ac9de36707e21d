// What the tooltip says about a token, and where it appears. Shared by the live page and the
// HTML snapshot (export.py inlines this file): `getInfo(position)` returns a promise of the
// token's details (from the UI server, or from the snapshot's embedded data).
// Built with DOM nodes and textContent only: token text is model output, never markup.

function fmt(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs >= 1e-3 && abs < 1e5 ? value.toPrecision(digits) : value.toExponential(2);
}

function visible(text) {
  return text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
}

export function tooltipRows(info) {
  const state = info.deleted ? `pruned (${info.reason})` : info.pinned ? "pinned" : "active";
  const sentence = info.template ? "template" : String(info.sentence);
  const latest = info.latest === null
    ? (info.peak === null ? "—" : "— (not in the latest token's context)") : fmt(info.latest);
  const peak = info.peak === null ? "—"
    : `${fmt(info.peak)} from #${info.peak_from}${info.peak_from_text !== null ? ` "${visible(info.peak_from_text)}"` : ""}`;
  return [
    ["token id", String(info.token_id)], ["position", String(info.position)],
    ["turn", `${info.turn} (${info.role})`], ["sentence", sentence], ["brightness", fmt(info.brightness)],
    ["attention from latest", latest], ["peak attention", peak], ["state", state],
  ];
}

export function fillTooltip(box, info) {
  box.replaceChildren();
  const piece = document.createElement("span");
  piece.className = "piece";
  piece.textContent = visible(info.label);
  box.append(piece);
  if (info.partial) box.append(" part of a character");
  const table = document.createElement("table");
  for (const [name, value] of tooltipRows(info)) {
    const row = table.insertRow();
    const th = document.createElement("th");
    th.textContent = name;
    row.append(th);
    row.insertCell().textContent = value;
  }
  box.append(table);
}

/** Below the token (above it where there is no room), inside `bounds` (the transcript's box):
 * the tooltip never covers the panels beside the transcript (the inspector's controls). */
export function placeTooltip(box, target, bounds = null) {
  const rect = target.getBoundingClientRect();
  const area = bounds ?? { left: 0, top: 0, right: window.innerWidth, bottom: window.innerHeight };
  box.hidden = false;
  const width = box.offsetWidth, height = box.offsetHeight;
  const right = Math.min(area.right, window.innerWidth) - 4;
  const bottom = Math.min(area.bottom, window.innerHeight) - 4;
  const left = Math.max(Math.max(area.left, 0) + 4, Math.min(rect.left, right - width));
  let top = rect.bottom + 6;
  if (top + height > bottom) top = rect.top - height - 6;
  box.style.left = `${left}px`;
  box.style.top = `${Math.max(Math.max(area.top, 0) + 4, top)}px`;
}

export function attachTooltip(container, box, getInfo) {
  let current = null;
  container.addEventListener("mouseover", (event) => {
    const target = event.target.closest ? event.target.closest(".tok") : null;
    if (!target || target === current) return;
    current = target;
    const position = Number(target.dataset.pos);
    getInfo(position).then((info) => {
      if (current !== target || !info) return;
      fillTooltip(box, info);
      placeTooltip(box, target, container.getBoundingClientRect());
    }, () => {});
  });
  container.addEventListener("mouseleave", () => { current = null; box.hidden = true; });
  container.addEventListener("mouseout", (event) => {
    const to = event.relatedTarget;
    if (!to || !to.closest || !to.closest(".tok")) { current = null; box.hidden = true; }
  });
}
