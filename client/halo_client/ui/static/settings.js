// The settings form, generated from the settings file's JSON schema (config.py's pydantic
// models, sent by the UI server): every tracker, pruner, memory, sampler and view setting, each
// under a name a person reads, with its range written beside it and what it does. The models'
// own ranges are the inputs' limits; the UI server validates each change with the same models
// the command line uses, and its refusal is shown under the field.
//
// A field this page has no words for (a new setting) is still shown, under its own name.

const SECTIONS = [
  ["tracker", "Brightness",
   "How each new token's attention adds to the brightness of the text it looks at. A change applies to " +
   "attention from now on: text keeps the brightness it has and changes only as new tokens look at it " +
   "(nothing is recomputed from earlier tokens)."],
  ["pruner", "Pruning", "What goes when the chat outgrows its budget. A new budget prunes at once."],
  ["memory", "Memory", "Bringing pruned sentences back when a new message asks about them. From the next message on."],
  ["sampler", "Replies", "How the model picks its words. From the next reply on."],
  ["view", "View", "How the page draws. At once."],
];

/** section.field -> [name, what it does]. */
const FIELDS = {
  "tracker.aggregation": ["Combine layers and heads by", "how one token's attention over all layers and heads becomes one number per token it looks at"],
  "tracker.distance_mode": ["Credit for looking far back", "looking far back counts more than looking at the words just written"],
  "tracker.min_distance": ["Ignore the last N tokens", "attention to the N tokens just before the new one does not count"],
  "tracker.distance_scale": ["Distance scale (tokens)", "how fast the credit for distance grows"],
  "tracker.accumulation": ["How attention adds up", ""],
  "tracker.decay": ["Fading per new token", "brightness lost with each new token (0: none)"],
  "tracker.boost": ["Attention multiplier", "how much one token's attention adds"],
  "tracker.initial_brightness": ["Starting brightness of new text", "new tokens start at least this bright (or at the average)"],
  "pruner.max_context_tokens": ["Token budget", "prune once the chat has more active tokens than this (0: never)"],
  "pruner.granularity": ["Prune by", "the unit that is pruned and restored"],
  "pruner.reduce": ["A unit's score is", "its brightest token keeps a sentence, or the average of its tokens"],
  "pruner.protect_exchanges": ["Latest exchanges kept", "the newest messages with their replies that are never pruned"],
  "pruner.score": ["Older text is ranked by", "question: what your newest message attends to, in the model's retrieval heads (brightness where they are unknown); brightness: the tracker's"],
  "pruner.recent_share": ["Share of the budget for the newest text", "the newest text in this share of the budget goes last, whatever its brightness"],
  "memory.enabled": ["Bring back what a message asks about", "a pruned sentence that matches the new message comes back before the reply"],
  "memory.max_recalled": ["Sentences brought back per message", "at most"],
  "memory.scorer": ["Match sentences by", "meaning: sentence embeddings; words: BM25; hybrid: either"],
  "memory.embedder": ["Sentence embedder", "all-mpnet-base-v2-int8 (the default): 404 MB, finds more of what a question asks in other words, most of its arithmetic in int8, about 36 ms per message on two cores; all-mpnet-base-v2: the same files in float32, about 70 ms; all-MiniLM-L6-v2: 83 MB, about 16 ms, finds less (fetched once, on first use)"],
  "memory.min_similarity": ["Similarity needed to come back", "how near in meaning a sentence must be to the message (cosine, -1 to 1)"],
  "memory.name_discount": ["Discount for names in the message", "how much of a sentence's likeness to the message's names alone is taken off (0: none, 1: all); \"Wow, Gina!\" is not what \"What did Gina design?\" asks for"],
  "memory.min_relevance": ["Relevance needed to come back", "how well a sentence must match the message by its words (BM25 score)"],
  "memory.min_similarity_with_words": ["Similarity a word match needs too", "hybrid only: a sentence matched by its words must also be this near in meaning"],
  "memory.reply_with_question": ["Match a reply with its question", "a short answer (\"The Minnesota Wolves!\") is also matched together with the archived question right before it"],
  "memory.keep_in_context": ["Matches kept in the context per message", "the message's best matches still in the context are kept through the prune that follows, by the same rules (0: none)"],
  "memory.recall_questions": ["Questions can come back too", "off: only statements come back; what a later question asks for is the answer, not the question asked before"],
  "sampler.max_length": ["Reply length, at most (tokens)", ""],
  "sampler.temperature": ["Temperature", "0: always the likeliest word; higher: more varied"],
  "sampler.top_p": ["Top-p (nucleus)", "pick among the likeliest words that together have this probability"],
  "sampler.top_k": ["Top-k", "pick among this many likeliest words (0: no limit)"],
  "sampler.rep_pen": ["Repetition penalty", "1: none; above 1 makes repeating recent words less likely"],
  "sampler.rep_pen_range": ["Repetition penalty window (tokens)", "how far back repeated words are penalised"],
  "sampler.sampler_seed": ["Random seed", "-1: a new one each reply; a fixed seed repeats a reply"],
  "view.scale": ["Colour scale", "percentile: rank among the text; log: how much brighter"],
  "view.inspector_scale": ["Inspector scale", ""],
  "view.show_pruned": ["Show pruned text, struck through", ""],
  "view.show_template": ["Show template tokens", "the chat template's <|im_start|>, <|im_end|> and role names"],
};

/** Names for the values of a choice. */
const OPTIONS = {
  "tracker.aggregation": { mean: "mean of all", max: "strongest head", last_layer: "last layer only", weighted_layers: "later layers weigh more" },
  "tracker.distance_mode": { none: "none (every token alike)", threshold: "flat beyond the ignored", linear: "linear", logarithmic: "logarithmic", square_root: "square root" },
  "tracker.accumulation": { additive: "add, minus fading", none: "add, never fade", exponential: "add, fade by a share" },
  "pruner.granularity": { sentence: "sentence", line: "line", turn: "whole message" },
  "pruner.reduce": { max: "its brightest token", mean: "its average token" },
  "view.scale": { percentile: "percentile", log: "log" },
  "view.inspector_scale": { log: "log", linear: "linear" },
};

function resolve(schema, node) {
  if (node && node.$ref) return schema.$defs[node.$ref.split("/").pop()];
  if (node && node.anyOf) return resolve(schema, node.anyOf.find((n) => n.type !== "null") || node.anyOf[0]);
  return node;
}

function inputFor(spec, options) {
  if (spec.enum) {
    const select = document.createElement("select");
    for (const value of spec.enum) select.add(new Option(options?.[value] ?? value, value));
    return select;
  }
  const input = document.createElement("input");
  if (spec.type === "boolean") {
    input.type = "checkbox";
  } else if (spec.type === "integer" || spec.type === "number") {
    input.type = "number";
    input.step = spec.type === "integer" ? "1" : "any";
    const min = spec.minimum ?? spec.exclusiveMinimum;
    const max = spec.maximum ?? spec.exclusiveMaximum;
    if (min !== undefined) input.min = String(min);
    if (max !== undefined) input.max = String(max);
  } else {
    input.type = "text";
  }
  return input;
}

function bound(value) {
  return Math.abs(value) >= 1e6 ? value.toExponential(0).replace("e+", "e") : String(value);
}

/** The range of a number, as a person writes it: "0 to 1", "at least 0", "more than 0, at most 1". */
export function rangeText(spec) {
  const low = spec.minimum !== undefined ? ["at least", spec.minimum] : spec.exclusiveMinimum !== undefined
    ? ["more than", spec.exclusiveMinimum] : null;
  const high = spec.maximum !== undefined ? ["at most", spec.maximum] : spec.exclusiveMaximum !== undefined
    ? ["less than", spec.exclusiveMaximum] : null;
  if (low && high && low[0] === "at least" && high[0] === "at most") return `${bound(low[1])} to ${bound(high[1])}`;
  return [low, high].filter(Boolean).map(([words, value]) => `${words} ${bound(value)}`).join(", ");
}

export class SettingsForm {
  constructor(form, send) {
    this.form = form;
    this.send = send;
    this.inputs = new Map(); // "section.field" -> input
    this.built = false;
  }

  build(schema, values) {
    this.form.replaceChildren();
    this.inputs.clear();
    const system = document.createElement("label");
    system.className = "wide";
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = "System prompt";
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = "for new chats; it replaces this chat's at once while nothing has been said";
    const area = document.createElement("textarea");
    area.name = "system_prompt";
    area.setAttribute("aria-label", "System prompt");
    area.addEventListener("change", () => this.change(null, "system_prompt", area.value, area));
    system.append(title, hint, area);
    this.inputs.set("system_prompt", area);
    this.form.append(system);
    for (const [section, heading, note] of SECTIONS) {
      if (!schema.properties[section]) continue;
      const spec = resolve(schema, schema.properties[section]);
      const box = document.createElement("fieldset");
      box.dataset.section = section;
      const legend = document.createElement("legend");
      legend.textContent = heading;
      const about = document.createElement("p");
      about.className = "note";
      about.textContent = note;
      box.append(legend, about);
      for (const [field, raw] of Object.entries(spec.properties)) {
        box.append(this.field(section, field, resolve(schema, raw)));
      }
      this.form.append(box);
    }
    this.built = true;
    this.show(values);
  }

  field(section, field, spec) {
    const name = `${section}.${field}`;
    const [label, help] = FIELDS[name] ?? [field.replaceAll("_", " "), spec.description ?? ""];
    const row = document.createElement("label");
    row.className = spec.type === "boolean" ? "check" : "";
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = label;
    const input = inputFor(spec, OPTIONS[name]);
    input.name = name;
    input.setAttribute("aria-label", label);
    input.addEventListener("change", () => {
      let value = input.type === "checkbox" ? input.checked : input.value;
      if (input.type === "number") value = input.value === "" ? null : Number(input.value);
      this.change(section, field, value, input);
    });
    const range = spec.type === "integer" || spec.type === "number" ? rangeText(spec) : "";
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.textContent = [range, help].filter(Boolean).join("; ");
    row.append(title, input);
    if (hint.textContent) row.append(hint);
    this.inputs.set(name, input);
    return row;
  }

  show(values) {
    for (const [name, input] of this.inputs) {
      const [section, field] = name.includes(".") ? name.split(".") : [null, name];
      const value = section === null ? values[field] : values[section]?.[field];
      if (input.type === "checkbox") input.checked = Boolean(value);
      else if (document.activeElement !== input) input.value = value === null || value === undefined ? "" : String(value);
      this.clearError(input);
    }
  }

  change(section, field, value, input) {
    this.clearError(input);
    this.send({ type: "settings", changes: section === null ? { [field]: value } : { [section]: { [field]: value } } });
  }

  showError(message) {
    // the server names the field ("tracker.decay: ..."); put the message under that input
    for (const [name, input] of this.inputs) {
      if (message.includes(`${name}:`)) {
        const note = document.createElement("div");
        note.className = "error";
        note.textContent = message;
        input.closest("label").append(note);
        return true;
      }
    }
    return false;
  }

  clearError(input) {
    input.closest("label")?.querySelector(".error")?.remove();
  }

  /** Inputs a streaming reply must not change (everything but the view). */
  setBusy(busy) {
    for (const [name, input] of this.inputs) if (!name.startsWith("view.")) input.disabled = busy;
  }
}
