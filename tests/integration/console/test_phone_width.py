"""The console at a phone's width (375 px, the width the template previews use): a marketer reading a
journey, a lead or a report on a phone scrolls down, never sideways across the whole page. The top bar
wraps, and a table wider than the screen scrolls inside its own box."""

from __future__ import annotations

import pytest

from nurture.settings import Settings
from tests.integration.console.browse import browsing
from tests.integration.console.conftest import KEYS
from tests.integration.console.mesh import console_mesh

pytestmark = pytest.mark.anyio
PHONE = 375
PAGES = ("/console/journeys", "/console/journeys/family", "/console/leads", "/console/leads/f-0",
         "/console/operations", "/console/scoring")
# Elements sticking out on the right of the window, outside any box that scrolls them (a wide table
# scrolling within itself is fine; the page growing sideways is not).
OUTSIDE = """() => {
  const width = document.documentElement.clientWidth, out = [];
  for (const el of document.body.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= width + 1) continue;
    let scrolled = false;
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      const o = getComputedStyle(up).overflowX;
      if ((o === 'auto' || o === 'scroll') && up.getBoundingClientRect().right <= width + 1) { scrolled = true; break; }
    }
    const name = el.tagName.toLowerCase() + (el.className ? '.' + el.className : '');
    if (!scrolled) out.push(name + ' ' + Math.round(box.right));
  }
  return {page: document.documentElement.scrollWidth, width, out: out.slice(0, 6)};
}"""


async def test_no_page_is_wider_than_a_phone(settings: Settings) -> None:
    async with console_mesh(settings, with_scoring=True) as mesh, browsing(mesh.app, KEYS["admin"]) as (base, w):
        await w.page.set_viewport_size({"width": PHONE, "height": 800})
        for path in PAGES:
            await w.open(f"{base}{path}")
            found = await w.page.evaluate(OUTSIDE)
            assert found["page"] <= found["width"] and found["out"] == [], (path, found)
        # The navigation is all there, wrapped, not cut off.
        assert await w.page.locator("header.top nav a").count() == 7
        assert await w.page.locator("header.top form.sign-out button").is_visible()
