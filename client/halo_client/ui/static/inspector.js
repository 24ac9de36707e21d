// The inspector: one generated token's attention over the context, fetched on demand as a full
// frame by the UI server. A layers x heads overview to pick from (layers down, heads across,
// both numbered), layer and head selectors (or their mean), log or linear scale; while it is
// open the transcript draws the chosen attention in the inspector's colours, the inspected token
// is marked, and the legend explains those colours instead of brightness.

/** Which of `count` rows or columns get a number beside the overview: all of a few, else every
 * fifth or tenth (and the last). */
function numbered(i, count) {
  const step = count <= 16 ? 1 : count <= 48 ? 5 : 10;
  return i % step === 0 || i === count - 1;
}

export class InspectorPanel {
  constructor(elements, { send, transcript, legend }) {
    this.el = elements;
    this.send = send;
    this.transcript = transcript;
    this.legend = legend;
    this.position = null;
    this.layer = null;
    this.head = null;
    this.scale = "log";
    elements.layer.addEventListener("change", () => this.select(this.pick(elements.layer.value), this.head));
    elements.head.addEventListener("change", () => this.select(this.layer, this.pick(elements.head.value)));
    for (const radio of elements.scales) {
      radio.addEventListener("change", () => { if (radio.checked) { this.scale = radio.value; this.request(); } });
    }
    elements.close.addEventListener("click", () => this.close());
  }

  pick(value) { return value === "" ? null : Number(value); }

  open(position) {
    this.position = position;
    this.el.panel.open = true;
    this.request();
  }

  select(layer, head) {
    this.layer = layer;
    this.head = head;
    this.request();
  }

  request() {
    if (this.position === null) return;
    this.el.title.textContent = `token #${this.position}: loading its full attention frame…`;
    this.send({ type: "inspect", position: this.position, layer: this.layer, head: this.head, scale: this.scale });
  }

  show(message) {
    if (message.position !== this.position) return;
    const { layers, heads } = message;
    this.el.empty.hidden = true;
    this.el.body.hidden = false;
    const which = `${message.layer === null ? "mean of layers" : `layer ${message.layer}`}, ${message.head === null ? "mean of heads" : `head ${message.head}`}`;
    this.el.title.textContent = `token #${message.position} "${message.text}" — ${which}, ${message.scale} scale`;
    this.fillSelect(this.el.layer, layers, message.layer, "mean");
    this.fillSelect(this.el.head, heads, message.head, "mean");
    this.drawOverview(message);
    this.el.top.replaceChildren();
    for (const item of message.top) {
      const li = document.createElement("li");
      li.textContent = `#${item.position} ${JSON.stringify(item.text)}: ${item.value.toPrecision(3)}`;
      this.el.top.append(li);
    }
    this.transcript.showInspection(message.positions, message.buckets, message.position);
    this.legend.showAttention(message);
  }

  fillSelect(select, count, value, none) {
    if (select.options.length !== count + 1) {
      select.replaceChildren(new Option(none, ""));
      for (let i = 0; i < count; i++) select.add(new Option(String(i), String(i)));
    }
    select.value = value === null ? "" : String(value);
  }

  drawOverview(message) {
    const grid = this.el.overview;
    const { layers, heads, overview } = message;
    grid.style.gridTemplateColumns = `var(--axis-width) repeat(${heads}, 1fr)`;
    grid.replaceChildren();
    let top = 0;
    for (const row of overview) for (const v of row) top = Math.max(top, v);
    const corner = document.createElement("div");
    corner.className = "axis corner";
    grid.append(corner);
    for (let h = 0; h < heads; h++) {
      const label = document.createElement("div");
      label.className = "axis head";
      label.textContent = numbered(h, heads) ? String(h) : "";
      grid.append(label);
    }
    for (let l = 0; l < layers; l++) {
      const label = document.createElement("div");
      label.className = "axis layer";
      label.textContent = numbered(l, layers) ? String(l) : "";
      grid.append(label);
      for (let h = 0; h < heads; h++) {
        const cell = document.createElement("button");
        cell.type = "button";
        const share = overview[l][h];
        const bucket = top > 0 ? Math.min(63, Math.floor((share / top) * 64)) : 0;
        cell.className = `a${bucket}`;
        cell.title = `layer ${l}, head ${h}: ${(share * 100).toFixed(1)} % on content`;
        cell.setAttribute("aria-label", cell.title);
        cell.setAttribute("aria-selected", String(message.layer === l && message.head === h));
        cell.addEventListener("click", () => this.select(l, h));
        grid.append(cell);
      }
    }
  }

  close() {
    this.position = null;
    this.el.body.hidden = true;
    this.el.empty.hidden = false;
    this.transcript.hideInspection();
    this.legend.hideAttention();
  }
}
