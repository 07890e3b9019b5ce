// Follows the store: every half second the page asks its "live" twin whether anything changed
// (204: nothing did) and, when something did, swaps in the new content, keeping open or closed
// whatever the reader opened or closed. No other script runs on these pages.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const follow = document.getElementById("follow");
  if (!live || !follow) return;
  const every = Number(follow.dataset.pollMs) || 500;
  let mark = live.dataset.mark;

  // Which of the page's folds the reader has open or closed, by name: kept across updates.
  function folds() {
    return new Map(Array.from(live.querySelectorAll("details"), (d) => [d.className, d.open]));
  }

  async function look() {
    try {
      const url = new URL(live.dataset.live, window.location.href);
      url.searchParams.set("mark", mark);
      const answer = await fetch(url, { cache: "no-store" });
      if (answer.status === 200) {
        const kept = folds();
        live.innerHTML = await answer.text();
        mark = answer.headers.get("X-Mark") || "";
        live.dataset.mark = mark;
        for (const fold of live.querySelectorAll("details")) {
          if (kept.has(fold.className)) fold.open = kept.get(fold.className);
        }
      }
      follow.className = answer.ok ? "follow" : "follow lost";
      follow.textContent = answer.ok ? "live" : "server answered " + answer.status;
    } catch (err) {
      follow.className = "follow lost";
      follow.textContent = "server unreachable";
    }
    setTimeout(look, every);
  }
  setTimeout(look, every);
})();
