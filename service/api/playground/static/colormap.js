// cividis (Nuñez, Anderton and Renslow 2018): perceptually uniform and readable with every common colour-vision
// deficiency. 17 samples of matplotlib's table, interpolated linearly.
"use strict";
(function () {
  const STOPS = [
    "#00224e", "#002e6a", "#1a386f", "#32436d", "#434e6c", "#535a6d", "#61656f", "#6f7073", "#7d7c78",
    "#8c8878", "#9b9476", "#aba072", "#bcae6c", "#cdbb63", "#dec958", "#f0d846", "#fee838",
  ].map((hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)));
  const TABLE = [];
  for (let k = 0; k < 256; k++) {
    const x = (k / 255) * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2);
    const f = x - i;
    const rgb = STOPS[i].map((a, j) => Math.round(a + (STOPS[i + 1][j] - a) * f));
    TABLE.push({ css: `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`, light: 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 });
  }
  // value in [0, 1] -> {css, light}; light: the colour is light enough for dark text on it
  window.cividis = function (value) {
    const v = Number.isFinite(value) ? Math.max(0, Math.min(1, value)) : 0;
    return TABLE[Math.round(v * 255)];
  };
})();
