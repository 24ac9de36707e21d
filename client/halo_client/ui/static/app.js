// The workbench page: a view and controller over one WebSocket to the UI server, which owns the
// conversation (workbench.py). This module routes messages to the parts of the page and turns
// the user's actions into commands; it decides nothing about the conversation itself.

import { Connection } from "./connection.js";
import { TokenDictionary } from "./dictionary.js";
import { InspectorPanel } from "./inspector.js";
import { Legend } from "./legend.js";
import { ActivityLog, PrunedList } from "./pruned.js";
import { SessionsPanel, exportPng } from "./sessions.js";
import { SettingsForm } from "./settings.js";
import { attachTooltip } from "./tooltip.js";
import { Transcript } from "./transcript.js";

const $ = (id) => document.getElementById(id);
/** What a reply that ended early leaves on its message (reply_done's finish_reason). */
const ENDED = { aborted: "stopped", interrupted: "interrupted: the server went away" };

class App {
  constructor() {
    this.model = null;
    this.settings = null;
    this.connection_ = null;
    this.busy = false;
    this.pendingText = null;
    this.selected = null;
    this.lastOpen = null;
    this.resyncing = false;
    this.waiting = new Map(); // position -> [resolve] of token_info requests
    this.settingsFile = null;
    this.transcript = new Transcript($("transcript"), { onMismatch: (why) => this.resync(why) });
    const isTemplate = (p) => this.transcript.isTemplate(p);
    this.pruned = new PrunedList({ list: $("pruned-list"), count: $("pruned-count"), more: $("pruned-more"),
                                   note: $("pruned-note") }, { send: (command) => this.send(command), isTemplate });
    this.activity = new ActivityLog($("activity"), { isTemplate });
    this.legend = new Legend({ panel: $("legend"), bar: document.querySelector("#legend .legend-bar"),
                               low: $("legend-low"), mode: $("scale-mode"), high: $("legend-high"), text: $("legend-text") });
    this.settingsForm = new SettingsForm($("settings"), (command) => this.send(command));
    this.inspector = new InspectorPanel({
      panel: $("inspector-panel"), empty: $("inspector-empty"), body: $("inspector"), title: $("inspector-title"),
      layer: $("layer"), head: $("head"), scales: document.querySelectorAll('input[name="iscale"]'),
      overview: $("overview"), top: $("top"), close: $("inspector-close"),
    }, { send: (command) => this.send(command), transcript: this.transcript, legend: this.legend });
    this.dictionary = new TokenDictionary({
      panel: $("dictionary"), toggle: $("dictionary-toggle"), header: $("dictionary-header"),
      viewport: $("dictionary-viewport"), sizer: $("dictionary-sizer"), rows: $("dictionary-rows"),
      filter: $("dictionary-filter"), state: $("dictionary-state"), role: $("dictionary-role"),
      status: $("dictionary-status"),
    }, { transcript: this.transcript, send: (command) => this.send(command), isBusy: () => this.busy,
         onPick: (position) => { this.transcript.locate(position); this.select(position, { inspect: false }); } });
    this.sessions = new SessionsPanel({
      panel: $("sessions-panel"), newChat: $("new-chat"), name: $("session-input"), save: $("save-session"),
      list: $("session-list"), upload: $("upload"), exportSession: $("export-session"), exportHtml: $("export-html"),
      dir: $("sessions-dir"),
    }, { send: (command) => this.send(command), onError: (text) => this.banner("error", text) });
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new Connection(`${scheme}://${location.host}/ws`, {
      onJson: (message) => this.onJson(message),
      onBinary: (buffer) => { this.transcript.applyLevels(buffer); this.drawBudget(); },
      onStatus: (status) => this.onSocket(status),
    });
    this.wire();
    this.socket.open();
  }

  send(command) {
    if (command.type === "open" || command.type === "upload") this.lastOpen = command;
    if (!this.socket.send(command)) {
      this.banner("unreachable", "Not connected to the workbench server; the command was not sent.");
      return false;
    }
    return true;
  }

  // ------------------------------------------------------------------ user actions

  wire() {
    const message = $("message");
    $("composer").addEventListener("submit", (event) => { event.preventDefault(); this.sendMessage(); });
    message.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.sendMessage();
      }
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && this.busy) { event.preventDefault(); this.send({ type: "stop" }); }
    });
    $("stop").addEventListener("click", () => this.send({ type: "stop" }));
    $("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
    $("transcript").addEventListener("click", (event) => {
      const span = event.target.closest(".tok");
      if (!span) return;
      this.select(Number(span.dataset.pos));
      this.dictionary.reveal(Number(span.dataset.pos));
    });
    $("transcript").addEventListener("mouseover", (event) => {
      const span = event.target.closest(".tok");
      if (span) this.dictionary.hoverToken(Number(span.dataset.pos));
    });
    $("transcript").addEventListener("mouseleave", () => this.dictionary.hoverToken(-1));
    $("pin").addEventListener("click", () => {
      if (this.selected) this.send({ type: "pin", sentence: this.selected.sentence, pinned: !this.selected.pinned });
    });
    $("prune-sentence").addEventListener("click", () => {
      if (this.selected) this.send({ type: "prune_sentence", sentence: this.selected.sentence });
    });
    $("inspect").addEventListener("click", () => { if (this.selected) this.inspector.open(this.selected.position); });
    $("prune-now").addEventListener("click", () => this.send({ type: "prune_now" }));
    $("show-pruned").addEventListener("change", (event) => {
      this.send({ type: "settings", changes: { view: { show_pruned: event.target.checked } } });
    });
    $("export-png").addEventListener("click", () => {
      exportPng($("transcript"), `halo-${this.model?.name ?? "chat"}.png`, this.legend.current());
    });
    attachTooltip($("transcript"), $("tooltip"), (position) => this.tokenInfo(position));
  }

  sendMessage() {
    const box = $("message");
    const text = box.value;
    if (!text.trim() || this.busy) return;
    if (this.send({ type: "send", text })) {
      this.pendingText = text;
      box.value = "";
    }
  }

  select(position, { inspect = true } = {}) {
    const positions = this.transcript.sentenceOf(position);
    this.transcript.select(positions);
    this.tokenInfo(position).then((info) => {
      this.selected = { position, sentence: info.sentence, pinned: info.pinned, generated: info.generated };
      const text = positions.map((p) => this.transcript.spans[p].textContent).join("");
      $("selection").textContent = info.template
        ? `template token #${position} "${info.label}"`
        : `sentence ${info.sentence} (turn ${info.turn}, ${info.role})${info.pinned ? ", pinned" : ""}` +
          `${info.deleted ? ", pruned" : ""}: ${text.trim()}`;
      $("selection").classList.remove("muted");
      $("selection-actions").hidden = false;
      $("pin").textContent = info.pinned ? "Unpin" : "Pin";
      $("pin").disabled = info.template || this.busy;
      $("prune-sentence").disabled = info.template || info.deleted || info.pinned || this.busy;
      $("inspect").disabled = !info.generated || this.busy;
      if (inspect && info.generated && !this.busy) this.inspector.open(position);
    }, () => {});
  }

  tokenInfo(position) {
    return new Promise((resolve, reject) => {
      const waiters = this.waiting.get(position) ?? [];
      waiters.push(resolve);
      this.waiting.set(position, waiters);
      if (waiters.length === 1 && !this.send({ type: "token_info", position })) {
        this.waiting.delete(position);
        reject(new Error("not connected"));
      }
    });
  }

  resync(why) {
    if (this.resyncing) return;
    this.resyncing = true;
    console.warn(`resync: ${why}`);
    this.send({ type: "resync" });
  }

  // ------------------------------------------------------------------ server messages

  onJson(message) {
    const handler = this[`on_${message.type}`];
    if (handler) handler.call(this, message);
    else console.warn("unknown message", message.type);
  }

  on_snapshot(m) {
    this.resyncing = false;
    this.busy = m.busy;
    this.transcript.clear();
    this.transcript.epoch = m.epoch;
    this.inspector.close();
    this.selected = null;
    $("selection-actions").hidden = true;
    if (m.rows) this.transcript.addRows(m.rows);
    for (const [turn, reason] of Object.entries(m.turn_endings ?? {})) {
      if (ENDED[reason]) this.transcript.noteTurn(Number(turn), ENDED[reason]);
    }
    this.connectionStatus(m.connection, m.model);
    this.applySettings(m.settings);
    if (!this.settingsForm.built) this.settingsForm.build(m.schema, m.settings);
    if (m.settings_file) this.settingsFile = m.settings_file;
    this.describeSettingsFile();
    if (m.pruned) this.pruned.show(m.pruned, false);
    if (m.legend) this.legend.showHeat(m.legend);
    $("session-name").textContent = m.session ? `session: ${m.session}` : "";
    this.showBusy(m.busy);
    this.drawBudget();
  }

  on_rows(m) {
    this.transcript.epoch = m.epoch;
    this.transcript.updateRows(m.update);
    this.transcript.addRows(m.add);
    this.transcript.animate(m.flash, "flash");
    this.transcript.animate(m.restored, "back");
    this.activity.log(m.events);
    this.pruned.show(m.pruned, true);
    if (m.legend) this.legend.showHeat(m.legend);
    if (m.model) this.model = m.model;
    this.drawBudget();
    if (this.selected !== null) this.select(this.selected.position, { inspect: false }); // pinned, pruned...
  }

  on_token(m) {
    this.transcript.addToken(m);
  }

  on_busy(m) {
    this.showBusy(m.busy);
    if (!m.busy && this.selected !== null) this.select(this.selected.position, { inspect: false });
  }

  on_reply_done(m) {
    $("session-name").dataset.last = `${m.tokens} tokens, ${m.tokens_per_second.toFixed(1)} tokens/s (${m.finish_reason})`;
    $("session-name").title = $("session-name").dataset.last;
    if (ENDED[m.finish_reason]) this.transcript.noteTurn(m.turn ?? this.transcript.lastTurn("assistant"), ENDED[m.finish_reason]);
  }

  on_token_table(m) { this.dictionary.onTable(m); }

  on_connection(m) { this.connectionStatus(m, m.model); }

  on_settings(m) {
    this.applySettings(m.settings);
    this.settingsForm.show(m.settings);
    if (m.model) this.model = m.model;
    if (m.saved) this.settingsFile = m.saved;
    this.describeSettingsFile();
    $("settings-file").textContent = m.saved ? `Saved to ${m.saved} at ${new Date().toLocaleTimeString()}.` : "";
    this.drawBudget();
  }

  on_legend(m) { this.legend.showHeat(m.legend); }

  on_error(m) {
    if (m.command === "settings" && this.settingsForm.showError(m.message)) return;
    if (m.over_budget) { this.drawBudget(); return; } // the budget panel says so, for as long as it is true
    if (m.command === "send") { this.sendFailed(m); return; }
    if (m.kind === "mismatch") {
      this.banner("mismatch", m.message, "Open anyway", () => this.forceOpen());
      return;
    }
    this.banner(m.kind, m.message);
  }

  /** A message that was not answered. The UI server says what became of it (`outcome`):
   * "refused" (nothing changed: too long, or not sent), "undone" (the reply failed and the
   * conversation is as it was before the message) - then the text goes back into the box,
   * so nothing the user wrote is lost and sending it again does not repeat it - or
   * "interrupted" (the server went away mid-reply: the message and what was written of the
   * reply are kept, marked) - then it does not. */
  sendFailed(m) {
    const box = $("message");
    const pending = this.pendingText;
    this.pendingText = null;
    const giveBack = m.outcome !== "interrupted" && pending !== null;
    let text = m.message;
    if (m.outcome === "refused" && Number.isInteger(m.tokens) && Number.isInteger(m.max_tokens)) {
      text = `Not sent: the message is ${m.tokens.toLocaleString("en-US")} tokens and the most it can have now is ` +
        `${m.max_tokens.toLocaleString("en-US")}. Nothing changed; shorten it and send it again.`;
    } else if (m.outcome === "interrupted") {
      this.transcript.noteTurn(m.turn ?? this.transcript.lastTurn("assistant"), ENDED.interrupted);
      text = `${m.message} What the reply had written is kept, marked interrupted; your message stays in the chat.`;
    }
    if (giveBack && !box.value) {
      box.value = pending;
      this.banner(m.kind, `${text} Your message is back in the box.`);
    } else if (giveBack) {
      this.banner(m.kind, `${text} You have typed since; your unsent message is kept here.`, "Put it back",
                  () => { box.value = `${pending}\n${box.value}`; });
    } else {
      this.banner(m.kind, text);
    }
  }

  describeSettingsFile() {
    $("settings-about").textContent = `Changes apply at once and are saved to ${this.settingsFile ?? "the settings file"}. ` +
      "halo-client chat, demo and the other commands start from that file too, so a change here changes " +
      "them (a flag you type still wins). A session keeps its own brightness, pruning and memory settings: " +
      "those shown are this chat's, and a change saves them all.";
  }

  on_token_info(m) {
    const waiters = this.waiting.get(m.position) ?? [];
    this.waiting.delete(m.position);
    for (const resolve of waiters) resolve(m);
  }

  on_inspection(m) { this.inspector.show(m); }
  on_sessions(m) { this.sessions.list(m); }
  on_export(m) { this.sessions.exported(m); }
  on_saved(m) {
    $("session-name").textContent = `session: ${m.name}`;
    this.banner("info", `saved to ${m.path}`);
  }

  // ------------------------------------------------------------------ drawing the page

  forceOpen() {
    const last = this.lastOpen;
    if (last) this.send({ ...last, force: true });
  }

  onSocket(status) {
    if (status.state === "open") {
      if ($("banner").dataset.kind === "workbench") $("banner").hidden = true;
    } else if (status.state === "closed") {
      $("conn").dataset.status = "unreachable";
      this.banner("workbench", `The workbench server is not answering; reconnecting in ${Math.round(status.retryMs / 100) / 10} s.`);
    }
  }

  connectionStatus(connection, model) {
    this.connection_ = connection;
    if (model) this.model = model;
    $("conn").dataset.status = connection.status;
    $("conn").title = connection.message;
    const m = this.model;
    if (m) {
      $("model").textContent = m.name;
      $("shape").textContent = `${m.layers} layers × ${m.heads} heads`;
      $("ctx").textContent = `context ${m.context}`;
      $("attn").textContent = m.attention ? `attention on (${m.frame_layout ?? "full"} frames)`
        : `attention off: ${m.attention_reason ?? "not offered"}`;
    }
    if (connection.status === "connected") {
      if (["unreachable", "unauthorized", "busy", "connecting"].includes($("banner").dataset.kind)) $("banner").hidden = true;
    } else if (connection.status !== "connecting") {
      const retry = connection.retry_in ? ` Retrying in ${connection.retry_in} s.` : "";
      this.banner(connection.status, `${connection.message}${retry}`);
    }
  }

  banner(kind, text, action = null, onAction = null) {
    const box = $("banner");
    box.dataset.kind = kind;
    const label = { busy: "Busy", unauthorized: "Unauthorized", unreachable: "Unreachable", mismatch: "Another model",
                    workbench: "Disconnected", warning: "Note", info: "" }[kind] ?? "Error";
    $("banner-text").textContent = label ? `${label}: ${text}` : text;
    const button = $("banner-action");
    button.hidden = action === null;
    if (action !== null) {
      button.textContent = action;
      button.onclick = () => { box.hidden = true; onAction(); };
    }
    box.hidden = false;
  }

  showBusy(busy) {
    this.busy = busy;
    if (!busy) this.pendingText = null;
    $("send").disabled = busy;
    $("stop").hidden = !busy;
    for (const id of ["pin", "prune-sentence", "inspect", "prune-now", "new-chat", "save-session"]) $(id).disabled = busy;
    this.pruned.setBusy(busy);
    this.settingsForm.setBusy(busy);
    this.drawBudget();
  }

  applySettings(settings) {
    this.settings = settings;
    $("show-pruned").checked = settings.view.show_pruned;
    $("transcript").classList.toggle("show-pruned", settings.view.show_pruned);
    $("transcript").classList.toggle("hide-template", !settings.view.show_template);
    for (const radio of document.querySelectorAll('input[name="iscale"]')) {
      radio.checked = radio.value === settings.view.inspector_scale;
    }
    this.inspector.scale = settings.view.inspector_scale;
  }

  drawBudget() {
    const active = this.transcript.activeCount;
    const context = this.model?.context ?? 0;
    const budget = this.settings?.pruner.max_context_tokens ?? 0;
    const limit = budget > 0 ? Math.min(budget, context || budget) : context;
    const fill = $("budget-fill");
    fill.style.width = `${context ? Math.min(100, (100 * active) / context) : 0}%`;
    fill.toggleAttribute("data-over", limit > 0 && active > limit);
    $("budget-limit").style.left = `${context ? Math.min(100, (100 * limit) / context) : 100}%`;
    $("budget-text").textContent = `${active} active tokens / budget ${budget > 0 ? budget : "off"} / server context ${context || "?"}`;
    // over the budget between replies: only protected text is left. Said for exactly as long as it is true
    // (a reply in progress is always protected, and the pruner runs when it ends)
    const over = !this.busy && limit > 0 && active > limit;
    const note = $("budget-note");
    note.hidden = !over;
    note.textContent = over
      ? `Over the ${budget > 0 && limit === budget ? "budget" : "server's context"} by ${active - limit} tokens: ` +
        "only protected text is left (system prompt, latest exchange, template, pinned). Raise the budget or unpin."
      : "";
  }
}

window.halo = new App();
