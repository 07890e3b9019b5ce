// Follows the store: every half second the page asks its "live" twin whether anything changed
// (204: nothing did) and, when something did, swaps in the new content, keeping open whatever
// the reader opened. No other script runs on these pages.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const follow = document.getElementById("follow");
  if (!live || !follow) return;
  const every = Number(follow.dataset.pollMs) || 500;
  let mark = live.dataset.mark;

  function openDetails() {
    return Array.from(live.querySelectorAll("details[open]"), (d) => d.className);
  }

  async function look() {
    try {
      const answer = await fetch(live.dataset.live + "?mark=" + encodeURIComponent(mark), {
        cache: "no-store",
      });
      if (answer.status === 200) {
        const opened = openDetails();
        live.innerHTML = await answer.text();
        mark = answer.headers.get("X-Mark") || "";
        live.dataset.mark = mark;
        for (const name of opened) {
          const again = live.querySelector("details." + CSS.escape(name));
          if (again) again.open = true;
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
