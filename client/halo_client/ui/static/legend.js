// The legend: what the colours mean, in words a person reads once, for the brightness the UI
// server scaled (workbench.py's `legend`: mode, count, low, high) or, while the inspector is
// open, for one token's attention (the inspector's colours, another hue).

import { rampGradient } from "./palette.js";

function num(value) {
  if (!Number.isFinite(value)) return "?";
  const abs = Math.abs(value);
  return abs !== 0 && (abs < 1e-3 || abs >= 1e5) ? value.toExponential(2) : String(Number(value.toPrecision(3)));
}

const SCALE_NOTE = "template and system-prompt tokens are drawn but do not count";

/** The brightness legend in words. */
export function heatLegendText(legend) {
  const { mode, count, low, high } = legend;
  if (!count) return "No message text yet: colours appear once there is some.";
  if (!(high > low)) {
    return `All ${count} tokens are equally bright so far (${num(low)}): colours appear as the model replies ` +
      "and looks back at some words more than at others.";
  }
  if (mode === "log") {
    return `Colour is brightness on a log scale, from ${num(low)} (darkest) to ${num(high)} (palest): the 2nd ` +
      `to 98th percentile of the ${count} message tokens (${SCALE_NOTE}).`;
  }
  return `Colour ranks each token's brightness among the ${count} message tokens: the palest got the most ` +
    `attention, the darkest the least (brightness ${num(low)} to ${num(high)}; ${SCALE_NOTE}).`;
}

/** The inspector's legend in words. */
export function attentionLegendText(message) {
  const which = `${message.layer === null ? "mean of all layers" : `layer ${message.layer}`}, ` +
    `${message.head === null ? "mean of all heads" : `head ${message.head}`}`;
  const how = message.scale === "log"
    ? "log scale, palest = the most, down to a thousandth of it"
    : "linear scale, palest = the most";
  return `Attention from token #${message.position} "${message.text}" (${which}; ${how}). Grey text was not ` +
    "in its context.";
}

export class Legend {
  constructor({ panel, bar, low, mode, high, text }) {
    this.el = { panel, bar, low, mode, high, text };
    this.heat = null;
    this.attention = null;
  }

  showHeat(legend) {
    this.heat = legend;
    if (this.attention === null) this.draw();
  }

  showAttention(message) {
    this.attention = message;
    this.draw();
  }

  hideAttention() {
    this.attention = null;
    this.draw();
  }

  /** What the PNG export draws: the ramp's class prefix, the ends, and the words. */
  current() {
    const el = this.el;
    return { prefix: this.attention === null ? "h" : "a", low: el.low.textContent, mode: el.mode.textContent,
             high: el.high.textContent, text: el.text.textContent };
  }

  draw() {
    const el = this.el;
    const attention = this.attention;
    el.panel.dataset.view = attention === null ? "brightness" : "attention";
    el.bar.style.backgroundImage = rampGradient(attention === null ? "h" : "a");
    if (attention !== null) {
      el.low.textContent = "none";
      el.mode.textContent = `attention (${attention.scale})`;
      el.high.textContent = "most";
      el.text.textContent = attentionLegendText(attention);
    } else if (this.heat !== null) {
      el.low.textContent = "dim";
      el.mode.textContent = this.heat.mode;
      el.high.textContent = "bright";
      el.text.textContent = heatLegendText(this.heat);
    }
  }
}
