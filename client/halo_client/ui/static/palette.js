// The colour ramps as the page has them: the classes h0..h63 (brightness) and a0..a63 (the
// inspector's attention) come from /palette.css (palette.py); the legend bar and the PNG export
// read their colours from there, so they can never disagree with the tokens.

const SIZE = 64;
const cache = new Map();

/** The 64 background colours of the classes `${prefix}0` .. `${prefix}63`, as CSS colour strings. */
export function rampColours(prefix) {
  let colours = cache.get(prefix);
  if (colours !== undefined) return colours;
  const probe = document.createElement("span");
  probe.hidden = true;
  document.body.append(probe);
  colours = [];
  for (let i = 0; i < SIZE; i++) {
    probe.className = `${prefix}${i}`;
    colours.push(getComputedStyle(probe).backgroundColor);
  }
  probe.remove();
  if (colours.some((c) => c !== "rgba(0, 0, 0, 0)")) cache.set(prefix, colours); // once the stylesheet is in
  return colours;
}

/** The ramp as a CSS linear-gradient (the legend bar). */
export function rampGradient(prefix) {
  const colours = rampColours(prefix);
  return `linear-gradient(90deg, ${colours.map((c, i) => `${c} ${((100 * (i + 0.5)) / SIZE).toFixed(1)}%`).join(", ")})`;
}
