from nurture.service import main
from services.crm_sync.server import serve

main("crm_sync", serve)
