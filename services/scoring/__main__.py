from nurture.service import main
from services.scoring.server import serve

main("scoring", serve)
