// The Pruned list (every unit pruned now, newest first, each with Restore) and the Activity log
// (what was pruned and restored, and why).
//
// Both name text a person can act on. A message's template (<|im_start|>user ... <|im_end|>) is
// not an item of its own: it goes when its message's text is all gone and comes back with any
// of it, so it is folded into the line of the text it went with. A unit with no visible text
// (a blank line) is counted, not listed. The list shows the newest few (a chat pruned to a small
// budget can hold hundreds of units) in a box that scrolls, and "Show all" lists every one.

export const NEWEST_SHOWN = 12;
export const ACTIVITY_KEPT = 200;
/** More events than this from one change are one line, with the units in a fold. */
export const GROUPED_OVER = 3;

export function tokens(n) {
  return `${n.toLocaleString("en-US")} token${n === 1 ? "" : "s"}`;
}

function plural(n, word, words = `${word}s`) {
  return `${n.toLocaleString("en-US")} ${n === 1 ? word : words}`;
}

function pieces(n) {
  return plural(n, "template piece or blank line", "template pieces or blank lines");
}

function oneLine(text) {
  return text.replace(/\s+/g, " ").trim();
}

/** What a unit or an event is on the page: "text", "template" (only template tokens) or "blank". */
export function unitKind(unit, isTemplate) {
  if (unit.positions.length > 0 && unit.positions.every((p) => isTemplate(p))) return "template";
  return oneLine(unit.text) ? "text" : "blank";
}

export class PrunedList {
  constructor(el, { send, isTemplate }) {
    this.el = el; // { list, count, more, note }
    this.send = send;
    this.isTemplate = isTemplate;
    this.busy = false;
    this.all = false;
    this.units = [];
    this.hidden = 0;
    this.keys = new Set();
    el.more.addEventListener("click", () => { this.all = !this.all; this.draw(false); });
  }

  show(units, animate) {
    this.units = units.filter((u) => unitKind(u, this.isTemplate) === "text");
    this.hidden = units.length - this.units.length;
    this.draw(animate);
  }

  draw(animate) {
    const { list, count, more, note } = this.el;
    const shown = this.all ? this.units : this.units.slice(0, NEWEST_SHOWN);
    const keys = new Set();
    const items = shown.map((unit) => {
      const key = unit.positions[0];
      keys.add(key);
      const li = document.createElement("li");
      if (animate && !this.keys.has(key)) li.className = "arrive";
      li.dataset.position = String(key);
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = oneLine(unit.text);
      const why = document.createElement("div");
      why.className = "why";
      why.textContent = `${unit.kind} ${unit.unit}, turn ${unit.turn}, ${tokens(unit.positions.length)}` +
        `${unit.score === null ? "" : `, ${unit.ranked_by} ${unit.score.toPrecision(3)}`}`;
      text.append(why);
      const restore = document.createElement("button");
      restore.type = "button";
      restore.textContent = "Restore";
      restore.disabled = this.busy;
      restore.addEventListener("click", () => this.send({ type: "restore", position: key }));
      li.append(text, restore);
      return li;
    });
    list.replaceChildren(...items);
    this.keys = new Set(this.units.map((u) => u.positions[0]));
    count.textContent = String(this.units.length);
    more.hidden = this.units.length <= NEWEST_SHOWN;
    more.textContent = this.all ? `Show the newest ${NEWEST_SHOWN}` : `Show all ${this.units.length}`;
    note.hidden = !this.hidden;
    note.textContent = this.hidden
      ? `Also pruned: ${pieces(this.hidden)}, which come back with their message's text.`
      : "";
  }

  setBusy(busy) {
    this.busy = busy;
    for (const button of this.el.list.querySelectorAll("button")) button.disabled = busy;
  }
}

export class ActivityLog {
  constructor(list, { isTemplate }) {
    this.list = list;
    this.isTemplate = isTemplate;
  }

  /** The events of one change (a prune, a restore, a reply), newest line first. */
  log(events) {
    const lines = [];
    for (const action of ["kept", "restored", "pruned"]) {
      const mine = events.filter((e) => e.action === action);
      const text = mine.filter((e) => unitKind(e, this.isTemplate) === "text");
      const folded = mine.length - text.length;
      if (text.length === 0) continue;
      const templates = folded ? ` (with ${pieces(folded)})` : "";
      if (text.length > GROUPED_OVER) {
        const freed = text.reduce((sum, e) => sum + e.tokens, 0);
        const reasons = [...new Set(text.map((e) => e.reason).filter(Boolean))];
        const li = document.createElement("li");
        li.dataset.action = action;
        const fold = document.createElement("details");
        const summary = document.createElement("summary");
        summary.className = "text";
        summary.textContent = `${action}${reasons.length ? ` (${reasons.join("; ")})` : ""}: ` +
          `${plural(text.length, text[0].kind)}, ${tokens(freed)}${templates}`;
        const units = document.createElement("ol");
        for (const event of text) {
          const item = document.createElement("li");
          item.textContent = `${event.kind} ${event.unit}, ${tokens(event.tokens)}: ${oneLine(event.text)}`;
          units.append(item);
        }
        fold.append(summary, units);
        li.append(fold);
        lines.push(li);
        continue;
      }
      text.forEach((event, i) => {
        const li = document.createElement("li");
        li.dataset.action = event.action;
        const span = document.createElement("span");
        span.className = "text";
        const why = event.reason ? ` (${event.reason})` : "";
        span.textContent = `${event.action}${why}: ${event.kind} ${event.unit}, ${tokens(event.tokens)}: ` +
          `${oneLine(event.text)}${i === text.length - 1 ? templates : ""}`;
        li.append(span);
        lines.push(li);
      });
    }
    for (const li of lines) this.list.prepend(li);
    while (this.list.children.length > ACTIVITY_KEPT) this.list.lastElementChild.remove();
  }
}
