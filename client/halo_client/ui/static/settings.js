// The settings form, generated from the settings file's JSON schema (config.py's pydantic
// models, sent by the UI server): every tracker, pruner, sampler and view setting, with the
// models' own ranges as the inputs' limits. The UI server validates each change with the same
// models the command line uses; its refusal is shown next to the field.

const SECTIONS = [["tracker", "Brightness tracker"], ["pruner", "Pruner"], ["memory", "Memory"], ["sampler", "Sampler"], ["view", "View"]];

function resolve(schema, node) {
  if (node && node.$ref) return schema.$defs[node.$ref.split("/").pop()];
  if (node && node.anyOf) return resolve(schema, node.anyOf.find((n) => n.type !== "null") || node.anyOf[0]);
  return node;
}

function inputFor(spec) {
  if (spec.enum) {
    const select = document.createElement("select");
    for (const value of spec.enum) select.add(new Option(value, value));
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

function range(spec) {
  const parts = [];
  if (spec.minimum !== undefined) parts.push(`≥ ${spec.minimum}`);
  if (spec.exclusiveMinimum !== undefined) parts.push(`> ${spec.exclusiveMinimum}`);
  if (spec.maximum !== undefined) parts.push(`≤ ${spec.maximum}`);
  if (spec.exclusiveMaximum !== undefined) parts.push(`< ${spec.exclusiveMaximum}`);
  return parts.join(", ");
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
    system.append("system prompt (new chats; applies at once while nothing has been said)");
    const area = document.createElement("textarea");
    area.name = "system_prompt";
    area.setAttribute("aria-label", "system prompt");
    area.addEventListener("change", () => this.change(null, "system_prompt", area.value, area));
    system.append(area);
    this.inputs.set("system_prompt", area);
    this.form.append(system);
    for (const [section, title] of SECTIONS) {
      const spec = resolve(schema, schema.properties[section]);
      const box = document.createElement("fieldset");
      const legend = document.createElement("legend");
      legend.textContent = title;
      box.append(legend);
      for (const [field, raw] of Object.entries(spec.properties)) {
        const fieldSpec = resolve(schema, raw);
        const label = document.createElement("label");
        const name = `${section}.${field}`;
        const hint = range(fieldSpec);
        label.title = [fieldSpec.description, hint].filter(Boolean).join(" · ");
        label.append(field.replaceAll("_", " "));
        const input = inputFor(fieldSpec);
        input.name = name;
        input.setAttribute("aria-label", field);
        input.addEventListener("change", () => {
          let value = input.type === "checkbox" ? input.checked : input.value;
          if (input.type === "number") value = input.value === "" ? null : Number(input.value);
          this.change(section, field, value, input);
        });
        label.append(input);
        box.append(label);
        this.inputs.set(name, input);
      }
      this.form.append(box);
    }
    this.built = true;
    this.show(values);
  }

  show(values) {
    for (const [name, input] of this.inputs) {
      const [section, field] = name.includes(".") ? name.split(".") : [null, name];
      const value = section === null ? values[field] : values[section][field];
      if (input.type === "checkbox") input.checked = Boolean(value);
      else if (document.activeElement !== input) input.value = value === null ? "" : String(value);
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
}
