// The recording player: asciinema-player (seek bar, pause) with a speed selector.
// Loaded as a file (the CSP allows no inline script).
"use strict";

(function () {
  const box = document.getElementById("player");
  const speed = document.getElementById("speed");
  let player = null;

  function load() {
    const at = player ? player.getCurrentTime() : 0;
    if (player) player.dispose();
    player = AsciinemaPlayer.create(box.dataset.src, box, {
      speed: Number(speed.value), startAt: at, fit: "width", idleTimeLimit: 2,
      autoPlay: at > 0, preload: true,
    });
  }

  speed.addEventListener("change", load);
  load();
})();
