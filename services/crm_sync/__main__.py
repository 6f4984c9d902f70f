from nurture.service import main
from services.crm_sync.server import serve

# Guarded: a process that multiprocessing starts (the journeys simulation's workers, from a fork server)
# imports the parent's main module again, and would start a second server of the service.
if __name__ == "__main__":
    main("crm_sync", serve)
