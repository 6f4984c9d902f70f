"""The web console under /console/ (gateway.console): included here like every other area."""

from fastapi import APIRouter

from gateway.console import counts, editing, operating, pages, reports, segments_pages, simulating, templates_pages

router = APIRouter()
# Before pages: its /analytics/{report}.csv would otherwise take /analytics/attribution.csv and roi.csv.
router.include_router(reports.router)
router.include_router(pages.router)
router.include_router(editing.router)
# Before templates_pages: /templates/segments/{segment} is not a template's /templates/{key}/edit.
router.include_router(segments_pages.router)
router.include_router(templates_pages.router)
router.include_router(simulating.router)
router.include_router(counts.router)
router.include_router(operating.router)
