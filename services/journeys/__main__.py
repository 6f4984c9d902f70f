from nurture.service import main
from services.journeys.server import serve

main("journeys", serve)
