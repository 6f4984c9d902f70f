import os

from nurture.service import main
from services.analytics.server import serve

# The read model may lag; the accept path and the journeys must not wait for it: on a shared host the
# scheduler gives the fold what the services on the lead's path leave.
NICENESS = 10
# Guarded: a process that multiprocessing starts (the journeys simulation's workers, from a fork server)
# imports the parent's main module again, and would start a second server of the service.
if __name__ == "__main__":
    os.nice(NICENESS)
    main("analytics", serve)
