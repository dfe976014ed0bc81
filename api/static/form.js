// The generation form, built from a workflow's parameter descriptions
// (GET api/workflows/<name>): JSON Schema keywords type, minimum, maximum, multipleOf, enum,
// default, description, plus random_when_missing for the seed. Parameters this file has no
// special layout for are rendered generically from their schema, so a workflow with new
// parameters needs no change here.

import { h, humanize, icon } from "./dom.js";

// FLUX.2 latents step by 16: every preset is a multiple of 16 on both sides.
const SIZE_PRESETS = [
  { label: "Square", width: 1024, height: 1024 },
  { label: "3:2", width: 1216, height: 832 },
  { label: "2:3", width: 832, height: 1216 },
  { label: "16:9", width: 1344, height: 768 },
  { label: "9:16", width: 768, height: 1344 },
  { label: "Small", width: 512, height: 512 },
];
const MAIN = ["prompt", "size", "steps", "cfg", "guidance", "seed", "loras"];
const SEED_LIMIT = 2n ** 53n; // seeds drawn here stay exact as JavaScript numbers

export class ParamForm {
  /** container: the element the fields go in. */
  constructor(container) {
    this.container = container;
    this.fields = new Map(); // name -> {schema, input, read(), write(v), error}
    this.workflow = null;
    this.loraNames = [];
  }

  /** Build the fields of one workflow; keeps the prompt typed so far. */
  render(workflow) {
    const keep = this.fields.get("prompt")?.input.value ?? "";
    // Keyboard users keep their place when the fields are rebuilt under them.
    const focused = this.container.contains(document.activeElement) ? document.activeElement.id : null;
    this.workflow = workflow;
    this.fields.clear();
    const params = workflow.parameters || {};
    const main = h("div", { class: "fields" });
    const more = h("div", { class: "fields" });
    const placed = new Set();

    const add = (target, name) => {
      if (placed.has(name) || !params[name]) return;
      placed.add(name);
      target.append(this.#field(name, params[name]));
    };
    for (const name of MAIN) {
      if (name === "size") {
        if (params.width && params.height) {
          main.append(this.#size(params.width, params.height));
          placed.add("width").add("height");
        }
      } else if (name === "loras") {
        if (workflow.loras?.supported || params.loras) {
          main.append(this.#loras(workflow.loras || {}));
          placed.add("loras");
        }
      } else {
        add(main, name);
      }
    }
    const rest = Object.keys(params).filter((name) => !placed.has(name));
    rest.forEach((name) => add(more, name));

    this.container.replaceChildren(main);
    if (more.childElementCount) {
      this.container.append(
        h(
          "details",
          { class: "more" },
          h("summary", {}, `More settings (${more.childElementCount})`),
          more,
        ),
      );
    }
    if (keep && this.fields.has("prompt")) this.fields.get("prompt").input.value = keep;
    this.#updateCounter();
    if (focused) (document.getElementById(focused) || this.fields.get("prompt")?.input)?.focus();
  }

  /** The request body, or {invalid: <first bad input>} after marking every bad field. */
  values() {
    const body = {};
    let invalid = null;
    for (const [name, field] of this.fields) {
      field.setError("");
      let value;
      try {
        value = field.read();
      } catch (error) {
        field.setError(error.message);
        invalid = invalid || field.focusTarget;
        continue;
      }
      if (value === undefined) continue;
      body[name] = value;
    }
    return invalid ? { invalid } : { body };
  }

  /** Fill the form with a job's parameters ("reuse these settings"); the seed gets locked. */
  fill(parameters) {
    for (const [name, value] of Object.entries(parameters || {})) {
      const field = this.fields.get(name);
      if (field && value !== null && value !== undefined) field.write(value, { lock: true });
    }
    this.#updateCounter();
    this.#syncPreset();
  }

  /** Show the seed the server drew for an unlocked seed, so it can be locked afterwards. */
  showSeed(seed) {
    const field = this.fields.get("seed");
    if (field?.showUsed && seed !== null && seed !== undefined) field.showUsed(String(seed));
  }

  /** Mark the field the API named in a 400. */
  markInvalid(name, message) {
    const field = this.fields.get(name);
    if (!field) return false;
    field.setError(message);
    field.focusTarget.focus();
    return true;
  }

  setLoraNames(names) {
    this.loraNames = names || [];
    const list = document.getElementById("lora-names");
    if (list) list.replaceChildren(...this.loraNames.map((n) => h("option", { value: n })));
  }

  // --- fields ---------------------------------------------------------------------------------

  #register(name, schema, input, read, write, wrapper) {
    const error = h("p", { class: "field-error", id: `e-${name}`, hidden: true });
    wrapper.append(error);
    const field = {
      schema,
      input,
      read,
      write,
      focusTarget: input,
      setError(message) {
        error.textContent = message;
        error.hidden = !message;
        if (message) input.setAttribute("aria-invalid", "true");
        else input.removeAttribute("aria-invalid");
      },
    };
    const described = [input.getAttribute("aria-describedby"), error.id].filter(Boolean);
    input.setAttribute("aria-describedby", described.join(" "));
    this.fields.set(name, field);
    return field;
  }

  #hint(name, schema) {
    const parts = [];
    if (schema.description) parts.push(schema.description);
    const range = rangeText(schema);
    if (range) parts.push(range);
    if (!parts.length) return null;
    return h("p", { class: "hint", id: `h-${name}` }, parts.join(" · "));
  }

  #field(name, schema) {
    if (name === "seed" && (schema.random_when_missing || schema.type === "integer")) {
      return this.#seed(name, schema);
    }
    if (name === "prompt" || (schema.type === "string" && (schema.maxLength || 0) > 300)) {
      return this.#text(name, schema, true);
    }
    if (schema.kind === "images" || schema.type === "array" || schema.type === "object") {
      // Inputs such as reference images need an upload first: that is the API's job.
      return h(
        "div",
        { class: "field" },
        h("span", { class: "label" }, humanize(name)),
        h("p", { class: "hint" }, `Set through the API (${schema.description || schema.type}).`),
      );
    }
    if (Array.isArray(schema.enum)) return this.#choice(name, schema);
    if (schema.type === "boolean") return this.#check(name, schema);
    if (schema.type === "integer" || schema.type === "number") {
      if (schema.type === "integer" && /colou?r/.test(name) && schema.maximum === 0xffffff) {
        return this.#color(name, schema);
      }
      return this.#number(name, schema);
    }
    return this.#text(name, schema, false);
  }

  #label(name, schema, forId) {
    return h(
      "label",
      { for: forId },
      humanize(name),
      schema.required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null,
    );
  }

  #text(name, schema, multiline) {
    const id = `f-${name}`;
    const hint = name === "prompt" ? null : this.#hint(name, schema);
    const attrs = {
      id,
      name,
      required: !!schema.required,
      maxlength: schema.maxLength,
      "aria-describedby": hint ? hint.id : undefined,
      autocomplete: "off",
      spellcheck: name === "prompt" ? "true" : "false",
    };
    const input = multiline
      ? h("textarea", {
          ...attrs,
          rows: name === "prompt" ? 4 : 3,
          placeholder: name === "prompt" ? "Describe the image…" : "",
        })
      : h("input", { ...attrs, type: "text" });
    if (schema.default !== undefined && schema.default !== null && schema.default !== "") {
      // A required text's default is the template's placeholder: an example, not a value.
      if (schema.required) input.placeholder = `e.g. ${schema.default}`;
      else input.value = schema.default;
    }
    const wrapper = h("div", { class: `field field-${name}` }, this.#label(name, schema, id));
    if (name === "prompt") {
      this.counter = h("span", { class: "counter", id: "prompt-count", "aria-hidden": "true" });
      input.addEventListener("input", () => this.#updateCounter());
      wrapper.firstChild.append(this.counter);
    }
    wrapper.append(input);
    if (hint) wrapper.append(hint);
    this.#register(
      name,
      schema,
      input,
      () => {
        const value = input.value;
        if (!value.trim()) {
          if (schema.required) throw new Error(`${humanize(name)} is required`);
          return undefined;
        }
        if (schema.minLength && value.length < schema.minLength) {
          throw new Error(`At least ${schema.minLength} characters`);
        }
        if (schema.pattern && !new RegExp(schema.pattern).test(value)) {
          throw new Error(`Not a valid ${humanize(name).toLowerCase()}`);
        }
        return value;
      },
      (value) => {
        input.value = String(value);
      },
      wrapper,
    );
    return wrapper;
  }

  #choice(name, schema) {
    const id = `f-${name}`;
    const hint = this.#hint(name, { ...schema, enum: undefined });
    const select = h("select", { id, name, "aria-describedby": hint?.id });
    if (!schema.required && schema.default === undefined) {
      select.append(h("option", { value: "" }, "Default"));
    }
    for (const option of schema.enum) select.append(h("option", { value: String(option) }, option));
    if (schema.default !== undefined && schema.default !== null) select.value = schema.default;
    const wrapper = h("div", { class: "field" }, this.#label(name, schema, id), select, hint);
    this.#register(
      name,
      schema,
      select,
      () => {
        if (select.value === "") return undefined;
        const chosen = schema.enum.find((v) => String(v) === select.value);
        return chosen === undefined ? select.value : chosen;
      },
      (value) => {
        select.value = String(value);
      },
      wrapper,
    );
    return wrapper;
  }

  #check(name, schema) {
    const id = `f-${name}`;
    const hint = this.#hint(name, schema);
    const box = h("input", {
      type: "checkbox",
      id,
      name,
      checked: !!schema.default,
      "aria-describedby": hint?.id,
    });
    const wrapper = h(
      "div",
      { class: "field field-check" },
      h("label", { for: id, class: "check" }, box, humanize(name)),
      hint,
    );
    this.#register(
      name,
      schema,
      box,
      () => box.checked,
      (value) => {
        box.checked = !!value;
      },
      wrapper,
    );
    return wrapper;
  }

  #number(name, schema, { inline = false } = {}) {
    const id = `f-${name}`;
    const hint = inline ? null : this.#hint(name, schema);
    const integer = schema.type === "integer";
    const input = h("input", {
      id,
      name,
      type: "number",
      inputmode: integer ? "numeric" : "decimal",
      min: schema.minimum,
      max: schema.maximum,
      step: schema.multipleOf || (integer ? 1 : "any"),
      required: !!schema.required,
      "aria-describedby": hint?.id,
    });
    if (schema.default !== undefined && schema.default !== null) input.value = schema.default;
    const control = h("div", { class: "number" }, input);
    const slider = sliderFor(name, schema);
    if (slider) {
      // The slider is for pointers; keyboards and screen readers use the number box (arrow
      // keys step it), so the slider stays out of the tab order and the accessibility tree.
      slider.value = input.value;
      slider.addEventListener("input", () => {
        input.value = slider.value;
        input.dispatchEvent(new Event("input", { bubbles: true }));
      });
      input.addEventListener("input", () => {
        if (input.value !== "") slider.value = input.value;
      });
      control.prepend(slider);
      control.classList.add("with-slider");
    }
    const wrapper = h(
      "div",
      { class: `field field-${name}` },
      this.#label(name, schema, id),
      control,
      hint,
    );
    this.#register(
      name,
      schema,
      input,
      () => readNumber(input.value, name, schema),
      (value) => {
        input.value = String(value);
        if (slider) slider.value = input.value;
      },
      wrapper,
    );
    return wrapper;
  }

  #color(name, schema) {
    const id = `f-${name}`;
    const hint = this.#hint(name, { description: schema.description });
    const toHex = (n) => `#${Number(n).toString(16).padStart(6, "0")}`;
    const input = h("input", { id, name, type: "color", "aria-describedby": hint?.id });
    input.value = toHex(schema.default ?? 0);
    const wrapper = h("div", { class: "field field-color" }, this.#label(name, schema, id), input);
    if (hint) wrapper.append(hint);
    this.#register(
      name,
      schema,
      input,
      () => Number.parseInt(input.value.slice(1), 16),
      (value) => {
        input.value = toHex(value);
      },
      wrapper,
    );
    return wrapper;
  }

  #size(widthSchema, heightSchema) {
    const wrapper = h("fieldset", { class: "field size" }, h("legend", {}, "Size"));
    const step = widthSchema.multipleOf;
    const fits = (p) =>
      step === 16 &&
      heightSchema.multipleOf === 16 &&
      inRange(p.width, widthSchema) &&
      inRange(p.height, heightSchema);
    const presets = SIZE_PRESETS.filter(fits);
    this.presetInputs = [];
    if (presets.length) {
      const group = h("div", {
        class: "presets",
        role: "radiogroup",
        "aria-label": "Size presets (multiples of 16)",
      });
      for (const preset of presets) {
        const value = `${preset.width}x${preset.height}`;
        const radio = h("input", {
          type: "radio",
          name: "size-preset",
          value,
          id: `preset-${value}`,
          class: "visually-hidden",
        });
        radio.addEventListener("change", () => {
          this.fields.get("width").write(preset.width);
          this.fields.get("height").write(preset.height);
        });
        this.presetInputs.push(radio);
        const ratio = preset.width / preset.height;
        const shape = h("span", { class: "shape", "aria-hidden": "true" });
        shape.style.setProperty("--w", `${Math.round(ratio >= 1 ? 20 : 20 * ratio)}px`);
        shape.style.setProperty("--h", `${Math.round(ratio >= 1 ? 20 / ratio : 20)}px`);
        group.append(
          h(
            "label",
            { for: radio.id, class: "preset" },
            radio,
            shape,
            h("span", { class: "preset-name" }, preset.label),
            h("span", { class: "preset-size" }, `${preset.width}×${preset.height}`),
          ),
        );
      }
      wrapper.append(group);
    }
    const row = h("div", { class: "pair" });
    for (const [name, schema] of [
      ["width", widthSchema],
      ["height", heightSchema],
    ]) {
      const cell = this.#number(name, schema, { inline: true });
      row.append(cell);
      this.fields.get(name).input.addEventListener("input", () => this.#syncPreset());
    }
    wrapper.append(row);
    const widthRange = rangeText(widthSchema);
    const heightRange = rangeText(heightSchema);
    if (widthRange || heightRange) {
      const hint = h(
        "p",
        { class: "hint", id: "h-size" },
        widthRange === heightRange
          ? `Width and height: ${widthRange}`
          : `Width: ${widthRange}; height: ${heightRange}`,
      );
      wrapper.append(hint);
      for (const name of ["width", "height"]) {
        const input = this.fields.get(name).input;
        input.setAttribute("aria-describedby", `${hint.id} ${input.getAttribute("aria-describedby")}`);
      }
    }
    queueMicrotask(() => this.#syncPreset());
    return wrapper;
  }

  #syncPreset() {
    if (!this.presetInputs?.length || !this.fields.has("width")) return;
    const value = `${this.fields.get("width").input.value}x${this.fields.get("height").input.value}`;
    for (const radio of this.presetInputs) radio.checked = radio.value === value;
  }

  #seed(name, schema) {
    const id = `f-${name}`;
    const random = !!schema.random_when_missing;
    const hint = h("p", { class: "hint", id: `h-${name}` });
    const input = h("input", {
      id,
      name,
      type: "text",
      inputmode: "numeric",
      autocomplete: "off",
      placeholder: random ? "random" : "",
      "aria-describedby": hint.id,
    });
    if (schema.default !== undefined && schema.default !== null) input.value = schema.default;
    let locked = !random;
    const lock = h("button", {
      type: "button",
      class: "btn icon-btn",
      id: "seed-lock",
      "aria-pressed": String(locked),
    });
    const dice = h(
      "button",
      { type: "button", class: "btn icon-btn", id: "seed-dice", title: "New random seed" },
      icon("dice"),
      h("span", { class: "visually-hidden" }, "New random seed"),
    );
    const show = () => {
      lock.setAttribute("aria-pressed", String(locked));
      lock.replaceChildren(
        icon(locked ? "lock" : "unlock"),
        h("span", { class: "btn-text" }, locked ? "Locked" : "Random"),
      );
      lock.title = locked ? "Unlock: a new random seed for every image" : "Lock this seed";
      hint.textContent = locked
        ? "Locked: every image uses this seed."
        : "Random: the server draws a new seed for every image, shown here afterwards.";
      input.classList.toggle("seed-unlocked", !locked);
    };
    const setLocked = (value) => {
      locked = !!value;
      if (locked && !input.value.trim()) input.value = randomSeed();
      show();
    };
    if (!random) {
      lock.hidden = true;
    }
    lock.addEventListener("click", () => setLocked(!locked));
    dice.addEventListener("click", () => {
      input.value = randomSeed();
      setLocked(true);
    });
    input.addEventListener("input", () => {
      if (!locked && input.value.trim()) setLocked(true);
    });
    show();
    const wrapper = h(
      "div",
      { class: "field field-seed" },
      this.#label(name, schema, id),
      h("div", { class: "seed-row" }, input, lock, dice),
      hint,
    );
    const field = this.#register(
      name,
      schema,
      input,
      () => {
        if (!locked) return undefined;
        const text = input.value.trim();
        if (!/^\d+$/.test(text)) throw new Error("A seed is a whole number of 0 or more");
        const big = BigInt(text);
        if (schema.maximum !== undefined && big > BigInt(String(schema.maximum))) {
          throw new Error(`At most ${schema.maximum}`);
        }
        return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
      },
      (value, { lock: lockIt = true } = {}) => {
        input.value = String(value);
        if (lockIt && random) setLocked(true);
      },
      wrapper,
    );
    field.showUsed = (seed) => {
      if (!locked) input.value = seed;
    };
    return wrapper;
  }

  #loras(info) {
    const max = info.max || 10;
    const list = h("div", { class: "lora-list" });
    const addButton = h(
      "button",
      { type: "button", class: "btn btn-ghost", id: "lora-add" },
      icon("plus"),
      "Add LoRA",
    );
    const wrapper = h(
      "fieldset",
      { class: "field loras" },
      h("legend", {}, "LoRAs"),
      h("datalist", { id: "lora-names" }, ...this.loraNames.map((n) => h("option", { value: n }))),
      list,
      addButton,
      h("p", { class: "hint", id: "h-loras" }, "File names from ComfyUI's models/loras folder."),
    );
    let counter = 0;
    const addRow = (name = "", strength = 1) => {
      if (list.childElementCount >= max) return null;
      counter += 1;
      const n = counter;
      const nameInput = h("input", {
        type: "text",
        id: `lora-name-${n}`,
        class: "lora-name",
        list: "lora-names",
        autocomplete: "off",
        placeholder: "name.safetensors",
        value: name,
      });
      const strengthInput = h("input", {
        type: "number",
        id: `lora-strength-${n}`,
        class: "lora-strength",
        step: 0.05,
        min: -10,
        max: 10,
        value: strength,
      });
      const row = h(
        "div",
        { class: "lora-row" },
        h("label", { for: nameInput.id, class: "visually-hidden" }, `LoRA ${n} file`),
        nameInput,
        h("label", { for: strengthInput.id, class: "visually-hidden" }, `LoRA ${n} strength`),
        strengthInput,
        h(
          "button",
          {
            type: "button",
            class: "btn icon-btn",
            "aria-label": `Remove LoRA ${n}`,
            onclick: () => {
              row.remove();
              addButton.disabled = false;
              addButton.focus();
            },
          },
          icon("x"),
        ),
      );
      list.append(row);
      addButton.disabled = list.childElementCount >= max;
      return nameInput;
    };
    addButton.addEventListener("click", () => addRow()?.focus());
    const field = this.#register(
      "loras",
      {},
      addButton,
      () => {
        const specs = [];
        for (const row of list.children) {
          const name = row.querySelector(".lora-name").value.trim();
          const strength = row.querySelector(".lora-strength").value.trim() || "1";
          if (!name) continue;
          if (!Number.isFinite(Number(strength))) throw new Error(`Strength of ${name}`);
          specs.push(`${name}:${Number(strength)}`);
        }
        return specs.length ? specs : undefined;
      },
      (value) => {
        list.replaceChildren();
        for (const spec of Array.isArray(value) ? value : []) {
          if (typeof spec === "string") {
            const match = /^(.*?)(?::(-?[\d.]+))?(?::-?[\d.]+)?$/.exec(spec);
            addRow(match[1], match[2] ?? 1);
          } else if (spec && spec.name && (spec.source ?? "request") === "request") {
            addRow(spec.name, spec.strength ?? spec.strength_model ?? 1);
          }
        }
        addButton.disabled = list.childElementCount >= max;
      },
      wrapper,
    );
    field.focusTarget = addButton;
    return wrapper;
  }

  #updateCounter() {
    const prompt = this.fields.get("prompt");
    if (!prompt || !this.counter) return;
    const max = prompt.schema.maxLength;
    const used = prompt.input.value.length;
    this.counter.textContent = max ? `${used} / ${max}` : String(used);
  }
}

function inRange(value, schema) {
  return (
    (schema.minimum === undefined || value >= schema.minimum) &&
    (schema.maximum === undefined || value <= schema.maximum) &&
    (!schema.multipleOf || value % schema.multipleOf === 0)
  );
}

function rangeText(schema) {
  if (schema.type !== "integer" && schema.type !== "number") return "";
  const parts = [];
  const big = (v) => v !== undefined && Math.abs(v) < 1e9;
  if (big(schema.minimum) && big(schema.maximum)) parts.push(`${schema.minimum}–${schema.maximum}`);
  else if (big(schema.minimum)) parts.push(`≥ ${schema.minimum}`);
  if (schema.multipleOf) parts.push(`multiple of ${schema.multipleOf}`);
  return parts.join(", ");
}

function sliderFor(name, schema) {
  const { minimum: min, maximum: max } = schema;
  if (min === undefined || max === undefined || ["width", "height", "seed"].includes(name)) {
    return null;
  }
  const integer = schema.type === "integer";
  const step = schema.multipleOf || (integer ? 1 : niceStep((max - min) / 200));
  if ((max - min) / step > 1000) return null;
  return h("input", {
    type: "range",
    min,
    max,
    step,
    tabindex: "-1",
    "aria-hidden": "true",
    class: "slider",
  });
}

function niceStep(raw) {
  for (const step of [0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 10]) if (step >= raw) return step;
  return 10;
}

function readNumber(text, name, schema) {
  const label = humanize(name);
  if (text.trim() === "") {
    if (schema.required) throw new Error(`${label} is required`);
    return undefined;
  }
  const value = Number(text);
  if (!Number.isFinite(value)) throw new Error(`${label} must be a number`);
  if (schema.type === "integer" && !Number.isInteger(value)) {
    throw new Error(`${label} must be a whole number`);
  }
  if (schema.minimum !== undefined && value < schema.minimum) {
    throw new Error(`${label} must be at least ${schema.minimum}`);
  }
  if (schema.maximum !== undefined && value > schema.maximum) {
    throw new Error(`${label} must be at most ${schema.maximum}`);
  }
  if (schema.multipleOf && Math.abs(value / schema.multipleOf - Math.round(value / schema.multipleOf)) > 1e-9) {
    throw new Error(`${label} must be a multiple of ${schema.multipleOf}`);
  }
  return value;
}

function randomSeed() {
  const words = crypto.getRandomValues(new Uint32Array(2));
  return String(((BigInt(words[0]) << 32n) | BigInt(words[1])) % SEED_LIMIT);
}
