// The web terminal: xterm.js <-> WebSocket /web/terminal/ws <-> proxy <-> SSH to the node.
// Loaded as a file (the CSP allows no inline script); reads node and login from the page.
"use strict";

(function () {
  const box = document.getElementById("terminal");
  const status = document.getElementById("term-status");
  const again = document.getElementById("reconnect");
  // Colours and font come from terminal.css (the CSP refuses the inline <style> xterm.js
  // would inject); the font here must match it for xterm.js to measure cells right.
  const term = new Terminal({
    cursorBlink: false, fontSize: 14, scrollback: 5000,
    fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  let socket = null;
  let pinger = null;

  function say(text, closed) {
    status.textContent = text;
    status.className = closed ? "closed" : "";
    again.hidden = !closed;
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function connect() {
    const query = new URLSearchParams({
      node: box.dataset.node, login: box.dataset.login,
      cols: String(term.cols), rows: String(term.rows),
    });
    socket = new WebSocket(`wss://${location.host}/web/terminal/ws?${query}`);
    socket.binaryType = "arraybuffer";
    let ended = false;
    socket.onopen = () => { say("connected", false); term.focus(); };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") {
        const message = JSON.parse(event.data);
        if (message.type === "closed") { ended = true; say(message.message, true); }
        return;
      }
      term.write(new Uint8Array(event.data));
    };
    socket.onclose = () => { if (!ended) say("disconnected", true); clearInterval(pinger); };
    clearInterval(pinger);
    // Keep-alives: idle proxies and NATs drop silent connections.
    pinger = setInterval(() => send({ type: "ping" }), 20000);
  }

  term.onData((data) => send({ type: "input", data: data }));
  term.onResize((size) => send({ type: "resize", cols: size.cols, rows: size.rows }));
  window.addEventListener("resize", () => fit.fit());
  again.addEventListener("click", () => { term.reset(); say("connecting…", false); connect(); });
  connect();
})();
