// The page's one WebSocket to the UI server: JSON commands out; JSON messages and binary
// `levels` updates in (protocol.py). Reconnects with backoff when the UI server goes away, and
// says so through `onStatus`.

const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

export class Connection {
  constructor(url, { onJson, onBinary, onStatus }) {
    this.url = url;
    this.onJson = onJson;
    this.onBinary = onBinary;
    this.onStatus = onStatus;
    this.failures = 0;
    this.socket = null;
    this.timer = null;
  }

  open() {
    clearTimeout(this.timer);
    const socket = new WebSocket(this.url);
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    this.onStatus({ state: "connecting" });
    socket.onopen = () => {
      this.failures = 0;
      this.onStatus({ state: "open" });
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") this.onJson(JSON.parse(event.data));
      else this.onBinary(event.data);
    };
    socket.onclose = () => {
      if (this.socket !== socket) return;
      const delay = BACKOFF_MS[Math.min(this.failures, BACKOFF_MS.length - 1)];
      this.failures += 1;
      this.onStatus({ state: "closed", retryMs: delay });
      this.timer = setTimeout(() => this.open(), delay);
    };
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(command) {
    if (!this.isOpen) return false;
    this.socket.send(JSON.stringify(command));
    return true;
  }
}
