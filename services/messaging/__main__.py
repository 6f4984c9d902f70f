from nurture.service import main
from services.messaging.server import serve

main("messaging", serve)
