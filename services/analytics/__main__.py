from nurture.service import main
from services.analytics.server import serve

main("analytics", serve)
