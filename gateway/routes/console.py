"""The web console under /console/ (gateway.console): included here like every other area."""

from fastapi import APIRouter

from gateway.console import editing, pages, templates_pages

router = APIRouter()
router.include_router(pages.router)
router.include_router(editing.router)
router.include_router(templates_pages.router)
