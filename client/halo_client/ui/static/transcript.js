// The transcript: every token of the conversation as a span (data-pos, data-brightness,
// data-pruned, data-pinned), grouped by turn, coloured by the bucket the UI server computed on
// the heat scale. Metadata lives in typed arrays indexed by position, not in per-token objects,
// so a long chat costs the page little more than its DOM.
//
// A `levels` update is checked (epoch, count) and kept; it is drawn at the next animation frame,
// and a newer one replaces one not drawn yet: the page shows the newest brightness and never
// queues stale work. Drawing changes only classes and one attribute, never layout.
//
// Marks that must survive a repaint (the selection, the token located from the token dictionary,
// the token the inspector shows) are attributes, since a repaint rewrites the class. A turn
// whose text is all pruned is hidden as a whole (class `all-pruned`), not left as an empty box.
// `listeners.structure` hears of new or changed tokens and `listeners.levels` of every drawn
// update (the token dictionary follows both).

const SIZE = 64;
const NONE = 255;
const HEAT = Array.from({ length: SIZE }, (_, b) => `tok h${b}`);
const HEAT_TPL = Array.from({ length: SIZE }, (_, b) => `tok tpl h${b}`);
const ATTN = Array.from({ length: SIZE }, (_, b) => `tok a${b}`);
const ATTN_TPL = Array.from({ length: SIZE }, (_, b) => `tok tpl a${b}`);
const TEMPLATE = 1, PINNED = 2, DELETED = 4;
const RING = 4096;
const FLASH_MS = 3000; // transcript.css: halo-flash lasts 1.2 s, once it has started

function grow(array, size, fill) {
  const out = new array.constructor(size);
  if (fill !== undefined) out.fill(fill);
  out.set(array);
  return out;
}

export class Transcript {
  constructor(root, { onMismatch }) {
    this.root = root;
    this.onMismatch = onMismatch;
    this.pending = null;
    this.scheduled = false;
    this.stick = true;
    this.inspecting = false;
    // what the benchmark and tests read (window.halo.transcript.stats); rings, so it never grows
    this.stats = { applied: 0, replaced: 0, mismatches: 0, index: 0, applyMs: new Float32Array(RING),
                   lagMs: new Float32Array(RING), lastLagMs: NaN, lastNewest: -1 };
    this.listeners = { structure: () => {}, levels: () => {} };
    root.addEventListener("scroll", () => {
      this.stick = root.scrollHeight - root.scrollTop - root.clientHeight < 48;
    }, { passive: true });
    this.clear();
  }

  clear() {
    this.root.replaceChildren();
    this.spans = [];
    this.texts = [];
    this.turnBoxes = new Map();
    this.turnRoles = new Map();
    this.located = -1;
    this.inspected = -1;
    this.n = 0;
    this.cap = 0;
    this.flags = new Uint8Array(0);
    this.sentence = new Int32Array(0);
    this.turn = new Int32Array(0);
    this.tokenId = new Int32Array(0);
    this.bucket = new Uint8Array(0);
    this.shown = new Float32Array(0);
    this.inspect = new Uint8Array(0);
    this.active = new Int32Array(1024);
    this.activeCount = 0;
    this.epoch = -1;
    this.pending = null;
    this.inspecting = false;
    this.root.classList.remove("inspecting");
    this.listeners?.structure();
  }

  ensure(size) {
    if (size <= this.cap) return;
    const cap = Math.max(size, this.cap * 2, 1024);
    this.flags = grow(this.flags, cap);
    this.sentence = grow(this.sentence, cap);
    this.turn = grow(this.turn, cap);
    this.tokenId = grow(this.tokenId, cap);
    this.bucket = grow(this.bucket, cap, NONE);
    this.shown = grow(this.shown, cap, NaN);
    this.inspect = grow(this.inspect, cap, NONE);
    this.cap = cap;
  }

  turnBox(turn, role) {
    let box = this.turnBoxes.get(turn);
    if (box === undefined) {
      const block = document.createElement("div");
      block.className = `turn role-${role}`;
      block.dataset.turn = String(turn);
      const who = document.createElement("div");
      who.className = "who";
      who.textContent = role;
      box = document.createElement("div");
      box.className = "tokens";
      block.append(who, box);
      this.root.append(block);
      this.turnBoxes.set(turn, box);
      this.turnRoles.set(turn, role);
    }
    return box;
  }

  // ---------------------------------------------------------------- rows

  /** New tokens (ascending positions) from a snapshot or a `rows` message. */
  addRows(rows) {
    const count = rows.position.length;
    if (count === 0) return;
    this.ensure(rows.position[count - 1] + 1);
    for (let i = 0; i < count; i++) {
      const p = rows.position[i];
      let span = this.spans[p];
      if (span === undefined) {
        span = document.createElement("span");
        span.setAttribute("data-pos", String(p));
        span.textContent = rows.text[i];
        this.spans[p] = span;
        this.texts[p] = rows.text[i];
        this.turnBox(rows.turn[i], rows.role[i]).append(span);
        if (p >= this.n) this.n = p + 1;
      }
      this.setMeta(p, rows, i);
      this.writeBrightness(p, rows.brightness[i]);
    }
    this.rebuildActive();
    this.listeners.structure();
  }

  /** Tokens the page has whose metadata changed. */
  updateRows(rows) {
    for (let i = 0; i < rows.position.length; i++) {
      const p = rows.position[i];
      if (this.spans[p] !== undefined) this.setMeta(p, rows, i);
    }
    this.rebuildActive();
    this.listeners.structure();
  }

  setMeta(p, rows, i) {
    const span = this.spans[p];
    const flags = (rows.template[i] ? TEMPLATE : 0) | (rows.pinned[i] ? PINNED : 0) | (rows.deleted[i] ? DELETED : 0);
    const before = this.flags[p];
    this.flags[p] = flags;
    this.sentence[p] = rows.sentence[i];
    this.turn[p] = rows.turn[i];
    this.tokenId[p] = rows.token_id[i];
    span.setAttribute("data-s", String(rows.sentence[i]));
    if ((before ^ flags) & TEMPLATE || !span.className) this.paint(p);
    if (flags & DELETED) span.setAttribute("data-pruned", "pruned");
    else span.removeAttribute("data-pruned");
    if (flags & PINNED) span.setAttribute("data-pinned", "");
    else span.removeAttribute("data-pinned");
  }

  /** A streamed token of the reply (its sentence is known when the reply ends). */
  addToken(message) {
    const p = message.position;
    this.ensure(p + 1);
    if (this.spans[p] !== undefined) return;
    const span = document.createElement("span");
    span.setAttribute("data-pos", String(p));
    span.textContent = message.text;
    span.className = "tok";
    this.spans[p] = span;
    this.texts[p] = message.text;
    this.flags[p] = 0;
    this.sentence[p] = -2;
    this.turn[p] = message.turn;
    this.tokenId[p] = message.token_id;
    this.turnBox(message.turn, "assistant").append(span);
    this.n = Math.max(this.n, p + 1);
    if (this.activeCount === this.active.length) this.active = grow(this.active, this.active.length * 2);
    this.active[this.activeCount++] = p;
    this.scheduleFrame();
    this.listeners.structure();
  }

  rebuildActive() {
    if (this.active.length < this.n) this.active = new Int32Array(Math.max(this.n, this.active.length * 2));
    const turns = this.turnBoxes.size === 0 ? 0 : Math.max(...this.turnBoxes.keys()) + 1;
    const content = new Int32Array(turns), pruned = new Int32Array(turns);
    let k = 0;
    for (let p = 0; p < this.n; p++) {
      if (this.spans[p] === undefined) continue;
      const flags = this.flags[p];
      if (flags & DELETED) pruned[this.turn[p]] += 1;
      else {
        this.active[k++] = p;
        if (!(flags & TEMPLATE)) content[this.turn[p]] += 1;
      }
    }
    this.activeCount = k;
    for (const [turn, box] of this.turnBoxes) {
      box.parentElement.classList.toggle("all-pruned", content[turn] === 0 && pruned[turn] > 0);
    }
  }

  paint(p) {
    const span = this.spans[p];
    const template = this.flags[p] & TEMPLATE;
    if (this.inspecting) {
      const b = this.inspect[p];
      span.className = b === NONE ? (template ? "tok tpl out" : "tok out") : (template ? ATTN_TPL : ATTN)[b];
      return;
    }
    const b = this.bucket[p];
    span.className = b === NONE ? (template ? "tok tpl" : "tok") : (template ? HEAT_TPL : HEAT)[b];
  }

  writeBrightness(p, value) {
    if (this.shown[p] !== value) {
      this.shown[p] = value;
      this.spans[p].setAttribute("data-brightness", value.toPrecision(5));
    }
  }

  // ---------------------------------------------------------------- levels

  /** A binary `levels` message (protocol.py): checked now, drawn at the next frame. */
  applyLevels(buffer) {
    const view = new DataView(buffer);
    if (view.getUint32(0, true) !== 0x564c5748) return; // "HWLV"
    const epoch = view.getUint32(8, true);
    const count = view.getUint32(12, true);
    if (epoch !== this.epoch || count !== this.activeCount) {
      this.stats.mismatches += 1;
      this.onMismatch(`levels for epoch ${epoch} with ${count} tokens; the page has epoch ${this.epoch} with ${this.activeCount}`);
      return;
    }
    if (this.pending !== null) this.stats.replaced += 1;
    this.pending = {
      epoch, count, newest: view.getInt32(16, true), sent: view.getFloat64(24, true),
      brightness: new Float32Array(buffer, 32, count), buckets: new Uint8Array(buffer, 32 + 4 * count, count),
    };
    this.scheduleFrame();
  }

  scheduleFrame() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => {
      this.scheduled = false;
      this.drawPending();
      if (this.stick) this.root.scrollTop = this.root.scrollHeight;
    });
  }

  drawPending() {
    const update = this.pending;
    this.pending = null;
    if (update === null || update.epoch !== this.epoch || update.count > this.activeCount) return;
    performance.mark("halo-levels-start");
    const { count, brightness, buckets } = update;
    const active = this.active, spans = this.spans, bucket = this.bucket, shown = this.shown, flags = this.flags;
    const inspecting = this.inspecting;
    for (let i = 0; i < count; i++) {
      const p = active[i];
      const b = buckets[i];
      if (b !== bucket[p]) {
        bucket[p] = b;
        if (!inspecting) spans[p].className = (flags[p] & TEMPLATE ? HEAT_TPL : HEAT)[b];
      }
      const v = brightness[i];
      if (shown[p] !== v) {
        shown[p] = v;
        spans[p].setAttribute("data-brightness", v.toPrecision(5));
      }
    }
    performance.mark("halo-levels-end");
    const measure = performance.measure("halo-levels", "halo-levels-start", "halo-levels-end");
    const stats = this.stats;
    const slot = stats.index % RING;
    stats.applyMs[slot] = measure.duration;
    if (update.sent > 0) {  // the newest token this update covers reached the UI server then
      stats.lastLagMs = Date.now() - update.sent;
      stats.lagMs[slot] = stats.lastLagMs;
      stats.lastNewest = update.newest;
    }
    stats.index += 1;
    stats.applied += 1;
    performance.clearMarks("halo-levels-start");
    performance.clearMarks("halo-levels-end");
    performance.clearMeasures("halo-levels");
    this.listeners.levels();
  }

  // ---------------------------------------------------------------- effects

  /** Pruned tokens flash red and fade ("flash"); restored ones flash green ("back"). */
  animate(positions, name) {
    const spans = positions.map((p) => this.spans[p]).filter((span) => span !== undefined);
    for (const span of spans) {
      span.classList.add(name);
      span.addEventListener("animationend", () => span.classList.remove(name), { once: true });
    }
    if (name !== "flash" || spans.length === 0) return;
    // a turn pruned to nothing stays in sight while its text flashes, and goes when the last of
    // it has faded (or after FLASH_MS at the latest, without a late flash when it is shown again)
    const turns = new Set(spans.map((span) => span.closest(".turn")));
    let left = spans.length;
    const done = () => {
      for (const span of spans) span.classList.remove("flash");
      for (const turn of turns) turn.classList.remove("flashing");
    };
    for (const turn of turns) turn.classList.add("flashing");
    for (const span of spans) span.addEventListener("animationend", () => { if (--left === 0) done(); }, { once: true });
    setTimeout(done, FLASH_MS);
  }

  /** The sentence of `p` (or the template token alone), as positions. */
  sentenceOf(p) {
    if (this.flags[p] & TEMPLATE || this.sentence[p] < 0) return [p];
    const s = this.sentence[p], turn = this.turn[p];
    const out = [];
    for (let q = p; q >= 0 && this.turn[q] === turn; q--) if (this.sentence[q] === s && this.spans[q]) out.unshift(q);
    for (let q = p + 1; q < this.n && this.turn[q] === turn; q++) if (this.sentence[q] === s && this.spans[q]) out.push(q);
    return out;
  }

  select(positions) {
    for (const span of this.root.querySelectorAll(".tok[data-sel]")) span.removeAttribute("data-sel");
    for (const p of positions) this.spans[p]?.setAttribute("data-sel", "");
  }

  /** Mark the token at `p` (from the token dictionary) and scroll the transcript to it; a pruned
   * token is shown struck through while it is the located one, and its turn with it. */
  locate(p) {
    const previous = this.spans[this.located];
    if (previous !== undefined) {
      previous.removeAttribute("data-located");
      previous.closest(".turn")?.removeAttribute("data-located");
    }
    this.located = p;
    const span = this.spans[p];
    if (span === undefined) return false;
    span.setAttribute("data-located", "");
    span.closest(".turn").setAttribute("data-located", "");
    this.stick = false;
    const box = this.root.getBoundingClientRect(), rect = span.getBoundingClientRect();
    if (rect.top < box.top || rect.bottom > box.bottom) {
      this.root.scrollTop += rect.top - box.top - (box.height - rect.height) / 2;
    }
    return true;
  }

  /** What the token dictionary shows of `p`. */
  state(p) {
    const flags = this.flags[p];
    if (flags & DELETED) return "pruned";
    if (flags & PINNED) return "pinned";
    return flags & TEMPLATE ? "template" : "active";
  }

  roleOf(p) { return this.turnRoles.get(this.turn[p]) ?? ""; }

  /** The newest turn of `role`, -1 if none. */
  lastTurn(role) {
    let last = -1;
    for (const [turn, r] of this.turnRoles) if (r === role && turn > last) last = turn;
    return last;
  }

  /** A word on a message beside its role ("stopped", "interrupted: ..."). */
  noteTurn(turn, text) {
    const box = this.turnBoxes.get(turn);
    if (box === undefined) return;
    const who = box.parentElement.querySelector(".who");
    let note = who.querySelector(".ending");
    if (note === null) {
      note = document.createElement("span");
      note.className = "ending";
      who.append(note);
    }
    note.textContent = ` · ${text}`;
    box.parentElement.dataset.ending = text;
  }

  isPinned(p) { return Boolean(this.flags[p] & PINNED); }
  isTemplate(p) { return Boolean(this.flags[p] & TEMPLATE); }

  /** Draw the attention of the token at `source` (the inspector) instead of brightness, and
   * mark that token. */
  showInspection(positions, buckets, source) {
    this.inspect.fill(NONE);
    for (let i = 0; i < positions.length; i++) this.inspect[positions[i]] = buckets[i];
    this.inspecting = true;
    this.root.classList.add("inspecting");
    this.markInspected(source);
    for (let p = 0; p < this.n; p++) if (this.spans[p] !== undefined) this.paint(p);
  }

  markInspected(p) {
    this.spans[this.inspected]?.removeAttribute("data-inspected");
    this.inspected = p;
    this.spans[p]?.setAttribute("data-inspected", "");
  }

  hideInspection() {
    this.markInspected(-1);
    if (!this.inspecting) return;
    this.inspecting = false;
    this.root.classList.remove("inspecting");
    for (let p = 0; p < this.n; p++) if (this.spans[p] !== undefined) this.paint(p);
  }
}
