// The token dictionary: every token of the conversation in one table (position, token id, text,
// turn, sentence, state, brightness, peak attention and the token it came from), sortable by any
// column, filterable by text, state and role, and linked both ways to the transcript (a row
// click marks and scrolls to its token; hovering or clicking a token brings up its row).
//
// It stays fast at 8,000 tokens and more because it holds no per-token DOM: only the rows that
// fit the viewport exist (a pool, re-filled on scroll), and every column is read from the
// transcript's typed arrays. The order of rows is one Int32Array of positions (filter, then
// sort). While a reply streams, each drawn brightness update re-fills the visible rows only;
// the order follows new tokens and, sorted by a live column, new values at most every
// `RESORT_MS`. Peak attention lives in the UI server (token_attention.py): the table asks for
// it (`token_table`) when opened and at most every `PEAKS_MS` while a reply streams.

const ROW_PX = 22;
const RESORT_MS = 1000;
const PEAKS_MS = 1000;
const STATES = { active: 0, pinned: 1, template: 2, pruned: 3 };
const RING = 256;
/** Rows are sorted as key bits x POSITIONS + position (see `sort`): exact in a float64 up to 2^21 positions. */
const POSITIONS = 2 ** 21;
const LAST = 2 ** 32 - 1;
const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** A number's float32 bits as an unsigned integer in the number's order (null for NaN). */
function orderBits(value) {
  if (Number.isNaN(value)) return null;
  F32[0] = value;
  const bits = U32[0];
  return bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}

export const COLUMNS = [
  { key: "position", label: "pos", title: "position in the conversation", first: 1 },
  { key: "id", label: "id", title: "token id", first: 1 },
  { key: "text", label: "text", title: "the token's text", first: 1 },
  { key: "turn", label: "turn", title: "message (turn) and role", first: 1 },
  { key: "sentence", label: "sent.", title: "sentence id (— for template tokens)", first: 1 },
  { key: "state", label: "state", title: "active, pinned, template or pruned", first: 1 },
  { key: "brightness", label: "brightness", title: "brightness now, with its colour", first: -1 },
  { key: "peak", label: "peak", title: "the most attention it got from one generated token", first: -1 },
  { key: "from", label: "from", title: "the generated token that gave the peak", first: 1 },
];

/** A token's text as a cell shows it: newlines and tabs as signs, a token of spaces as ␣. */
export function visible(text) {
  const shown = text.replace(/\n/g, "⏎").replace(/\t/g, "⇥");
  return /^ +$/.test(shown) ? "␣".repeat(shown.length) : shown;
}

function fmt(value) {
  if (!Number.isFinite(value)) return "—";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs >= 1e-3 && abs < 1e5 ? value.toPrecision(4) : value.toExponential(2);
}

function ring() {
  return { values: new Float32Array(RING), index: 0 };
}

function record(stat, ms) {
  stat.values[stat.index % RING] = ms;
  stat.index += 1;
}

export class TokenDictionary {
  constructor(el, { transcript, send, isBusy, onPick }) {
    this.el = el; // { panel, toggle, header, viewport, sizer, rows, filter, state, role, status }
    this.transcript = transcript;
    this.send = send;
    this.isBusy = isBusy;
    this.onPick = onPick;
    this.view = new Int32Array(0);
    this.count = 0;
    this.sortKey = "position";
    this.sortDir = 1;
    this.peak = new Float32Array(0);
    this.peakFrom = new Int32Array(0);
    this.highlighted = -1;
    this.hovered = -1;
    this.pool = [];
    this.first = -1;
    this.dirty = true;
    this.rebuildTimer = null;
    this.peaksTimer = null;
    this.peaksAsked = 0;
    this.sortedAt = 0;
    this.frame = 0;
    this.stats = { rebuildMs: ring(), renderMs: ring(), liveMs: ring(), rebuilds: 0, renders: 0 };
    this.buildHeader();
    el.toggle.addEventListener("click", () => (this.isOpen ? this.close() : this.open()));
    el.viewport.addEventListener("scroll", () => this.render(), { passive: true });
    el.filter.addEventListener("input", () => this.rebuild());
    el.state.addEventListener("change", () => this.rebuild());
    el.role.addEventListener("change", () => this.rebuild());
    el.rows.addEventListener("click", (event) => {
      const row = event.target.closest(".row");
      if (row && row.dataset.pos) this.pick(Number(row.dataset.pos));
    });
    el.rows.addEventListener("mouseover", (event) => {
      const row = event.target.closest(".row");
      this.hoverRow(row && row.dataset.pos ? Number(row.dataset.pos) : -1);
    });
    el.rows.addEventListener("mouseleave", () => this.hoverRow(-1));
    el.viewport.addEventListener("keydown", (event) => this.key(event));
    new ResizeObserver(() => { if (this.isOpen) this.sizePool(); }).observe(el.viewport);
    transcript.listeners.structure = () => this.changed();
    transcript.listeners.levels = () => this.live();
  }

  get isOpen() { return !this.el.panel.hidden; }

  open() {
    this.el.panel.hidden = false;
    this.el.toggle.setAttribute("aria-pressed", "true");
    this.sizePool();
    this.rebuild();
    this.askPeaks();
  }

  close() {
    this.el.panel.hidden = true;
    this.el.toggle.setAttribute("aria-pressed", "false");
    this.transcript.spans[this.hovered]?.removeAttribute("data-hover");
    this.hovered = -1;
  }

  // ---------------------------------------------------------------- header and pool

  buildHeader() {
    const header = this.el.header;
    header.replaceChildren();
    for (const column of COLUMNS) {
      const cell = document.createElement("button");
      cell.type = "button";
      cell.className = `cell c-${column.key}`;
      cell.setAttribute("role", "columnheader");
      cell.dataset.key = column.key;
      cell.title = `${column.title}; click to sort`;
      cell.textContent = column.label;
      cell.addEventListener("click", () => {
        this.sortBy(column.key, this.sortKey === column.key ? -this.sortDir : column.first);
      });
      header.append(cell);
    }
    this.markSort();
  }

  markSort() {
    for (const cell of this.el.header.children) {
      const on = cell.dataset.key === this.sortKey;
      cell.setAttribute("aria-sort", on ? (this.sortDir > 0 ? "ascending" : "descending") : "none");
    }
  }

  sizePool() {
    const wanted = Math.ceil(this.el.viewport.clientHeight / ROW_PX) + 2;
    if (wanted === this.pool.length) return;
    const rows = this.el.rows;
    while (this.pool.length < wanted) {
      const row = document.createElement("div");
      row.className = "row";
      row.setAttribute("role", "row");
      const cells = COLUMNS.map((column) => {
        const cell = document.createElement("div");
        cell.className = `cell c-${column.key}`;
        cell.setAttribute("role", "gridcell");
        row.append(cell);
        return cell;
      });
      const swatch = document.createElement("span");
      swatch.className = "sw";
      const value = document.createTextNode("");
      cells[6].append(swatch, value);
      rows.append(row);
      this.pool.push({ row, cells, swatch, value, pos: -2, shown: [] });
    }
    while (this.pool.length > wanted) this.pool.pop().row.remove();
    this.first = -1;
    this.render();
  }

  // ---------------------------------------------------------------- order

  sortBy(key, dir = 1) {
    this.sortKey = key;
    this.sortDir = dir;
    this.markSort();
    this.rebuild();
  }

  /** Order `view` (positions) by the sort column, ties by position. Each row becomes one float64,
   * the key's order bits times 2^21 plus its position, so one native numeric sort (no comparator
   * called per pair) orders 9,000 rows in about a millisecond. */
  sort(view) {
    const n = this.transcript.n;
    const key = this.sortKey === "text" ? this.textRanks(n) : this.numericKey(this.sortKey, n);
    const packed = this.packed?.length >= view.length ? this.packed.subarray(0, view.length)
      : (this.packed = new Float64Array(Math.max(view.length, 1024))).subarray(0, view.length);
    const descending = this.sortDir < 0;
    for (let i = 0; i < view.length; i++) {
      const p = view[i];
      const bits = orderBits(key[p]);
      packed[i] = (bits === null ? LAST : descending ? LAST - 1 - bits : bits) * POSITIONS + p;
    }
    packed.sort();
    for (let i = 0; i < view.length; i++) view[i] = packed[i] % POSITIONS;
  }

  /** Each position's rank among the distinct token texts (trimmed, lower case). */
  textRanks(n) {
    const texts = this.transcript.texts;
    const keys = new Array(n);
    const distinct = new Set();
    for (let p = 0; p < n; p++) {
      keys[p] = (texts[p] ?? "").trim().toLowerCase();
      distinct.add(keys[p]);
    }
    const rank = new Map(Array.from(distinct).sort().map((text, i) => [text, i]));
    const out = new Float64Array(n);
    for (let p = 0; p < n; p++) out[p] = rank.get(keys[p]);
    return out;
  }

  /** The sort key of every position, as numbers (NaN: no value, always last). */
  numericKey(key, n) {
    const t = this.transcript;
    const out = new Float64Array(n);
    for (let p = 0; p < n; p++) {
      let v;
      switch (key) {
        case "position": v = p; break;
        case "id": v = t.tokenId[p]; break;
        case "turn": v = t.turn[p]; break;
        case "sentence": v = t.isTemplate(p) || t.sentence[p] < 0 ? NaN : t.sentence[p]; break;
        case "state": v = STATES[t.state(p)]; break;
        case "brightness": v = t.shown[p]; break;
        case "peak": v = p < this.peak.length ? this.peak[p] : NaN; break;
        case "from": v = p < this.peakFrom.length && this.peakFrom[p] >= 0 ? this.peakFrom[p] : NaN; break;
        default: v = p;
      }
      out[p] = v;
    }
    return out;
  }

  /** Filter, then sort: the rows' positions in `view`. */
  rebuild() {
    clearTimeout(this.rebuildTimer);
    this.rebuildTimer = null;
    if (!this.isOpen) { this.dirty = true; return; }
    const started = performance.now();
    const t = this.transcript;
    const n = t.n;
    if (this.view.length < n) this.view = new Int32Array(Math.max(n, this.view.length * 2, 1024));
    const query = this.el.filter.value.trim().toLowerCase();
    const state = this.el.state.value, role = this.el.role.value;
    const texts = t.texts;
    let k = 0;
    for (let p = 0; p < n; p++) {
      if (t.spans[p] === undefined) continue;
      if (state && t.state(p) !== state) continue;
      if (role && t.roleOf(p) !== role) continue;
      if (query && !(texts[p] ?? "").toLowerCase().includes(query)) continue;
      this.view[k++] = p;
    }
    this.count = k;
    const view = this.view.subarray(0, k);
    if (this.sortKey !== "position" || this.sortDir < 0) this.sort(view);
    this.dirty = false;
    this.sortedAt = performance.now();
    this.el.sizer.style.height = `${k * ROW_PX}px`;
    this.first = -1;
    this.render();
    this.status();
    this.stats.rebuilds += 1;
    record(this.stats.rebuildMs, performance.now() - started);
  }

  /** New or changed tokens: the order is rebuilt at the next frame, or (while a reply streams,
   * a token at a time) at most every RESORT_MS / 4. */
  changed() {
    this.dirty = true;
    if (!this.isOpen || this.rebuildTimer !== null) return;
    this.rebuildTimer = setTimeout(() => this.rebuild(), this.isBusy() ? RESORT_MS / 4 : 0);
    if (!this.isBusy()) this.askPeaks();
  }

  /** A brightness update was drawn: re-fill the visible rows, and keep a live sort in step. */
  live() {
    if (!this.isOpen) return;
    const started = performance.now();
    this.fill();
    record(this.stats.liveMs, performance.now() - started);
    const liveSort = this.sortKey === "brightness" || this.sortKey === "peak" || this.sortKey === "from";
    if (liveSort && this.rebuildTimer === null && performance.now() - this.sortedAt > RESORT_MS) {
      this.rebuildTimer = setTimeout(() => this.rebuild(), 0);
    }
    if (this.isBusy()) this.askPeaks();
  }

  // ---------------------------------------------------------------- peaks

  askPeaks() {
    if (!this.isOpen || this.peaksTimer !== null) return;
    const wait = Math.max(0, this.peaksAsked + PEAKS_MS - performance.now());
    this.peaksTimer = setTimeout(() => {
      this.peaksTimer = null;
      this.peaksAsked = performance.now();
      this.send({ type: "token_table" });
    }, this.isBusy() ? wait : 0);
  }

  onTable(message) {
    const n = message.peak.length;
    this.peak = new Float32Array(n);
    this.peakFrom = new Int32Array(n);
    for (let p = 0; p < n; p++) {
      const v = message.peak[p];
      this.peak[p] = v < 0 ? NaN : v;
      this.peakFrom[p] = message.peak_from[p] ?? -1;
    }
    if (this.sortKey === "peak" || this.sortKey === "from") this.rebuild();
    else this.fill();
  }

  // ---------------------------------------------------------------- drawing

  render() {
    if (!this.isOpen) return;
    const first = Math.max(0, Math.floor(this.el.viewport.scrollTop / ROW_PX));
    if (first !== this.first) {
      this.first = first;
      this.el.rows.style.transform = `translateY(${first * ROW_PX}px)`;
    }
    const started = performance.now();
    this.fill();
    this.stats.renders += 1;
    record(this.stats.renderMs, performance.now() - started);
  }

  /** Write the visible rows: only cells whose text changed are touched. */
  fill() {
    const t = this.transcript;
    for (let i = 0; i < this.pool.length; i++) {
      const slot = this.pool[i];
      const index = this.first + i;
      const p = index < this.count ? this.view[index] : -1;
      if (p !== slot.pos) {
        slot.pos = p;
        slot.row.hidden = p < 0;
        if (p >= 0) slot.row.dataset.pos = String(p);
        else delete slot.row.dataset.pos;
        slot.row.toggleAttribute("data-selected", p >= 0 && p === this.highlighted);
      }
      if (p < 0) continue;
      const from = p < this.peakFrom.length ? this.peakFrom[p] : -1;
      const values = [
        String(p), String(t.tokenId[p]), visible(t.texts[p] ?? "") || "·",
        `${t.turn[p]} ${t.roleOf(p)}`, t.isTemplate(p) || t.sentence[p] < 0 ? "—" : String(t.sentence[p]),
        t.state(p), fmt(t.shown[p]), fmt(p < this.peak.length ? this.peak[p] : NaN),
        from >= 0 ? `#${from} ${JSON.stringify(visible(t.texts[from] ?? ""))}` : "—",
      ];
      for (let c = 0; c < values.length; c++) {
        if (slot.shown[c] === values[c]) continue;
        slot.shown[c] = values[c];
        if (c === 6) slot.value.data = values[c];
        else slot.cells[c].textContent = values[c];
      }
      const bucket = t.bucket[p];
      const swatch = bucket === 255 ? "sw none" : `sw h${bucket}`;
      if (slot.swatch.className !== swatch) slot.swatch.className = swatch;
      slot.row.dataset.state = values[5];
    }
  }

  status() {
    const total = this.transcript.spans.length === 0 ? 0 : this.transcript.n;
    const column = COLUMNS.find((c) => c.key === this.sortKey);
    let text = `${this.count.toLocaleString("en-US")} of ${total.toLocaleString("en-US")} tokens, ` +
      `by ${column.label} ${this.sortDir > 0 ? "↑" : "↓"}`;
    const p = this.highlighted;
    if (p >= 0 && this.indexOf(p) < 0) text += ` · token #${p} is not shown with this filter`;
    this.el.status.textContent = text;
  }

  indexOf(p) {
    for (let i = 0; i < this.count; i++) if (this.view[i] === p) return i;
    return -1;
  }

  // ---------------------------------------------------------------- linking

  /** Bring up the row of the token at `p` (from the transcript): marked, and scrolled to unless
   * it is already in sight. */
  reveal(p, { select = true } = {}) {
    if (!this.isOpen) return;
    if (this.dirty) this.rebuild();
    if (select) {
      this.highlighted = p;
      for (const slot of this.pool) slot.row.toggleAttribute("data-selected", slot.pos === p);
    }
    const index = this.indexOf(p);
    this.status();
    if (index < 0) return;
    const viewport = this.el.viewport;
    const top = index * ROW_PX;
    if (top < viewport.scrollTop || top + ROW_PX > viewport.scrollTop + viewport.clientHeight) {
      viewport.scrollTop = top - (viewport.clientHeight - ROW_PX) / 2;
      this.render();
    }
  }

  /** The mouse over a token in the transcript: its row is shown marked (not selected). */
  hoverToken(p) {
    if (!this.isOpen) return;
    for (const slot of this.pool) slot.row.toggleAttribute("data-hover", slot.pos === p);
    if (p >= 0) this.reveal(p, { select: false });
  }

  hoverRow(p) {
    if (p === this.hovered) return;
    this.transcript.spans[this.hovered]?.removeAttribute("data-hover");
    this.hovered = p;
    this.transcript.spans[p]?.setAttribute("data-hover", "");
  }

  pick(p) {
    this.highlighted = p;
    for (const slot of this.pool) slot.row.toggleAttribute("data-selected", slot.pos === p);
    this.status();
    this.onPick(p);
  }

  key(event) {
    if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
    event.preventDefault();
    const index = this.indexOf(this.highlighted);
    const next = Math.min(this.count - 1, Math.max(0, index + (event.key === "ArrowDown" ? 1 : -1)));
    if (next < 0) return;
    const p = this.view[next];
    this.pick(p);
    this.reveal(p);
  }
}
