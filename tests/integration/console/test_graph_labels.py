"""The journey graph's edge labels (the condition a branch takes, its share of leads) in a real browser:
each is drawn whole, inside the graph's box (a label past its right edge was clipped by the box that
scrolls the graph) and clear of the step boxes and of the other labels, so a person can read it."""

from __future__ import annotations

import pytest

from nurture.settings import Settings
from tests.integration.console.browse import browsing
from tests.integration.console.conftest import KEYS
from tests.integration.console.mesh import console_mesh
from tests.integration.console.test_browser import ARTIFACTS

pytestmark = pytest.mark.anyio
# Every label's box, the graph's scrolling box (its full scrollable extent), the step boxes.
BOXES = """() => {
  const r = (b) => ({left: b.left, top: b.top, right: b.right, bottom: b.bottom});
  const scroller = document.querySelector('.graph-scroll'), outer = scroller.getBoundingClientRect();
  return {
    area: {left: outer.left - scroller.scrollLeft, top: outer.top,
           right: outer.left - scroller.scrollLeft + scroller.scrollWidth, bottom: outer.top + scroller.scrollHeight},
    labels: [...document.querySelectorAll('#graph .edge-label')].map(
      (t) => ({text: t.textContent, ...r(t.getBoundingClientRect())})),
    nodes: [...document.querySelectorAll('#graph [data-step]')].map(
      (n) => ({step: n.dataset.step, ...r(n.getBoundingClientRect())})),
  };
}"""


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["left"] < b["right"] - 1 and b["left"] < a["right"] - 1 and a["top"] < b["bottom"] - 1 \
        and b["top"] < a["bottom"] - 1


@pytest.mark.parametrize("journey", ["family", "re_engagement", "assessment", "webinar"])
async def test_every_edge_label_is_whole_and_clear_of_the_steps(settings: Settings, journey: str) -> None:
    async with console_mesh(settings) as mesh, browsing(mesh.app, KEYS["viewer"]) as (base, w):
        await w.open(f"{base}/console/journeys/{journey}")
        assert await w.page.locator("#graph.laid-out").count() == 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await w.page.locator(".graph-scroll").screenshot(path=str(ARTIFACTS / f"graph-{journey}.png"))
        boxes = await w.page.evaluate(BOXES)
        labels, area = boxes["labels"], boxes["area"]
        assert labels, "the journey has labelled branches: nothing to check otherwise"
        for label in labels:
            inside = (area["left"] - 1 <= label["left"] and label["right"] <= area["right"] + 1
                      and area["top"] - 1 <= label["top"] and label["bottom"] <= area["bottom"] + 1)
            assert inside, (label, area)
            hidden = [n["step"] for n in boxes["nodes"] if _overlap(label, n)]
            assert not hidden, (label["text"], "under", hidden)
        crossed = [(a["text"], b["text"]) for i, a in enumerate(labels) for b in labels[i + 1:] if _overlap(a, b)]
        assert not crossed, crossed
        assert w.errors == []
