"""The dashboard's HTML pages, one blueprint per area, rendered on the server with Jinja; the
little JavaScript they use lives in static/ and only adds to pages that work without it."""

from dashboard.pages.admin import admin
from dashboard.pages.approvals import approvals
from dashboard.pages.auth import auth
from dashboard.pages.characters import characters
from dashboard.pages.editorial import editorial
from dashboard.pages.farm_page import farm_page
from dashboard.pages.gallery import gallery
from dashboard.pages.jobs import jobs
from dashboard.pages.stories import stories

PAGES = (auth, jobs, approvals, stories, characters, gallery, editorial, farm_page, admin)
